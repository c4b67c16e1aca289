//! systemd's notify protocol for `Type=notify` units: READY=1 once a
//! service takes work, STOPPING=1 on the way out, WATCHDOG=1 while it is
//! alive. Everything is a no-op when systemd did not start the process (no
//! `NOTIFY_SOCKET`, no `WATCHDOG_USEC`), as in tests and `notify up`.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

/// The service takes work now.
pub fn ready() {
    let _ = sd_notify::notify(&[NotifyState::Ready]);
}

/// The service is shutting down.
pub fn stopping() {
    let _ = sd_notify::notify(&[NotifyState::Stopping]);
}

/// Pings the watchdog at half its period until `shutdown`, each time
/// `alive()` says the service's own loop moved since the last ping (a
/// service without such a loop passes `|| true`: the runtime's timer firing
/// is then the proof of life). Returns at once without a watchdog.
pub async fn watchdog(mut alive: impl FnMut() -> bool, shutdown: CancellationToken) {
    let Some(period) = sd_notify::watchdog_enabled() else {
        return;
    };
    let every = (period / 2).max(Duration::from_millis(100));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        if alive() {
            let _ = sd_notify::notify(&[NotifyState::Watchdog]);
        }
    }
}
