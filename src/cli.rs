//! The `notify` CLI's commands that talk to any deployment over gRPC:
//! `publish`, `send`, `tail`, `history`, `subscribe`, `unsubscribe`, `presence`,
//! `disconnect`, and `migrate`
//! (straight to the database). Output is one JSON object per line; exit
//! codes: 0 ok, 1 the server refused (its status and message on stderr) or
//! could not be reached, 2 usage (clap's own).

use std::io::Read;

use clap::{ArgGroup, Args};
use notify_core::setting::Setting;
use notify_proto::{
    channel::{CallerArgs, CallerNames},
    json::PushJson,
    v1::{self as pb, notify_client::NotifyClient},
};
use serde_json::{Value, json};
use tonic::{Request, Status, transport::Channel};

/// Where the Notify API is and who is calling.
#[derive(Args, Clone)]
pub struct Endpoint {
    /// notify-svc's gRPC endpoint.
    #[arg(
        long,
        env = "NOTIFY_URL",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    pub url: String,
    /// The caller token and TLS files towards notify-svc.
    #[command(flatten)]
    pub caller: CallerArgs<CliCaller>,
}

/// `NOTIFY_TOKEN`, `NOTIFY_CA`, `NOTIFY_CERT`, `NOTIFY_KEY`: the CLI's
/// credential and TLS files towards notify-svc.
#[derive(Debug, Clone)]
pub struct CliCaller;
impl CallerNames for CliCaller {
    const TOKEN: Setting = Setting::new("token", "NOTIFY_TOKEN");
    const CA: Setting = Setting::new("ca-file", "NOTIFY_CA");
    const CERT: Setting = Setting::new("client-cert", "NOTIFY_CERT");
    const KEY: Setting = Setting::new("client-key", "NOTIFY_KEY");
}

/// Why a command failed: the server said no, it could not be asked, or the
/// command line itself was wrong in a way clap cannot see.
pub enum Failure {
    Refused(Status),
    Other(anyhow::Error),
    Usage(String),
}

impl From<Status> for Failure {
    fn from(s: Status) -> Self {
        Self::Refused(s)
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Self::Other(e)
    }
}

impl Failure {
    /// Prints the failure and gives the exit code.
    pub fn report(self) -> std::process::ExitCode {
        match self {
            Self::Refused(status) => {
                eprintln!("notify: {:?}: {}", status.code(), status.message());
            }
            Self::Other(e) => eprintln!("notify: {e:#}"),
            Self::Usage(why) => {
                eprintln!("notify: {why}");
                return std::process::ExitCode::from(2);
            }
        }
        std::process::ExitCode::from(1)
    }
}

