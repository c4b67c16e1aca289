//! A connection's bounded send queue. The hub pushes without ever waiting (a
//! full queue marks a slow consumer); the connection's task pops. Lighter
//! than tokio's mpsc for this one-consumer case: nothing is allocated until
//! something is queued, where tokio's channel preallocates a 32-slot block
//! and cache-padded state (~1 KB per idle connection, a fifth of the budget).

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    task::Poll,
};

use futures::task::AtomicWaker;

use crate::hub::Outbound;

/// Capacity kept after a burst drained; more is given back.
const KEEP_CAPACITY: usize = 16;

/// The queue is at its bound.
#[derive(Debug)]
pub struct Full(pub Outbound);

pub struct SendQueue {
    items: Mutex<VecDeque<Outbound>>,
    waker: AtomicWaker,
    bound: usize,
}

impl SendQueue {
    pub fn new(bound: usize) -> Arc<Self> {
        Arc::new(Self {
            items: Mutex::new(VecDeque::new()),
            waker: AtomicWaker::new(),
            bound: bound.max(1),
        })
    }

    /// Queues `item` unless `bound` items wait already.
    pub fn push(&self, item: Outbound) -> Result<(), Full> {
        {
            let mut items = self.items.lock().expect("queue lock");
            if items.len() >= self.bound {
                return Err(Full(item));
            }
            items.push_back(item);
        }
        self.waker.wake();
        Ok(())
    }

    /// Queues the connection's own results (a store read, a publish answer)
    /// past the bound: there are a few at a time, and dropping one would
    /// stall a feed.
    pub fn push_local(&self, item: Outbound) {
        self.items.lock().expect("queue lock").push_back(item);
        self.waker.wake();
    }

    pub fn try_pop(&self) -> Option<Outbound> {
        let mut items = self.items.lock().expect("queue lock");
        let item = items.pop_front();
        if items.is_empty() && items.capacity() > KEEP_CAPACITY {
            *items = VecDeque::new();
        }
        item
    }

    /// The next item, waiting for one.
    pub async fn pop(&self) -> Outbound {
        std::future::poll_fn(|cx| {
            if let Some(item) = self.try_pop() {
                return Poll::Ready(item);
            }
            self.waker.register(cx.waker());
            // A push between the check and the registration woke nobody.
            match self.try_pop() {
                Some(item) => Poll::Ready(item),
                None => Poll::Pending,
            }
        })
        .await
    }

    pub fn len(&self) -> usize {
        self.items.lock().expect("queue lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::hub::CloseOrder;

    fn close(code: u16) -> Outbound {
        Outbound::Close(Box::new(CloseOrder {
            code,
            reason: String::new(),
        }))
    }

    fn code(item: Outbound) -> u16 {
        match item {
            Outbound::Close(order) => order.code,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn items_come_out_in_order_and_the_bound_holds() {
        let q = SendQueue::new(2);
        q.push(close(1)).unwrap();
        q.push(close(2)).unwrap();
        assert!(q.push(close(3)).is_err());
        // The connection's own results are not refused.
        q.push_local(close(4));
        assert_eq!(q.len(), 3);
        let popped: Vec<u16> = std::iter::from_fn(|| q.try_pop()).map(code).collect();
        assert_eq!(popped, [1, 2, 4]);
        assert!(q.is_empty());
    }

    #[test]
    fn a_drained_burst_gives_its_memory_back() {
        let q = SendQueue::new(1000);
        for i in 0..500 {
            q.push(close(i)).unwrap();
        }
        while q.try_pop().is_some() {}
        assert_eq!(q.items.lock().unwrap().capacity(), 0);
    }

    #[tokio::test]
    async fn pop_waits_for_a_push_from_another_task() {
        let q = SendQueue::new(4);
        let pusher = q.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            pusher.push(close(7)).unwrap();
        });
        let item = tokio::time::timeout(Duration::from_secs(5), q.pop())
            .await
            .expect("woken by the push");
        assert_eq!(code(item), 7);
    }
}
