//! notify-svc configuration: flags mirror the `NOTIFY_*` environment names of
//! docs/design.md §9. Every error is reported before anything binds.

use std::{fmt, net::SocketAddr, path::PathBuf, time::Duration};

use notify_auth::{CognitoArgs, VerifierArgs, VerifierNames};
use notify_core::{Limits, TopicPolicy, setting::Setting};
use notify_ops::{
    logging::{LogArgs, LogNames},
    tls::{ServerTlsArgs, ServerTlsNames},
};

use crate::{
    caller::CallerTokens,
    delivery::{bounded, pipeline::PipelineConfig, router},
};
use notify_store::Database;

/// Command-line and environment configuration of notify-svc.
#[derive(Clone, clap::Args)]
pub struct SvcArgs {
    /// gRPC listen address.
    #[arg(long, env = "NOTIFY_GRPC_ADDR", default_value = "127.0.0.1:50051")]
    pub grpc_addr: SocketAddr,

    /// Ops HTTP listen address (/healthz, /readyz, /metrics).
    #[arg(long, env = "NOTIFY_HTTP_ADDR", default_value = "127.0.0.1:9464")]
    pub http_addr: SocketAddr,

    /// Database URL: postgres://notify:secret@db:5432/notify, or
    /// sqlite:PATH[?synchronous=full|normal] for a single node.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Static caller tokens, `name[:right+right][@namespace|namespace]=token,…`
    /// (rights: publish, admin, bridge; default publish). With neither these
    /// nor a JWKS, notify-svc starts only with --dev.
    #[arg(
        long,
        env = "NOTIFY_API_TOKENS",
        default_value = "",
        hide_env_values = true
    )]
    pub api_tokens: String,

    /// Development: with no credentials configured, accept unauthenticated
    /// callers from loopback with every right, and listen on loopback only.
    /// Without it, notify-svc refuses to start with no credentials.
    #[arg(long, env = "NOTIFY_DEV", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    pub dev: bool,

    /// Postgres connections in the pool.
    #[arg(long, env = "NOTIFY_DB_POOL_SIZE", default_value_t = 16)]
    pub db_pool_size: usize,

    /// Group commit: gather concurrent publishes into one transaction. Off means
    /// one transaction per publish (for comparison only).
    #[arg(long, env = "NOTIFY_GROUP_COMMIT", default_value_t = true, action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub group_commit: bool,

    /// Most rows in one group commit: one per recipient inbox (a topic
    /// message or a broadcast is one). A larger publish commits alone.
    #[arg(long, env = "NOTIFY_BATCH_MAX", default_value_t = 1000)]
    pub batch_max: usize,

    /// How long a batch waits for more publishes once a committer is free, in µs.
    // 0: batches fill by themselves while committers are busy; 1 ms showed no
    // gain at C=64 or C=256 (docs/benchmarks.md) and costs latency when idle.
    #[arg(long, env = "NOTIFY_BATCH_LINGER_US", default_value_t = 0)]
    pub batch_linger_us: u64,

    /// Group commits in flight at once.
    // 2: on 2 cores, 1 and 2 gave the same throughput (2 with a lower p99) and
    // 4 lost a fifth to CPU contention (docs/benchmarks.md).
    #[arg(long, env = "NOTIFY_COMMITTERS", default_value_t = 2)]
    pub committers: usize,

    /// Bytes queued for one bridge before live copies to it are dropped
    /// (its clients then catch up from the store).
    // 64 MiB: the 65,536 messages the queue also allows at 1 KB each; a
    // count alone let one stalled bridge pin 65,536 × 64 KiB = 4 GiB.
    #[arg(long, env = "NOTIFY_BRIDGE_QUEUE_BYTES", default_value_t = 64 << 20)]
    pub bridge_queue_bytes: usize,

    /// Watch streams one caller may hold open at once.
    // 16: a dashboard or a test harness watches a handful of feeds; each
    // stream holds up to WATCH_STREAM_BYTES and a task.
    #[arg(long, env = "NOTIFY_MAX_WATCHES_PER_CALLER", default_value_t = 16)]
    pub max_watches_per_caller: usize,

    /// How long no replica may hear a bridge before its connections are
    /// taken for closed (a disconnected event each, `bridge_lost`), in seconds.
    // 15 s: a killed bridge's sockets reconnect elsewhere within seconds; a
    // link blip (a replica restart) heals well within it.
    #[arg(long, env = "NOTIFY_BRIDGE_EXPIRY_SECS", default_value_t = 15)]
    pub bridge_expiry_secs: u64,

    /// How long connection lifecycle events are kept for WatchConnections
    /// to resume from, in seconds.
    #[arg(long, env = "NOTIFY_LIFECYCLE_RETENTION_SECS", default_value_t = 24 * 3600)]
    pub lifecycle_retention_secs: u64,

    /// Largest `data` accepted, in bytes.
    #[arg(long, env = "NOTIFY_MAX_DATA_BYTES", default_value_t = 64 * 1024)]
    pub max_data_bytes: usize,

    /// Keep each inbox message's read state and the users' unseen/unread
    /// counts, pushed to their sockets. Off: new inbox messages are stored
    /// already read and no counts are pushed; turning it back on counts
    /// messages from then on (no recount needed).
    #[arg(long, env = "NOTIFY_INBOX_COUNTS", default_value_t = true, action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub inbox_counts: bool,

    /// Push defaults per event type: a JSON file mapping event names to
    /// `{"when": "never"|"offline"|"unacked", "after_seconds": N, "title":
    /// "…{field}…", "body": "…"}` (docs/design.md §4.8).
    #[arg(long, env = "NOTIFY_PUSH_EVENTS")]
    pub push_events: Option<std::path::PathBuf>,

    /// The VAPID private key (PKCS#8 PEM, P-256) Web Push is signed with;
    /// unset: no Web Push.
    #[arg(long, env = "NOTIFY_VAPID_KEY_FILE")]
    pub vapid_key_file: Option<std::path::PathBuf>,

    /// The VAPID private key itself (PEM), e.g. from a container secret;
    /// instead of the file.
    #[arg(
        long,
        env = "NOTIFY_VAPID_PRIVATE_KEY",
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    pub vapid_private_key: Option<String>,

    /// The contact push services may reach (RFC 8292 `sub`).
    #[arg(
        long,
        env = "NOTIFY_VAPID_SUBJECT",
        default_value = "mailto:notify@localhost"
    )]
    pub vapid_subject: String,

    /// The FCM service account JSON file (project_id, client_email,
    /// private_key, token_uri); unset: no FCM.
    #[arg(long, env = "NOTIFY_FCM_SERVICE_ACCOUNT_FILE")]
    pub fcm_service_account_file: Option<std::path::PathBuf>,

    /// The FCM service account JSON itself, instead of the file.
    #[arg(long, env = "NOTIFY_FCM_SERVICE_ACCOUNT_JSON", hide_env_values = true)]
    pub fcm_service_account_json: Option<String>,

    /// Where FCM is (default https://fcm.googleapis.com).
    #[arg(long, env = "NOTIFY_FCM_ENDPOINT")]
    pub fcm_endpoint: Option<String>,

    /// The APNs auth key (.p8, PKCS#8 PEM); unset: no APNs.
    #[arg(long, env = "NOTIFY_APNS_KEY_FILE")]
    pub apns_key_file: Option<std::path::PathBuf>,

    /// The APNs key itself (PEM), instead of the file.
    #[arg(
        long,
        env = "NOTIFY_APNS_KEY",
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    pub apns_key: Option<String>,

    /// The APNs key's id (the `kid` of provider tokens).
    #[arg(long, env = "NOTIFY_APNS_KEY_ID", default_value = "")]
    pub apns_key_id: String,

    /// The Apple developer team id (the `iss` of provider tokens).
    #[arg(long, env = "NOTIFY_APNS_TEAM_ID", default_value = "")]
    pub apns_team_id: String,

    /// Where APNs is, for every device (default: api.push.apple.com, or
    /// api.sandbox.push.apple.com for sandbox devices).
    #[arg(long, env = "NOTIFY_APNS_ENDPOINT")]
    pub apns_endpoint: Option<String>,

    /// How long a push sender holds the pushes it claimed; a crashed
    /// sender's claims are taken over after this, in seconds.
    #[arg(long, env = "NOTIFY_PUSH_LEASE_SECS", default_value_t = 60)]
    pub push_lease_secs: u64,

    /// One more CA (PEM) to trust for push providers, beside the system's
    /// (a private push service; the tests' provider stand-ins).
    #[arg(long, env = "NOTIFY_PUSH_CA_FILE")]
    pub push_ca_file: Option<std::path::PathBuf>,

    /// How long an idempotency key is remembered, in seconds.
    #[arg(long, env = "NOTIFY_IDEMPOTENCY_WINDOW_SECS", default_value_t = 24 * 3600)]
    pub idempotency_window_secs: u64,

    /// Limit for one database call or one group commit, in milliseconds.
    #[arg(long, env = "NOTIFY_DB_TIMEOUT_MS", default_value_t = 10_000)]
    pub db_timeout_ms: u64,

    /// Cognito M2M access tokens (client credentials) that may call the API;
    /// their scopes give rights: notify/publish, notify/admin, notify/bridge.
    /// Static tokens keep working beside them.
    #[command(
        flatten,
        next_help_heading = "M2M callers' tokens (scopes give rights)"
    )]
    pub auth: VerifierArgs<M2mCallers>,

    /// Users' tokens the bridges relay for the Dev Panel: a panel publish is
    /// made as the signed-in admin, checked here (member of `admin`). Unset:
    /// panel publishes are refused.
    #[command(
        flatten,
        next_help_heading = "Dev Panel admins' tokens (relayed by bridges)"
    )]
    pub users: VerifierArgs<PanelAdmins>,

    /// The Cognito user pool resolving `username:` publish targets.
    #[command(flatten, next_help_heading = "Cognito (username: targets)")]
    pub cognito: CognitoArgs,

    /// Serve gRPC over TLS (reloaded on SIGHUP or when the files change).
    #[command(flatten, next_help_heading = "gRPC TLS")]
    pub tls: ServerTlsArgs<SvcTls>,

    /// CA (PEM) that signs callers' client certificates: mutual TLS.
    #[arg(
        long,
        env = "NOTIFY_TLS_CLIENT_CA",
        value_name = "PEM",
        help_heading = "gRPC TLS"
    )]
    pub tls_client_ca: Option<PathBuf>,

    /// `required` (default with a client CA: no certificate, no handshake)
    /// or `optional` (a certificate is checked if shown).
    #[arg(
        long,
        env = "NOTIFY_TLS_CLIENT_AUTH",
        value_name = "MODE",
        help_heading = "gRPC TLS"
    )]
    pub tls_client_auth: Option<String>,

    #[command(flatten, next_help_heading = "Logs and traces")]
    pub log: LogArgs<SvcLog>,
}

