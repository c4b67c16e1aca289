//! Client actions routed to backend services (`notify.v1.Upstream`), as API
//! Gateway's routes were: a frame whose `action` is not built in goes to the
//! backend configured for that action (or the `$default` route) with the
//! caller's verified identity; the backend's answer is the client's `reply`
//! frame. Built-in actions are never routed (a route may not take one's
//! name). Calls are bounded per connection and per route, and timed out: a
//! slow or absent backend gets the client a retryable `unavailable`, never a
//! hang.

use std::{collections::HashMap, sync::Arc, time::Duration};

use notify_proto::{
    channel::ClientTls,
    v1::{self as pb, upstream_client::UpstreamClient},
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::{Code, transport::Channel};

use crate::{
    link::Credential,
    protocol::{self, ErrorCode, FrameId, ServerFrame},
};

/// The catch-all route's name (API Gateway's).
pub const DEFAULT_ROUTE: &str = "$default";
/// How long a backend has to connect before the call counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How routed calls are made. The default has no routes (every unknown
/// action is `unknown_action`; the bounds then never apply).
#[derive(Debug, Clone, Default)]
pub struct UpstreamConfig {
    /// `action` (or `$default`) → the backend's gRPC URL.
    pub routes: Vec<(String, String)>,
    /// Longest wait for one answer.
    pub timeout: Duration,
    /// Calls one connection may have in flight.
    pub per_connection: usize,
    /// Calls one route may have in flight across the bridge.
    pub per_route: usize,
    /// The bridge's credential towards backends.
    pub token: Option<String>,
    pub tls: ClientTls,
    /// The connect hook's backend (`Upstream/OnConnect`), if any.
    pub connect_hook: Option<String>,
    /// Let connections in when the hook cannot be asked (default: refuse).
    pub fail_open: bool,
}

impl UpstreamConfig {
    /// Parses `action=url,action=url,$default=url`; a built-in action or a
    /// repeated one is refused.
    pub fn parse_routes(raw: &[String]) -> Result<Vec<(String, String)>, String> {
        let mut routes: Vec<(String, String)> = Vec::new();
        for entry in raw.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
            let (action, url) = entry
                .split_once('=')
                .ok_or_else(|| format!("BRIDGE_ROUTES: {entry:?} is not action=url"))?;
            let (action, url) = (action.trim(), url.trim());
            if action.is_empty() || url.is_empty() {
                return Err(format!("BRIDGE_ROUTES: {entry:?} is not action=url"));
            }
            if protocol::is_built_in(action) {
                return Err(format!(
                    "BRIDGE_ROUTES: {action:?} is a built-in action and cannot be routed"
                ));
            }
            if routes.iter().any(|(a, _)| a == action) {
                return Err(format!("BRIDGE_ROUTES: {action:?} is routed twice"));
            }
            routes.push((action.to_owned(), url.to_owned()));
        }
        Ok(routes)
    }
}

/// The routes of one bridge, and its connect hook.
#[derive(Default)]
pub struct Upstreams {
    routes: HashMap<String, Arc<Route>>,
    hook: Option<ConnectHook>,
    timeout: Duration,
    per_connection: usize,
}

/// The connect hook: asked before each upgrade completes.
struct ConnectHook {
    client: UpstreamClient<Channel>,
    credential: Credential,
    fail_open: bool,
}

/// What the connect hook gave a connection.
#[derive(Debug)]
pub struct Hooked {
    /// The connection's id, made before the upgrade to tell the hook.
    pub id: notify_core::ConnectionId,
    /// Followed from the welcome on, as a backend's Subscribe.
    pub topics: Vec<notify_core::Topic>,
    /// Sent with the connection's routed actions.
    pub data: Option<Box<str>>,
}

/// Largest `data` a connect hook may keep with a connection: every open
/// socket holds it.
const MAX_HOOK_DATA: usize = 4096;

/// Why the connect hook refused a connection (or could not be asked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookRefusal {
    /// The hook said no, with this status.
    Refused { code: Code, message: String },
    /// The hook could not be asked and the bridge fails closed.
    Unavailable(String),
}

/// One route: its backend and the calls it may have in flight.
pub struct Route {
    name: String,
    client: UpstreamClient<Channel>,
    credential: Credential,
    in_flight: Arc<Semaphore>,
}

impl Upstreams {
    pub fn new(config: &UpstreamConfig) -> anyhow::Result<Self> {
        let credential = Credential::new(config.token.as_deref())?;
        let mut routes = HashMap::new();
        for (action, url) in &config.routes {
            let channel = backend(url, &config.tls)?;
            routes.insert(
                action.clone(),
                Arc::new(Route {
                    name: action.clone(),
                    client: UpstreamClient::new(channel),
                    credential: credential.clone(),
                    in_flight: Arc::new(Semaphore::new(config.per_route)),
                }),
            );
        }
        let hook = match &config.connect_hook {
            Some(url) => Some(ConnectHook {
                client: UpstreamClient::new(backend(url, &config.tls)?),
                credential: credential.clone(),
                fail_open: config.fail_open,
            }),
            None => None,
        };
        Ok(Self {
            routes,
            hook,
            timeout: config.timeout,
            per_connection: config.per_connection,
        })
    }

