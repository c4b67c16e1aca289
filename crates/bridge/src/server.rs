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
use notify_core::ConnectionId;
use notify_ops::tls::ServerTls;
use tokio::net::TcpListener;
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{handshake::derive_accept_key, protocol::Role, protocol::WebSocketConfig},
};
use tokio_util::task::TaskTracker;

use crate::{
    admission::Admitted,
    connection::{self, Shared},
    deflate::{self, Agreed},
    queue::{Bound, SendQueue},
    refusal::{self, Refusal},
    respond,
    wire::WireIo,
};

/// What one listener allows on the wire.
#[derive(Debug, Clone, Copy)]
pub struct WireLimits {
    /// Largest inbound WebSocket frame.
    pub max_frame: usize,
    /// permessage-deflate for clients that offer it.
    pub deflate: bool,
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
        async move { Ok::<_, Infallible>(handle(req, peer, shared, tracker, limits).await) }
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

/// Who came in, their place, and what the connect hook gave them.
type Entered = (
    notify_auth::Identity,
    Admitted,
    Option<Box<crate::upstream::Hooked>>,
);

/// The door's checks in order: the client address's connect rate (before
/// the token: verifying it is the expensive part), the token, a notify-svc
/// to serve it, and a place among the bridge's and the user's connections
/// (held from now on, given back if the upgrade fails, so simultaneous
/// connects cannot all pass).
async fn enter(
    shared: &Shared,
    peer: IpAddr,
    token: &Option<String>,
    query: &str,
) -> Result<Entered, Refusal> {
    shared
        .peers
        .allow(peer, std::time::Instant::now())
        .map_err(Refusal::PeerRate)?;
    let token = token.as_deref().ok_or(Refusal::NoToken)?;
    let identity = shared.authenticate(token, None).await?;
    if shared.hub.any_link().is_none() {
        return Err(Refusal::NoNotifySvc);
    }
    let admitted = shared.admissions.admit(&identity.user)?;
    // The backend's $connect: last, with the place held (given back if it says no).
    let hooked = if shared.upstreams.has_connect_hook() {
        let id = ConnectionId::new();
        let caller = crate::upstream::caller(&identity, &id.to_string(), shared.hub.bridge_id());
        Some(Box::new(shared.upstreams.connect(id, caller, query).await?))
    } else {
        None
    };
    Ok((identity, admitted, hooked))
}

/// The upgrade's query string without its token (what a connect hook sees).
fn query_without_token(req: &Request<Incoming>) -> String {
    req.uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|pair| !pair.is_empty() && !pair.starts_with("token="))
        .collect::<Vec<_>>()
        .join("&")
}

/// `since` and the token (Authorization header first, else `?token=`) of
/// an upgrade request, or what is malformed.
fn upgrade_params(req: &Request<Incoming>) -> Result<(Option<u64>, Option<String>), &'static str> {
    let (query_token, since) = query_params(req);
    let header_token = refusal::bearer(req.headers());
    let since = match since {
        None => None,
        Some(Ok(n)) => Some(n),
        Some(Err(())) => return Err("since must be a non-negative integer"),
    };
    Ok((since, header_token.or(query_token)))
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
    limits: WireLimits,
) -> Response<Full<Bytes>> {
    if shared.panel && crate::panel::is_panel(req.uri().path()) {
        return crate::panel::handle(req, shared).await;
    }
    if req.uri().path() != "/ws" {
        return respond::json(
            StatusCode::NOT_FOUND,
            &serde_json::json!({"error": "not_found", "message": "WebSocket endpoint is /ws"}),
        );
    }
    let key = match websocket_key(&req) {
        Ok(key) => key,
        Err(why) => return respond::error(StatusCode::BAD_REQUEST, "bad_request", why),
    };
    let (since, token) = match upgrade_params(&req) {
        Ok(params) => params,
        Err(why) => return respond::error(StatusCode::BAD_REQUEST, "bad_request", why),
    };
    let query = query_without_token(&req);
    let (identity, admitted, hooked) = match enter(&shared, peer, &token, &query).await {
        Ok(entered) => entered,
        Err(refusal) => {
            shared.metrics.refused(refusal.reason());
            return refusal.response();
        }
    };
    // Kept for the connection's re-checks only when they happen.
    let token = token
        .filter(|_| shared.revocation.is_some())
        .map(String::into_boxed_str);

    let accept = derive_accept_key(key.as_bytes());
    let deflate = limits
        .deflate
        .then(|| {
            deflate::negotiate(
                req.headers()
                    .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
                    .iter(),
            )
        })
        .flatten();
    let response = switching_protocols(&accept, deflate.as_ref());
    let serving = tracker.clone();
    tracker.spawn(async move {
        let Some((ws, queue)) = upgraded(req, limits.max_frame, shared.queue, deflate).await else {
            return;
        };
        // A task of its own, sized to the connection alone: this one also
        // holds the upgrade's state, which an idle socket should not carry
        // for its whole life (~3 KB each).
        let accepted = Box::new(connection::Accepted {
            ws,
            queue,
            since,
            token,
            admitted: Some(admitted),
            hooked,
        });
        serving.spawn(connection::serve(accepted, Box::new(identity), shared));
    });
    response
}

/// The `Sec-WebSocket-Key` of a WebSocket upgrade request, or why it is not one.
fn websocket_key(req: &Request<Incoming>) -> Result<header::HeaderValue, &'static str> {
    let is_upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    match req.headers().get(header::SEC_WEBSOCKET_KEY) {
        Some(key) if is_upgrade => Ok(key.clone()),
        _ => Err("expected a WebSocket upgrade"),
    }
}

/// The WebSocket once the upgrade completed (None: the client went away),
/// and its send queue (holding the socket when it is plain TCP, see
/// [`crate::wire`]).
async fn upgraded(
    req: Request<Incoming>,
    max_frame: usize,
    bound: Bound,
    deflate: Option<Agreed>,
) -> Option<(connection::Socket, Arc<SendQueue>)> {
    let upgraded = hyper::upgrade::on(req)
        .await
        .inspect_err(|e| tracing::debug!(error = %e, "upgrade failed"))
        .ok()?;
    // tungstenite's default reserves 128 KiB for reading per socket; 1 KiB
    // holds any ack or subscribe in one read (a 64 KiB client publish takes
    // more reads, and is rare), and idle connections are most of a bridge.
    // Writes are queued until the connection flushes (or 16 KiB wait), so a
    // burst goes out in one syscall; the write buffer is not preallocated.
    let config = WebSocketConfig::default()
        .read_buffer_size(1024)
        .write_buffer_size(16 * 1024)
        .max_message_size(Some(max_frame))
        .max_frame_size(Some(max_frame));
    let (io, queue) = WireIo::new(upgraded, bound, deflate.as_ref(), max_frame);
    let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
    Some((ws, queue))
}

/// 101 Switching Protocols, accepting the upgrade with `accept` (and
/// permessage-deflate, if agreed).
fn switching_protocols(accept: &str, deflate: Option<&Agreed>) -> Response<Full<Bytes>> {
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
    if let Ok(value) = header::HeaderValue::from_str(accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, value);
    }
    if let Some(agreed) = deflate {
        headers.insert(header::SEC_WEBSOCKET_EXTENSIONS, agreed.response.clone());
    }
    response
}
