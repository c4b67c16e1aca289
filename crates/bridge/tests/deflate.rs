//! permessage-deflate end to end: a real notify-svc and bridge, a client
//! that speaks RFC 7692 over a raw socket (compressing its own frames with
//! context takeover, as browsers do) beside a plain tungstenite client.

mod common;

use std::time::Duration;

use common::{Platform, to_topic};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// A client that offered permessage-deflate.
struct DeflateClient {
    stream: TcpStream,
    read: Vec<u8>,
    compress: Compress,
    /// The upgrade's response headers, lowercased.
    response: String,
    /// Bytes of message frames read, as they were on the wire.
    wire_bytes: usize,
}

impl DeflateClient {
    async fn connect(p: &Platform, user: &str, offer: &str) -> Self {
        let addr = p.ws.trim_start_matches("ws://").trim_end_matches("/ws");
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Authorization: Bearer {}\r\nSec-WebSocket-Extensions: {offer}\r\n\r\n",
            p.token(user)
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut read = Vec::new();
        let end = loop {
            if let Some(at) = read.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let mut chunk = [0u8; 1024];
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the bridge hung up during the upgrade");
            read.extend_from_slice(&chunk[..n]);
        };
        let response = String::from_utf8_lossy(&read[..end]).to_lowercase();
        assert!(response.starts_with("http/1.1 101"), "{response}");
        read.drain(..end);
        Self {
            stream,
            read,
            compress: Compress::new(Compression::default(), false),
            response,
            wire_bytes: 0,
        }
    }

    /// The next text message (pings skipped), and whether it came compressed.
    async fn next(&mut self) -> (bool, Value) {
        loop {
            let (b0, payload, len) = tokio::time::timeout(Duration::from_secs(10), self.frame())
                .await
                .expect("a frame within 10 s");
            if b0 & 0x0f != 1 {
                continue;
            }
            assert!(b0 & 0x80 != 0, "the bridge sends messages in one frame");
            self.wire_bytes += len;
            let compressed = b0 & 0x40 != 0;
            let text = if compressed {
                // server_no_context_takeover: each message inflates alone.
                let mut input = payload;
                input.extend_from_slice(&TAIL);
                let mut out = Vec::with_capacity(1 << 20);
                Decompress::new(false)
                    .decompress_vec(&input, &mut out, FlushDecompress::Sync)
                    .unwrap();
                out
            } else {
                payload
            };
            return (compressed, serde_json::from_slice(&text).unwrap());
        }
    }

