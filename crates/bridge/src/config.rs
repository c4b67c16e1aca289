//! Bridge configuration: [`BridgeArgs`] (flags and `BRIDGE_*`/`AUTH_*`
//! environment, defaults written once, here) → [`BridgeConfig::from_args`],
//! which reports every problem before anything binds. [`SocketArgs`] is the
//! part `notify up` flattens too, so a changed default changes both.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use notify_auth::{
    CognitoArgs, DEV_CLIENT_ID, DEV_ISSUER, DEV_KEY_FILE, DevIssuer, Verifier, VerifierArgs,
    VerifierNames,
};
use notify_core::{TopicPolicy, setting::Setting};
use notify_ops::{
    logging::{LogArgs, LogNames},
    tls::{ServerTlsArgs, ServerTlsNames},
};
use notify_proto::channel::{CallerArgs, CallerNames, ClientTls};
use tokio::net::TcpListener;

use crate::{queue::Bound, revocation::RevocationCheck, upstream::UpstreamConfig};

/// Where `notify token`, `notify up` and a dev bridge keep the dev key.
pub const DEV_DATA_DIR: &str = ".notify";
/// The bridge's ops HTTP address unless configured (`notify up` uses it too).
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:9465";
/// Largest inbound frame: a client sends small actions, never bulk data.
const MAX_FRAME: usize = 64 * 1024;
/// Pings keep NATs and load balancers from dropping idle sockets (AWS NLB:
/// 350 s idle, most mobile NATs: ~30 s upward) and find dead peers.
const PING_EVERY: Duration = Duration::from_secs(25);

/// How the bridge treats its sockets: what `notify up` shares with the bridge binary.
#[derive(Debug, Clone, clap::Args)]
pub struct SocketArgs {
    /// WebSocket listen address (clients connect to /ws).
    #[arg(long, env = "BRIDGE_WS_ADDR", default_value = "127.0.0.1:8080")]
    pub ws_addr: SocketAddr,
    /// Outbound frames queued per connection before it is closed with 4008.
    #[arg(long, env = "BRIDGE_SEND_QUEUE", default_value_t = Bound::default().frames)]
    pub send_queue: usize,
    /// Outbound bytes queued per connection before it is closed with 4008.
    #[arg(long, env = "BRIDGE_SEND_QUEUE_BYTES", default_value_t = Bound::default().bytes)]
    pub send_queue_bytes: usize,
    /// Connections one user may hold on this bridge; more get 429.
    #[arg(long, env = "BRIDGE_MAX_PER_USER", default_value_t = 20)]
    pub max_per_user: usize,
    /// Connections this bridge accepts; more get 503.
    #[arg(long, env = "BRIDGE_MAX_CONNECTIONS", default_value_t = 100_000)]
    pub max_connections: usize,
    /// Client frames per second per connection (burst twice that).
    #[arg(long, env = "BRIDGE_RATE", default_value_t = 50)]
    pub rate: u32,
    /// Serve the Dev Panel at /panel: a page for the team, whose admins may
    /// publish test messages (as themselves: notify-svc needs
    /// NOTIFY_USERS_* to check them). Off by default; `notify up` turns it on.
    #[arg(long, env = "BRIDGE_PANEL", default_value_t = false, action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub panel: bool,
    /// permessage-deflate (RFC 7692) for clients that offer it: each
    /// message is compressed once and the same bytes go to every subscriber
    /// that agreed (false: every frame goes plain).
    #[arg(long, env = "BRIDGE_DEFLATE", default_value_t = true, action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub deflate: bool,
    /// Every connection starts with a PROXY protocol v2 header naming the
    /// client: behind a load balancer that terminates TLS (an NLB TLS
    /// listener whose target group has proxy protocol v2 on).
    #[arg(long, env = "BRIDGE_PROXY_PROTOCOL", default_value_t = false, action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub proxy_protocol: bool,
    /// Connect attempts per second from one client IP; more get 429 before
    /// the token is checked. NLBs keep client IPs (a TLS listener through
    /// BRIDGE_PROXY_PROTOCOL); behind a proxy that does not, every client
    /// shares its IP: set 0 there. Generous: a bridge restart sends a whole
    /// office's NAT back at once.
    #[arg(long, env = "BRIDGE_CONNECT_RATE_PER_IP", default_value_t = 50)]
    pub connect_rate_per_ip: u32,
    /// Connect attempts one IP may make at once before the rate applies.
    #[arg(long, env = "BRIDGE_CONNECT_BURST_PER_IP", default_value_t = 500)]
    pub connect_burst_per_ip: u32,
    /// Topics one connection may follow (a live-fights board plus rooms fits
    /// easily; each is a routing entry in the bridge and every notify-svc).
    #[arg(long, env = "BRIDGE_MAX_SUBSCRIPTIONS", default_value_t = 512)]
    pub max_subscriptions: usize,
    /// Longest wait for a client's TLS handshake and request headers, in
    /// seconds: a stalled (slowloris) upgrade is cut off after it.
    #[arg(long, env = "BRIDGE_HEADER_TIMEOUT_SECS", default_value_t = 10)]
    pub header_timeout_secs: u64,
}