    /// Whether any backend takes part (a route or the connect hook): only
    /// then is a caller's username worth keeping with its connection.
    pub fn in_use(&self) -> bool {
        !self.routes.is_empty() || self.hook.is_some()
    }

    /// Whether connections are asked about before their upgrade.
    pub fn has_connect_hook(&self) -> bool {
        self.hook.is_some()
    }

    /// Asks the connect hook about a connection (no hook: let in, nothing
    /// kept).
    pub async fn connect(
        &self,
        id: notify_core::ConnectionId,
        caller: pb::Caller,
        query: &str,
    ) -> Result<Hooked, HookRefusal> {
        let let_in = Hooked {
            id,
            topics: Vec::new(),
            data: None,
        };
        let Some(hook) = &self.hook else {
            return Ok(let_in);
        };
        let mut req = hook
            .credential
            .apply(tonic::Request::new(pb::ConnectRequest {
                caller: Some(caller),
                query: query.to_owned(),
            }));
        req.set_timeout(self.timeout);
        let answer = tokio::time::timeout(self.timeout, hook.client.clone().on_connect(req)).await;
        let unavailable = |why: String| {
            if hook.fail_open {
                tracing::warn!(error = %why, "connect hook unavailable: letting the connection in (fail-open)");
                Ok(let_in)
            } else {
                Err(HookRefusal::Unavailable(why))
            }
        };
        let answer = match answer {
            Err(_) => return unavailable(format!("no answer within {:?}", self.timeout)),
            Ok(Err(status)) => match status_error(status, self.timeout) {
                CallError::Backend { code, message } => {
                    return Err(HookRefusal::Refused { code, message });
                }
                other => return unavailable(format!("{other:?}")),
            },
            Ok(Ok(answer)) => answer.into_inner(),
        };
        if answer.data.len() > MAX_HOOK_DATA {
            return unavailable(format!(
                "the hook kept {} bytes with the connection, over {MAX_HOOK_DATA}",
                answer.data.len()
            ));
        }
        let mut topics = Vec::new();
        for name in answer.topics {
            match notify_core::Topic::parse(&name) {
                Ok(topic) => topics.push(topic),
                Err(e) => {
                    tracing::warn!(topic = name, error = %e, "connect hook named a bad topic: skipped")
                }
            }
        }
        Ok(Hooked {
            id,
            topics,
            data: (!answer.data.is_empty()).then(|| answer.data.into_boxed_str()),
        })
    }

    /// The route an action takes, if any.
    pub fn route(&self, action: &str) -> Option<&Arc<Route>> {
        self.routes
            .get(action)
            .or_else(|| self.routes.get(DEFAULT_ROUTE))
    }

    /// Calls one connection may have in flight.
    pub fn per_connection(&self) -> usize {
        self.per_connection
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

/// A lazy channel to a backend: one that is down at start is used once up.
fn backend(url: &str, tls: &ClientTls) -> anyhow::Result<Channel> {
    Ok(notify_proto::channel::endpoint(url, tls)?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .connect_lazy())
}

/// Why a routed call gave no reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// The connection has its most calls in flight.
    ConnectionBusy(usize),
    /// The route has its most calls in flight.
    RouteBusy,
    /// No answer within the timeout.
    Timeout(Duration),
    /// The backend could not be reached.
    Unreachable(String),
    /// The backend answered with an error status.
    Backend { code: Code, message: String },
    /// The backend's reply is not JSON.
    BadReply(String),
}

impl CallError {
    /// The `error` frame the client gets.
    pub fn frame(&self, id: Option<&FrameId>) -> String {
        let (code, message, status) = match self {
            Self::ConnectionBusy(max) => (
                ErrorCode::RateLimited,
                format!("at most {max} routed calls in flight per connection; retry"),
                None,
            ),
            Self::RouteBusy => (
                ErrorCode::Unavailable,
                "the route's backend is busy; retry".to_owned(),
                None,
            ),
            Self::Timeout(after) => (
                ErrorCode::Unavailable,
                format!("the backend did not answer within {after:?}; retry"),
                None,
            ),
            Self::Unreachable(why) => (
                ErrorCode::Unavailable,
                format!("the backend is unreachable ({why}); retry"),
                None,
            ),
            Self::Backend { code, message } => (backend_code(*code), message.clone(), Some(*code)),
            Self::BadReply(why) => (
                ErrorCode::UpstreamError,
                format!("the backend's reply is not JSON: {why}"),
                None,
            ),
        };
        ServerFrame::Error {
            code,
            message: &message,
            id,
            status: status.map(notify_proto::convert::code_name),
        }
        .to_text()
    }
}

/// What a backend's status means to the client.
fn backend_code(code: Code) -> ErrorCode {
    match code {
        Code::InvalidArgument | Code::NotFound | Code::AlreadyExists | Code::OutOfRange => {
            ErrorCode::BadRequest
        }
        Code::PermissionDenied | Code::Unauthenticated => ErrorCode::Forbidden,
        Code::ResourceExhausted => ErrorCode::RateLimited,
        Code::Unavailable | Code::DeadlineExceeded | Code::Aborted => ErrorCode::Unavailable,
        _ => ErrorCode::UpstreamError,
    }
}

impl Route {
    /// A place among the route's calls in flight, or `RouteBusy`.
    pub fn admit(self: &Arc<Self>) -> Result<OwnedSemaphorePermit, CallError> {
        Arc::clone(&self.in_flight)
            .try_acquire_owned()
            .map_err(|_| CallError::RouteBusy)
    }