impl fmt::Debug for SvcArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SvcArgs")
            .field("grpc_addr", &self.grpc_addr)
            .field("http_addr", &self.http_addr)
            .field(
                "database_url",
                &self
                    .database_url
                    .as_deref()
                    .map(notify_store::postgres::redact_url),
            )
            .field("api_tokens", &"***")
            .field("tls_cert", &self.tls.cert)
            .field("tls_client_ca", &self.tls_client_ca)
            .field("group_commit", &self.group_commit)
            .field("inbox_counts", &self.inbox_counts)
            .field("batch_max", &self.batch_max)
            .field("batch_linger_us", &self.batch_linger_us)
            .field("committers", &self.committers)
            .finish_non_exhaustive()
    }
}

/// `NOTIFY_AUTH_*`: M2M callers' access tokens.
#[derive(Debug, Clone)]
pub struct M2mCallers;
impl VerifierNames for M2mCallers {
    const JWKS_URL: Setting = Setting::new("auth-jwks-url", "NOTIFY_AUTH_JWKS_URL");
    const JWKS_CA: Setting = Setting::new("auth-jwks-ca", "NOTIFY_AUTH_JWKS_CA");
    const ISSUER: Setting = Setting::new("auth-issuer", "NOTIFY_AUTH_ISSUER");
    const CLIENT_IDS: Setting = Setting::new("auth-client-ids", "NOTIFY_AUTH_CLIENT_IDS");
}

