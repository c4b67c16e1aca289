//! The bytes under one WebSocket. On a plain TCP connection (production: TLS
//! ends at the load balancer) the socket lives in the connection's
//! [`SendQueue`], shared with the fan-out, and tungstenite reads and writes
//! it through `Raw::Shared`: every write marks the connection busy first
//! and sends the tail of a short direct write before its own bytes, so frames
//! never interleave (see [`crate::queue`]). Over TLS (wss served by the
//! bridge itself) the socket is tungstenite's alone (`Raw::Own`). When the
//! client agreed to permessage-deflate, its compressed messages are made
//! plain on the way up ([`crate::deflate`]).

use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use hyper::{body::Bytes, upgrade::Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::{
    deflate::{Agreed, Inflate},
    queue::{Bound, SendQueue},
};

/// What tungstenite reads and writes: the socket, and the inflater of the
/// client's compressed messages when permessage-deflate was agreed.
pub struct WireIo {
    raw: Raw,
    inflate: Option<Box<Inflate>>,
}

/// The socket under a WebSocket.
enum Raw {
    /// A plain TCP socket held by the queue; `read_ahead` is what the HTTP
    /// server had read past the upgrade request.
    Shared {
        queue: Arc<SendQueue>,
        read_ahead: Bytes,
    },
    Own(TokioIo<Upgraded>),
}

impl WireIo {
    /// The upgraded socket and the connection's queue: shared when the
    /// socket is plain TCP. `deflate`: what the upgrade agreed to, and the
    /// largest message a client may send (inflated or not).
    pub fn new(
        upgraded: Upgraded,
        bound: Bound,
        deflate: Option<&Agreed>,
        max_message: usize,
    ) -> (Self, Arc<SendQueue>) {
        let max_compressed = deflate.map(|agreed| agreed.max_compressed);
        let inflate = deflate.map(|agreed| Box::new(Inflate::new(agreed, max_message)));
        let (raw, queue) = match upgraded.downcast::<TokioIo<tokio::net::TcpStream>>() {
            Ok(parts) => {
                let stream = Some(parts.io.into_inner());
                let queue = SendQueue::with_line(bound, stream, max_compressed);
                // A copy: the slice would keep the HTTP server's whole read
                // buffer (8 KiB and more) alive for the connection's life.
                let read_ahead = Bytes::copy_from_slice(&parts.read_buf);
                let raw = Raw::Shared {
                    queue: queue.clone(),
                    read_ahead,
                };
                (raw, queue)
            }
            Err(upgraded) => (
                Raw::Own(TokioIo::new(upgraded)),
                SendQueue::with_line(bound, None, max_compressed),
            ),
        };
        (Self { raw, inflate }, queue)
    }
}

impl Raw {
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self {
            Self::Shared { queue, read_ahead } => {
                if !read_ahead.is_empty() {
                    let n = read_ahead.len().min(buf.remaining());
                    buf.put_slice(&read_ahead[..n]);
                    *read_ahead = read_ahead.slice(n..);
                    return Poll::Ready(Ok(()));
                }
                queue.poll_read_line(cx, buf)
            }
            Self::Own(io) => Pin::new(io).poll_read(cx, buf),
        }
    }
}

impl AsyncRead for WireIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(inflate) = &mut this.inflate else {
            return this.raw.poll_read(cx, buf);
        };
        loop {
            if !inflate.out.is_empty() {
                let n = inflate.out.len().min(buf.remaining());
                buf.put_slice(&inflate.out[..n]);
                inflate.out.drain(..n);
                if inflate.out.is_empty() && inflate.out.capacity() > 4096 {
                    inflate.out = Vec::new();
                }
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 2048];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(this.raw.poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                // End of stream.
                return Poll::Ready(Ok(()));
            }
            inflate.push(read.filled())?;
        }
    }
}

impl AsyncWrite for WireIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().raw {
            Raw::Shared { queue, .. } => queue.poll_write_line(cx, buf),
            Raw::Own(io) => Pin::new(io).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().raw {
            Raw::Shared { queue, .. } => queue.poll_flush_line(cx),
            Raw::Own(io) => Pin::new(io).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().raw {
            // What is written goes out; the socket closes when the
            // connection drops it (the queue may outlive it a little).
            Raw::Shared { queue, .. } => queue.poll_flush_line(cx),
            Raw::Own(io) => Pin::new(io).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::VecDeque, time::Duration};

    use notify_proto::v1 as pb;
    use proptest::prelude::*;
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::{TcpListener, TcpSocket, TcpStream},
    };

    use super::*;
    use crate::{
        queue::{Full, Local, Outbound, Prepared},
        sequencer::Sequencer,
    };

    /// A queue holding the server side of a loopback connection (its send
    /// buffer `sndbuf` bytes, if given), tungstenite's view of it, and the
    /// client side.
    async fn line(sndbuf: Option<u32>) -> (Arc<SendQueue>, WireIo, TcpStream) {
        let socket = TcpSocket::new_v4().unwrap();
        if let Some(size) = sndbuf {
            socket.set_send_buffer_size(size).unwrap();
        }
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener: TcpListener = socket.listen(8).unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let queue = SendQueue::with_line(Bound::default(), Some(server), None);
        let io = WireIo {
            raw: Raw::Shared {
                queue: queue.clone(),
                read_ahead: Bytes::new(),
            },
            inflate: None,
        };
        (queue, io, client)
    }

