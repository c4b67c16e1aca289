//! Consumer configuration: [`SqsArgs`] (the queues and how their messages
//! map; `notify up` flattens it too) and [`IngestArgs`] (the binary's: the
//! outbox to relay, notify-svc, credentials, ops port, logs) →
//! [`IngestConfig::from_args`], every problem reported before anything
//! starts.

use std::{net::SocketAddr, time::Duration};

use notify_core::setting::Setting;
use notify_ops::logging::{LogArgs, LogNames};
use notify_proto::channel::{CallerArgs, CallerNames, ClientTls};
use notify_relay::OutboxArgs;
use notify_store::Database;

use crate::envelope::{Routes, parse_sns_routes};

/// SQS caps a long poll at 20 s.
const MAX_WAIT_SECS: u64 = 20;

/// The queues and how their messages become publishes.
#[derive(Debug, Clone, clap::Args)]
pub struct SqsArgs {
    /// SQS queue URLs to consume, comma separated. Each must have a redrive
    /// policy (a dead-letter queue): a message that cannot be published is
    /// left to it, never retried forever.
    #[arg(long = "sqs-queues", env = "INGEST_SQS_QUEUES", value_delimiter = ',')]
    pub queues: Vec<String>,
    /// Where SNS topics' messages go when they name no target:
    /// `ARN=broadcast|topic:NAME|user,…` (`user`: the user in the message
    /// attribute --sns-user-attribute).
    #[arg(long = "sns-routes", env = "INGEST_SNS_ROUTES", default_value = "")]
    pub sns_routes: String,
    /// The SNS message attribute naming the user of a `user` route.
    #[arg(
        long = "sns-user-attribute",
        env = "INGEST_SNS_USER_ATTRIBUTE",
        default_value = "user_id"
    )]
    pub user_attribute: String,
    /// The SNS message attribute naming the event.
    #[arg(
        long = "sns-event-attribute",
        env = "INGEST_SNS_EVENT_ATTRIBUTE",
        default_value = "event"
    )]
    pub event_attribute: String,
    /// The event of an SNS message without that attribute.
    #[arg(
        long = "sns-default-event",
        env = "INGEST_SNS_DEFAULT_EVENT",
        default_value = "sns"
    )]
    pub default_event: String,
    /// Long polls in flight per queue (each takes up to 10 messages).
    #[arg(long = "sqs-pollers", env = "INGEST_SQS_POLLERS", default_value_t = 2)]
    pub pollers: usize,
    /// How long a receive waits for messages, seconds (at most 20).
    #[arg(
        long = "sqs-wait-secs",
        env = "INGEST_SQS_WAIT_SECS",
        default_value_t = 20
    )]
    pub wait_secs: u64,
    /// The SQS endpoint, for a stand-in (moto, LocalStack); default: AWS's.
    #[arg(long = "sqs-endpoint-url", env = "INGEST_SQS_ENDPOINT_URL")]
    pub endpoint_url: Option<String>,
    /// The queues' region (default: AWS_REGION, as the AWS SDK reads it).
    #[arg(long = "sqs-region", env = "INGEST_SQS_REGION")]
    pub region: Option<String>,
}

/// The `notify-ingest` binary's settings.
#[derive(Debug, Clone, clap::Args)]
pub struct IngestArgs {
    #[command(flatten)]
    pub sqs: SqsArgs,
    /// A service's `notify_outbox` to relay (optional beside the queues).
    #[command(flatten, next_help_heading = "Transactional outbox")]
    pub outbox: OutboxArgs,
    /// This instance's name in the outbox lease (default: hostname and pid).
    #[arg(long = "outbox-relay-id", env = "INGEST_OUTBOX_RELAY_ID")]
    pub relay_id: Option<String>,
    /// notify-svc's gRPC endpoint.
    #[arg(
        long,
        env = "INGEST_NOTIFY_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    pub notify_url: String,
    /// Ops HTTP listen address (/healthz, /readyz, /metrics, /info).
    #[arg(long, env = "INGEST_HTTP_ADDR", default_value = "127.0.0.1:9467")]
    pub http_addr: SocketAddr,
    /// The consumer's credential and TLS files towards notify-svc.
    #[command(flatten, next_help_heading = "Calling notify-svc")]
    pub caller: CallerArgs<IngestCaller>,
    #[command(flatten, next_help_heading = "Logs and traces")]
    pub log: LogArgs<IngestLog>,
}

/// `INGEST_NOTIFY_*`: how the consumer calls notify-svc.
#[derive(Debug, Clone)]
pub struct IngestCaller;
impl CallerNames for IngestCaller {
    const TOKEN: Setting = Setting::new("notify-token", "INGEST_NOTIFY_TOKEN");
    const CA: Setting = Setting::new("notify-ca", "INGEST_NOTIFY_CA");
    const CERT: Setting = Setting::new("notify-cert", "INGEST_NOTIFY_CERT");
    const KEY: Setting = Setting::new("notify-key", "INGEST_NOTIFY_KEY");
}