/// `NOTIFY_USERS_*`: users' tokens relayed for the Dev Panel.
#[derive(Debug, Clone)]
pub struct PanelAdmins;
impl VerifierNames for PanelAdmins {
    const JWKS_URL: Setting = Setting::new("users-jwks-url", "NOTIFY_USERS_JWKS_URL");
    const JWKS_CA: Setting = Setting::new("users-jwks-ca", "NOTIFY_USERS_JWKS_CA");
    const ISSUER: Setting = Setting::new("users-issuer", "NOTIFY_USERS_ISSUER");
    const CLIENT_IDS: Setting = Setting::new("users-client-ids", "NOTIFY_USERS_CLIENT_IDS");
}

/// `NOTIFY_TLS_*`: the gRPC listener's certificate.
#[derive(Debug, Clone)]
pub struct SvcTls;
impl ServerTlsNames for SvcTls {
    const CERT: Setting = Setting::new("tls-cert", "NOTIFY_TLS_CERT");
    const KEY: Setting = Setting::new("tls-key", "NOTIFY_TLS_KEY");
    const WATCH_SECS: Setting = Setting::new("tls-watch-secs", "NOTIFY_TLS_WATCH_SECS");
}

/// `NOTIFY_LOG_FORMAT`.
#[derive(Debug, Clone)]
pub struct SvcLog;
impl LogNames for SvcLog {
    const FORMAT: Setting = Setting::new("log-format", "NOTIFY_LOG_FORMAT");
}

