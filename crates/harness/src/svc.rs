//! A notify-svc in the test's own process — real gRPC on a loopback port,
//! real database — started from a [`notify_svc::Config`] (build it with
//! `Config::for_database` and change what the test needs), waited for until
//! its `/readyz` says 200 (migrated, database up; this works for TLS
//! listeners too), and stopped. Every integration test that needs a
//! notify-svc beside it starts one this way.

use std::net::SocketAddr;

use notify_svc::{Config, RunError};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;

/// A running notify-svc.
pub struct InProcessSvc {
    /// The gRPC listener's address.
    pub grpc: SocketAddr,
    /// The ops HTTP port (/healthz, /readyz, /metrics, /info).
    pub http: SocketAddr,
    /// Cancelled: notify-svc drains and stops.
    pub stop: CancellationToken,
    task: Option<JoinHandle<Result<(), RunError>>>,
    tls: bool,
}

impl InProcessSvc {
    /// Serves `config` on fresh loopback ports.
    pub async fn start(config: Config) -> Self {
        let grpc = TcpListener::bind("127.0.0.1:0").await.expect("bind gRPC");
        Self::start_on(config, grpc).await
    }

    /// Serves `config` on `grpc` (e.g. the address of one that stopped:
    /// [`test_support::rebind`]).
    pub async fn start_on(config: Config, grpc: TcpListener) -> Self {
        let http = TcpListener::bind("127.0.0.1:0").await.expect("bind ops");
        let (grpc_addr, http_addr) = (
            grpc.local_addr().expect("gRPC address"),
            http.local_addr().expect("ops address"),
        );
        let stop = CancellationToken::new();
        let tls = config.tls.is_some();
        let task = tokio::spawn(notify_svc::run(config, grpc, http, stop.clone()));
        let svc = Self {
            grpc: grpc_addr,
            http: http_addr,
            stop,
            task: Some(task),
            tls,
        };
        test_support::wait_ready(&svc.http.to_string()).await;
        svc
    }

    /// `http://127.0.0.1:PORT` (`https://localhost:PORT` with TLS: the
    /// name test certificates carry).
    pub fn url(&self) -> String {
        if self.tls {
            format!("https://localhost:{}", self.grpc.port())
        } else {
            format!("http://{}", self.grpc)
        }
    }

    /// Stops it and waits until it has drained; what `run` returned.
    pub async fn stop(&mut self) -> Result<(), RunError> {
        self.stop.cancel();
        match self.task.take() {
            Some(task) => task.await.expect("notify-svc task"),
            None => Ok(()),
        }
    }
}

impl Drop for InProcessSvc {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
