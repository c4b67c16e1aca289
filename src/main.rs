//! The `notify` binary: `notify up` runs notify-svc and a WebSocket bridge in
//! one process, linked over loopback gRPC exactly as in production, with the
//! dev token issuer, and bet-tracker (`--simulate` adds a stream of fights);
//! `notify token` mints dev tokens; the rest of the CLI
//! ([`cli`]: publish, tail, history, subscribe, unsubscribe, presence,
//! disconnect, migrate) talks to
//! any deployment. Without DATABASE_URL, `up` runs on embedded SQLite.

mod cli;
mod connect;

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
    #[command(flatten)]
    endpoint: cli::Endpoint,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the platform in one process: notify-svc, a bridge (dev tokens) and bet-tracker.
    ///
    /// Without DATABASE_URL it keeps everything in an embedded SQLite
    /// database, DATA_DIR/notify.db (nothing to install). DATABASE_URL may
    /// name Postgres instead, or another SQLite file.
    #[command(
        after_help = "Examples:\n  notify up --simulate\n  notify up --data-dir /var/tmp/notify\n  DATABASE_URL=postgres://app:secret@db:5432/notify notify up"
    )]
    Up(UpArgs),
    /// Mint a dev token (RS256, local dev key) for a WebSocket client.
    #[command(
        after_help = "Examples:\n  notify token --user alice\n  notify token --user root --realm eu --groups admin\n  notify token --user billing --scopes notify/publish   # an M2M-shaped token\n  notify token --jwks > jwks.json                      # for AUTH_JWKS_URL=file:jwks.json"
    )]
    Token(TokenArgs),
    /// Connect to a bridge over WebSocket and print every frame as one JSON line.
    ///
    /// Inbox messages are acked as they are printed (--no-ack to keep them).
    #[command(
        after_help = "Examples:\n  notify connect --user alice                       # dev token from ./.notify\n  notify connect --user bob --topic fights:live\n  notify connect --ws wss://push.example.com/ws --token \"$ACCESS_TOKEN\""
    )]
    Connect(connect::ConnectArgs),
    /// Publish one message; prints its id and seq as JSON.
    #[command(
        after_help = "Examples:\n  notify publish --user alice --data '{\"text\":\"hi\"}'\n  echo '{\"score\":3}' | notify publish --topic room:lobby --event score\n  notify publish --users alice,bob --key order-42 --data '\"shipped\"'"
    )]
    Publish(cli::PublishArgs),
    /// Follow a user, a topic or the broadcasts live: one JSON per line.
    #[command(
        after_help = "Examples:\n  notify tail --topic fights:live\n  notify tail --user alice --since 0"
    )]
    Tail(cli::TailArgs),
    /// Print a user's inbox or a topic's log after --since: one JSON per line.
    #[command(
        after_help = "Examples:\n  notify history --user alice\n  notify history --topic fights:live --since 120"
    )]
    History(cli::FeedArgs),
    /// Subscribe a user to a topic on the server side: every socket of the
    /// user follows it, now and after every reconnect.
    #[command(after_help = "Examples:\n  notify subscribe --user alice --topic room:lobby")]
    Subscribe(cli::SubscriptionArgs),
    /// End a server-side subscription (stored and on every live socket).
    #[command(after_help = "Examples:\n  notify unsubscribe --user alice --topic room:lobby")]
    Unsubscribe(cli::SubscriptionArgs),
    /// A user's live connections, or a topic's stored subscriptions and live subscribers.
    #[command(
        after_help = "Examples:\n  notify presence --user alice\n  notify presence --topic room:lobby"
    )]
    Presence(cli::PresenceArgs),
    /// Close a user's sockets (or one connection) with 4003.
    #[command(
        after_help = "Examples:\n  notify disconnect --user alice --reason 'account locked'\n  notify disconnect --connection 0193…"
    )]
    Disconnect(cli::DisconnectArgs),
    /// Apply the database migrations to DATABASE_URL (Postgres or SQLite).
    #[command(
        after_help = "Examples:\n  DATABASE_URL=postgres://notify@db:5432/notify notify migrate\n  notify migrate --database-url sqlite:.notify/notify.db"
    )]
    Migrate {
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: String,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let Cli { endpoint, command } = Cli::parse();
    let done: Result<(), cli::Failure> = match command {
        Command::Up(args) => up(args).await.map_err(Into::into),
        Command::Token(args) => token(args).map_err(Into::into),
        Command::Connect(args) => connect::connect(args).await,
        Command::Publish(args) => cli::publish(&endpoint, args).await,
        Command::Tail(args) => cli::tail(&endpoint, args).await,
        Command::History(args) => cli::history(&endpoint, args).await,
        Command::Presence(args) => cli::presence(&endpoint, args).await,
        Command::Subscribe(args) => cli::subscription(&endpoint, args, true).await,
        Command::Unsubscribe(args) => cli::subscription(&endpoint, args, false).await,
        Command::Disconnect(args) => cli::disconnect(&endpoint, args).await,
        Command::Migrate { database_url } => cli::migrate(&database_url).await,
    };
    match done {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(failure) => failure.report(),
    }
}