/// The validated configuration `run` needs.
#[derive(Clone)]
pub struct Config {
    /// The backend and its settings (pool size, timeouts, key window).
    pub database: Database,
    pub tokens: CallerTokens,
    /// Verifies M2M access tokens (NOTIFY_AUTH_*), if configured.
    pub verifier: Option<notify_auth::Verifier>,
    /// Verifies users' tokens relayed by bridges for the Dev Panel
    /// (NOTIFY_USERS_*), if configured.
    pub users: Option<notify_auth::Verifier>,
    /// The user pool resolving `username:` targets, if configured.
    pub cognito: Option<notify_auth::CognitoConfig>,
    pub pipeline: PipelineConfig,
    pub limits: Limits,
    /// Configured topic namespaces (docs/design.md §5 defaults).
    pub topics: TopicPolicy,
    /// gRPC over TLS (None: plaintext).
    pub tls: Option<notify_ops::tls::TlsFiles>,
    /// Each bridge's down stream.
    pub bridge_queue: bounded::Bound,
    /// Watch streams one caller may hold open at once.
    pub max_watches_per_caller: usize,
    /// A bridge no replica heard for this long is lost.
    pub bridge_expiry: Duration,
    /// How long lifecycle events are kept.
    pub lifecycle_retention: Duration,
    /// Push: the per-event defaults and the senders' settings.
    pub push: PushSettings,
}

