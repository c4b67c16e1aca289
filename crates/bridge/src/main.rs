//! The `bridge` binary: config from flags and `BRIDGE_*`/`AUTH_*` environment,
//! logs, bind, run until SIGTERM/SIGINT (sockets close with 1012).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context;
use clap::Parser;
use notify_auth::{
    DEV_CLIENT_ID, DEV_ISSUER, DEV_KEY_FILE, DevIssuer, KeySet, KeySource, Verifier, VerifierConfig,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "bridge",
    version,
    about = "WebSocket bridge of the notify platform"
)]
struct Cli {
    /// WebSocket listen address (clients connect to /ws).
    #[arg(long, env = "BRIDGE_WS_ADDR", default_value = "127.0.0.1:8080")]
    ws_addr: SocketAddr,
    /// notify-svc endpoints, comma separated; the bridge attaches to each.
    #[arg(
        long,
        env = "BRIDGE_NOTIFY_URLS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:50051"
    )]
    notify_urls: Vec<String>,
    /// Stable id of this bridge in the connection registry (default: hostname + port).
    #[arg(long, env = "BRIDGE_ID")]
    bridge_id: Option<String>,
    /// The bridge's credential for notify-svc (a NOTIFY_API_TOKENS token).
    #[arg(long, env = "BRIDGE_NOTIFY_TOKEN", hide_env_values = true)]
    notify_token: Option<String>,
    /// JWKS of the token issuer: https://… (Cognito's), http://… or file:PATH.
    #[arg(long, env = "AUTH_JWKS_URL")]
    jwks_url: Option<String>,
    /// CA (PEM) to trust for an https:// JWKS instead of the system's roots.
    #[arg(long, env = "AUTH_JWKS_CA")]
    jwks_ca: Option<PathBuf>,
    /// Expected `iss` of tokens.
    #[arg(long, env = "AUTH_ISSUER")]
    issuer: Option<String>,
    /// Allowed app clients, comma separated.
    #[arg(long, env = "AUTH_CLIENT_IDS", value_delimiter = ',')]
    client_ids: Vec<String>,
    /// Trust the dev issuer (`notify token`) whose key lives in --data-dir.
    #[arg(long, env = "AUTH_DEV", default_value_t = false, action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    auth_dev: bool,
    /// Where the dev key lives.
    #[arg(long, env = "BRIDGE_DATA_DIR", default_value = ".notify")]
    data_dir: PathBuf,
    /// Outbound frames queued per connection before it is closed with 4008.
    #[arg(long, env = "BRIDGE_SEND_QUEUE", default_value_t = 1024)]
    send_queue: usize,
    /// Outbound bytes queued per connection before it is closed with 4008.
    #[arg(long, env = "BRIDGE_SEND_QUEUE_BYTES", default_value_t = 1024 * 1024)]
    send_queue_bytes: usize,
    /// Ops HTTP listen address (/healthz, /readyz, /metrics).
    #[arg(long, env = "BRIDGE_HTTP_ADDR", default_value = "127.0.0.1:9465")]
    http_addr: SocketAddr,
    /// Connections one user may hold on this bridge.
    #[arg(long, env = "BRIDGE_MAX_PER_USER", default_value_t = 20)]
    max_per_user: usize,
    /// Connections this bridge accepts.
    #[arg(long, env = "BRIDGE_MAX_CONNECTIONS", default_value_t = 100_000)]
    max_connections: usize,
    /// Client frames per second per connection (burst twice that).
    #[arg(long, env = "BRIDGE_RATE", default_value_t = 50)]
    rate: u32,
    /// Serve the Dev Panel at /panel: a page for the team, whose admins may
    /// publish test messages (as themselves: notify-svc needs
    /// NOTIFY_USERS_* to check them). Off by default; `notify up` turns it on.
    #[arg(long, env = "BRIDGE_PANEL", default_value_t = false, action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    panel: bool,
    /// Every connection starts with a PROXY protocol v2 header naming the
    /// client: behind a load balancer that terminates TLS (an NLB TLS
    /// listener whose target group has proxy protocol v2 on).
    #[arg(long, env = "BRIDGE_PROXY_PROTOCOL", default_value_t = false, action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    proxy_protocol: bool,
    /// Connect attempts per second from one client IP; more get 429 before
    /// the token is checked. NLBs keep client IPs (a TLS listener through
    /// BRIDGE_PROXY_PROTOCOL); behind a proxy that does not, every client
    /// shares its IP: set 0 there. Generous: a bridge restart sends a whole
    /// office's NAT back at once.
    #[arg(long, env = "BRIDGE_CONNECT_RATE_PER_IP", default_value_t = 50)]
    connect_rate_per_ip: u32,
    /// Connect attempts one IP may make at once before the rate applies.
    #[arg(long, env = "BRIDGE_CONNECT_BURST_PER_IP", default_value_t = 500)]
    connect_burst_per_ip: u32,
    /// Topics one connection may follow (a live-fights board plus rooms fits
    /// easily; each is a routing entry in the bridge and every notify-svc).
    #[arg(long, env = "BRIDGE_MAX_SUBSCRIPTIONS", default_value_t = 512)]
    max_subscriptions: usize,
    /// Longest wait for a client's TLS handshake and request headers, in
    /// seconds: a stalled (slowloris) upgrade is cut off after it.
    #[arg(long, env = "BRIDGE_HEADER_TIMEOUT_SECS", default_value_t = 10)]
    header_timeout_secs: u64,
    /// Ask Cognito whether a token was revoked (GetUser for access tokens,
    /// AdminGetUser for an ID token's user), at connect, on refresh and every
    /// BRIDGE_REVOCATION_CACHE_SECS for open sockets: a signed-out token is
    /// refused (401) and its open sockets closed (4009).
    #[arg(long, env = "BRIDGE_REVOCATION_CHECK", default_value_t = false, action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    revocation_check: bool,
    /// How long one token's "not revoked" answer is trusted, and how often
    /// open sockets are asked about again, in seconds.
    #[arg(long, env = "BRIDGE_REVOCATION_CACHE_SECS", default_value_t = 60)]
    revocation_cache_secs: u64,
    /// The user pool's region (for the revocation check).
    #[arg(long, env = "COGNITO_REGION")]
    cognito_region: Option<String>,
    /// The user pool's id (for the revocation check).
    #[arg(long, env = "COGNITO_USER_POOL_ID")]
    cognito_user_pool_id: Option<String>,
    /// Another Cognito endpoint (a local stand-in); default: AWS's.
    #[arg(long, env = "COGNITO_ENDPOINT_URL")]
    cognito_endpoint_url: Option<String>,
    /// Serve wss with this certificate chain (PEM; reloaded on SIGHUP or
    /// when the file changes, open sockets kept). None: plain ws.
    #[arg(long, env = "BRIDGE_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// The wss certificate's private key (PEM).
    #[arg(long, env = "BRIDGE_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// How often to look for changed TLS files, in seconds (0: reload on SIGHUP only).
    #[arg(long, env = "BRIDGE_TLS_WATCH_SECS", default_value_t = 2)]
    tls_watch_secs: u64,
    /// CA (PEM) to trust for https:// notify-svc URLs instead of the system's.
    #[arg(long, env = "BRIDGE_NOTIFY_CA")]
    notify_ca: Option<PathBuf>,
    /// Client certificate (PEM) for notify-svc's mutual TLS.
    #[arg(long, env = "BRIDGE_NOTIFY_CERT")]
    notify_cert: Option<PathBuf>,
    /// The client certificate's key (PEM).
    #[arg(long, env = "BRIDGE_NOTIFY_KEY")]
    notify_key: Option<PathBuf>,
    /// Export traces over OTLP/gRPC to this collector. Unset: no export.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// Log format.
    #[arg(long, env = "BRIDGE_LOG_FORMAT", value_enum, default_value_t)]
    log_format: notify_ops::logging::LogFormat,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let telemetry = notify_ops::logging::init_with_traces(
        cli.log_format,
        "bridge",
        cli.otlp_endpoint.as_deref(),
    );
    let verifier = if cli.auth_dev {
        if !cli.ws_addr.ip().is_loopback() {
            anyhow::bail!("AUTH_DEV=1 is for loopback only; bind BRIDGE_WS_ADDR to 127.0.0.1");
        }
        let issuer =
            DevIssuer::load_or_create(&cli.data_dir.join(DEV_KEY_FILE), DEV_ISSUER, DEV_CLIENT_ID)?;
        issuer.verifier()
    } else {
        let (Some(jwks), Some(issuer)) = (&cli.jwks_url, &cli.issuer) else {
            anyhow::bail!("set AUTH_JWKS_URL and AUTH_ISSUER (or AUTH_DEV=1 on loopback)");
        };
        if cli.client_ids.is_empty() {
            anyhow::bail!("AUTH_CLIENT_IDS is empty: every token would be refused");
        }
        Verifier::new(
            KeySet::new(KeySource::parse(jwks)?.with_ca(cli.jwks_ca.clone())?),
            VerifierConfig {
                issuer: issuer.clone(),
                client_ids: cli.client_ids.clone(),
                leeway: Duration::from_secs(5),
            },
        )
    };
    let revocation = if cli.revocation_check {
        let (Some(region), Some(pool)) = (&cli.cognito_region, &cli.cognito_user_pool_id) else {
            anyhow::bail!("BRIDGE_REVOCATION_CHECK needs COGNITO_REGION and COGNITO_USER_POOL_ID");
        };
        let config = notify_auth::CognitoConfig {
            endpoint_url: cli.cognito_endpoint_url.clone(),
            revocation_ttl: Duration::from_secs(cli.revocation_cache_secs),
            ..notify_auth::CognitoConfig::new(region, pool)
        };
        Some(notify_bridge::revocation::RevocationCheck {
            cognito: std::sync::Arc::new(notify_auth::Cognito::new(&config).await),
            every: config.revocation_ttl,
        })
    } else {
        None
    };
    let tls = notify_ops::tls::TlsFiles::from_settings(
        cli.tls_cert.clone(),
        cli.tls_key.clone(),
        notify_ops::tls::ClientAuth::Off,
    )
    .context("BRIDGE_TLS_CERT / BRIDGE_TLS_KEY")?
    .map(|files| notify_ops::tls::TlsFiles {
        watch_every: Duration::from_secs(cli.tls_watch_secs),
        ..files
    });
    let listener = TcpListener::bind(cli.ws_addr)
        .await
        .with_context(|| format!("binding {}", cli.ws_addr))?;
    let ops = TcpListener::bind(cli.http_addr)
        .await
        .with_context(|| format!("binding {}", cli.http_addr))?;
    let bridge_id = cli.bridge_id.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname").unwrap_or_else(|_| "bridge".into());
        format!("{}:{}", host.trim(), cli.ws_addr.port())
    });
    let config = notify_bridge::BridgeConfig {
        bridge_id,
        notify_urls: cli.notify_urls,
        notify_token: cli.notify_token,
        verifier,
        revocation,
        topics: notify_core::TopicPolicy::default(),
        send_queue: notify_bridge::SendBound {
            frames: cli.send_queue,
            bytes: cli.send_queue_bytes,
        },
        max_frame: 64 * 1024,
        rate_per_sec: cli.rate,
        burst: cli.rate.saturating_mul(2),
        ping_every: Duration::from_secs(25),
        header_timeout: Duration::from_secs(cli.header_timeout_secs.max(1)),
        max_subscriptions: cli.max_subscriptions,
        connect_rate_per_ip: cli.connect_rate_per_ip,
        connect_burst_per_ip: cli.connect_burst_per_ip,
        proxy_protocol: cli.proxy_protocol,
        panel: cli.panel,
        max_per_user: cli.max_per_user,
        max_connections: cli.max_connections,
        ops: Some(ops),
        tls,
        notify_tls: notify_proto::channel::ClientTls {
            ca: cli.notify_ca,
            cert: cli.notify_cert,
            key: cli.notify_key,
        },
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(notify_ops::signals::cancel_on_signal(shutdown.clone()));
    let ran = notify_bridge::run(config, listener, shutdown).await;
    telemetry.finish();
    ran
}
