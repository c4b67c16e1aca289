//! SIGTERM and SIGINT become one cancellation: the single shutdown path.
//! SIGHUP means "reload" ([`crate::tls`] re-reads certificates); a
//! service with nothing to reload says so instead of dying of it.

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Cancels `token` on the first SIGTERM or SIGINT.
pub async fn cancel_on_signal(token: CancellationToken) {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = int.recv() => tracing::info!("SIGINT"),
    }
    token.cancel();
}

/// Logs each SIGHUP until `stop`, for a service without TLS: `systemctl
/// reload` must not kill it (SIGHUP's default action).
pub async fn nothing_to_reload(stop: CancellationToken) {
    let Ok(mut hangup) = signal(SignalKind::hangup()) else {
        return;
    };
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            Some(()) = hangup.recv() => tracing::info!("SIGHUP: no TLS certificates to reload"),
        }
    }
}