/// What push needs: defaults per event, the VAPID key and contact, an
/// extra CA for providers.
#[derive(Debug, Clone)]
pub struct PushSettings {
    pub policy: notify_core::push::PushPolicy,
    /// The VAPID key (file or inline); None: no Web Push.
    pub vapid_key: Option<notify_push::secret::Secret>,
    pub vapid_subject: String,
    pub ca_file: Option<std::path::PathBuf>,
    /// The FCM service account; None: no FCM.
    pub fcm_service_account: Option<notify_push::secret::Secret>,
    pub fcm_endpoint: Option<String>,
    /// The APNs `.p8` key; None: no APNs.
    pub apns_key: Option<notify_push::secret::Secret>,
    pub apns_key_id: String,
    pub apns_team_id: String,
    pub apns_endpoint: Option<String>,
    pub lease: Duration,
}

impl Config {
    /// What `/info` shows: the effective settings; tokens by caller name
    /// only, the database URL without its password.
    pub fn info(&self) -> notify_ops::info::Info {
        let cognito = self.cognito.as_ref().map(|c| {
            (
                c.region.clone(),
                c.user_pool_id.clone(),
                c.endpoint_url.clone(),
            )
        });
        notify_ops::info::Info::new("notify-svc", env!("CARGO_PKG_VERSION"))
            .set("database", &self.database)
            .set("api_token_callers", self.tokens.names())
            .set("auth", self.verifier.as_ref().map(|v| v.config()))
            .set("users_auth", self.users.as_ref().map(|v| v.config()))
            .set("cognito_region_pool_endpoint", cognito)
            .set("pipeline", &self.pipeline)
            .set("limits", &self.limits)
            .set("topics", &self.topics)
            .set("tls", &self.tls)
            .set("bridge_queue", self.bridge_queue)
            .set("max_watches_per_caller", self.max_watches_per_caller)
            .set("bridge_expiry", self.bridge_expiry)
            .set("lifecycle_retention", self.lifecycle_retention)
            // Where the key is, never the key.
            .set("vapid_key", &self.push.vapid_key)
            .set("vapid_subject", &self.push.vapid_subject)
            .set("push_ca_file", &self.push.ca_file)
            .set("fcm_service_account", &self.push.fcm_service_account)
            .set("fcm_endpoint", &self.push.fcm_endpoint)
            .set("apns_key", &self.push.apns_key)
            .set("apns_key_id", &self.push.apns_key_id)
            .set("apns_team_id", &self.push.apns_team_id)
            .set("apns_endpoint", &self.push.apns_endpoint)
            .set("push_lease", self.push.lease)
            .set("push_events", self.push.policy.events())
    }

    /// Every default on `database_url` (and `NOTIFY_*` from the environment),
    /// in dev mode: for a notify-svc run in-process, as tests and `notify up`
    /// do (loopback callers; credentials from the environment still apply).
    pub fn for_database(database_url: &str) -> Result<Self, Vec<String>> {
        #[derive(clap::Parser)]
        struct Defaults {
            #[command(flatten)]
            svc: SvcArgs,
        }
        let defaults = <Defaults as clap::Parser>::try_parse_from([
            "notify-svc",
            "--dev",
            "--database-url",
            database_url,
        ])
        .map_err(|e| vec![e.to_string()])?;
        Self::from_args(&defaults.svc)
    }