impl SocketArgs {
    /// Every default (and `BRIDGE_*` from the environment): for bridges run
    /// in-process, as tests and `notify up` do.
    pub fn from_env() -> Self {
        #[derive(clap::Parser)]
        struct Defaults {
            #[command(flatten)]
            sockets: SocketArgs,
        }
        <Defaults as clap::Parser>::parse_from(["bridge"]).sockets
    }
}

/// Client actions routed to backends (`notify.v1.Upstream`): what `notify
/// up` shares with the bridge binary.
#[derive(Debug, Clone, clap::Args)]
pub struct UpstreamArgs {
    /// Routes of client actions to backends: `action=URL,…`, `$default=URL`
    /// for every other action (API Gateway's routes). Built-in actions
    /// cannot be routed.
    #[arg(long, env = "BRIDGE_ROUTES", value_delimiter = ',')]
    pub routes: Vec<String>,
    /// Longest wait for a backend's answer, in milliseconds; the client then
    /// gets a retryable `unavailable`.
    #[arg(long, env = "BRIDGE_UPSTREAM_TIMEOUT_MS", default_value_t = 5000)]
    pub upstream_timeout_ms: u64,
    /// Routed calls one connection may have in flight (more: `rate_limited`).
    #[arg(
        long,
        env = "BRIDGE_UPSTREAM_CALLS_PER_CONNECTION",
        default_value_t = 8
    )]
    pub upstream_calls_per_connection: usize,
    /// Routed calls one route may have in flight on this bridge (more:
    /// `unavailable`): a slow backend holds at most this many tasks.
    #[arg(long, env = "BRIDGE_UPSTREAM_CALLS_PER_ROUTE", default_value_t = 1000)]
    pub upstream_calls_per_route: usize,
    /// The connect hook: a backend implementing `Upstream/OnConnect`, asked
    /// before each upgrade completes (API Gateway's `$connect`); it may
    /// refuse the connection, subscribe it to topics and keep data with it.
    #[arg(long, env = "BRIDGE_CONNECT_HOOK")]
    pub connect_hook: Option<String>,
    /// Let connections in when the connect hook cannot be asked. Off
    /// (fail-closed, 503): a hook that checks something is never skipped
    /// silently.
    #[arg(long, env = "BRIDGE_CONNECT_HOOK_FAIL_OPEN", default_value_t = false, action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub connect_hook_fail_open: bool,
    /// The bridge's credential and TLS files towards backends.
    #[command(flatten)]
    pub caller: CallerArgs<UpstreamCaller>,
}

impl UpstreamArgs {
    /// Every default (and `BRIDGE_*` from the environment) with `routes`:
    /// for bridges run in-process, as tests do. Panics on a bad route.
    pub fn from_routes(routes: &str) -> UpstreamConfig {
        #[derive(clap::Parser)]
        struct Defaults {
            #[command(flatten)]
            upstream: UpstreamArgs,
        }
        <Defaults as clap::Parser>::parse_from(["bridge", "--routes", routes])
            .upstream
            .config()
            .expect("valid routes")
    }