    /// One whole frame: its first byte, payload and bytes on the wire.
    async fn frame(&mut self) -> (u8, Vec<u8>, usize) {
        loop {
            if self.read.len() >= 2 {
                let (len, at) = match self.read[1] & 0x7f {
                    126 if self.read.len() >= 4 => (
                        usize::from(u16::from_be_bytes([self.read[2], self.read[3]])),
                        4,
                    ),
                    127 if self.read.len() >= 10 => (
                        u64::from_be_bytes(self.read[2..10].try_into().unwrap()) as usize,
                        10,
                    ),
                    126 | 127 => (usize::MAX, 0),
                    n => (usize::from(n), 2),
                };
                if len != usize::MAX && self.read.len() >= at + len {
                    assert_eq!(self.read[1] & 0x80, 0, "server frames are not masked");
                    let b0 = self.read[0];
                    let payload = self.read[at..at + len].to_vec();
                    self.read.drain(..at + len);
                    return (b0, payload, at + len);
                }
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the bridge closed the socket");
            self.read.extend_from_slice(&chunk[..n]);
        }
    }

    /// Sends `frame` compressed, with the context of the frames before it.
    async fn send(&mut self, frame: Value) {
        let data = frame.to_string().into_bytes();
        let mut out = Vec::with_capacity(data.len() + 64);
        let start = self.compress.total_in();
        while self.compress.total_in() - start < data.len() as u64 || out.len() == out.capacity() {
            out.reserve(256);
            let at = (self.compress.total_in() - start) as usize;
            self.compress
                .compress_vec(&data[at..], &mut out, FlushCompress::Sync)
                .unwrap();
        }
        out.truncate(out.len() - TAIL.len());
        let key = [0x12, 0x34, 0x56, 0x78];
        let mut wire = vec![0xC1];
        match out.len() {
            n @ 0..=125 => wire.push(0x80 | n as u8),
            n => {
                wire.push(0x80 | 126);
                wire.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        wire.extend_from_slice(&key);
        wire.extend(out.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        self.stream.write_all(&wire).await.unwrap();
    }
}

/// A `fights:live` event as BetTracker publishes them.
fn fight_event(n: u32) -> String {
    json!({
        "fight_id": format!("f-{n:06}"),
        "status": "live",
        "round": n % 12 + 1,
        "red": {"user_id": "user-red-0001", "stake": 2500, "odds": 1.85},
        "blue": {"user_id": "user-blue-0002", "stake": 2500, "odds": 2.05},
        "viewers": 10_000 + n,
        "updated_at": "2026-12-07T15:00:00Z",
    })
    .to_string()
}

#[tokio::test]
async fn a_client_offering_deflate_gets_each_message_compressed_and_may_compress_its_own() {
    let p = Platform::start().await;
    let mut alice =
        DeflateClient::connect(&p, "alice", "permessage-deflate; client_max_window_bits").await;
    assert!(
        alice.response.contains(
            "sec-websocket-extensions: permessage-deflate; server_no_context_takeover\r\n"
        ),
        "{}",
        alice.response
    );
    let (compressed, welcome) = alice.next().await;
    assert_eq!(welcome["type"], "welcome");
    assert!(!compressed, "the bridge's own frames go plain");

    // Two compressed subscribes, the second referring into the first.
    alice
        .send(json!({"action": "subscribe", "topic": "fights:live", "id": 1}))
        .await;
    alice
        .send(json!({"action": "subscribe", "topic": "fights:f-000001", "id": 2}))
        .await;
    for id in [1, 2] {
        let (_, reply) = alice.next().await;
        assert_eq!(reply["type"], "subscribed", "{reply}");
        assert_eq!(reply["id"], id);
    }
    let mut bob = p.connect("bob", "").await;
    assert_eq!(bob.next().await["type"], "welcome");
    bob.send(json!({"action": "subscribe", "topic": "fights:live"}))
        .await;
    assert_eq!(bob.next().await["type"], "subscribed");

    let mut api = p.api().await;
    for n in 1..=20 {
        api.publish(to_topic("fights:live", &fight_event(n)))
            .await
            .unwrap();
    }
    let mut plain_bytes = 0;
    for n in 1..=20u32 {
        let (compressed, m) = alice.next().await;
        assert!(compressed, "a fight event shrinks: {m}");
        assert_eq!(m["seq"], n);
        let want: Value = serde_json::from_str(&fight_event(n)).unwrap();
        assert_eq!(m["data"], want);
        let theirs = bob.next().await;
        assert_eq!(theirs, m, "the plain client gets the same message");
        plain_bytes += theirs.to_string().len() + 4;
    }
    assert!(
        alice.wire_bytes * 10 < plain_bytes * 8,
        "compressed {} bytes against ~{plain_bytes} plain",
        alice.wire_bytes
    );
}

#[tokio::test]
async fn with_deflate_off_an_offer_is_declined_and_frames_go_plain() {
    let p = Platform::start_with(|config| config.deflate = false).await;
    let mut alice = DeflateClient::connect(&p, "alice", "permessage-deflate").await;
    assert!(
        !alice.response.contains("sec-websocket-extensions"),
        "{}",
        alice.response
    );
    assert_eq!(alice.next().await.1["type"], "welcome");
    alice
        .stream
        .write_all(&masked_text(
            &json!({"action": "subscribe", "topic": "fights:live"}).to_string(),
        ))
        .await
        .unwrap();
    assert_eq!(alice.next().await.1["type"], "subscribed");
    p.api()
        .await
        .publish(to_topic("fights:live", &fight_event(1)))
        .await
        .unwrap();
    let (compressed, m) = alice.next().await;
    assert!(!compressed);
    assert_eq!(m["seq"], 1);
}

/// A plain masked text frame.
fn masked_text(text: &str) -> Vec<u8> {
    let key = [1, 2, 3, 4];
    let mut wire = vec![0x81, 0x80 | u8::try_from(text.len()).unwrap()];
    wire.extend_from_slice(&key);
    wire.extend(text.bytes().enumerate().map(|(i, b)| b ^ key[i % 4]));
    wire
}