    /// Checks everything at once and reports every problem together.
    // Long (~110 lines): one check per setting, in SvcArgs' order, each
    // adding to `problems` instead of returning, which is the point.
    pub fn from_args(args: &SvcArgs) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        let tokens = CallerTokens::parse(&args.api_tokens).unwrap_or_else(|e| {
            problems.push(e);
            CallerTokens::default()
        });
        let verifier = args.auth.verifier().unwrap_or_else(|e| {
            problems.push(e);
            None
        });
        // The panel's users often share the M2M pool's private CA.
        let users_ca = args.users.jwks_ca.clone().or(args.auth.jwks_ca.clone());
        let users = args.users.verifier_with_ca(users_ca).unwrap_or_else(|e| {
            problems.push(e);
            None
        });
        if tokens.is_empty() && verifier.is_none() {
            if !args.dev {
                problems.push(
                    "no caller credentials: set NOTIFY_API_TOKENS or NOTIFY_AUTH_JWKS_URL/ISSUER/CLIENT_IDS, \
                     or pass --dev (NOTIFY_DEV=1) to accept unauthenticated loopback callers"
                        .into(),
                );
            } else if !args.grpc_addr.ip().is_loopback() {
                problems.push(format!(
                    "--dev without credentials listens on loopback only, not {}: configure NOTIFY_API_TOKENS or a JWKS to serve other hosts",
                    args.grpc_addr
                ));
            }
        }
        let cognito = args.cognito.config().unwrap_or_else(|e| {
            problems.push(e);
            None
        });
        let tls = notify_ops::tls::ClientAuth::from_settings(
            args.tls_client_ca.clone(),
            args.tls_client_auth.as_deref(),
        )
        .and_then(|auth| args.tls.files(auth))
        .unwrap_or_else(|e| {
            problems.push(format!("NOTIFY_TLS_*: {e}"));
            None
        });
        let database_url = args.database_url.clone().unwrap_or_default();
        let database = if database_url.is_empty() {
            problems.push(
                "DATABASE_URL (or --database-url) is required: postgres://… or sqlite:PATH".into(),
            );
            None
        } else {
            Database::from_url(&database_url)
                .map_err(|e| problems.push(e.to_string()))
                .ok()
        };
        if args.db_pool_size == 0 {
            problems.push("--db-pool-size must be at least 1".into());
        }
        if args.committers == 0 || args.committers > args.db_pool_size {
            problems.push(format!(
                "--committers must be between 1 and --db-pool-size ({})",
                args.db_pool_size
            ));
        }
        if args.batch_max == 0 {
            problems.push("--batch-max must be at least 1".into());
        }
        if args.bridge_expiry_secs == 0 {
            // 0 would take every bridge for lost between two heartbeats.
            problems.push("--bridge-expiry-secs must be at least 1".into());
        }
        let policy = match &args.push_events {
            None => notify_core::push::PushPolicy::default(),
            Some(path) => std::fs::read_to_string(path)
                .map_err(|e| e.to_string())
                .and_then(|text| notify_core::push::PushPolicy::from_json(&text))
                .unwrap_or_else(|e| {
                    problems.push(format!("--push-events {}: {e}", path.display()));
                    Default::default()
                }),
        };
        use notify_push::secret::Secret;
        let mut secret =
            |file: &Option<std::path::PathBuf>, inline: &Option<String>, what: &str| {
                Secret::either(file.clone(), inline.clone(), what).unwrap_or_else(|e| {
                    problems.push(e);
                    None
                })
            };
        let vapid_key = secret(
            &args.vapid_key_file,
            &args.vapid_private_key,
            "NOTIFY_VAPID_KEY_FILE / NOTIFY_VAPID_PRIVATE_KEY",
        );
        let fcm_service_account = secret(
            &args.fcm_service_account_file,
            &args.fcm_service_account_json,
            "NOTIFY_FCM_SERVICE_ACCOUNT_FILE / _JSON",
        );
        let apns_key = secret(
            &args.apns_key_file,
            &args.apns_key,
            "NOTIFY_APNS_KEY_FILE / NOTIFY_APNS_KEY",
        );
        let Some(mut database) = database.filter(|_| problems.is_empty()) else {
            return Err(problems);
        };
        let idempotency_window = Duration::from_secs(args.idempotency_window_secs);
        match &mut database {
            Database::Postgres(pg) => {
                pg.pool_size = args.db_pool_size;
                pg.query_timeout = Duration::from_millis(args.db_timeout_ms);
                pg.idempotency_window = idempotency_window;
                pg.inbox_counts = args.inbox_counts;
            }
            Database::Sqlite(lite) => {
                lite.idempotency_window = idempotency_window;
                lite.inbox_counts = args.inbox_counts;
            }
        }
        let (max_batch, linger) = if args.group_commit {
            (args.batch_max, Duration::from_micros(args.batch_linger_us))
        } else {
            (1, Duration::ZERO)
        };
        Ok(Self {
            database,
            tokens,
            verifier,
            users,
            cognito,
            pipeline: PipelineConfig {
                max_batch,
                linger,
                committers: if args.group_commit {
                    args.committers
                } else {
                    args.db_pool_size
                },
                // Enough for every caller of a busy fleet to have a few in
                // flight; beyond it callers get RESOURCE_EXHAUSTED, not a hang.
                queue: 16_384,
            },
            limits: Limits {
                max_data_bytes: args.max_data_bytes,
                ..Limits::default()
            },
            topics: TopicPolicy::default(),
            tls,
            bridge_queue: bounded::Bound {
                messages: router::BRIDGE_QUEUE,
                bytes: args.bridge_queue_bytes,
            },
            max_watches_per_caller: args.max_watches_per_caller,
            bridge_expiry: Duration::from_secs(args.bridge_expiry_secs),
            lifecycle_retention: Duration::from_secs(args.lifecycle_retention_secs),
            push: PushSettings {
                policy,
                vapid_key,
                vapid_subject: args.vapid_subject.clone(),
                ca_file: args.push_ca_file.clone(),
                fcm_service_account,
                fcm_endpoint: args.fcm_endpoint.clone(),
                apns_key,
                apns_key_id: args.apns_key_id.clone(),
                apns_team_id: args.apns_team_id.clone(),
                apns_endpoint: args.apns_endpoint.clone(),
                lease: Duration::from_secs(args.push_lease_secs.max(1)),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(flags: &[&str]) -> Result<Config, Vec<String>> {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            svc: SvcArgs,
        }
        let mut argv = vec!["notify-svc", "--dev", "--database-url", "sqlite:x.db"];
        argv.extend_from_slice(flags);
        Config::from_args(&<Cli as clap::Parser>::try_parse_from(argv).unwrap().svc)
    }

    #[test]
    fn a_push_key_comes_from_a_file_or_inline_never_both_and_is_never_shown() {
        let Err(both) = parse(&[
            "--apns-key-file",
            "/run/secrets/apns.p8",
            "--apns-key",
            "-----BEGIN PRIVATE KEY-----secret",
        ]) else {
            panic!("a file and an inline key were both taken");
        };
        assert!(both.iter().any(|p| p.contains("not both")), "{both:?}");
        let inline = parse(&["--vapid-private-key", "-----BEGIN PRIVATE KEY-----secret"]).unwrap();
        let info = format!("{:?}", inline.info());
        assert!(info.contains("inline (set, not shown)"), "{info}");
        assert!(!info.contains("secret"), "{info}");
        let file = parse(&["--fcm-service-account-file", "/run/secrets/fcm.json"]).unwrap();
        assert!(format!("{:?}", file.info()).contains("/run/secrets/fcm.json"));
    }

    #[test]
    fn m2m_tokens_need_the_jwks_the_issuer_and_the_clients() {
        assert!(parse(&[]).ok().unwrap().verifier.is_none());
        let half = parse(&["--auth-jwks-url", "file:/etc/notify/jwks.json"])
            .err()
            .unwrap();
        assert!(half[0].contains("NOTIFY_AUTH_ISSUER"), "{half:?}");
        let bad = parse(&[
            "--auth-jwks-url",
            "ftp://nope",
            "--auth-issuer",
            "https://issuer",
            "--auth-client-ids",
            "a",
        ])
        .err()
        .unwrap();
        assert!(bad[0].contains("NOTIFY_AUTH_JWKS_URL"), "{bad:?}");
        let whole = parse(&[
            "--auth-jwks-url",
            "file:/etc/notify/jwks.json",
            "--auth-issuer",
            "https://issuer",
            "--auth-client-ids",
            "a,b",
        ])
        .ok()
        .unwrap();
        assert!(whole.verifier.is_some());
    }
}
