//! `notify up`: notify-svc, a bridge, bet-tracker and the outbox relay
//! (and, given SQS queues, the notify-ingest consumer) in one process, linked
//! over loopback gRPC exactly as in production, with the dev token issuer;
//! embedded SQLite unless DATABASE_URL names another database.

use std::{net::SocketAddr, path::Path};

use anyhow::Context;
use notify_auth::DevIssuer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// `notify up`'s database file in its data directory when DATABASE_URL is not set.
const DATABASE_FILE: &str = "notify.db";
/// The VAPID key pair `notify up` makes for Web Push (PKCS#8 PEM).
const VAPID_KEY_FILE: &str = "vapid.pem";
/// Fight changes a second under `--simulate`: enough to watch, few enough to read.
const SIMULATED_RATE: u32 = 5;

#[derive(clap::Args)]
pub struct UpArgs {
    /// Where the dev key and the embedded database live.
    #[arg(long, default_value = notify_bridge::DEV_DATA_DIR)]
    data_dir: std::path::PathBuf,
    /// Also drive fights through their life (a few changes a second), so
    /// fight events flow at once: `notify tail --topic fights:live`.
    #[arg(long)]
    simulate: bool,
    #[command(flatten)]
    svc: notify_svc::SvcArgs,
    /// The bridge's sockets, as the bridge binary takes them (its defaults).
    #[command(flatten, next_help_heading = "Bridge")]
    sockets: notify_bridge::SocketArgs,
    /// Client actions routed to backends, as the bridge binary takes them.
    #[command(flatten, next_help_heading = "Routed actions")]
    upstream: notify_bridge::UpstreamArgs,
    /// Ops HTTP of the bridge (/healthz, /readyz, /metrics).
    #[arg(long, env = "BRIDGE_HTTP_ADDR", default_value = notify_bridge::DEFAULT_HTTP_ADDR, help_heading = "Bridge")]
    bridge_http_addr: std::net::SocketAddr,
    /// BetTracker's lease and polling, as the bet-tracker binary takes them.
    #[command(flatten, next_help_heading = "BetTracker")]
    tracker: bet_tracker::LoopArgs,
    /// SQS queues to consume, as notify-ingest takes them: given queues, the
    /// consumer runs in-process.
    #[command(flatten, next_help_heading = "SQS/SNS ingest")]
    ingest: notify_ingest::SqsArgs,
    /// The transactional outbox relayed: this database's `notify_outbox`
    /// unless --outbox-database-url names another.
    #[command(flatten, next_help_heading = "Transactional outbox")]
    outbox: notify_relay::OutboxArgs,
}

/// Runs the platform until Ctrl-C (or until notify-svc fails).
pub async fn up(args: UpArgs) -> anyhow::Result<()> {
    let telemetry = args.svc.log.init("notify");
    let ran = run(args).await;
    telemetry.finish();
    ran
}

async fn run(args: UpArgs) -> anyhow::Result<()> {
    let config = svc_config(&args)?;
    let database = config.database.clone();
    // Migrated before anything starts: the tracker and the simulation use
    // the schema at once (notify-svc's own run then finds nothing to do).
    database
        .store()
        .map_err(|e| anyhow::anyhow!("opening {database}: {e}"))?
        .migrate()
        .await
        .map_err(|e| anyhow::anyhow!("migrating {database}: {e}"))?;
    // The dev key before any port: a client that reaches a port may
    // already be holding a token of this key (`notify token` on the same
    // directory creates or reads the same one).
    let issuer = DevIssuer::load_or_create(
        &args.data_dir.join(notify_auth::DEV_KEY_FILE),
        notify_auth::DEV_ISSUER,
        notify_auth::DEV_CLIENT_ID,
    )?;
    let ports = Ports::bind(&args).await?;
    banner(&args, &issuer, &database)?;
    serve(args, config, issuer, ports).await
}

