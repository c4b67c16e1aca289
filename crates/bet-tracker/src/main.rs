//! The `bet-tracker` binary: config from flags and `TRACKER_*`/`DATABASE_URL`
//! environment, logs, run until SIGTERM/SIGINT (the lease is given back).
//! Under systemd (`Type=notify`) it sends READY=1 after its first successful
//! poll and feeds the watchdog while its loop turns.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use bet_tracker::{Source, Stats, TrackerArgs, TrackerConfig};
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
    #[command(flatten)]
    tracker: TrackerArgs,
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Cli {
        tracker: args,
        command,
    } = Cli::parse();
    let telemetry = args.log.init("bet-tracker");
    let database = Database::from_url(&args.database_url)?;
    if let Some(Command::Simulate {
        rate,
        users,
        seconds,
    }) = command
    {
        let shutdown = CancellationToken::new();
        tokio::spawn(notify_ops::signals::cancel_on_signal(shutdown.clone()));
        let sim = bet_tracker::simulate::Simulation {
            rate,
            users,
            duration: seconds.map(Duration::from_secs),
        };
        tracing::info!(rate, users, "simulating fights");
        let written = bet_tracker::simulate::run(&database, sim, shutdown).await?;
        tracing::info!(written, "simulation done");
        telemetry.finish();
        return Ok(());
    }
    let config = TrackerConfig::from_args(&args);
    let source = Source::new(&database, &config.group)?;
    let stats = Arc::new(Stats::default());
    let shutdown = CancellationToken::new();
    let ops = tokio::net::TcpListener::bind(args.http_addr)
        .await
        .with_context(|| format!("binding the ops port {}", args.http_addr))?;
    let info = config.info(&database);
    notify_ops::endpoints::spawn(ops, stats.clone(), info, shutdown.clone());
    tokio::spawn(notify_ops::signals::cancel_on_signal(shutdown.clone()));
    // READY=1 once the first poll succeeded; the watchdog is fed only while
    // the tracker's loop turns (a stuck loop gets restarted).
    {
        let (stats, shutdown) = (stats.clone(), shutdown.clone());
        tokio::spawn(async move {
            notify_ops::systemd::ready_then_watchdog(
                &stats.relay.ready,
                &stats.relay.beats,
                shutdown,
            )
            .await
        });
    }
    tracing::info!(
        holder = config.holder,
        group = config.group,
        notify = config.notify_url,
        "bet-tracker starting"
    );
    let ran = bet_tracker::run(config, source, stats, shutdown).await;
    notify_ops::systemd::stopping();
    tracing::info!("bet-tracker stopped");
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