#[derive(clap::Args)]
struct UpArgs {
    /// Where the dev key and the embedded database live.
    #[arg(long, default_value = notify_bridge::DEV_DATA_DIR)]
    data_dir: std::path::PathBuf,
    /// Also drive fights through their life (a few changes a second), so
    /// fight events flow at once: `notify tail --topic fights:live`.
    #[arg(long)]
    simulate: bool,
    // Boxed: the largest part by far (clippy::large_enum_variant).
    #[command(flatten)]
    svc: Box<notify_svc::SvcArgs>,
    /// The bridge's sockets, as the bridge binary takes them (its defaults).
    #[command(flatten, next_help_heading = "Bridge")]
    sockets: notify_bridge::SocketArgs,
    /// Ops HTTP of the bridge (/healthz, /readyz, /metrics).
    #[arg(long, env = "BRIDGE_HTTP_ADDR", default_value = notify_bridge::DEFAULT_HTTP_ADDR, help_heading = "Bridge")]
    bridge_http_addr: std::net::SocketAddr,
    /// BetTracker's lease and polling, as the bet-tracker binary takes them.
    #[command(flatten, next_help_heading = "BetTracker")]
    tracker: bet_tracker::LoopArgs,
}

#[derive(clap::Args)]
struct TokenArgs {
    /// The user (`sub`) the token names.
    #[arg(long, required_unless_present = "jwks")]
    user: Option<String>,
    /// Print the dev key's JWKS instead of a token: bridges that are not on
    /// loopback trust dev tokens through it (AUTH_JWKS_URL=file:PATH,
    /// AUTH_ISSUER and AUTH_CLIENT_IDS of the dev issuer), as in
    /// deploy/docker-compose.yml.
    #[arg(long, conflicts_with_all = ["user", "realm", "groups", "scopes", "id_token"])]
    jwks: bool,
    /// `custom:realm` claim, for `realm:{R}:…` topics.
    #[arg(long)]
    realm: Option<String>,
    /// `cognito:groups`, comma separated (e.g. admin).
    #[arg(long, value_delimiter = ',')]
    groups: Vec<String>,
    /// `scope`, comma separated (e.g. notify/publish).
    #[arg(long, value_delimiter = ',')]
    scopes: Vec<String>,
    /// Mint an ID token (`aud`) instead of an access token (`client_id`).
    #[arg(long)]
    id_token: bool,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    ttl_secs: u64,
    /// Where the dev key lives (created on first use; `notify up` uses the same).
    #[arg(long, default_value = notify_bridge::DEV_DATA_DIR)]
    data_dir: std::path::PathBuf,
}

