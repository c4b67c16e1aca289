//! The `notify-ingest` binary: config from flags and `INGEST_*` environment
//! (AWS credentials from the SDK's default chain), logs, the ops port, the
//! consumer until SIGTERM/SIGINT. Under systemd (`Type=notify`) it sends
//! READY=1 once every queue was checked and feeds the watchdog while its
//! pollers turn.

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use notify_ingest::{IngestArgs, IngestConfig, Stats};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "notify-ingest",
    version,
    about = "Publishes what producers put on SQS queues (and SNS topics behind them)"
)]
struct Cli {
    #[command(flatten)]
    ingest: IngestArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Cli::parse().ingest;
    let telemetry = args.log.init("notify-ingest");
    let config = IngestConfig::from_args(&args).map_err(|problems| {
        anyhow::anyhow!("invalid configuration:\n  {}", problems.join("\n  "))
    })?;
    let stats = Arc::new(Stats::default());
    let shutdown = CancellationToken::new();
    let ops = tokio::net::TcpListener::bind(args.http_addr)
        .await
        .with_context(|| format!("binding the ops port {}", args.http_addr))?;
    notify_ops::endpoints::spawn(ops, stats.clone(), config.info(), shutdown.clone());
    tokio::spawn(notify_ops::signals::cancel_on_signal(shutdown.clone()));
    // READY=1 once the queues were checked; the watchdog is fed while the
    // pollers turn (each long poll ends within 20 s).
    {
        let (stats, shutdown) = (stats.clone(), shutdown.clone());
        tokio::spawn(async move {
            notify_ops::systemd::ready_then_watchdog(&stats.ready, &stats.beats, shutdown).await
        });
    }
    let sqs = notify_ingest::sqs_client(&config).await;
    let ran = notify_ingest::run(config, sqs, stats, shutdown).await;
    notify_ops::systemd::stopping();
    tracing::info!("notify-ingest stopped");
    telemetry.finish();
    ran
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }
}