/// notify-svc's configuration: development mode, on loopback, in plaintext.
fn svc_config(args: &UpArgs) -> anyhow::Result<notify_svc::Config> {
    if !args.sockets.ws_addr.ip().is_loopback() {
        anyhow::bail!("notify up trusts dev tokens: bind --ws-addr to loopback");
    }
    if args.svc.tls.cert.is_some() || args.svc.tls_client_ca.is_some() {
        anyhow::bail!(
            "notify up serves loopback only, in plaintext; TLS is for the notify-svc and bridge binaries"
        );
    }
    let mut svc = args.svc.clone();
    // `notify up` is development: loopback callers need no credentials
    // (and then the gRPC port must stay on loopback: Config checks it).
    svc.dev = true;
    if svc.database_url.is_none() {
        let file = args.data_dir.join(DATABASE_FILE);
        svc.database_url = Some(format!("sqlite:{}", file.display()));
    }
    // Web Push works locally (a browser that reaches a push service can
    // subscribe): a VAPID key pair made once in the data directory.
    if svc.vapid_key_file.is_none() && svc.vapid_private_key.is_none() {
        svc.vapid_key_file = Some(vapid_key(&args.data_dir, &svc.vapid_subject)?);
    }
    notify_svc::Config::from_args(&svc).map_err(|problems| {
        for p in &problems {
            eprintln!("notify up: {p}");
        }
        std::process::exit(2)
    })
}

/// The data directory's VAPID key file, made on first use (owner-only).
fn vapid_key(data_dir: &Path, subject: &str) -> anyhow::Result<std::path::PathBuf> {
    let file = data_dir.join(VAPID_KEY_FILE);
    if !file.exists() {
        let key = notify_push::vapid::Vapid::generate(subject).map_err(anyhow::Error::msg)?;
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
        write_private(&file, key.to_pem().as_bytes())
            .with_context(|| format!("writing {}", file.display()))?;
    }
    Ok(file)
}

/// Writes a file only its owner may read.
fn write_private(file: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)?
        .write_all(bytes)
}

/// Every port, bound before anything is served.
struct Ports {
    grpc: TcpListener,
    http: TcpListener,
    ws: TcpListener,
    bridge_ops: TcpListener,
}

impl Ports {
    async fn bind(args: &UpArgs) -> anyhow::Result<Self> {
        let bind = |addr: SocketAddr, what: &'static str| async move {
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding {what} {addr}"))
        };
        Ok(Self {
            grpc: bind(args.svc.grpc_addr, "gRPC").await?,
            http: bind(args.svc.http_addr, "ops HTTP").await?,
            ws: bind(args.sockets.ws_addr, "WebSocket").await?,
            bridge_ops: bind(args.bridge_http_addr, "bridge ops HTTP").await?,
        })
    }
}

/// What runs where, and how to try it.
fn banner(
    args: &UpArgs,
    issuer: &DevIssuer,
    database: &notify_store::Database,
) -> anyhow::Result<()> {
    let (ws, grpc, http) = (args.sockets.ws_addr, args.svc.grpc_addr, args.svc.http_addr);
    let token = crate::day_token(issuer, "alice")?;
    // The panel link signs in as alice in the admin group: its publish
    // form works at once.
    let panel_token = issuer.mint(&notify_auth::DevToken {
        groups: vec![notify_core::topic::ADMIN_GROUP.into()],
        ttl: std::time::Duration::from_secs(24 * 3600),
        ..notify_auth::DevToken::access("alice")
    })?;
    let data_flag = if args.data_dir == Path::new(notify_bridge::DEV_DATA_DIR) {
        String::new()
    } else {
        format!(" --data-dir {}", args.data_dir.display())
    };
    let fights = if args.simulate {
        "   (simulated fights are running)"
    } else {
        "   (add --simulate for a stream of fights)"
    };
    println!("notify is starting");
    println!(
        "  WebSocket    ws://{ws}/ws   (bridge ops: http://{}/metrics)",
        args.bridge_http_addr
    );
    println!(
        "  Dev Panel    http://{ws}/panel#token={panel_token}   (one click: signed in as alice, admin)"
    );
    println!("  gRPC API     grpc://{grpc}   (try: grpcurl -plaintext {grpc} list)");
    println!("  ops HTTP     http://{http}/healthz  /readyz  /metrics  /info");
    println!("  database     {database}");
    println!("  dev token    (user alice, 24 h; more with `notify token --user NAME`)");
    println!("TOKEN={token}");
    println!("  connect:     notify connect --ws ws://{ws}/ws --user alice{data_flag}");
    println!("               (or: websocat \"ws://{ws}/ws?token=$TOKEN\")");
    println!(
        "  publish:     notify publish --url http://{grpc} --user alice --data '{{\"text\":\"hi\"}}'"
    );
    println!("  fights:      notify tail --url http://{grpc} --topic fights:live{fights}");
    println!("Ctrl-C stops it cleanly.");
    Ok(())
}

