//! The `notify-svc` binary: parse config, set up logs, bind, run until SIGTERM/SIGINT.

use anyhow::Context;
use clap::Parser;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "notify-svc",
    version,
    about = "The Notify gRPC API of the notify platform"
)]
struct Cli {
    #[command(flatten)]
    svc: notify_svc::SvcArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let telemetry = cli.svc.log.init("notify-svc");
    let config = match notify_svc::Config::from_args(&cli.svc) {
        Ok(config) => config,
        Err(problems) => {
            for p in &problems {
                eprintln!("notify-svc: {p}");
            }
            std::process::exit(2);
        }
    };
    let grpc = TcpListener::bind(cli.svc.grpc_addr)
        .await
        .with_context(|| format!("binding gRPC {}", cli.svc.grpc_addr))?;
    let http = TcpListener::bind(cli.svc.http_addr)
        .await
        .with_context(|| format!("binding ops HTTP {}", cli.svc.http_addr))?;
    let shutdown = CancellationToken::new();
    tokio::spawn(notify_ops::signals::cancel_on_signal(shutdown.clone()));
    let ran = notify_svc::run(config, grpc, http, shutdown).await;
    telemetry.finish();
    Ok(ran?)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }
}