/// A dev access token for `user`, valid for a day, with the dev key in `data_dir`.
fn mint_dev_token(data_dir: &std::path::Path, user: &str) -> anyhow::Result<String> {
    let issuer = notify_auth::DevIssuer::load_or_create(
        &data_dir.join(notify_auth::DEV_KEY_FILE),
        notify_auth::DEV_ISSUER,
        notify_auth::DEV_CLIENT_ID,
    )?;
    day_token(&issuer, user)
}

/// A dev access token for `user`, valid for a day.
fn day_token(issuer: &notify_auth::DevIssuer, user: &str) -> anyhow::Result<String> {
    Ok(issuer.mint(&notify_auth::DevToken {
        ttl: std::time::Duration::from_secs(24 * 3600),
        ..notify_auth::DevToken::access(user)
    })?)
}

/// Prints a dev token: RS256 with the local dev key, shaped like Cognito's.
fn token(args: TokenArgs) -> anyhow::Result<()> {
    let issuer = notify_auth::DevIssuer::load_or_create(
        &args.data_dir.join(notify_auth::DEV_KEY_FILE),
        notify_auth::DEV_ISSUER,
        notify_auth::DEV_CLIENT_ID,
    )?;
    let Some(user) = args.user else {
        println!("{}", issuer.jwks());
        return Ok(());
    };
    let token = issuer.mint(&notify_auth::DevToken {
        user,
        realm: args.realm,
        groups: args.groups,
        scopes: args.scopes,
        token_use: if args.id_token {
            notify_auth::TokenUse::Id
        } else {
            notify_auth::TokenUse::Access
        },
        ttl: std::time::Duration::from_secs(args.ttl_secs),
    })?;
    println!("{token}");
    Ok(())
}

/// `notify up`'s database file in its data directory when DATABASE_URL is not set.
const DATABASE_FILE: &str = "notify.db";

