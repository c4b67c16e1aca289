//! The HTTP side: `GET /ws` is authenticated before anything else (a bad
//! token gets 401 with a JSON body and nothing is stored), then upgraded to a
//! WebSocket (wss when the bridge has a certificate) handled by [`connection::serve`](crate::connection::serve).
//! `/panel` is the Dev Panel ([`crate::panel`]).

use std::{convert::Infallible, net::IpAddr, sync::Arc, time::Duration};

use http_body_util::Full;
use hyper::{
    Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use notify_ops::tls::ServerTls;
use tokio::net::TcpListener;
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{handshake::derive_accept_key, protocol::Role, protocol::WebSocketConfig},
};
use tokio_util::task::TaskTracker;

use crate::{
    admission::Refusal,
    connection::{self, Shared},
};

/// What one listener allows on the wire.
#[derive(Debug, Clone, Copy)]
pub struct WireLimits {
    /// Largest inbound WebSocket frame.
    pub max_frame: usize,
    /// Longest wait for a TLS handshake and the request headers.
    pub header_timeout: Duration,
    /// Every connection starts with a PROXY protocol v2 header naming the
    /// client (behind a load balancer that terminates TLS).
    pub proxy_protocol: bool,
}

/// Accepts until shutdown (over TLS when `tls` is set: wss); returns once
/// every connection has ended.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    limits: WireLimits,
    tls: Option<Arc<ServerTls>>,
) {
    let tracker = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = shared.shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let Ok((mut stream, mut peer)) = accepted else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (shared, tracker2, tls) = (shared.clone(), tracker.clone(), tls.clone());
        tracker.spawn(async move {
            if limits.proxy_protocol {
                let header = crate::proxy_protocol::read_header(&mut stream);
                match tokio::time::timeout(limits.header_timeout, header).await {
                    Ok(Ok(client)) => peer = client.unwrap_or(peer),
                    Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "PROXY header refused"),
                    Err(_) => return tracing::debug!(%peer, "PROXY header timed out"),
                }
            }
            match tls {
                // The handshake runs in the connection's own task, within
                // HANDSHAKE_TIMEOUT: a stalled client holds up nobody.
                Some(tls) => match tokio::time::timeout(limits.header_timeout, tls.accept(stream))
                    .await
                {
                    Ok(Ok(stream)) => serve_http(stream, peer.ip(), shared, tracker2, limits).await,
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                },
                None => serve_http(stream, peer.ip(), shared, tracker2, limits).await,
            }
        });
    }
    tracker.close();
    tracker.wait().await;
}

/// HTTP/1.1 on one socket, upgrades included.
async fn serve_http<IO>(
    io: IO,
    peer: IpAddr,
    shared: Arc<Shared>,
    tracker: TaskTracker,
    limits: WireLimits,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let (shared, tracker) = (shared.clone(), tracker.clone());
        async move { Ok::<_, Infallible>(handle(req, peer, shared, tracker, limits.max_frame).await) }
    });
    // Without a timer hyper waits for headers forever: a client that sends
    // half a request line and stalls (slowloris) would hold the socket.
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "HTTP connection ended");
    }
}

/// A refusal: JSON body, and the connection closes after it (a refused
/// upgrade is not followed by another request; an idle socket is a cost).
pub(crate) fn json(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    headers.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    response
}

/// `token` and `since` from the query string.
fn query_params(req: &Request<Incoming>) -> (Option<String>, Option<Result<u64, ()>>) {
    let (mut token, mut since) = (None, None);
    for pair in req.uri().query().unwrap_or_default().split('&') {
        match pair.split_once('=') {
            Some(("token", v)) => token = Some(v.to_owned()),
            Some(("since", v)) => since = Some(v.parse::<u64>().map_err(|_| ())),
            _ => {}
        }
    }
    (token, since)
}