    /// Calls the backend with `request`; the reply's JSON text (`null` for
    /// an empty one).
    pub async fn call(
        &self,
        mut request: pb::HandleRequest,
        timeout: Duration,
    ) -> Result<String, CallError> {
        request.route.clone_from(&self.name);
        let mut req = self.credential.apply(tonic::Request::new(request));
        req.set_timeout(timeout);
        let answer = tokio::time::timeout(timeout, self.client.clone().handle(req)).await;
        let reply = match answer {
            Err(_) => return Err(CallError::Timeout(timeout)),
            Ok(Err(status)) => return Err(status_error(status, timeout)),
            Ok(Ok(reply)) => reply.into_inner().reply,
        };
        if reply.is_empty() {
            return Ok("null".into());
        }
        serde_json::from_str::<&serde_json::value::RawValue>(&reply)
            .map_err(|e| CallError::BadReply(e.to_string()))?;
        Ok(reply)
    }
}

/// A status from the call: the backend's own answer, or the transport's
/// (unreachable, timed out).
fn status_error(status: tonic::Status, timeout: Duration) -> CallError {
    // tonic says a transport failure as UNAVAILABLE/UNKNOWN with a source
    // error; a backend's own status has none.
    let transport = std::error::Error::source(&status).is_some();
    match status.code() {
        // The deadline the call carries (grpc-timeout), enforced on the way:
        // tonic's server says CANCELLED "Timeout expired", others
        // DEADLINE_EXCEEDED. The bridge cancels nothing else.
        Code::DeadlineExceeded | Code::Cancelled => CallError::Timeout(timeout),
        Code::Unavailable | Code::Unknown if transport => {
            CallError::Unreachable(status.message().to_owned())
        }
        code => CallError::Backend {
            code,
            message: status.message().to_owned(),
        },
    }
}

/// The identity fields a backend gets.
pub fn caller(
    identity: &notify_auth::Identity,
    connection_id: &str,
    bridge_id: &str,
) -> pb::Caller {
    pb::Caller {
        user_id: identity.user.to_string(),
        username: identity.username.as_deref().unwrap_or_default().to_owned(),
        groups: identity.groups.clone(),
        realm: identity.realm.clone().unwrap_or_default(),
        connection_id: connection_id.to_owned(),
        bridge_id: bridge_id.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_parse_and_built_ins_cannot_be_routed() {
        let routes = UpstreamConfig::parse_routes(&[
            "sendMessage=http://chat:1".into(),
            " $default = http://rest:2 ".into(),
        ])
        .unwrap();
        assert_eq!(
            routes,
            [
                ("sendMessage".to_owned(), "http://chat:1".to_owned()),
                ("$default".to_owned(), "http://rest:2".to_owned())
            ]
        );
        for bad in [
            "publish=http://x:1",
            "noequals",
            "a=http://x:1,a=http://y:2",
        ] {
            let entries: Vec<String> = bad.split(',').map(String::from).collect();
            assert!(UpstreamConfig::parse_routes(&entries).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_backend_status_keeps_its_code_and_message() {
        let frame = CallError::Backend {
            code: Code::NotFound,
            message: "no such room".into(),
        }
        .frame(Some(&FrameId::Number(3)));
        let v: serde_json::Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(v["code"], "bad_request");
        assert_eq!(v["status"], "NOT_FOUND");
        assert_eq!(v["message"], "no such room");
        assert_eq!(v["id"], 3);
        let busy: serde_json::Value =
            serde_json::from_str(&CallError::Timeout(Duration::from_secs(3)).frame(None)).unwrap();
        assert_eq!(busy["code"], "unavailable");
    }
}