async fn up(up: UpArgs) -> anyhow::Result<()> {
    let UpArgs {
        svc,
        sockets,
        bridge_http_addr,
        tracker,
        data_dir,
        simulate,
    } = up;
    let mut args = *svc;
    let ws_addr = sockets.ws_addr;
    let telemetry = args.log.init("notify");
    let ran: anyhow::Result<()> = async move {
        if !ws_addr.ip().is_loopback() {
            anyhow::bail!("notify up trusts dev tokens: bind --ws-addr to loopback");
        }
        if args.tls.cert.is_some() || args.tls_client_ca.is_some() {
            anyhow::bail!(
                "notify up serves loopback only, in plaintext; TLS is for the notify-svc and bridge binaries"
            );
        }
        // `notify up` is development: loopback callers need no credentials
        // (and then the gRPC port must stay on loopback: Config checks it).
        args.dev = true;
        if args.database_url.is_none() {
            let file = data_dir.join(DATABASE_FILE);
            args.database_url = Some(format!("sqlite:{}", file.display()));
        }
        let mut config = match notify_svc::Config::from_args(&args) {
            Ok(config) => config,
            Err(problems) => {
                for p in &problems {
                    eprintln!("notify up: {p}");
                }
                std::process::exit(2);
            }
        };
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
        let issuer = notify_auth::DevIssuer::load_or_create(
            &data_dir.join(notify_auth::DEV_KEY_FILE),
            notify_auth::DEV_ISSUER,
            notify_auth::DEV_CLIENT_ID,
        )?;
        let grpc = TcpListener::bind(args.grpc_addr)
            .await
            .with_context(|| format!("binding gRPC {}", args.grpc_addr))?;
        let http = TcpListener::bind(args.http_addr)
            .await
            .with_context(|| format!("binding ops HTTP {}", args.http_addr))?;
        let ws = TcpListener::bind(ws_addr)
            .await
            .with_context(|| format!("binding WebSocket {ws_addr}"))?;
        let bridge_ops = TcpListener::bind(bridge_http_addr)
            .await
            .with_context(|| format!("binding bridge ops HTTP {bridge_http_addr}"))?;
        let verifier = issuer.verifier();
        // The panel publishes as its signed-in admin: notify-svc checks their
        // dev token with the same key.
        config.users.get_or_insert_with(|| issuer.verifier());
        let token = day_token(&issuer, "alice")?;
        // The panel link signs in as alice in the admin group: its publish
        // form works at once.
        let panel_token = issuer.mint(&notify_auth::DevToken {
            groups: vec!["admin".into()],
            ttl: std::time::Duration::from_secs(24 * 3600),
            ..notify_auth::DevToken::access("alice")
        })?;
        let bridge = notify_bridge::BridgeConfig {
            topics: config.topics.clone(),
            ops: Some(bridge_ops),
            // The panel is what `notify up` is for.
            panel: true,
            // The same gRPC link as production, over loopback.
            ..notify_bridge::BridgeConfig::new(
                &format!("up:{}", ws_addr.port()),
                &sockets,
                verifier,
                vec![format!("http://{}", args.grpc_addr)],
            )
        };
        println!("notify is starting");
        println!("  WebSocket    ws://{ws_addr}/ws   (bridge ops: http://{bridge_http_addr}/metrics)");
        println!(
            "  Dev Panel    http://{ws_addr}/panel#token={panel_token}   (one click: signed in as alice, admin)"
        );
        println!(
            "  gRPC API     grpc://{}   (try: grpcurl -plaintext {} list)",
            args.grpc_addr, args.grpc_addr
        );
        println!(
            "  ops HTTP     http://{}/healthz  /readyz  /metrics  /info",
            args.http_addr
        );
        println!("  database     {database}");
        println!("  dev token    (user alice, 24 h; more with `notify token --user NAME`)");
        println!("TOKEN={token}");
        let data_flag = if data_dir == std::path::Path::new(notify_bridge::DEV_DATA_DIR) {
            String::new()
        } else {
            format!(" --data-dir {}", data_dir.display())
        };
        println!("  connect:     notify connect --ws ws://{ws_addr}/ws --user alice{data_flag}");
        println!("               (or: websocat \"ws://{ws_addr}/ws?token=$TOKEN\")");
        println!(
            "  publish:     notify publish --url http://{} --user alice --data '{{\"text\":\"hi\"}}'",
            args.grpc_addr
        );
        println!(
            "  fights:      notify tail --url http://{} --topic fights:live{}",
            args.grpc_addr,
            if simulate {
                "   (simulated fights are running)"
            } else {
                "   (add --simulate for a stream of fights)"
            }
        );
        println!("Ctrl-C stops it cleanly.");
        let shutdown = CancellationToken::new();
        tokio::spawn(notify_ops::signals::cancel_on_signal(shutdown.clone()));
        // The bridge stops first (sockets close with 1012, last acks go up),
        // then notify-svc drains.
        let bridge_stop = shutdown.child_token();
        let svc_stop = CancellationToken::new();
        let bridge = tokio::spawn(notify_bridge::run(bridge, ws, bridge_stop));
        let mut svc = tokio::spawn(notify_svc::run(config, grpc, http, svc_stop.clone()));
        // BetTracker, through the same loopback gRPC as any producer.
        let tracker = tokio::spawn(bet_tracker::run(
            bet_tracker::TrackerConfig::new(
                "notify-up",
                &format!("http://{}", args.grpc_addr),
                &tracker,
            ),
            bet_tracker::Source::new(&database, &tracker.group)?,
            std::sync::Arc::new(bet_tracker::Stats::default()),
            shutdown.child_token(),
        ));
        if simulate {
            let sim = bet_tracker::simulate::Simulation {
                rate: 5,
                users: 20,
                duration: None,
            };
            let stop = shutdown.child_token();
            tokio::spawn(async move {
                if let Err(e) = bet_tracker::simulate::run(&database, sim, stop).await {
                    tracing::warn!(error = %e, "the fight simulation stopped");
                }
            });
        }
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
        svc_stop.cancel();
        svc.await??;
        Ok(())
    }
    .await;
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