async fn handle(
    req: Request<Incoming>,
    peer: IpAddr,
    shared: Arc<Shared>,
    tracker: TaskTracker,
    max_frame: usize,
) -> Response<Full<Bytes>> {
    if shared.panel && crate::panel::is_panel(req.uri().path()) {
        return crate::panel::handle(req, shared).await;
    }
    if req.uri().path() != "/ws" {
        return json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "not_found", "message": "WebSocket endpoint is /ws"}),
        );
    }
    let is_upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return json(
            StatusCode::BAD_REQUEST,
            serde_json::json!({"error": "bad_request", "message": "expected a WebSocket upgrade"}),
        );
    };
    if !is_upgrade {
        return json(
            StatusCode::BAD_REQUEST,
            serde_json::json!({"error": "bad_request", "message": "expected a WebSocket upgrade"}),
        );
    }
    // Before the token is read: verifying it is the expensive part.
    if let Err(wait) = shared.peers.allow(peer, std::time::Instant::now()) {
        shared.metrics.refused("peer_rate");
        let mut response = json(
            StatusCode::TOO_MANY_REQUESTS,
            serde_json::json!({"error": "too_many_requests",
                "message": "too many connects from this address; retry later"}),
        );
        let secs = wait.as_secs().max(1).to_string();
        if let Ok(value) = header::HeaderValue::from_str(&secs) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        return response;
    }
    let (query_token, since) = query_params(&req);
    let header_token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let Some(token) = header_token.or(query_token) else {
        return json(
            StatusCode::UNAUTHORIZED,
            serde_json::json!({"error": "unauthorized", "message": "a token is required: Authorization: Bearer … or ?token="}),
        );
    };
    let since = match since {
        None => None,
        Some(Ok(n)) => Some(n),
        Some(Err(())) => {
            return json(
                StatusCode::BAD_REQUEST,
                serde_json::json!({"error": "bad_request", "message": "since must be a non-negative integer"}),
            );
        }
    };
    let identity = match shared.verifier.verify(&token).await {
        Ok(identity) => identity,
        Err(e) => {
            shared.metrics.refused(e.reason());
            return json(
                StatusCode::UNAUTHORIZED,
                serde_json::json!({"error": "unauthorized", "reason": e.reason(), "message": e.to_string()}),
            );
        }
    };
    match shared.revoked(&identity, &token).await {
        Ok(false) => {}
        Ok(true) => {
            shared.metrics.refused("revoked");
            return json(
                StatusCode::UNAUTHORIZED,
                serde_json::json!({"error": "unauthorized", "reason": "revoked",
                    "message": "the token was revoked (signed out): sign in again"}),
            );
        }
        Err(e) => {
            shared.metrics.refused("revocation_unchecked");
            return json(
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({"error": "unavailable",
                    "message": format!("cannot check the token with Cognito now, retry: {e}")}),
            );
        }
    }
    // Kept for the connection's re-checks only when they happen.
    let token = shared.revocation.is_some().then(|| token.into_boxed_str());
    if shared.hub.any_link().is_none() {
        shared.metrics.refused("no_notify_svc");
        return json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"error": "unavailable", "message": "this bridge reaches no notify-svc; retry or connect to another"}),
        );
    }
    // Counted here, with the check: a place is held from now on (and given
    // back if the upgrade fails), so simultaneous connects cannot all pass.
    let admitted = match shared.admissions.admit(&identity.user) {
        Ok(admitted) => admitted,
        Err(Refusal::BridgeFull) => {
            shared.metrics.refused("bridge_full");
            return json(
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({"error": "unavailable", "message": "this bridge is full; connect to another"}),
            );
        }
        Err(Refusal::UserLimit) => {
            shared.metrics.refused("user_limit");
            return json(
                StatusCode::TOO_MANY_REQUESTS,
                serde_json::json!({"error": "too_many_connections",
                    "message": format!("at most {} connections per user", shared.admissions.max_per_user())}),
            );
        }
    };

    let accept = derive_accept_key(key.as_bytes());
    let serving = tracker.clone();
    tracker.spawn(async move {
        match hyper::upgrade::on(req).await {
            Ok(upgraded) => {
                // tungstenite's default reserves 128 KiB for reading per
                // socket; 1 KiB holds any ack or subscribe in one read (a
                // 64 KiB client publish takes more reads, and is rare), and
                // idle connections are most of a bridge. Writes are queued
                // until the connection flushes (or 16 KiB wait), so a burst
                // goes out in one syscall; the write buffer is not
                // preallocated.
                let config = WebSocketConfig::default()
                    .read_buffer_size(1024)
                    .write_buffer_size(16 * 1024)
                    .max_message_size(Some(max_frame))
                    .max_frame_size(Some(max_frame));
                let ws = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(config),
                )
                .await;
                // A task of its own, sized to the connection alone: this one
                // also holds the upgrade's state, which an idle socket should
                // not carry for its whole life (~3 KB each).
                let accepted = Box::new(connection::Accepted {
                    ws,
                    since,
                    token,
                    admitted: Some(admitted),
                });
                serving.spawn(connection::serve(accepted, Box::new(identity), shared));
            }
            Err(e) => tracing::debug!(error = %e, "upgrade failed"),
        }
    });
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(
        header::UPGRADE,
        header::HeaderValue::from_static("websocket"),
    );
    headers.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("Upgrade"),
    );
    if let Ok(value) = header::HeaderValue::from_str(&accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, value);
    }
    response
}
