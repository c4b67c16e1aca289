//! notify-svc: the Notify gRPC API of the platform.
//!
//! [`run`] wires the parts, grouped by edge:
//! - the Notify API ([`api`]): validates and serves `notify.v1.Notify`
//!   ([`api::fight`] maps fight events to their messages; [`usernames`]
//!   resolves `username:` targets with Cognito), and over HTTP/JSON on the
//!   same port ([`http`]);
//! - the bridges' `BridgeLink` ([`link`]): attach, registrations (its
//!   registry writer and ticket barriers), acks, deliveries down;
//! - delivery ([`delivery`]): the pipeline group-commits publishes, the router
//!   (who is where) sends them to bridges, `watch` to `Watch` streams.
//!
//! Beside them: [`caller`] authenticates both edges, [`services`] is what both
//! share, [`status`] turns every error into a gRPC status, [`ops`] serves
//! health and [`metrics`], [`retention`] sweeps old data, [`config`] reads
//! the settings. gRPC health and reflection are served beside the API.

mod api;
mod caller;
mod config;
mod delivery;
mod http;
mod link;
mod marks;
mod metrics;
mod ops;
mod retention;
mod services;
mod status;
mod usernames;

use std::{sync::Arc, time::Duration};

use delivery::{pipeline, router, watch};

use notify_proto::v1::{bridge_link_server::BridgeLinkServer, notify_server::NotifyServer};
use notify_store::{Store, StoreError};
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic_health::ServingStatus;

pub use api::fight;
pub use config::{Config, SvcArgs};
pub use http::openapi_document;

/// Largest gRPC request: a full `PublishBatch` of small messages fits; a
/// request over it is refused before it is decoded (tonic answers OUT_OF_RANGE).
pub const MAX_REQUEST_BYTES: usize = 16 * 1024 * 1024;
/// How often readiness re-checks the database.
const PROBE_EVERY: Duration = Duration::from_secs(2);
/// Longest wait between retries of the start-up migration.
const MIGRATE_RETRY_MAX: Duration = Duration::from_secs(5);
/// Name under which the API's health is reported.
const SERVICE_NAME: &str = "notify.v1.Notify";

/// Why notify-svc stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("ops HTTP server: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Tls(#[from] notify_ops::tls::TlsError),
    #[error("push: {0}")]
    Push(String),
    #[error(
        "dev mode (no caller credentials) serves loopback only, not {0}: configure NOTIFY_API_TOKENS or a JWKS"
    )]
    DevOffLoopback(std::net::SocketAddr),
}

/// Serves the Notify API on `grpc` and the ops endpoints on `http` until
/// `shutdown` is cancelled; then reports NOT_SERVING, stops accepting, lets
/// in-flight calls and commits finish, and returns.
// Long (~100 lines) because it is the start-up order, read top to bottom:
// checks, TLS, metrics, ops port, migrations, pipeline, background tasks,
// services, serving, draining. Each step is a call; the order is the content.
pub async fn run(
    config: Config,
    grpc: TcpListener,
    http: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    // Unauthenticated callers get every right: never beyond this host.
    let addr = grpc.local_addr()?;
    if config.tokens.is_empty() && config.verifier.is_none() && !addr.ip().is_loopback() {
        return Err(RunError::DevOffLoopback(addr));
    }
    let store = config.database.store()?;
    // Bad certificate files stop start-up, before anything is served.
    let tls = match &config.tls {
        Some(files) => Some(notify_ops::tls::ServerTls::load(files.clone(), &[b"h2"])?),
        None => None,
    };
    let tracker = TaskTracker::new();
    // Background work stops at `shutdown`; the pipeline stops by itself once
    // the API (its last handle) is gone and queued commits are done.
    let background = CancellationToken::new();
    // SIGHUP handled from the start: `systemctl reload` must never kill us.
    match &tls {
        Some(tls) => tracker.spawn(tls.clone().watch(background.clone())),
        None => tracker.spawn(notify_ops::signals::nothing_to_reload(background.clone())),
    };
    let (metrics, router) = observed(&store);
    let ready = ops::Readiness::default();
    let ops_server = tokio::spawn(ops::serve(
        http,
        ops::SvcProbe {
            ready: ready.clone(),
            metrics: metrics.clone(),
            store: store.clone(),
            router: router.clone(),
        },
        config.info(),
        shutdown.clone(),
    ));
    let (health, health_service) = tonic_health::server::health_reporter();
    report(&health, ServingStatus::NotServing).await;
    if !migrate(store.as_ref(), &shutdown)
        .await
        .inspect_err(|_| background.cancel())?
    {
        background.cancel();
        let _ = ops_server.await;
        return Ok(());
    }
    let hub = watch::WatchHub::default();
    let (senders, vapid_public_key) = push_senders(&config.push)?;
    let presence: notify_push::Presence = {
        let router = router.clone();
        Arc::new(move |user| !router.connections_of(user).is_empty())
    };
    let pusher = notify_push::Pusher::start(
        store.clone(),
        senders,
        presence,
        config.push.lease,
        &tracker,
        background.clone(),
    );
    metrics.track_pushes(pusher.tally.clone());
    let publisher = pipeline::Publisher::start(
        store.clone(),
        config.pipeline.clone(),
        hub.clone(),
        router.clone(),
        metrics.clone(),
        pusher,
        &tracker,
    );
    tracker.spawn(retention::run(
        store.clone(),
        router.clone(),
        config.topics.clone(),
        config.lifecycle_retention,
        background.clone(),
    ));
    tracker.spawn(probe(
        store.clone(),
        health.clone(),
        ready.clone(),
        metrics.clone(),
        background.clone(),
    ));
    let marks = marks::Marks::start(store.clone(), &tracker, background.clone());
    let services = services::Services {
        store,
        publisher,
        marks,
        router,
        topics: Arc::new(config.topics.clone()),
        limits: Arc::new(config.limits.clone()),
        auth: caller::Authenticator::new(
            config.tokens.clone(),
            config.verifier.clone(),
            config.users.clone(),
            metrics.clone(),
        ),
        metrics,
        tracker: tracker.clone(),
        shutdown: shutdown.clone(),
        lifecycle: services::LifecycleSignal::default(),
        push_policy: Arc::new(config.push.policy.clone()),
        vapid_public_key,
    };
    let routes = grpc_routes(&config, services, hub)
        .await?
        .add_service(health_service);
    tracing::info!(%addr, tls = tls.is_some(), "notify-svc serving gRPC");
    notify_ops::systemd::ready();
    tokio::spawn(notify_ops::systemd::watchdog(|| true, shutdown.clone()));
    let stopping = stopping(health, ready, shutdown.clone());
    let served = serve_grpc(routes, grpc, tls, &shutdown, stopping).await;
    background.cancel();
    tracker.close();
    tracker.wait().await;
    ops_server
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))??;
    served?;
    tracing::info!("notify-svc stopped");
    Ok(())
}

