//! Queues bounded in messages and in bytes, for the streams notify-svc
//! serves: each bridge's down stream (a full one drops live copies: the
//! bridge's clients catch up from the store by seq) and each Watch stream (a
//! full one makes its watcher wait, then read the store). A count alone let
//! 65,536 messages of 64 KiB (4 GiB) wait for one slow or rogue bridge.
//!
//! Every queued message holds permits of a byte semaphore, released once the
//! stream hands it to the transport (which h2 flow control bounds in turn).

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::Stream;

/// What a queue may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bound {
    pub messages: usize,
    pub bytes: usize,
}

/// The sending side; cheap to clone.
#[derive(Debug)]
pub struct Sender<T> {
    tx: mpsc::Sender<(T, OwnedSemaphorePermit)>,
    bytes: Arc<Semaphore>,
    max_bytes: usize,
    /// A message's size in bytes.
    weigh: fn(&T) -> usize,
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            bytes: Arc::clone(&self.bytes),
            max_bytes: self.max_bytes,
            weigh: self.weigh,
        }
    }
}

/// The receiving side, as a stream.
#[derive(Debug)]
pub struct Receiver<T> {
    rx: mpsc::Receiver<(T, OwnedSemaphorePermit)>,
}

/// A queue within `bound`, its messages weighed by `weigh`.
pub fn channel<T>(bound: Bound, weigh: fn(&T) -> usize) -> (Sender<T>, Receiver<T>) {
    let (tx, rx) = mpsc::channel(bound.messages.max(1));
    let max_bytes = bound.bytes.clamp(1, Semaphore::MAX_PERMITS);
    let sender = Sender {
        tx,
        bytes: Arc::new(Semaphore::new(max_bytes)),
        max_bytes,
        weigh,
    };
    (sender, Receiver { rx })
}

impl<T> Sender<T> {
    /// Permits for `item`: one larger than the whole bound still goes, alone.
    fn permits(&self, item: &T) -> u32 {
        let len = (self.weigh)(item);
        u32::try_from(len.clamp(1, self.max_bytes)).unwrap_or(u32::MAX)
    }

    /// Queues `item` if it fits now; gives it back if not.
    pub fn try_send(&self, item: T) -> Result<(), T> {
        let permits = self.permits(&item);
        let Ok(permit) = Arc::clone(&self.bytes).try_acquire_many_owned(permits) else {
            return Err(item);
        };
        self.tx
            .try_send((item, permit))
            .map_err(|e| e.into_inner().0)
    }

    /// Queues `item` once it fits; gives it back if the receiver is gone.
    pub async fn send(&self, item: T) -> Result<(), T> {
        let permits = self.permits(&item);
        let acquired = tokio::select! {
            permit = Arc::clone(&self.bytes).acquire_many_owned(permits) => permit.ok(),
            () = self.tx.closed() => None,
        };
        let Some(permit) = acquired else {
            return Err(item);
        };
        self.tx.send((item, permit)).await.map_err(|e| e.0.0)
    }

    /// Resolves when the receiver is gone.
    pub async fn closed(&self) {
        self.tx.closed().await;
    }
}

impl<T> Stream for Receiver<T> {
    type Item = T;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        // The permit is dropped here: the message now belongs to the transport.
        self.rx
            .poll_recv(cx)
            .map(|next| next.map(|(item, _permit)| item))
    }
}

#[cfg(test)]
mod tests {
    use tokio_stream::StreamExt;

    use super::*;

    /// (name, size in bytes)
    type Item = (u32, usize);

    fn weigh(item: &Item) -> usize {
        item.1
    }

    #[tokio::test]
    async fn a_queue_is_full_by_bytes_before_messages_and_frees_as_it_is_read() {
        let (tx, mut rx) = channel(
            Bound {
                messages: 100,
                bytes: 1000,
            },
            weigh,
        );
        for n in 0..3 {
            tx.try_send((n, 300)).unwrap();
        }
        assert_eq!(tx.try_send((9, 300)), Err((9, 300)), "1,200 bytes > 1,000");
        tx.try_send((5, 100)).unwrap();
        assert_eq!(rx.next().await, Some((0, 300)));
        tx.try_send((6, 300)).unwrap();
        // One message larger than the bound goes alone.
        let (big_tx, mut big_rx) = channel(
            Bound {
                messages: 10,
                bytes: 10,
            },
            weigh,
        );
        big_tx.try_send((1, 1_000_000)).unwrap();
        assert_eq!(big_tx.try_send((2, 1)), Err((2, 1)));
        assert_eq!(big_rx.next().await, Some((1, 1_000_000)));
        big_tx.try_send((2, 1)).unwrap();
    }

    #[tokio::test]
    async fn send_waits_for_room_and_ends_when_the_receiver_goes() {
        let (tx, mut rx) = channel(
            Bound {
                messages: 10,
                bytes: 10,
            },
            weigh,
        );
        tx.send((1, 8)).await.unwrap();
        let waiting = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send((2, 8)).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "no room yet");
        assert_eq!(rx.next().await, Some((1, 8)));
        waiting.await.unwrap().unwrap();
        assert_eq!(rx.next().await, Some((2, 8)));
        let stuck = tokio::spawn({
            let tx = tx.clone();
            async move {
                tx.send((3, 8)).await.unwrap();
                tx.send((4, 8)).await
            }
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        drop(rx);
        assert_eq!(stuck.await.unwrap(), Err((4, 8)));
    }
}