/// Runs the parts until Ctrl-C: the bridge stops first (sockets close with
/// 1012, last acks go up), then the tracker, then notify-svc drains.
async fn serve(
    args: UpArgs,
    mut config: notify_svc::Config,
    issuer: DevIssuer,
    ports: Ports,
) -> anyhow::Result<()> {
    let database = config.database.clone();
    let grpc_url = format!("http://{}", args.svc.grpc_addr);
    // The panel publishes as its signed-in admin: notify-svc checks their
    // dev token with the same key.
    config.users.get_or_insert_with(|| issuer.verifier());
    let upstream = args
        .upstream
        .config()
        .map_err(|e| anyhow::anyhow!("notify up: {e}"))?;
    let bridge = notify_bridge::BridgeConfig {
        topics: config.topics.clone(),
        upstream,
        ops: Some(ports.bridge_ops),
        // The panel is what `notify up` is for.
        panel: true,
        // The same gRPC link as production, over loopback.
        ..notify_bridge::BridgeConfig::new(
            &format!("up:{}", args.sockets.ws_addr.port()),
            &args.sockets,
            issuer.verifier(),
            vec![grpc_url.clone()],
        )
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(notify_ops::signals::cancel_on_signal(shutdown.clone()));
    let svc_stop = CancellationToken::new();
    let bridge = tokio::spawn(notify_bridge::run(bridge, ports.ws, shutdown.child_token()));
    let mut svc = tokio::spawn(notify_svc::run(
        config,
        ports.grpc,
        ports.http,
        svc_stop.clone(),
    ));
    // BetTracker, through the same loopback gRPC as any producer.
    let tracker = tokio::spawn(bet_tracker::run(
        bet_tracker::TrackerConfig::new("notify-up", &grpc_url, &args.tracker),
        bet_tracker::Source::new(&database, &args.tracker.group)?,
        std::sync::Arc::new(bet_tracker::Stats::default()),
        shutdown.child_token(),
    ));
    if args.simulate {
        simulate(database.clone(), shutdown.child_token());
    }
    let ingest = spawn_ingest(&args, &database, &grpc_url, shutdown.child_token()).await?;
    tokio::select! {
        () = shutdown.cancelled() => {}
        // notify-svc ended by itself: a fatal error (e.g. a changed migration).
        ended = &mut svc => {
            shutdown.cancel();
            let _ = bridge.await;
            ended??;
            return Ok(());
        }
    }
    bridge.await??;
    tracker.await??;
    ingest.await??;
    svc_stop.cancel();
    svc.await??;
    Ok(())
}

/// The consumer of the SQS queues given, and the outbox relay (always:
/// `INSERT INTO notify_outbox` works at once on the embedded database).
async fn spawn_ingest(
    args: &UpArgs,
    database: &notify_store::Database,
    grpc_url: &str,
    stop: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<()>>> {
    let outbox = notify_ingest::OutboxSource {
        database: match &args.outbox.database_url {
            Some(url) => notify_store::Database::from_url(url)
                .map_err(|e| anyhow::anyhow!("--outbox-database-url: {e}"))?,
            None => database.clone(),
        },
        args: args.outbox.clone(),
        holder: "notify-up".to_owned(),
    };
    let config = notify_ingest::IngestConfig::new(&args.ingest, Some(outbox), grpc_url)
        .map_err(|problems| anyhow::anyhow!("notify up: {}", problems.join("; ")))?;
    let sqs = notify_ingest::sqs_client(&config).await;
    let stats = std::sync::Arc::new(notify_ingest::Stats::default());
    Ok(tokio::spawn(async move {
        let ran = notify_ingest::run(config, sqs, stats, stop).await;
        // Said at once: the platform serves on without it.
        if let Err(e) = &ran {
            tracing::error!(
                error = format!("{e:#}"),
                "the outbox relay / SQS consumer stopped"
            );
        }
        ran
    }))
}

/// Fights living their life in the background until `stop`.
fn simulate(database: notify_store::Database, stop: CancellationToken) {
    let sim = bet_tracker::simulate::Simulation {
        rate: SIMULATED_RATE,
        users: 20,
        duration: None,
    };
    tokio::spawn(async move {
        if let Err(e) = bet_tracker::simulate::run(&database, sim, stop).await {
            tracing::warn!(error = %e, "the fight simulation stopped");
        }
    });
}