struct Api {
    client: NotifyClient<Channel>,
    token: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl Api {
    async fn connect(endpoint: &Endpoint) -> Result<Self, Failure> {
        let channel = notify_proto::channel::endpoint(&endpoint.url, &endpoint.caller.tls())
            .map_err(|e| Failure::Usage(e.to_string()))?
            .connect_timeout(std::time::Duration::from_secs(5))
            .connect()
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach {}: {e}", endpoint.url))?;
        let token = match &endpoint.caller.token {
            Some(t) => Some(
                format!("Bearer {t}")
                    .parse()
                    .map_err(|_| anyhow::anyhow!("the token is not a valid header value"))?,
            ),
            None => None,
        };
        Ok(Self {
            client: NotifyClient::new(channel),
            token,
        })
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut req = Request::new(message);
        if let Some(token) = &self.token {
            req.metadata_mut().insert("authorization", token.clone());
        }
        req
    }
}

/// Exactly one of user / users / topic / broadcast.
#[derive(Args)]
#[command(group(ArgGroup::new("target").required(true).args(["user", "users", "topic", "broadcast"])))]
pub struct PublishArgs {
    /// One user's inbox.
    #[arg(long)]
    user: Option<String>,
    /// Several users' inboxes, comma separated.
    #[arg(long, value_delimiter = ',')]
    users: Option<Vec<String>>,
    /// A topic, `namespace:rest`.
    #[arg(long)]
    topic: Option<String>,
    /// Every live connection (not stored).
    #[arg(long)]
    broadcast: bool,
    /// Event name.
    #[arg(long, default_value = "message")]
    event: String,
    /// JSON data; `-` or absent: read from stdin.
    #[arg(long)]
    data: Option<String>,
    /// Idempotency key: a repeat returns the original and stores nothing.
    #[arg(long)]
    key: Option<String>,
    /// Inbox retention in seconds (0: the server's default).
    #[arg(long, default_value_t = 0)]
    ttl: u32,
    /// Push to the users' phones and browsers: never, offline (no live
    /// connection), or unacked (no ack within --push-after seconds).
    /// Absent: the event's configured default.
    #[arg(long, value_parser = ["never", "offline", "unacked"])]
    push: Option<String>,
    /// Seconds to wait for an ack before an `unacked` push (1..3600).
    #[arg(long, default_value_t = 0, requires = "push")]
    push_after: u32,
    /// The notification's title (absent: the event's template).
    #[arg(long, requires = "push")]
    title: Option<String>,
    /// The notification's text (absent: the event's template).
    #[arg(long, requires = "push")]
    body: Option<String>,
}

impl PublishArgs {
    /// The push options, shaped as the HTTP API's `push` (one mapping).
    fn push(&self) -> Result<Option<pb::PushOptions>, Failure> {
        let Some(when) = self.push.clone() else {
            return Ok(None);
        };
        let push = PushJson {
            when: Some(when),
            after_seconds: Some(self.push_after),
            title: self.title.clone(),
            body: self.body.clone(),
        };
        Ok(Some(
            push.into_options()
                .map_err(|e| anyhow::anyhow!("--push: {e}"))?,
        ))
    }
}

pub async fn publish(endpoint: &Endpoint, args: PublishArgs) -> Result<(), Failure> {
    use pb::publish_request::Target;
    let data = read_data(args.data.as_deref())?;
    let push = args.push()?;
    let target = match (args.user, args.users, args.topic) {
        (Some(u), ..) => Target::UserId(u),
        (_, Some(users), _) => Target::Users(pb::UserList { user_ids: users }),
        (.., Some(t)) => Target::Topic(t),
        _ => Target::Broadcast(args.broadcast),
    };
    let mut api = Api::connect(endpoint).await?;
    let req = api.request(pb::PublishRequest {
        target: Some(target),
        event: args.event,
        data,
        idempotency_key: args.key.unwrap_or_default(),
        ttl_seconds: args.ttl,
        push,
    });
    let r = api.client.publish(req).await?.into_inner();
    let inbox_seqs: serde_json::Map<String, Value> = r
        .inbox_seqs
        .iter()
        .map(|s| (s.user_id.clone(), json!(s.seq)))
        .collect();
    println!(
        "{}",
        json!({
            "message_id": r.message_id,
            "seq": r.seq,
            "duplicate": r.duplicate,
            "delivered": r.delivered,
            "inbox_seqs": inbox_seqs,
        })
    );
    Ok(())
}

/// `--data`, or stdin when it is `-` or absent.
fn read_data(data: Option<&str>) -> Result<String, Failure> {
    match data {
        Some("-") | None => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| anyhow::anyhow!("reading data from stdin: {e}"))?;
            Ok(text.trim_end().to_owned())
        }
        Some(data) => Ok(data.to_owned()),
    }
}

/// One live connection.
#[derive(Args)]
pub struct SendArgs {
    /// The connection (a routed action's `connection_id`, `notify presence`).
    #[arg(long)]
    connection: String,
    /// Event name.
    #[arg(long, default_value = "message")]
    event: String,
    /// JSON data; `-` or absent: read from stdin.
    #[arg(long)]
    data: Option<String>,
}

/// Sends to one live connection (not stored); prints its message id.
pub async fn send(endpoint: &Endpoint, args: SendArgs) -> Result<(), Failure> {
    let data = read_data(args.data.as_deref())?;
    let mut api = Api::connect(endpoint).await?;
    let req = api.request(pb::PublishRequest {
        target: Some(pb::publish_request::Target::ConnectionId(args.connection)),
        event: args.event,
        data,
        ..Default::default()
    });
    let r = api.client.publish(req).await?.into_inner();
    println!(
        "{}",
        json!({"message_id": r.message_id, "delivered": r.delivered})
    );
    Ok(())
}

/// A user's inbox or a topic's log.
#[derive(Args)]
#[command(group(ArgGroup::new("feed").required(true).args(["user", "topic"])))]
pub struct FeedArgs {
    /// A user's inbox.
    #[arg(long)]
    user: Option<String>,
    /// A topic's log.
    #[arg(long)]
    topic: Option<String>,
    /// Only messages after this seq.
    #[arg(long, default_value_t = 0)]
    since: u64,
}