    /// The routes' configuration, or what is wrong with it.
    pub fn config(&self) -> Result<UpstreamConfig, String> {
        if self.upstream_calls_per_connection == 0 || self.upstream_calls_per_route == 0 {
            return Err("BRIDGE_UPSTREAM_CALLS_PER_*: at least 1".into());
        }
        Ok(UpstreamConfig {
            routes: UpstreamConfig::parse_routes(&self.routes)?,
            timeout: Duration::from_millis(self.upstream_timeout_ms.max(1)),
            per_connection: self.upstream_calls_per_connection,
            per_route: self.upstream_calls_per_route,
            token: self.caller.token.clone(),
            tls: self.caller.tls(),
            connect_hook: self.connect_hook.clone(),
            fail_open: self.connect_hook_fail_open,
        })
    }
}

/// `BRIDGE_UPSTREAM_*`: how the bridge calls routed actions' backends.
#[derive(Debug, Clone)]
pub struct UpstreamCaller;
impl CallerNames for UpstreamCaller {
    const TOKEN: Setting = Setting::new("upstream-token", "BRIDGE_UPSTREAM_TOKEN");
    const CA: Setting = Setting::new("upstream-ca", "BRIDGE_UPSTREAM_CA");
    const CERT: Setting = Setting::new("upstream-cert", "BRIDGE_UPSTREAM_CERT");
    const KEY: Setting = Setting::new("upstream-key", "BRIDGE_UPSTREAM_KEY");
}

/// The `bridge` binary's settings.
#[derive(Debug, Clone, clap::Args)]
pub struct BridgeArgs {
    #[command(flatten)]
    pub sockets: SocketArgs,
    #[command(flatten, next_help_heading = "Routed actions")]
    pub upstream: UpstreamArgs,
    /// Ops HTTP listen address (/healthz, /readyz, /metrics, /info).
    #[arg(long, env = "BRIDGE_HTTP_ADDR", default_value = DEFAULT_HTTP_ADDR)]
    pub http_addr: SocketAddr,
    /// notify-svc endpoints, comma separated; the bridge attaches to each.
    #[arg(
        long,
        env = "BRIDGE_NOTIFY_URLS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:50051"
    )]
    pub notify_urls: Vec<String>,
    /// Stable id of this bridge in the connection registry (default: hostname + port).
    #[arg(long, env = "BRIDGE_ID")]
    pub bridge_id: Option<String>,
    /// Users' tokens: the issuer's JWKS, the issuer and the app clients.
    #[command(flatten, next_help_heading = "Users' tokens")]
    pub auth: VerifierArgs<UserTokens>,
    /// Trust the dev issuer (`notify token`) whose key lives in --data-dir,
    /// instead of AUTH_*: loopback only.
    #[arg(long, env = "AUTH_DEV", default_value_t = false, action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub auth_dev: bool,
    /// Where the dev key lives.
    #[arg(long, env = "BRIDGE_DATA_DIR", default_value = DEV_DATA_DIR)]
    pub data_dir: PathBuf,
    /// The bridge's credential and TLS files towards notify-svc.
    #[command(flatten, next_help_heading = "Calling notify-svc")]
    pub caller: CallerArgs<BridgeCaller>,
    /// Ask Cognito whether a token was revoked (GetUser for access tokens,
    /// AdminGetUser for an ID token's user), at connect, on refresh and every
    /// BRIDGE_REVOCATION_CACHE_SECS for open sockets: a signed-out token is
    /// refused (401) and its open sockets closed (4009).
    #[arg(long, env = "BRIDGE_REVOCATION_CHECK", help_heading = "Revocation check", default_value_t = false, action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub revocation_check: bool,
    /// How long one token's "not revoked" answer is trusted, and how often
    /// open sockets are asked about again, in seconds.
    #[arg(
        long,
        env = "BRIDGE_REVOCATION_CACHE_SECS",
        help_heading = "Revocation check",
        default_value_t = 60
    )]
    pub revocation_cache_secs: u64,
    /// The user pool asked by the revocation check.
    #[command(flatten, next_help_heading = "Revocation check")]
    pub cognito: CognitoArgs,
    /// Serve wss (None: plain ws, e.g. behind a TLS-terminating load balancer).
    #[command(flatten, next_help_heading = "wss")]
    pub tls: ServerTlsArgs<BridgeTls>,
    #[command(flatten, next_help_heading = "Logs and traces")]
    pub log: LogArgs<BridgeLog>,
}

