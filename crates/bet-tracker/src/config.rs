//! BetTracker configuration: [`TrackerArgs`] (flags and `TRACKER_*`/
//! `DATABASE_URL` environment, defaults written once, here) →
//! [`TrackerConfig::from_args`]. [`LoopArgs`] is the part `notify up`
//! flattens too.

use std::{net::SocketAddr, time::Duration};

use notify_core::setting::Setting;
use notify_ops::logging::{LogArgs, LogNames};
use notify_proto::channel::{CallerArgs, CallerNames, ClientTls};

/// Shortest lease: renewals every third of it must not crowd the database.
const MIN_LEASE: Duration = Duration::from_secs(1);
/// Outbox rows read per poll: one poll's worth of calls keeps IN_FLIGHT busy.
const BATCH: i64 = 500;

/// How a tracker holds its lease and polls: what `notify up` shares with
/// the binary.
#[derive(Debug, Clone, clap::Args)]
pub struct LoopArgs {
    /// Trackers with the same group share one cursor and one lease.
    #[arg(long, env = "TRACKER_GROUP", default_value = "bet-tracker")]
    pub group: String,
    /// Lease length, ms: a standby takes over this long after the active one died.
    #[arg(long, env = "TRACKER_LEASE_MS", default_value_t = 10_000)]
    pub lease_ms: u64,
    /// Poll delay while changes flow, ms.
    #[arg(long, env = "TRACKER_POLL_MIN_MS", default_value_t = 10)]
    pub poll_min_ms: u64,
    /// Longest poll delay when idle, ms.
    #[arg(long, env = "TRACKER_POLL_MAX_MS", default_value_t = 500)]
    pub poll_max_ms: u64,
}

impl LoopArgs {
    /// Every default (and `TRACKER_*` from the environment): for trackers
    /// run in-process, as tests and `notify up` do.
    pub fn from_env() -> Self {
        #[derive(clap::Parser)]
        struct Defaults {
            #[command(flatten)]
            run: LoopArgs,
        }
        <Defaults as clap::Parser>::parse_from(["bet-tracker"]).run
    }
}

/// The `bet-tracker` binary's settings.
#[derive(Debug, Clone, clap::Args)]
pub struct TrackerArgs {
    /// The database holding `fights` and its outbox: postgres://… or sqlite:PATH.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// notify-svc's gRPC endpoint.
    #[arg(
        long,
        env = "TRACKER_NOTIFY_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    pub notify_url: String,
    /// This instance's name in the lease (default: hostname and pid).
    #[arg(long, env = "TRACKER_ID")]
    pub tracker_id: Option<String>,
    #[command(flatten)]
    pub run: LoopArgs,
    /// Ops HTTP listen address (/healthz, /readyz, /metrics, /info).
    #[arg(long, env = "TRACKER_HTTP_ADDR", default_value = "127.0.0.1:9466")]
    pub http_addr: SocketAddr,
    /// The tracker's credential and TLS files towards notify-svc.
    #[command(flatten, next_help_heading = "Calling notify-svc")]
    pub caller: CallerArgs<TrackerCaller>,
    #[command(flatten, next_help_heading = "Logs and traces")]
    pub log: LogArgs<TrackerLog>,
}

/// `TRACKER_NOTIFY_*`: how the tracker calls notify-svc.
#[derive(Debug, Clone)]
pub struct TrackerCaller;
impl CallerNames for TrackerCaller {
    const TOKEN: Setting = Setting::new("notify-token", "TRACKER_NOTIFY_TOKEN");
    const CA: Setting = Setting::new("notify-ca", "TRACKER_NOTIFY_CA");
    const CERT: Setting = Setting::new("notify-cert", "TRACKER_NOTIFY_CERT");
    const KEY: Setting = Setting::new("notify-key", "TRACKER_NOTIFY_KEY");
}

/// `TRACKER_LOG_FORMAT`.
#[derive(Debug, Clone)]
pub struct TrackerLog;
impl LogNames for TrackerLog {
    const FORMAT: Setting = Setting::new("log-format", "TRACKER_LOG_FORMAT");
}

/// How one tracker runs.
#[derive(Debug, Clone)]
pub struct TrackerConfig {
    /// This instance, as the lease names its holder.
    pub holder: String,
    /// Trackers of one group share one cursor and one lease.
    pub group: String,
    /// notify-svc's gRPC endpoint.
    pub notify_url: String,
    /// Bearer token for notify-svc (a `NOTIFY_API_TOKENS` entry), if it wants one.
    pub notify_token: Option<String>,
    /// How to reach an `https://` notify-svc (CA, client certificate).
    pub notify_tls: ClientTls,
    /// How long a lease lasts without renewal: the standby takes over within
    /// about this long (plus a third) after the active tracker died.
    pub lease_ttl: Duration,
    /// Poll delay while changes flow, and the most it backs off to when idle.
    pub poll_min: Duration,
    pub poll_max: Duration,
    /// Outbox rows read per poll.
    pub batch: i64,
}

impl TrackerConfig {
    /// A tracker named `holder` calling `notify_url` without a credential,
    /// looping as `run` says.
    pub fn new(holder: &str, notify_url: &str, run: &LoopArgs) -> Self {
        let poll_min = Duration::from_millis(run.poll_min_ms);
        Self {
            holder: holder.to_owned(),
            group: run.group.clone(),
            notify_url: notify_url.to_owned(),
            notify_token: None,
            notify_tls: ClientTls::default(),
            lease_ttl: Duration::from_millis(run.lease_ms).max(MIN_LEASE),
            poll_min,
            poll_max: Duration::from_millis(run.poll_max_ms).max(poll_min),
            batch: BATCH,
        }
    }

    /// The binary's config (nothing in it can be wrong that clap has not
    /// already refused; the database URL is checked when opened).
    pub fn from_args(args: &TrackerArgs) -> Self {
        let holder = args
            .tracker_id
            .clone()
            .unwrap_or_else(notify_relay::holder_name);
        Self {
            notify_token: args.caller.token.clone(),
            notify_tls: args.caller.tls(),
            ..Self::new(&holder, &args.notify_url, &args.run)
        }
    }

    /// What `/info` shows of this tracker (the token only as set or not).
    pub fn info(&self, database: &notify_store::Database) -> notify_ops::info::Info {
        notify_ops::info::Info::new("bet-tracker", env!("CARGO_PKG_VERSION"))
            .set("holder", &self.holder)
            .set("group", &self.group)
            .set("database", database)
            .set("notify_url", &self.notify_url)
            .secret("notify_token", self.notify_token.is_some())
            .set("notify_tls", &self.notify_tls)
            .set("lease_ttl", self.lease_ttl)
            .set("poll_min", self.poll_min)
            .set("poll_max", self.poll_max)
            .set("batch", self.batch)
    }
}
