//! The `notify` binary: [`up`] runs notify-svc, a WebSocket bridge and
//! bet-tracker in one process (`--simulate` adds a stream of fights);
//! `notify token` mints dev tokens; the rest of the CLI
//! ([`cli`]: publish, send, tail, connections, history, subscribe,
//! unsubscribe, presence, disconnect, migrate) talks to any deployment;
//! [`echo`] is an example backend for routed actions. Without DATABASE_URL, `up` runs on embedded SQLite.

mod cli;
mod connect;
mod echo;
mod up;

use clap::{Parser, Subcommand};

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
    // Boxed: the largest variant by far (clippy::large_enum_variant).
    Up(Box<up::UpArgs>),
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
    /// Send to one live connection (API Gateway's postToConnection): not
    /// stored; fails with NOT_FOUND when the connection is gone.
    #[command(
        after_help = "Examples:\n  notify send --connection 0193… --data '{\"text\":\"your turn\"}'"
    )]
    Send(cli::SendArgs),
    /// Follow a user, a topic or the broadcasts live: one JSON per line.
    #[command(
        after_help = "Examples:\n  notify tail --topic fights:live\n  notify tail --user alice --since 0"
    )]
    Tail(cli::TailArgs),
    /// Follow connection lifecycle events (connected, disconnected,
    /// subscribed, unsubscribed) of every bridge: one JSON per line, each
    /// with its position to resume --after.
    #[command(
        after_help = "Examples:\n  notify connections --from-now\n  notify connections --after 41"
    )]
    Connections(cli::ConnectionsArgs),
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
    /// Serve an example backend for routed actions: it answers each frame
    /// with the frame and the verified caller ({"fail": true}: NOT_FOUND).
    #[command(
        after_help = "Examples:\n  notify echo-backend --addr 127.0.0.1:50061 &\n  BRIDGE_ROUTES=echo=http://127.0.0.1:50061 notify up"
    )]
    EchoBackend(echo::EchoArgs),
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
        Command::Up(args) => up::up(*args).await.map_err(Into::into),
        Command::Token(args) => token(args).map_err(Into::into),
        Command::Connect(args) => connect::connect(args).await,
        Command::Publish(args) => cli::publish(&endpoint, args).await,
        Command::Send(args) => cli::send(&endpoint, args).await,
        Command::Tail(args) => cli::tail(&endpoint, args).await,
        Command::Connections(args) => cli::connections(&endpoint, args).await,
        Command::History(args) => cli::history(&endpoint, args).await,
        Command::Presence(args) => cli::presence(&endpoint, args).await,
        Command::Subscribe(args) => cli::subscription(&endpoint, args, true).await,
        Command::Unsubscribe(args) => cli::subscription(&endpoint, args, false).await,
        Command::Disconnect(args) => cli::disconnect(&endpoint, args).await,
        Command::Migrate { database_url } => cli::migrate(&database_url).await,
        Command::EchoBackend(args) => echo::serve(args).await,
    };
    match done {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(failure) => failure.report(),
    }
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

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }
}