fn message_json(m: &pb::StoredMessage) -> Value {
    let data: Value = serde_json::from_str(&m.data).unwrap_or(Value::String(m.data.clone()));
    json!({
        "id": m.message_id,
        "seq": m.seq,
        "user_id": (!m.user_id.is_empty()).then_some(&m.user_id),
        "topic": (!m.topic.is_empty()).then_some(&m.topic),
        "event": m.event,
        "data": data,
        "ts": m.ts_ms,
    })
}

/// Prints every stored message after `--since`, page by page.
pub async fn history(endpoint: &Endpoint, args: FeedArgs) -> Result<(), Failure> {
    use pb::history_request::Target;
    let target = match (args.user, args.topic) {
        (Some(u), _) => Target::UserId(u),
        (_, Some(t)) => Target::Topic(t),
        _ => unreachable!("clap requires one"),
    };
    let mut api = Api::connect(endpoint).await?;
    let mut since = args.since;
    loop {
        let req = api.request(pb::HistoryRequest {
            target: Some(target.clone()),
            since,
            limit: 1000,
            after_acked: false,
        });
        let page = api.client.history(req).await?.into_inner();
        for m in &page.messages {
            println!("{}", message_json(m));
        }
        if !page.has_more {
            return Ok(());
        }
        since = page.next_since;
    }
}

/// A user, a topic or the broadcast channel, followed live.
#[derive(Args)]
#[command(group(ArgGroup::new("watched").required(true).args(["user", "topic", "broadcast"])))]
pub struct TailArgs {
    /// A user's inbox.
    #[arg(long)]
    user: Option<String>,
    /// A topic.
    #[arg(long)]
    topic: Option<String>,
    /// Broadcasts (live only).
    #[arg(long)]
    broadcast: bool,
    /// Replay stored messages after this seq first (user or topic).
    #[arg(long, default_value_t = 0)]
    since: u64,
}