/// `AUTH_*`: the users' token issuer (a Cognito user pool).
#[derive(Debug, Clone)]
pub struct UserTokens;
impl VerifierNames for UserTokens {
    const JWKS_URL: Setting = Setting::new("jwks-url", "AUTH_JWKS_URL");
    const JWKS_CA: Setting = Setting::new("jwks-ca", "AUTH_JWKS_CA");
    const ISSUER: Setting = Setting::new("issuer", "AUTH_ISSUER");
    const CLIENT_IDS: Setting = Setting::new("client-ids", "AUTH_CLIENT_IDS");
}

/// `BRIDGE_NOTIFY_*`: how the bridge calls notify-svc.
#[derive(Debug, Clone)]
pub struct BridgeCaller;
impl CallerNames for BridgeCaller {
    const TOKEN: Setting = Setting::new("notify-token", "BRIDGE_NOTIFY_TOKEN");
    const CA: Setting = Setting::new("notify-ca", "BRIDGE_NOTIFY_CA");
    const CERT: Setting = Setting::new("notify-cert", "BRIDGE_NOTIFY_CERT");
    const KEY: Setting = Setting::new("notify-key", "BRIDGE_NOTIFY_KEY");
}

/// `BRIDGE_TLS_*`: the wss certificate.
#[derive(Debug, Clone)]
pub struct BridgeTls;
impl ServerTlsNames for BridgeTls {
    const CERT: Setting = Setting::new("tls-cert", "BRIDGE_TLS_CERT");
    const KEY: Setting = Setting::new("tls-key", "BRIDGE_TLS_KEY");
    const WATCH_SECS: Setting = Setting::new("tls-watch-secs", "BRIDGE_TLS_WATCH_SECS");
}

/// `BRIDGE_LOG_FORMAT`.
#[derive(Debug, Clone)]
pub struct BridgeLog;
impl LogNames for BridgeLog {
    const FORMAT: Setting = Setting::new("log-format", "BRIDGE_LOG_FORMAT");
}

/// Everything a bridge needs.
pub struct BridgeConfig {
    pub bridge_id: String,
    /// notify-svc endpoints; the bridge attaches to each.
    pub notify_urls: Vec<String>,
    pub notify_token: Option<String>,
    pub verifier: Verifier,
    /// Asks Cognito whether a token was revoked, at connect, on refresh and
    /// every interval for open sockets (None: the token's signature and
    /// expiry are the whole check).
    pub revocation: Option<RevocationCheck>,
    pub topics: TopicPolicy,
    /// Outbound frames and bytes queued per connection before it is closed
    /// with 4008.
    pub send_queue: Bound,
    /// Largest inbound frame.
    pub max_frame: usize,
    /// permessage-deflate for clients that offer it.
    pub deflate: bool,
    pub rate_per_sec: u32,
    pub burst: u32,
    pub ping_every: Duration,
    /// Connect attempts per second from one IP (burst: `connect_burst_per_ip`);
    /// more get 429 before the token is checked. 0: no per-IP limit.
    pub connect_rate_per_ip: u32,
    pub connect_burst_per_ip: u32,
    /// Connections start with a PROXY protocol v2 header (an NLB TLS
    /// listener's target group with proxy protocol on): the client's address
    /// for the per-IP limits and the logs.
    pub proxy_protocol: bool,
    /// Serve the Dev Panel at `/panel` (`notify up` does; off by default).
    pub panel: bool,
    /// Topics one connection may follow; more subscribes are `forbidden`.
    pub max_subscriptions: usize,
    /// Longest wait for a client's request headers (and, with TLS, its
    /// handshake): a slowloris upgrade is cut off after this.
    pub header_timeout: Duration,
    /// Connections per user on this bridge; more are refused with 429.
    pub max_per_user: usize,
    /// Connections on this bridge; more are refused with 503.
    pub max_connections: usize,
    /// Where to serve /healthz, /readyz and /metrics, if anywhere.
    pub ops: Option<TcpListener>,
    /// Serve wss with these files (None: plain ws, e.g. behind a TLS-
    /// terminating load balancer).
    pub tls: Option<notify_ops::tls::TlsFiles>,
    /// How to reach `https://` notify-svc URLs (CA, client certificate).
    pub notify_tls: ClientTls,
    /// Client actions routed to backends.
    pub upstream: UpstreamConfig,
}

