//! The Dev Panel: a page for the team, served by a bridge at `/panel` when
//! `BRIDGE_PANEL` is on (`notify up` turns it on; off by default elsewhere),
//! assets embedded in the binary, built on the TypeScript client in
//! `clients/ts`; and the one endpoint behind it, `POST /panel/api/publish`:
//! a test message published through notify-svc's `Publish` as the signed-in
//! admin (their token goes along and notify-svc checks it: idempotency keys
//! are theirs), for members of the `admin` group only, and rate limited per
//! admin.

use std::{sync::Arc, time::Instant};

use http_body_util::{BodyExt, Full, Limited};
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header,
};
use notify_proto::v1 as pb;
use serde::Deserialize;

use notify_auth::Identity;

use crate::{connection::Shared, refusal::Refusal, respond};

/// Largest publish request body: the API's 64 KiB `data` plus the envelope.
const MAX_BODY: usize = 80 * 1024;

/// (path, content type, body) of every embedded asset.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "/panel/",
        "text/html; charset=utf-8",
        include_str!("../panel/index.html"),
    ),
    (
        "/panel/panel.css",
        "text/css; charset=utf-8",
        include_str!("../panel/panel.css"),
    ),
    (
        "/panel/panel.js",
        "text/javascript; charset=utf-8",
        include_str!("../panel/panel.js"),
    ),
    (
        "/panel/sw.js",
        "text/javascript; charset=utf-8",
        include_str!("../panel/sw.js"),
    ),
    (
        "/panel/client/push-worker.js",
        "text/javascript; charset=utf-8",
        include_str!("../panel/client/push-worker.js"),
    ),
    (
        "/panel/client/index.js",
        "text/javascript; charset=utf-8",
        include_str!("../panel/client/index.js"),
    ),
    (
        "/panel/client/client.js",
        "text/javascript; charset=utf-8",
        include_str!("../panel/client/client.js"),
    ),
    (
        "/panel/client/backoff.js",
        "text/javascript; charset=utf-8",
        include_str!("../panel/client/backoff.js"),
    ),
    (
        "/panel/client/protocol.js",
        "text/javascript; charset=utf-8",
        include_str!("../panel/client/protocol.js"),
    ),
    (
        "/panel/client/value.js",
        "text/javascript; charset=utf-8",
        include_str!("../panel/client/value.js"),
    ),
];

/// The page's policy: scripts, styles and fetches from its own origin, and
/// WebSockets to its own bridge's `/ws` only (`host` as the browser named
/// it; one that is not a plain host\[:port\] gets no WebSocket at all).
fn content_security_policy(host: Option<&str>) -> String {
    let plain = |h: &str| {
        !h.is_empty()
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
    };
    let sockets = match host.filter(|h| plain(h)) {
        Some(h) => format!(" ws://{h}/ws wss://{h}/ws"),
        None => String::new(),
    };
    format!(
        "default-src 'self'; connect-src 'self'{sockets}; img-src 'self' data:; frame-ancestors 'none'"
    )
}

/// Whether `path` is the panel's.
pub fn is_panel(path: &str) -> bool {
    path == "/panel" || path.starts_with("/panel/")
}

/// Answers a request under `/panel`.
pub async fn handle(req: Request<Incoming>, shared: Arc<Shared>) -> Response<Full<Bytes>> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned);
    let host = host.as_deref();
    let path = match req.uri().path() {
        "/panel" | "/panel/index.html" => "/panel/",
        p => p,
    };
    if path == "/panel/api/publish" {
        if req.method() != Method::POST {
            return respond::error(
                StatusCode::METHOD_NOT_ALLOWED,
                "bad_request",
                "POST a JSON body",
            );
        }
        return publish(req, &shared).await;
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return respond::error(StatusCode::METHOD_NOT_ALLOWED, "bad_request", "GET only");
    }
    match ASSETS.iter().find(|(p, ..)| *p == path) {
        Some((_, content_type, body)) => {
            let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(content_type),
            );
            headers.insert(
                header::CACHE_CONTROL,
                header::HeaderValue::from_static("no-cache"),
            );
            // The page talks only to its own bridge: the API under 'self' and
            // this host's /ws (a bare `ws:` would let an injected script
            // send what the page holds anywhere).
            let policy = content_security_policy(host);
            if let Ok(value) = header::HeaderValue::from_str(&policy) {
                headers.insert(header::CONTENT_SECURITY_POLICY, value);
            }
            headers.insert(
                header::X_CONTENT_TYPE_OPTIONS,
                header::HeaderValue::from_static("nosniff"),
            );
            response
        }
        None => respond::error(StatusCode::NOT_FOUND, "not_found", "no such panel page"),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    /// Exactly one of `user` and `topic`.
    user: Option<String>,
    topic: Option<String>,
    #[serde(default = "default_event")]
    event: String,
    /// Any JSON value.
    data: serde_json::Value,
    /// Makes a double submit harmless.
    idempotency_key: Option<String>,
}

fn default_event() -> String {
    "panel.test".into()
}

/// An admin within the panel's publish rate, or why not.
async fn authorized(token: Option<&str>, shared: &Shared) -> Result<Identity, Refusal> {
    let token = token.ok_or(Refusal::NoToken)?;
    let identity = shared.authenticate(token, None).await?;
    shared
        .panel_publishes
        .allow(identity.user.clone(), Instant::now())
        .map_err(Refusal::PanelRate)?;
    if !identity.in_group(notify_core::topic::ADMIN_GROUP) {
        return Err(Refusal::NotAdmin);
    }
    Ok(identity)
}

async fn publish(req: Request<Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
    let token = crate::refusal::bearer(req.headers());
    let identity = match authorized(token.as_deref(), shared).await {
        Ok(identity) => identity,
        Err(refusal) => return refusal.response(),
    };
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => {
            return respond::error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                &format!("the body is over {MAX_BODY} bytes"),
            );
        }
    };
    let body: PublishBody = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(e) => {
            return respond::error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                &format!("bad JSON body: {e}"),
            );
        }
    };
    let target = match (body.user, body.topic) {
        (Some(user), None) => pb::publish_request::Target::UserId(user),
        (None, Some(topic)) => pb::publish_request::Target::Topic(topic),
        _ => {
            return respond::error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "give exactly one of user and topic",
            );
        }
    };
    let request = pb::PublishRequest {
        target: Some(target),
        event: body.event,
        data: body.data.to_string(),
        idempotency_key: body.idempotency_key.unwrap_or_default(),
        ttl_seconds: 0,
        push: None,
    };
    let token = token.unwrap_or_default();
    match shared.api.publish_as_admin(&token, request).await {
        Ok(answer) => {
            tracing::info!(admin = %identity.user, message_id = answer.message_id, "panel publish");
            respond::json(
                StatusCode::OK,
                &serde_json::json!({
                    "message_id": answer.message_id,
                    "seq": answer.seq,
                    "duplicate": answer.duplicate,
                }),
            )
        }
        Err(status) => respond::error(
            respond::status_of(status.code()),
            "publish_failed",
            status.message(),
        ),
    }
}
