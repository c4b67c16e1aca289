//! The `bridge` binary: config from flags and `BRIDGE_*`/`AUTH_*` environment
//! ([`notify_bridge::BridgeArgs`]), logs, bind, run until SIGTERM/SIGINT
//! (sockets close with 1012).

use anyhow::Context;
use clap::Parser;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "bridge",
    version,
    about = "WebSocket bridge of the notify platform"
)]
struct Cli {
    #[command(flatten)]
    bridge: notify_bridge::BridgeArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Cli { bridge: args } = Cli::parse();
    let telemetry = args.log.init("bridge");
    let mut config = match notify_bridge::BridgeConfig::from_args(&args).await {
        Ok(config) => config,
        Err(problems) => {
            for p in &problems {
                eprintln!("bridge: {p}");
            }
            std::process::exit(2);
        }
    };
    let listener = TcpListener::bind(args.sockets.ws_addr)
        .await
        .with_context(|| format!("binding {}", args.sockets.ws_addr))?;
    let ops = TcpListener::bind(args.http_addr)
        .await
        .with_context(|| format!("binding {}", args.http_addr))?;
    config.ops = Some(ops);
    let shutdown = CancellationToken::new();
    tokio::spawn(notify_ops::signals::cancel_on_signal(shutdown.clone()));
    let ran = notify_bridge::run(config, listener, shutdown).await;
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