    /// One delivery offered alone: 1 if written directly, 0 if queued.
    fn offer(queue: &SendQueue, message: &Arc<Prepared>) -> Result<usize, Full> {
        queue.offer_all(std::slice::from_ref(message))
    }

    fn inbox(seq: u64, pad: usize) -> Arc<Prepared> {
        Prepared::new(pb::StoredMessage {
            message_id: format!("m{seq}"),
            seq,
            user_id: "u".into(),
            event: "e".into(),
            data: format!("\"{}\"", "x".repeat(pad)),
            ..Default::default()
        })
        .unwrap()
    }

    /// The seqs of the message frames in `bytes` (whole frames only).
    fn seqs(mut bytes: &[u8]) -> Vec<u64> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            assert_eq!(bytes[0], 0x81, "a final text frame starts here");
            let (len, at) = match bytes[1] {
                126 => (usize::from(u16::from_be_bytes([bytes[2], bytes[3]])), 4),
                127 => (
                    usize::try_from(u64::from_be_bytes(bytes[2..10].try_into().unwrap())).unwrap(),
                    10,
                ),
                n => (usize::from(n), 2),
            };
            let frame: serde_json::Value = serde_json::from_slice(&bytes[at..at + len]).unwrap();
            out.push(frame["seq"].as_u64().unwrap());
            bytes = &bytes[at + len..];
        }
        out
    }

    #[tokio::test]
    async fn a_parked_connection_due_the_message_gets_it_from_the_fan_out() {
        let (queue, _io, mut client) = line(None).await;
        let first = inbox(5, 10);
        // Not parked yet: queued.
        assert_eq!(offer(&queue, &first), Ok(0));
        assert!(matches!(queue.try_pop(), Some(Outbound::Deliver(_))));

        queue.park(Some(4), std::iter::empty());
        assert_eq!(offer(&queue, &first), Ok(1));
        let mut got = vec![0; first.wire.len()];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, first.wire);
        // Out of turn (6 is missing): the task sequences it, and what
        // follows waits behind it.
        assert_eq!(offer(&queue, &inbox(7, 10)), Ok(0));
        assert_eq!(offer(&queue, &inbox(6, 10)), Ok(0));
        let mut moved = Vec::new();
        queue.unpark(|feed, last| moved.push((feed.cloned(), last)));
        assert_eq!(moved, [(None, 5)]);
    }

    #[tokio::test]
    async fn the_rest_of_a_short_direct_write_goes_before_what_the_task_writes() {
        let (queue, mut io, mut client) = line(Some(4096)).await;
        queue.park(Some(0), std::iter::empty());
        // Far more than the socket takes at once.
        let big = inbox(1, 4 << 20);
        assert_eq!(offer(&queue, &big), Ok(1));
        assert!(
            matches!(queue.try_pop(), Some(Outbound::Local(l)) if matches!(*l, Local::Flush)),
            "the task is woken to finish the write"
        );
        assert_eq!(offer(&queue, &inbox(2, 10)), Ok(0));
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            client.read_to_end(&mut all).await.unwrap();
            all
        });
        let next = inbox(2, 10);
        io.write_all(&next.wire).await.unwrap();
        io.flush().await.unwrap();
        drop((io, queue));
        let all = tokio::time::timeout(Duration::from_secs(20), reader)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(seqs(&all), [1, 2]);
    }

    /// What the test's connection does in one step.
    #[derive(Debug, Clone)]
    enum Step {
        /// The fan-out offers the next `n` live copies, in bursts of up to
        /// `burst` (as the link hands them).
        Live(usize, usize),
        /// The task wakes, drains its queue and finishes a store read of
        /// up to this many messages, if one was asked for; then parks.
        Task(u64),
    }

    fn steps() -> impl Strategy<Value = Vec<Step>> {
        prop::collection::vec(
            prop_oneof![
                (1usize..40, 1usize..6).prop_map(|(n, burst)| Step::Live(n, burst)),
                (1u64..120).prop_map(Step::Task),
            ],
            1..60,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Replay from the store, live frames through the queue and direct
        /// writes by the fan-out, interleaved at random over a small socket
        /// buffer (short writes happen), give the client every seq once, in
        /// order, in whole frames.
        #[test]
        fn replay_live_frames_and_direct_writes_make_one_gap_free_stream(
            steps in steps(),
            stored_at_connect in 0u64..300,
            live_count in 1u64..400,
            window in 1usize..9,
            shuffle in any::<u64>(),
            pad in 0usize..600,
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let run = rt.block_on(interleave(steps, stored_at_connect, live_count, (window, shuffle), pad));
            let want: Vec<u64> = (1..=stored_at_connect + live_count).collect();
            prop_assert_eq!(run.seqs, want);
        }
    }

    /// What the client got, and how many direct writes (and short ones)
    /// happened on the way.
    #[derive(Default)]
    struct Run {
        seqs: Vec<u64>,
        direct: usize,
        short: usize,
    }

    async fn interleave(
        steps: Vec<Step>,
        stored_at_connect: u64,
        live_count: u64,
        (window, mut shuffle): (usize, u64),
        pad: usize,
    ) -> Run {
        let mut run = Run::default();
        let (queue, mut io, mut client) = line(Some(8192)).await;
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            client.read_to_end(&mut all).await.unwrap();
            all
        });
        let last = stored_at_connect + live_count;
        // Live copies come shuffled within windows (a later commit may
        // overtake an earlier one a little), some twice.
        let mut live: Vec<u64> = (stored_at_connect + 1..=last).collect();
        for chunk in live.chunks_mut(window) {
            for i in (1..chunk.len()).rev() {
                shuffle = shuffle
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                chunk.swap(i, (shuffle >> 33) as usize % (i + 1));
            }
        }
        let twice: Vec<u64> = live.iter().copied().step_by(7).collect();
        live.extend(twice);
        let mut live: VecDeque<u64> = live.into();
        // Committed before delivered: the store holds up to the highest seq
        // delivered live so far.
        let mut committed = stored_at_connect;
        let (mut seq, after) = Sequencer::<Arc<Prepared>>::resume(0);
        let mut fetch = Some(after);
        let finish = std::iter::repeat_n(Step::Task(500), 2 + (last / 500) as usize * 2);
        for step in steps
            .into_iter()
            .chain(std::iter::once(Step::Live(usize::MAX, 1)))
            .chain(finish)
        {
            match step {
                Step::Live(n, burst) => {
                    let copies: Vec<u64> = live.drain(..n.min(live.len())).collect();
                    for chunk in copies.chunks(burst) {
                        committed = committed.max(chunk.iter().copied().max().unwrap_or(0));
                        let messages: Vec<_> = chunk.iter().map(|&s| inbox(s, pad)).collect();
                        match queue.offer_all(&messages) {
                            Ok(written) => run.direct += written,
                            Err(_) => panic!("the queue's bound holds 1,024"),
                        }
                    }
                }
                Step::Task(page) => {
                    queue.unpark(|_, last| seq.advance(last));
                    let mut emit = Vec::new();
                    while let Some(item) = queue.try_pop() {
                        match item {
                            Outbound::Deliver(m) => {
                                let out = seq.live(m.seq, m);
                                emit.extend(out.emit);
                                fetch = fetch.or(out.fetch_after);
                            }
                            Outbound::Local(_) => run.short += 1,
                            Outbound::Close(_) => unreachable!(),
                        }
                    }
                    if let Some(after) = fetch.take() {
                        let end = committed.min(after + page);
                        let stored = (after + 1..=end).map(|s| (s, inbox(s, pad))).collect();
                        let out = seq.stored(stored, end == committed);
                        emit.extend(out.emit);
                        fetch = out.fetch_after;
                    }
                    for m in emit {
                        io.write_all(&m.wire).await.unwrap();
                    }
                    io.flush().await.unwrap();
                    queue.park(seq.in_sync(), std::iter::empty());
                }
            }
        }
        queue.unpark(|_, _| {});
        drop((io, queue));
        let all = tokio::time::timeout(Duration::from_secs(30), reader)
            .await
            .unwrap()
            .unwrap();
        run.seqs = seqs(&all);
        run
    }

    #[tokio::test]
    async fn the_interleaving_writes_directly_and_short() {
        // Live bursts between turns of the task, large frames over the
        // small buffer: both kinds of direct write happen, one message at a
        // time and several per write.
        for burst in [1, 5] {
            let steps = [Step::Task(500), Step::Live(5, burst), Step::Task(500)]
                .into_iter()
                .cycle()
                .take(90)
                .collect();
            let run = interleave(steps, 10, 150, (1, 0), 3000).await;
            assert_eq!(run.seqs, (1..=160).collect::<Vec<_>>());
            assert!(
                run.direct > 20,
                "burst {burst}: {} direct writes",
                run.direct
            );
            assert!(run.short > 0, "burst {burst}: no short direct write");
        }
    }

    #[tokio::test]
    async fn a_burst_due_next_goes_out_in_one_write_up_to_the_first_out_of_turn() {
        let (queue, _io, mut client) = line(None).await;
        queue.park(Some(3), std::iter::empty());
        let burst = [inbox(4, 10), inbox(5, 10), inbox(7, 10), inbox(6, 10)];
        // 4 and 5 are due; 7 is not, so it and what follows wait for the task.
        assert_eq!(queue.offer_all(&burst), Ok(2));
        let want: Vec<u8> = [&burst[0].wire[..], &burst[1].wire[..]].concat();
        let mut got = vec![0; want.len()];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(seqs(&got), [4, 5]);
        let queued: Vec<u64> = std::iter::from_fn(|| queue.try_pop())
            .map(|item| match item {
                Outbound::Deliver(m) => m.seq,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(queued, [7, 6]);
        let mut moved = Vec::new();
        queue.unpark(|feed, last| moved.push((feed.cloned(), last)));
        assert_eq!(moved, [(None, 5)]);
    }
}
