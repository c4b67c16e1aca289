//! The `bet-tracker` binary: config from flags and `TRACKER_*`/`DATABASE_URL`
//! environment, logs, run until SIGTERM/SIGINT (the lease is given back).
//! Under systemd (`Type=notify`) it sends READY=1 after its first successful
//! poll and feeds the watchdog while its loop turns.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use anyhow::Context;
use bet_tracker::{Source, Stats, TrackerConfig};
use clap::Parser;
use notify_store::Database;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "bet-tracker",
    version,
    about = "Turns every change of a live fight into notifications"
)]
struct Cli {
    /// The database holding `fights` and its outbox: postgres://… or sqlite:PATH.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// notify-svc's gRPC endpoint.
    #[arg(
        long,
        env = "TRACKER_NOTIFY_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    notify_url: String,
    /// This tracker's credential for notify-svc (a NOTIFY_API_TOKENS token).
    #[arg(long, env = "TRACKER_NOTIFY_TOKEN", hide_env_values = true)]
    notify_token: Option<String>,
    /// CA (PEM) to trust for an https:// notify-svc instead of the system's.
    #[arg(long, env = "TRACKER_NOTIFY_CA")]
    notify_ca: Option<std::path::PathBuf>,
    /// Client certificate (PEM) for notify-svc's mutual TLS.
    #[arg(long, env = "TRACKER_NOTIFY_CERT")]
    notify_cert: Option<std::path::PathBuf>,
    /// The client certificate's key (PEM).
    #[arg(long, env = "TRACKER_NOTIFY_KEY")]
    notify_key: Option<std::path::PathBuf>,
    /// This instance's name in the lease (default: hostname and pid).
    #[arg(long, env = "TRACKER_ID")]
    tracker_id: Option<String>,
    /// Trackers with the same group share one cursor and one lease.
    #[arg(long, env = "TRACKER_GROUP", default_value = "bet-tracker")]
    group: String,
    /// Lease length, ms: a standby takes over this long after the active one died.
    #[arg(long, env = "TRACKER_LEASE_MS", default_value_t = 10_000)]
    lease_ms: u64,
    /// Poll delay while changes flow, ms.
    #[arg(long, env = "TRACKER_POLL_MIN_MS", default_value_t = 10)]
    poll_min_ms: u64,
    /// Longest poll delay when idle, ms.
    #[arg(long, env = "TRACKER_POLL_MAX_MS", default_value_t = 500)]
    poll_max_ms: u64,
    /// Ops HTTP listen address (/healthz, /readyz, /metrics).
    #[arg(long, env = "TRACKER_HTTP_ADDR", default_value = "127.0.0.1:9466")]
    http_addr: std::net::SocketAddr,
    /// Export traces over OTLP/gRPC to this collector. Unset: no export.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// Log format.
    #[arg(long, env = "TRACKER_LOG_FORMAT", value_enum, default_value_t)]
    log_format: notify_ops::logging::LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Drive fights through their life in the `fights` table, as BetService
    /// would (demos, benches): `bet-tracker simulate --rate 1000`.
    Simulate {
        /// Fight changes per second.
        #[arg(long, default_value_t = 20)]
        rate: u32,
        /// Users fights are drawn between.
        #[arg(long, default_value_t = 100)]
        users: u32,
        /// Stop after this many seconds (default: until Ctrl-C).
        #[arg(long)]
        seconds: Option<u64>,
    },
}

fn default_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into());
    format!("{host}-{}", std::process::id())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let telemetry = notify_ops::logging::init_with_traces(
        cli.log_format,
        "bet-tracker",
        cli.otlp_endpoint.as_deref(),
    );
    if let Some(Command::Simulate {
        rate,
        users,
        seconds,
    }) = cli.command
    {
        let shutdown = CancellationToken::new();
        tokio::spawn(notify_ops::signals::cancel_on_signal(shutdown.clone()));
        let sim = bet_tracker::simulate::Simulation {
            rate,
            users,
            duration: seconds.map(Duration::from_secs),
        };
        tracing::info!(rate, users, "simulating fights");
        let written =
            bet_tracker::simulate::run(&Database::from_url(&cli.database_url)?, sim, shutdown)
                .await?;
        tracing::info!(written, "simulation done");
        telemetry.finish();
        return Ok(());
    }
    let holder = cli.tracker_id.clone().unwrap_or_else(default_id);
    let mut config = TrackerConfig::new(&holder, &cli.notify_url);
    config.notify_token = cli.notify_token.clone();
    config.notify_tls = notify_proto::channel::ClientTls {
        ca: cli.notify_ca.clone(),
        cert: cli.notify_cert.clone(),
        key: cli.notify_key.clone(),
    };
    config.lease_ttl = Duration::from_millis(cli.lease_ms.max(1000));
    config.poll_min = Duration::from_millis(cli.poll_min_ms);
    config.poll_max = Duration::from_millis(cli.poll_max_ms.max(cli.poll_min_ms));
    let database = Database::from_url(&cli.database_url)?;
    let source = Source::new(&database, &cli.group)?;
    let stats = Arc::new(Stats::default());
    let shutdown = CancellationToken::new();
    let ops = tokio::net::TcpListener::bind(cli.http_addr)
        .await
        .with_context(|| format!("binding the ops port {}", cli.http_addr))?;
    tokio::spawn(bet_tracker::metrics::serve(
        ops,
        stats.clone(),
        config.info(&database, &cli.group),
        shutdown.clone(),
    ));
    tokio::spawn(notify_ops::signals::cancel_on_signal(shutdown.clone()));
    tokio::spawn(systemd(stats.clone(), shutdown.clone()));
    tracing::info!(
        holder,
        group = cli.group,
        notify = cli.notify_url,
        "bet-tracker starting"
    );
    let ran = bet_tracker::run(config, source, stats, shutdown).await;
    notify_ops::systemd::stopping();
    tracing::info!("bet-tracker stopped");
    telemetry.finish();
    ran
}

/// READY=1 once the first poll succeeded; the watchdog is fed only while
/// the tracker's loop turns (a stuck loop gets restarted).
async fn systemd(stats: Arc<Stats>, shutdown: CancellationToken) {
    let ready = {
        let (stats, shutdown) = (stats.clone(), shutdown.clone());
        async move {
            while !stats.ready.load(Ordering::Relaxed) {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
            notify_ops::systemd::ready();
        }
    };
    let mut last_beat = 0;
    let alive = move || {
        let beat = stats.beats.load(Ordering::Relaxed);
        std::mem::replace(&mut last_beat, beat) != beat
    };
    tokio::join!(ready, notify_ops::systemd::watchdog(alive, shutdown));
}
