//! The WebSocket bridge of the notify platform (docs/design.md §5, §6).
//!
//! Clients connect to `GET /ws` with a token; [`server`] verifies it before
//! the upgrade, [`connection`] runs each socket, [`hub`] knows the local
//! connections and reports them over [`link`] to every notify-svc replica,
//! whose deliveries it fans out. [`protocol`] holds the wire types,
//! [`sequencer`] the gap-free seam between replay and live, [`rate`] the
//! inbound rate limit, [`inbox`] the user's inbox actions and badge frames,
//! [`peers`] the connect limit per client IP, [`panel`]
//! the Dev Panel at `/panel`; [`config`] its settings.

mod admission;
mod config;
mod connection;
mod deflate;
mod hub;
mod inbox;
mod link;
mod metrics;
mod panel;
mod peers;
pub mod protocol;
pub mod proxy_protocol;
mod queue;
mod rate;
mod refusal;
mod respond;
mod revocation;
mod sequencer;
mod server;
mod upstream;
mod wire;

pub use config::{
    BridgeArgs, BridgeConfig, DEFAULT_HTTP_ADDR, DEV_DATA_DIR, SocketArgs, UpstreamArgs, UserTokens,
};
pub use queue::Bound as SendBound;
pub use revocation::RevocationCheck;

use std::{sync::Arc, time::Duration};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Longest wait for the first notify-svc link before sockets are taken.
const FIRST_LINK_WAIT: Duration = Duration::from_secs(5);
/// How often pending acks go up.
const ACK_FLUSH_EVERY: Duration = Duration::from_millis(500);

/// Serves WebSocket clients on `listener` until `shutdown`, then closes every
/// socket with 1012, sends the last acks and returns.
pub async fn run(
    mut config: BridgeConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let first = config
        .notify_urls
        .first()
        .ok_or_else(|| anyhow::anyhow!("no notify-svc URL configured"))?;
    let credential = link::Credential::new(config.notify_token.as_deref())?;
    // Bad certificate files stop start-up, before anything is served.
    let tls = match &config.tls {
        Some(files) => Some(notify_ops::tls::ServerTls::load(
            files.clone(),
            &[b"http/1.1"],
        )?),
        None => None,
    };
    let info = config.info();
    let metrics = metrics::Metrics::default();
    let hub = hub::Hub::new(
        &config.bridge_id,
        metrics.messages_out.clone(),
        metrics.direct_writes.clone(),
    );
    let pending = link::Pending::default();
    let api = link::Api::new(first, &config.notify_tls, credential.clone())?;
    // Links outlive the sockets a little: the last acks and Closed reports go up.
    let links_stop = CancellationToken::new();
    let links = spawn_links(&config, &credential, &hub, &pending, &links_stop);
    let flusher = tokio::spawn(flush_acks(hub.clone(), links_stop.clone()));
    if let Some(ops) = config.ops.take() {
        metrics::serve(ops, hub.clone(), metrics.clone(), info, links_stop.clone());
    }
    let (urls, bridge_id) = (config.notify_urls.clone(), config.bridge_id.clone());
    let limits = server::WireLimits {
        max_frame: config.max_frame,
        deflate: config.deflate,
        header_timeout: config.header_timeout,
        proxy_protocol: config.proxy_protocol,
    };
    let shared = shared_state(config, &hub, metrics, api, pending, &shutdown)?;
    if let Some(revocation) = &shared.revocation {
        tokio::spawn(Arc::clone(revocation).recheck(hub.clone(), links_stop.clone()));
    }
    match &tls {
        Some(tls) => tokio::spawn(tls.clone().watch(links_stop.clone())),
        None => tokio::spawn(notify_ops::signals::nothing_to_reload(links_stop.clone())),
    };
    first_link(&hub, &urls, &shutdown).await;
    tracing::info!(addr = ?listener.local_addr().ok(), bridge = %bridge_id, wss = tls.is_some(), "bridge serving WebSocket");
    notify_ops::systemd::ready();
    tokio::spawn(notify_ops::systemd::watchdog(|| true, shutdown.clone()));
    server::serve(listener, shared, limits, tls).await;
    notify_ops::systemd::stopping();
    hub.flush_acks();
    // Give the links a moment to carry the last messages up.
    tokio::time::sleep(Duration::from_millis(100)).await;
    links_stop.cancel();
    let _ = flusher.await;
    for l in links {
        let _ = l.await;
    }
    tracing::info!("bridge stopped");
    Ok(())
}

/// One link task per notify-svc replica.
fn spawn_links(
    config: &BridgeConfig,
    credential: &link::Credential,
    hub: &hub::Hub,
    pending: &link::Pending,
    stop: &CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    config
        .notify_urls
        .iter()
        .enumerate()
        .map(|(index, url)| {
            tokio::spawn(link::run(
                index,
                url.clone(),
                config.notify_tls.clone(),
                credential.clone(),
                hub.clone(),
                pending.clone(),
                stop.clone(),
            ))
        })
        .collect()
}

/// What every connection task reads: the configuration's per-socket rules
/// and the bridge's shared parts.
fn shared_state(
    config: BridgeConfig,
    hub: &hub::Hub,
    metrics: metrics::Metrics,
    api: link::Api,
    pending: link::Pending,
    shutdown: &CancellationToken,
) -> anyhow::Result<Arc<connection::Shared>> {
    Ok(Arc::new(connection::Shared {
        hub: hub.clone(),
        metrics,
        admissions: admission::Admissions::new(config.max_connections, config.max_per_user),
        api,
        pending,
        upstreams: upstream::Upstreams::new(&config.upstream)?,
        verifier: config.verifier,
        revocation: config.revocation.map(revocation::Revocation::new),
        topics: config.topics,
        queue: config.send_queue,
        rate_per_sec: config.rate_per_sec,
        burst: config.burst,
        ping_every: config.ping_every,
        max_subscriptions: config.max_subscriptions,
        peers: peers::PeerLimits::new(config.connect_rate_per_ip, config.connect_burst_per_ip),
        panel: config.panel,
        // A person at a form: a few a second, a burst for a quick series.
        panel_publishes: peers::PeerLimits::new(2, 10),
        shutdown: shutdown.clone(),
    }))
}

/// Sends the acks gathered from clients up every ACK_FLUSH_EVERY, until `stop`.
async fn flush_acks(hub: hub::Hub, stop: CancellationToken) {
    let mut tick = tokio::time::interval(ACK_FLUSH_EVERY);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => hub.flush_acks(),
        }
    }
}

/// Sockets are taken once a notify-svc link is up: one accepted before would
/// only get 503. Meanwhile connects wait in the listen backlog for a real
/// answer; a bridge that reaches no notify-svc serves (503) after
/// FIRST_LINK_WAIT, so clients and load balancers learn why.
async fn first_link(hub: &hub::Hub, urls: &[String], shutdown: &CancellationToken) {
    tokio::select! {
        () = hub.linked() => {}
        () = tokio::time::sleep(FIRST_LINK_WAIT) => {
            tracing::warn!(?urls, "no notify-svc reached yet: serving, with 503 until one is");
        }
        () = shutdown.cancelled() => {}
    }
}
