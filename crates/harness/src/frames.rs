//! Reading a WebSocket client's frames in tests.

use std::time::Duration;

use futures::{Stream, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::{Error, Message};

/// How long a test waits for a frame it expects.
const FRAME_WAIT: Duration = Duration::from_secs(10);

/// The next text frame, parsed; pings and `counts` frames (which follow
/// every inbox message; badges are tested with [`next_frame`]) are passed
/// over. Panics if none comes within 10 s or the socket ends.
pub async fn next_json<S>(socket: &mut S) -> Value
where
    S: Stream<Item = Result<Message, Error>> + Unpin,
{
    next_json_within(socket, FRAME_WAIT).await
}

/// [`next_json`], waiting up to `within`.
pub async fn next_json_within<S>(socket: &mut S, within: Duration) -> Value
where
    S: Stream<Item = Result<Message, Error>> + Unpin,
{
    loop {
        let frame = next_frame_within(socket, within).await;
        if frame["type"] != "counts" {
            return frame;
        }
    }
}

/// The next text frame of any type, parsed (pings passed over).
pub async fn next_frame<S>(socket: &mut S) -> Value
where
    S: Stream<Item = Result<Message, Error>> + Unpin,
{
    next_frame_within(socket, FRAME_WAIT).await
}

async fn next_frame_within<S>(socket: &mut S, within: Duration) -> Value
where
    S: Stream<Item = Result<Message, Error>> + Unpin,
{
    loop {
        let frame = tokio::time::timeout(within, socket.next())
            .await
            .unwrap_or_else(|_| panic!("a frame within {within:?}"))
            .expect("socket open")
            .expect("no socket error");
        if let Message::Text(text) = frame {
            return serde_json::from_str(text.as_str()).expect("a JSON frame");
        }
    }
}