/// `INGEST_LOG_FORMAT`.
#[derive(Debug, Clone)]
pub struct IngestLog;
impl LogNames for IngestLog {
    const FORMAT: Setting = Setting::new("log-format", "INGEST_LOG_FORMAT");
}

/// A `notify_outbox` to relay, and how.
#[derive(Debug, Clone)]
pub struct OutboxSource {
    pub database: Database,
    pub args: OutboxArgs,
    /// This relay's name in the lease.
    pub holder: String,
}

/// How a consumer runs.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// The outbox relayed beside the queues, if any.
    pub outbox: Option<OutboxSource>,
    pub queues: Vec<String>,
    pub routes: Routes,
    pub pollers: usize,
    pub wait: Duration,
    pub endpoint_url: Option<String>,
    pub region: Option<String>,
    pub notify_url: String,
    pub notify_token: Option<String>,
    pub notify_tls: ClientTls,
}

impl IngestConfig {
    /// The consumer `sqs` and `outbox` describe, calling `notify_url`
    /// without a credential (as `notify up` does, on loopback).
    /// `sqs` may name no queue when an `outbox` is given.
    pub fn new(
        sqs: &SqsArgs,
        outbox: Option<OutboxSource>,
        notify_url: &str,
    ) -> Result<Self, Vec<String>> {
        Self::checked(sqs, outbox.map(Ok), notify_url)
    }

    fn checked(
        sqs: &SqsArgs,
        outbox: Option<Result<OutboxSource, String>>,
        notify_url: &str,
    ) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        if sqs.queues.iter().all(|q| q.trim().is_empty()) && outbox.is_none() {
            problems.push(
                "nothing to consume: --sqs-queues (INGEST_SQS_QUEUES) names no queue and \
                 --outbox-database-url (INGEST_OUTBOX_DATABASE_URL) is not set"
                    .to_owned(),
            );
        }
        let outbox = match outbox {
            Some(Err(problem)) => {
                problems.push(problem);
                None
            }
            Some(Ok(source)) => Some(source),
            None => None,
        };
        if sqs.pollers == 0 {
            problems.push("--sqs-pollers must be at least 1".to_owned());
        }
        if sqs.wait_secs > MAX_WAIT_SECS {
            problems.push(format!(
                "--sqs-wait-secs is at most {MAX_WAIT_SECS} (SQS's long-poll limit)"
            ));
        }
        let sns = parse_sns_routes(&sqs.sns_routes).unwrap_or_else(|e| {
            problems.push(format!("--sns-routes: {e}"));
            Default::default()
        });
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Self {
            outbox,
            queues: sqs
                .queues
                .iter()
                .map(|q| q.trim().to_owned())
                .filter(|q| !q.is_empty())
                .collect(),
            routes: Routes {
                sns,
                user_attribute: sqs.user_attribute.clone(),
                event_attribute: sqs.event_attribute.clone(),
                default_event: sqs.default_event.clone(),
            },
            pollers: sqs.pollers,
            wait: Duration::from_secs(sqs.wait_secs),
            endpoint_url: sqs.endpoint_url.clone(),
            region: sqs.region.clone(),
            notify_url: notify_url.to_owned(),
            notify_token: None,
            notify_tls: ClientTls::default(),
        })
    }

    /// The binary's config.
    pub fn from_args(args: &IngestArgs) -> Result<Self, Vec<String>> {
        let outbox = args.outbox.database_url.as_deref().map(|url| {
            Ok(OutboxSource {
                database: Database::from_url(url)
                    .map_err(|e| format!("--outbox-database-url: {e}"))?,
                args: args.outbox.clone(),
                holder: args
                    .relay_id
                    .clone()
                    .unwrap_or_else(notify_relay::holder_name),
            })
        });
        let mut config = Self::checked(&args.sqs, outbox, &args.notify_url)?;
        config.notify_token = args.caller.token.clone();
        config.notify_tls = args.caller.tls();
        Ok(config)
    }

    /// What `/info` shows (the token only as set or not).
    pub fn info(&self) -> notify_ops::info::Info {
        notify_ops::info::Info::new("notify-ingest", env!("CARGO_PKG_VERSION"))
            .set("queues", &self.queues)
            .set("sns_routes", &self.routes.sns)
            .set("pollers_per_queue", self.pollers)
            .set("wait", self.wait)
            .set("endpoint_url", &self.endpoint_url)
            .set("region", &self.region)
            .set(
                "outbox_database",
                self.outbox.as_ref().map(|o| o.database.to_string()),
            )
            .set("outbox_group", self.outbox.as_ref().map(|o| &o.args.group))
            .set("outbox_holder", self.outbox.as_ref().map(|o| &o.holder))
            .set("notify_url", &self.notify_url)
            .secret("notify_token", self.notify_token.is_some())
    }
}