impl BridgeConfig {
    /// A bridge treating its sockets as `sockets` says, verifying tokens with
    /// `verifier`, attached to `notify_urls` with no credential, in plain ws,
    /// without revocation checks or an ops port.
    pub fn new(
        bridge_id: &str,
        sockets: &SocketArgs,
        verifier: Verifier,
        notify_urls: Vec<String>,
    ) -> Self {
        Self {
            bridge_id: bridge_id.to_owned(),
            notify_urls,
            notify_token: None,
            verifier,
            revocation: None,
            topics: TopicPolicy::default(),
            send_queue: Bound {
                frames: sockets.send_queue,
                bytes: sockets.send_queue_bytes,
            },
            max_frame: MAX_FRAME,
            deflate: sockets.deflate,
            rate_per_sec: sockets.rate,
            burst: sockets.rate.saturating_mul(2),
            ping_every: PING_EVERY,
            header_timeout: Duration::from_secs(sockets.header_timeout_secs.max(1)),
            max_subscriptions: sockets.max_subscriptions,
            connect_rate_per_ip: sockets.connect_rate_per_ip,
            connect_burst_per_ip: sockets.connect_burst_per_ip,
            proxy_protocol: sockets.proxy_protocol,
            panel: sockets.panel,
            max_per_user: sockets.max_per_user,
            max_connections: sockets.max_connections,
            ops: None,
            tls: None,
            notify_tls: ClientTls::default(),
            upstream: UpstreamConfig::default(),
        }
    }