/// The push senders the settings configure, and the VAPID public key
/// browsers subscribe with (None: no Web Push). A provider's bad key or
/// file stops start-up with its reason.
fn push_senders(
    settings: &config::PushSettings,
) -> Result<(notify_push::Senders, Option<String>), RunError> {
    use notify_push::{apns::Apns, fcm::Fcm, vapid::Vapid, web_push::WebPush};
    let mut senders = notify_push::Senders::default();
    let any = settings.vapid_key.is_some()
        || settings.fcm_service_account.is_some()
        || settings.apns_key.is_some();
    if !any {
        return Ok((senders, None));
    }
    let https = notify_push::client::Https::new(settings.ca_file.as_deref())
        .map_err(|e| RunError::Push(e.to_string()))?;
    let mut public = None;
    if let Some(key) = &settings.vapid_key {
        let pem = key.read().map_err(RunError::Push)?;
        let vapid = Vapid::from_pem(&pem, &settings.vapid_subject).map_err(RunError::Push)?;
        let web_push = WebPush::new(vapid, https.clone()).map_err(RunError::Push)?;
        public = Some(web_push.public_key());
        senders.web_push = Some(web_push);
    }
    if let Some(account) = &settings.fcm_service_account {
        let json = account.read().map_err(RunError::Push)?;
        let endpoint = settings.fcm_endpoint.as_deref();
        senders.fcm = Some(Fcm::from_json(&json, endpoint, https.clone()).map_err(RunError::Push)?);
    }
    if let Some(key) = &settings.apns_key {
        let pem = key.read().map_err(RunError::Push)?;
        let apns = Apns::from_pem(
            &pem,
            &settings.apns_key_id,
            &settings.apns_team_id,
            settings.apns_endpoint.as_deref(),
            https,
        )
        .map_err(RunError::Push)?;
        senders.apns = Some(apns);
    }
    Ok((senders, public))
}

/// The metrics and the router, wired to each other and to the store's pool.
fn observed(store: &Arc<dyn Store>) -> (metrics::Metrics, router::Router) {
    let metrics = metrics::Metrics::new();
    {
        let metrics = metrics.clone();
        store.observe_pool_waits(Arc::new(move |waited| metrics.pool_wait(waited)));
    }
    let router = router::Router::default();
    metrics.track_deliveries(
        router.counts().sent.clone(),
        router.counts().dropped.clone(),
    );
    (metrics, router)
}