/// Prints each message as it is committed, until the stream ends or Ctrl-C.
pub async fn tail(endpoint: &Endpoint, args: TailArgs) -> Result<(), Failure> {
    use pb::watch_request::Target;
    let target = match (args.user, args.topic) {
        (Some(u), _) => Target::UserId(u),
        (_, Some(t)) => Target::Topic(t),
        _ => Target::Broadcast(args.broadcast),
    };
    let mut api = Api::connect(endpoint).await?;
    let req = api.request(pb::WatchRequest {
        target: Some(target),
        since: args.since,
    });
    let mut stream = api.client.watch(req).await?.into_inner();
    loop {
        let next = tokio::select! {
            next = stream.message() => next?,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let Some(m) = next else { return Ok(()) };
        println!("{}", message_json(&m));
    }
}

/// Where to start following the lifecycle log.
#[derive(Args)]
pub struct ConnectionsArgs {
    /// Events after this position (0: from the oldest kept).
    #[arg(long, default_value_t = 0, conflicts_with = "from_now")]
    after: u64,
    /// Only events recorded from now on.
    #[arg(long)]
    from_now: bool,
}

/// Prints each lifecycle event as it is recorded, until the stream ends or Ctrl-C.
pub async fn connections(endpoint: &Endpoint, args: ConnectionsArgs) -> Result<(), Failure> {
    let mut api = Api::connect(endpoint).await?;
    let req = api.request(pb::WatchConnectionsRequest {
        after: args.after,
        from_now: args.from_now,
    });
    let mut stream = api.client.watch_connections(req).await?.into_inner();
    loop {
        let next = tokio::select! {
            next = stream.message() => next?,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let Some(batch) = next else { return Ok(()) };
        if batch.missed {
            eprintln!(
                "events after --after {} are gone (retention): starting at the oldest kept",
                args.after
            );
        }
        for e in batch.events {
            println!("{}", connection_event_json(&e));
        }
    }
}

fn connection_event_json(e: &pb::ConnectionEvent) -> Value {
    let kind = pb::connection_event::Kind::try_from(e.kind).map_or("unknown", |k| match k {
        pb::connection_event::Kind::Connected => "connected",
        pb::connection_event::Kind::Disconnected => "disconnected",
        pb::connection_event::Kind::Subscribed => "subscribed",
        pb::connection_event::Kind::Unsubscribed => "unsubscribed",
        pb::connection_event::Kind::Unspecified => "unknown",
    });
    let disconnected = e.kind == pb::connection_event::Kind::Disconnected as i32;
    json!({
        "position": e.position,
        "kind": kind,
        "connection_id": e.connection_id,
        "user_id": e.user_id,
        "bridge_id": e.bridge_id,
        "topic": (!e.topic.is_empty()).then_some(&e.topic),
        "close_code": disconnected.then_some(e.close_code),
        "reason": disconnected.then_some(&e.reason),
        "at": e.at_ms,
    })
}

/// A user's live connections, or a topic's subscribers.
#[derive(Args)]
#[command(group(ArgGroup::new("whose").required(true).args(["user", "topic"])))]
pub struct PresenceArgs {
    #[arg(long)]
    user: Option<String>,
    #[arg(long)]
    topic: Option<String>,
}

pub async fn presence(endpoint: &Endpoint, args: PresenceArgs) -> Result<(), Failure> {
    use pb::get_presence_request::Target;
    let target = match (args.user, args.topic) {
        (Some(u), _) => Target::UserId(u),
        (_, Some(t)) => Target::Topic(t),
        _ => unreachable!("clap requires one"),
    };
    let mut api = Api::connect(endpoint).await?;
    let req = api.request(pb::GetPresenceRequest {
        target: Some(target),
    });
    let r = api.client.get_presence(req).await?.into_inner();
    let connections: Vec<Value> = r
        .connections
        .iter()
        .map(|c| {
            json!({
                "connection_id": c.connection_id,
                "user_id": c.user_id,
                "bridge_id": c.bridge_id,
                "connected_at": c.connected_at_ms,
            })
        })
        .collect();
    println!(
        "{}",
        json!({
            "connections": connections,
            "subscribers": r.subscribers,
            "live_connections": r.live_connections,
        })
    );
    Ok(())
}

/// A server-side subscription of a user to a topic.
#[derive(Args)]
pub struct SubscriptionArgs {
    #[arg(long)]
    user: String,
    #[arg(long)]
    topic: String,
}

/// `subscribe` (true) or `unsubscribe` (false).
pub async fn subscription(
    endpoint: &Endpoint,
    args: SubscriptionArgs,
    subscribe: bool,
) -> Result<(), Failure> {
    let mut api = Api::connect(endpoint).await?;
    let (user_id, topic) = (args.user, args.topic);
    let answer = if subscribe {
        let req = api.request(pb::SubscribeRequest { user_id, topic });
        let r = api.client.subscribe(req).await?.into_inner();
        json!({"created": r.created, "topic_seq": r.topic_seq, "live_connections": r.live_connections})
    } else {
        let req = api.request(pb::UnsubscribeRequest { user_id, topic });
        let r = api.client.unsubscribe(req).await?.into_inner();
        json!({"removed": r.removed, "live_connections": r.live_connections})
    };
    println!("{answer}");
    Ok(())
}

/// A user's sockets, or one connection, closed with 4003.
#[derive(Args)]
#[command(group(ArgGroup::new("who").required(true).args(["user", "connection"])))]
pub struct DisconnectArgs {
    #[arg(long)]
    user: Option<String>,
    #[arg(long)]
    connection: Option<String>,
    /// Sent to the client in the close frame.
    #[arg(long, default_value = "disconnected by an operator")]
    reason: String,
}

pub async fn disconnect(endpoint: &Endpoint, args: DisconnectArgs) -> Result<(), Failure> {
    use pb::disconnect_request::Target;
    let target = match (args.user, args.connection) {
        (Some(u), _) => Target::UserId(u),
        (_, Some(c)) => Target::ConnectionId(c),
        _ => unreachable!("clap requires one"),
    };
    let mut api = Api::connect(endpoint).await?;
    let req = api.request(pb::DisconnectRequest {
        target: Some(target),
        reason: args.reason,
    });
    let r = api.client.disconnect(req).await?.into_inner();
    println!("{}", json!({"disconnected": r.disconnected}));
    Ok(())
}

/// Applies the migrations to `DATABASE_URL` (the same runner notify-svc
/// uses at start-up; racing runners apply each once).
pub async fn migrate(database_url: &str) -> Result<(), Failure> {
    let database = notify_store::Database::from_url(database_url)
        .map_err(|e| Failure::Usage(e.to_string()))?;
    let known = match database {
        notify_store::Database::Postgres(_) => notify_store::migrate::POSTGRES.len(),
        notify_store::Database::Sqlite(_) => notify_store::migrate::SQLITE.len(),
    };
    let applied = database
        .store()
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .migrate()
        .await
        .map_err(|e| anyhow::anyhow!("migrating: {e}"))?;
    println!("{}", json!({"applied": applied, "known": known}));
    Ok(())
}
