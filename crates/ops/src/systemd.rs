//! systemd's notify protocol for `Type=notify` units: READY=1 once a
//! service takes work, STOPPING=1 on the way out, WATCHDOG=1 while it is
//! alive. Everything is a no-op when systemd did not start the process (no
//! `NOTIFY_SOCKET`, no `WATCHDOG_USEC`), as in tests and `notify up`.

use std::{
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::Duration,
};

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

/// The daemon pattern: READY=1 once `ready` is set, then the watchdog fed
/// while `beats` moves (the daemon's loop counts its turns there).
pub async fn ready_then_watchdog(
    ready: &AtomicBool,
    beats: &AtomicU64,
    shutdown: CancellationToken,
) {
    while !ready.load(Ordering::Relaxed) {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
    self::ready();
    let mut last_beat = 0;
    let alive = move || {
        let beat = beats.load(Ordering::Relaxed);
        std::mem::replace(&mut last_beat, beat) != beat
    };
    watchdog(alive, shutdown).await;
}
