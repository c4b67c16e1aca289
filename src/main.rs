//! The `notify` binary: `notify up` runs the platform in one process. (The
//! embedded SQLite default, the bridge, bet-tracker and the CLI subcommands
//! join as their issues land; for now `up` runs notify-svc on Postgres.)

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "notify",
    version,
    about = "The notify real-time notification platform"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the platform in one process (today: notify-svc against DATABASE_URL).
    ///
    /// Example: DATABASE_URL=postgres://postgres@127.0.0.1:5432/notify notify up
    Up {
        #[command(flatten)]
        svc: notify_svc::SvcArgs,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Up { svc } => up(svc).await,
    }
}

async fn up(args: notify_svc::SvcArgs) -> anyhow::Result<()> {
    notify_svc::logging::init(&args.log_format);
    let config = match notify_svc::Config::from_args(&args) {
        Ok(config) => config,
        Err(problems) => {
            for p in &problems {
                eprintln!("notify up: {p}");
            }
            std::process::exit(2);
        }
    };
    let grpc = TcpListener::bind(args.grpc_addr)
        .await
        .with_context(|| format!("binding gRPC {}", args.grpc_addr))?;
    let http = TcpListener::bind(args.http_addr)
        .await
        .with_context(|| format!("binding ops HTTP {}", args.http_addr))?;
    println!("notify is starting");
    println!(
        "  gRPC API     grpc://{}   (try: grpcurl -plaintext {} list)",
        args.grpc_addr, args.grpc_addr
    );
    println!(
        "  ops HTTP     http://{}/healthz  /readyz  /metrics",
        args.http_addr
    );
    println!(
        "  database     {}",
        notify_store::postgres::redact_url(&args.database_url)
    );
    println!("Ctrl-C stops it cleanly.");
    let shutdown = CancellationToken::new();
    tokio::spawn(notify_svc::signals::cancel_on_signal(shutdown.clone()));
    notify_svc::run(config, grpc, http, shutdown).await?;
    Ok(())
}