    /// Checks everything at once and reports every problem together; then
    /// loads the dev key (with AUTH_DEV) and the AWS configuration (with
    /// the revocation check). Binds nothing: the caller sets `ops`.
    // Long (~85 lines): one check per setting group, in BridgeArgs' order,
    // each adding to `problems` instead of returning, which is the point.
    pub async fn from_args(args: &BridgeArgs) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        let users = args.auth.verifier().unwrap_or_else(|e| {
            problems.push(e);
            None
        });
        if args.auth_dev {
            if !args.sockets.ws_addr.ip().is_loopback() {
                problems.push(
                    "AUTH_DEV=1 is for loopback only; bind BRIDGE_WS_ADDR to 127.0.0.1".into(),
                );
            }
        } else if users.is_none() && problems.is_empty() {
            problems.push(
                "set AUTH_JWKS_URL, AUTH_ISSUER and AUTH_CLIENT_IDS (or AUTH_DEV=1 on loopback)"
                    .into(),
            );
        }
        let cognito = args.cognito.config().unwrap_or_else(|e| {
            problems.push(e);
            None
        });
        if args.revocation_check && cognito.is_none() {
            problems.push(
                "BRIDGE_REVOCATION_CHECK needs COGNITO_USER_POOL_ID and COGNITO_REGION (or AWS_REGION)"
                    .into(),
            );
        }
        let tls = args
            .tls
            .files(notify_ops::tls::ClientAuth::Off)
            .unwrap_or_else(|e| {
                problems.push(e.to_string());
                None
            });
        let upstream = args.upstream.config().unwrap_or_else(|e| {
            problems.push(e);
            UpstreamConfig::default()
        });
        if args.notify_urls.iter().all(|u| u.is_empty()) {
            problems.push("BRIDGE_NOTIFY_URLS names no notify-svc".into());
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let verifier = match users {
            Some(verifier) if !args.auth_dev => verifier,
            _ => DevIssuer::load_or_create(
                &args.data_dir.join(DEV_KEY_FILE),
                DEV_ISSUER,
                DEV_CLIENT_ID,
            )
            .map_err(|e| vec![format!("the dev key in {}: {e}", args.data_dir.display())])?
            .verifier(),
        };
        let revocation = match cognito.filter(|_| args.revocation_check) {
            Some(pool) => {
                let every = Duration::from_secs(args.revocation_cache_secs);
                let pool = notify_auth::CognitoConfig {
                    revocation_ttl: every,
                    ..pool
                };
                Some(RevocationCheck {
                    cognito: Arc::new(notify_auth::Cognito::new(&pool).await),
                    every,
                })
            }
            None => None,
        };
        let bridge_id = args.bridge_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/etc/hostname").unwrap_or_else(|_| "bridge".into());
            format!("{}:{}", host.trim(), args.sockets.ws_addr.port())
        });
        Ok(Self {
            notify_token: args.caller.token.clone(),
            revocation,
            tls,
            notify_tls: args.caller.tls(),
            upstream,
            ..Self::new(
                &bridge_id,
                &args.sockets,
                verifier,
                args.notify_urls.clone(),
            )
        })
    }

    /// What `/info` shows of this bridge (the notify-svc token only as set
    /// or not; URLs without passwords).
    pub fn info(&self) -> notify_ops::info::Info {
        let urls: Vec<String> = self
            .notify_urls
            .iter()
            .map(|u| notify_core::redact::redact_url(u))
            .collect();
        notify_ops::info::Info::new("bridge", env!("CARGO_PKG_VERSION"))
            .set("bridge_id", &self.bridge_id)
            .set("notify_urls", urls)
            .secret("notify_token", self.notify_token.is_some())
            .set("notify_tls", &self.notify_tls)
            .set("auth", self.verifier.config())
            .set("revocation_check", self.revocation.is_some())
            .set("topics", &self.topics)
            .set("send_queue", self.send_queue)
            .set("max_frame", self.max_frame)
            .set("deflate", self.deflate)
            .set("rate_per_sec", self.rate_per_sec)
            .set("burst", self.burst)
            .set("ping_every", self.ping_every)
            .set("connect_rate_per_ip", self.connect_rate_per_ip)
            .set("connect_burst_per_ip", self.connect_burst_per_ip)
            .set("proxy_protocol", self.proxy_protocol)
            .set("panel", self.panel)
            .set("max_subscriptions", self.max_subscriptions)
            .set("header_timeout", self.header_timeout)
            .set("max_per_user", self.max_per_user)
            .set("max_connections", self.max_connections)
            .set("tls", &self.tls)
            .set(
                "routes",
                self.upstream
                    .routes
                    .iter()
                    .map(|(action, url)| {
                        format!("{action}={}", notify_core::redact::redact_url(url))
                    })
                    .collect::<Vec<_>>(),
            )
            .set("upstream_timeout", self.upstream.timeout)
            .secret("upstream_token", self.upstream.token.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        bridge: BridgeArgs,
    }

    fn args(flags: &[&str]) -> BridgeArgs {
        let argv = std::iter::once("bridge").chain(flags.iter().copied());
        <Cli as clap::Parser>::try_parse_from(argv).unwrap().bridge
    }

    #[tokio::test]
    async fn every_problem_is_reported_at_once_before_anything_binds() {
        let problems = BridgeConfig::from_args(&args(&[
            "--auth-dev",
            "true",
            "--ws-addr",
            "0.0.0.0:8080",
            "--revocation-check",
            "true",
            "--tls-cert",
            "/etc/wss.pem",
        ]))
        .await
        .err()
        .unwrap();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].contains("loopback"), "{problems:?}");
        assert!(problems[1].contains("COGNITO_USER_POOL_ID"), "{problems:?}");
        assert!(problems[2].contains("BRIDGE_TLS_KEY"), "{problems:?}");
        let none = BridgeConfig::from_args(&args(&[])).await.err().unwrap();
        assert!(none[0].contains("AUTH_JWKS_URL"), "{none:?}");
        let half = BridgeConfig::from_args(&args(&["--issuer", "https://iss"]))
            .await
            .err()
            .unwrap();
        assert!(half[0].contains("AUTH_CLIENT_IDS"), "{half:?}");
    }

    #[tokio::test]
    async fn settings_reach_the_config_with_the_defaults_written_in_clap() {
        let dir = std::env::temp_dir().join(format!("bridge-config-{}", std::process::id()));
        let config = BridgeConfig::from_args(&args(&[
            "--auth-dev",
            "true",
            "--data-dir",
            dir.to_str().unwrap(),
            "--rate",
            "7",
            "--notify-urls",
            "http://a:1,http://b:2",
            "--bridge-id",
            "edge-1",
        ]))
        .await
        .unwrap();
        assert_eq!(config.bridge_id, "edge-1");
        assert_eq!(config.notify_urls, ["http://a:1", "http://b:2"]);
        assert_eq!((config.rate_per_sec, config.burst), (7, 14));
        assert_eq!(config.send_queue, Bound::default());
        assert_eq!(config.max_per_user, 20);
        assert!(!config.panel && config.tls.is_none() && config.revocation.is_none());
        let _ = std::fs::remove_dir_all(dir);
    }
}
