//! HTTP answers of the bridge's own pages (`/ws` refusals, the Dev Panel):
//! JSON bodies, and the connection closes after them (a refused upgrade is
//! not followed by another request; an idle socket is a cost).

use std::time::Duration;

use http_body_util::Full;
use hyper::{Response, StatusCode, body::Bytes, header};

/// `body` as JSON with `status`.
pub fn json(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
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

/// The HTTP status a gRPC status code from behind the bridge (notify-svc,
/// a connect hook) becomes: the caller's fault stays 4xx, the rest is 503.
pub fn status_of(code: tonic::Code) -> StatusCode {
    match code {
        tonic::Code::InvalidArgument | tonic::Code::NotFound => StatusCode::BAD_REQUEST,
        tonic::Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
        tonic::Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// `{"error": code, "message": message}` with `status`.
pub fn error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    json(
        status,
        &serde_json::json!({"error": code, "message": message}),
    )
}

/// Adds `Retry-After` (whole seconds, at least 1).
pub fn retry_after(mut response: Response<Full<Bytes>>, wait: Duration) -> Response<Full<Bytes>> {
    let secs = wait.as_secs().max(1).to_string();
    if let Ok(value) = header::HeaderValue::from_str(&secs) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}
