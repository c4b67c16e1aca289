//! The ops HTTP port every service serves: `/healthz` (the process runs),
//! `/readyz` (the service's own idea of ready, 503 with the reason when
//! not), `/metrics` (Prometheus text) and `/info` (build and settings,
//! secrets redacted: [`crate::info`]).

use std::sync::Arc;

use axum::{
    Router, extract::State, http::StatusCode, http::header, response::IntoResponse, routing::get,
};
use tokio::net::TcpListener;

use crate::info::Info;
use tokio_util::sync::CancellationToken;

/// What a service tells its ops port.
pub trait Probe: Send + Sync + 'static {
    /// `Ok` when it can take work, else why not.
    fn ready(&self) -> Result<(), &'static str>;
    /// Its series in the Prometheus text format.
    fn metrics(&self) -> String;
}

/// Serves the ops endpoints in a task of its own until `shutdown`. A port
/// that fails is logged, not fatal: the service's work goes on without its
/// probes, and the failing probes are what an operator's checks notice.
pub fn spawn(
    listener: TcpListener,
    probe: Arc<dyn Probe>,
    info: Info,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(e) = serve(listener, probe, info, shutdown).await {
            tracing::warn!(error = %e, "ops port stopped");
        }
    })
}

/// Serves the ops endpoints until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    probe: Arc<dyn Probe>,
    info: Info,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let info = Arc::new(info);
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(probe)
        .route(
            "/info",
            get(move || {
                let info = info.clone();
                async move {
                    (
                        [(header::CONTENT_TYPE, "application/json")],
                        info.to_json().to_string(),
                    )
                }
            }),
        );
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

async fn readyz(State(probe): State<Arc<dyn Probe>>) -> impl IntoResponse {
    match probe.ready() {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

async fn metrics_text(State(probe): State<Arc<dyn Probe>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        probe.metrics(),
    )
}