/// The gRPC services: the Notify API and the bridges' link (both behind the
/// caller interceptor) and reflection.
async fn grpc_routes(
    config: &Config,
    services: services::Services,
    hub: watch::WatchHub,
) -> Result<tonic::transport::server::Router, RunError> {
    let authenticator = services.auth.clone();
    let link = link::Link::new(services.clone(), config.bridge_queue, config.bridge_expiry);
    let cognito = match &config.cognito {
        Some(c) => Some(Arc::new(notify_auth::Cognito::new(c).await)),
        None => None,
    };
    let api = api::NotifyApi::new(
        services,
        hub,
        usernames::Usernames::new(cognito),
        watch::WatchSlots::new(config.max_watches_per_caller),
    );
    let json = http::routes(api.clone(), authenticator.clone(), MAX_REQUEST_BYTES);
    let notify = tonic::service::interceptor::InterceptedService::new(
        NotifyServer::new(api).max_decoding_message_size(MAX_REQUEST_BYTES),
        authenticator.clone(),
    );
    let bridge_link = tonic::service::interceptor::InterceptedService::new(
        BridgeLinkServer::new(link).max_decoding_message_size(MAX_REQUEST_BYTES),
        authenticator,
    );
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(notify_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| RunError::Io(std::io::Error::other(e.to_string())))?;
    Ok(tonic::transport::Server::builder()
        // Bounds work per HTTP/2 connection; callers beyond it queue in h2 flow control.
        .concurrency_limit_per_connection(1024)
        // The HTTP/JSON API is also served to HTTP/1.1 clients (curl, webhooks).
        .accept_http1(true)
        .add_routes(tonic::service::Routes::from(json))
        .add_service(reflection)
        .add_service(notify)
        .add_service(bridge_link))
}

/// Resolves at `shutdown`, once notify-svc says it is stopping: not ready,
/// NOT_SERVING, systemd told; the server then drains in-flight calls.
async fn stopping(
    health: tonic_health::server::HealthReporter,
    ready: ops::Readiness,
    shutdown: CancellationToken,
) {
    shutdown.cancelled().await;
    notify_ops::systemd::stopping();
    ready.set(false);
    report(&health, ServingStatus::NotServing).await;
    tracing::info!("shutting down: draining in-flight calls");
}

/// Serves `routes` on `grpc` (over TLS with `tls`, whose acceptor stops at
/// `shutdown`) until `stopping` resolves and in-flight calls are done.
async fn serve_grpc(
    routes: tonic::transport::server::Router,
    grpc: TcpListener,
    tls: Option<Arc<notify_ops::tls::ServerTls>>,
    shutdown: &CancellationToken,
    stopping: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    match tls {
        Some(tls) => {
            let incoming = notify_ops::tls::incoming(grpc, tls, shutdown.clone());
            routes
                .serve_with_incoming_shutdown(incoming, stopping)
                .await
        }
        None => {
            // serve_with_incoming ignores the builder's socket options: set
            // them here. Without TCP_NODELAY, Nagle plus delayed ACKs held
            // multi-segment requests (a PublishBatch) for 40 ms.
            let incoming = tonic::transport::server::TcpIncoming::from(grpc)
                .with_nodelay(Some(true))
                .with_keepalive(Some(Duration::from_secs(60)));
            routes
                .serve_with_incoming_shutdown(incoming, stopping)
                .await
        }
    }
}

/// Applies migrations, retrying while the database is unreachable. Returns
/// false if `shutdown` came first.
async fn migrate(store: &dyn Store, shutdown: &CancellationToken) -> Result<bool, RunError> {
    let mut wait = Duration::from_millis(100);
    loop {
        match store.migrate().await {
            Ok(applied) => {
                tracing::info!(applied, "database migrated");
                return Ok(true);
            }
            Err(e @ StoreError::Unavailable(_)) => {
                tracing::warn!(error = %e, retry_in = ?wait, "database not reachable yet");
            }
            Err(e) => return Err(e.into()),
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(false),
            () = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(MIGRATE_RETRY_MAX);
    }
}

/// Sets the API's gRPC health, and the server's overall ("") with it.
async fn report(health: &tonic_health::server::HealthReporter, status: ServingStatus) {
    health.set_service_status("", status).await;
    health.set_service_status(SERVICE_NAME, status).await;
}

/// Keeps readiness and gRPC health in step with the database.
async fn probe(
    store: Arc<dyn Store>,
    health: tonic_health::server::HealthReporter,
    ready: ops::Readiness,
    metrics: metrics::Metrics,
    stop: CancellationToken,
) {
    let mut last = None;
    loop {
        let up = store.ping().await.is_ok();
        if last != Some(up) {
            let status = if up {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            report(&health, status).await;
            ready.set(up);
            metrics.set_ready(up);
            if up {
                tracing::info!("ready: database answers");
            } else {
                tracing::warn!("not ready: database does not answer");
            }
            last = Some(up);
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(PROBE_EVERY) => {}
        }
    }
}
