//! permessage-deflate (RFC 7692): the offer a client makes in its upgrade,
//! the one compressed frame per message every subscriber shares, and the
//! client's compressed frames made plain again before tungstenite reads them.
//!
//! The bridge always answers `server_no_context_takeover`: each message is
//! compressed on its own, once, when the first connection that negotiated
//! deflate is due it, and the same bytes go to every such subscriber (a
//! compressor with context would be one per socket, each message compressed
//! per socket). Frames the bridge writes itself (welcome, acks, errors) go
//! uncompressed, which RFC 7692 allows message by message. A message the
//! deflate does not shrink goes plain too.
//!
//! tungstenite (0.30) refuses frames with RSV1 set, so [`Inflate`] sits under
//! it: it rewrites each compressed client message as one plain frame, masked
//! with a zero key, and passes everything else through byte for byte. Its
//! inflater (~43 KB) is made at a client's first compressed message and kept
//! while the client keeps its compression context (browsers do; a client
//! that offered `client_no_context_takeover` gets it dropped after each).

use std::{cell::RefCell, io};

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use hyper::{body::Bytes, header::HeaderValue};

use crate::protocol;

/// What ends every deflate block flushed with SYNC_FLUSH; RFC 7692 drops it
/// from the wire and the receiver adds it back.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// What the bridge agreed to with one client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agreed {
    /// The `Sec-WebSocket-Extensions` answer.
    pub response: HeaderValue,
    /// Largest message the bridge may send compressed: a client that asked
    /// for a smaller window (`server_max_window_bits`) gets larger ones
    /// plain (a message no longer than the window never refers past it).
    pub max_compressed: usize,
    /// The client resets its context after each message.
    pub client_no_context_takeover: bool,
}

/// The first acceptable permessage-deflate offer in a
/// `Sec-WebSocket-Extensions` header, if any (RFC 7692 §5 and §7.1).
pub fn negotiate<'a>(offers: impl Iterator<Item = &'a HeaderValue>) -> Option<Agreed> {
    offers
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .find_map(accept)
}

/// One offer (`permessage-deflate; param; param=value`), if the bridge can take it.
fn accept(offer: &str) -> Option<Agreed> {
    let mut parts = offer.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case("permessage-deflate") {
        return None;
    }
    let mut seen: Vec<&str> = Vec::new();
    let mut server_bits = None;
    let mut client_no_context_takeover = false;
    for part in parts {
        let (name, value) = match part.split_once('=') {
            Some((name, value)) => (name.trim(), Some(value.trim().trim_matches('"'))),
            None => (part, None),
        };
        // A parameter twice makes the offer invalid (§7.1).
        if seen.contains(&name) {
            return None;
        }
        seen.push(name);
        match (name, value) {
            ("server_no_context_takeover", None) => {}
            ("client_no_context_takeover", None) => client_no_context_takeover = true,
            ("server_max_window_bits", Some(v)) => server_bits = Some(window_bits(v)?),
            // The client may use any window up to 15: the inflater takes 32 KiB.
            ("client_max_window_bits", None) => {}
            ("client_max_window_bits", Some(v)) => {
                window_bits(v)?;
            }
            _ => return None,
        }
    }
    let mut response = String::from("permessage-deflate; server_no_context_takeover");
    if client_no_context_takeover {
        response.push_str("; client_no_context_takeover");
    }
    if let Some(bits) = server_bits {
        response.push_str(&format!("; server_max_window_bits={bits}"));
    }
    Some(Agreed {
        response: HeaderValue::from_str(&response).ok()?,
        max_compressed: server_bits.map_or(usize::MAX, |bits| 1 << bits),
        client_no_context_takeover,
    })
}

/// A window size parameter: 8 ..= 15.
fn window_bits(value: &str) -> Option<u8> {
    let bits: u8 = value.parse().ok()?;
    (8..=15).contains(&bits).then_some(bits)
}

thread_local! {
    /// Reset before each message (no context takeover): one per thread, not
    /// one per message (miniz's compressor state is ~300 KB).
    static COMPRESSOR: RefCell<Compress> = RefCell::new(Compress::new(Compression::fast(), false));
}

/// `payload` deflated alone, as the whole final text frame with RSV1 set,
/// and where its payload starts; None if that frame would not be shorter
/// than the plain one (`plain_len` bytes).
pub fn compress_text(payload: &[u8], plain_len: usize) -> Option<(Bytes, usize)> {
    let mut out = Vec::with_capacity(payload.len() / 2 + 64);
    COMPRESSOR.with_borrow_mut(|c| {
        c.reset();
        // Room grows until the compressor has emitted everything.
        loop {
            let before = c.total_in();
            let at = usize::try_from(before).ok()?;
            c.compress_vec(&payload[at..], &mut out, FlushCompress::Sync)
                .ok()?;
            if usize::try_from(c.total_in()).ok()? == payload.len() && out.len() < out.capacity() {
                return Some(());
            }
            out.reserve(out.capacity().max(64));
        }
    })?;
    if out.ends_with(&TAIL) {
        out.truncate(out.len() - TAIL.len());
    }
    let mut frame = Vec::with_capacity(out.len() + 10);
    protocol::put_frame_header(&mut frame, 0xC1, out.len(), None);
    let at = frame.len();
    if at + out.len() >= plain_len {
        return None;
    }
    frame.extend_from_slice(&out);
    Some((Bytes::from(frame), at))
}

/// A client message being gathered from its compressed frames.
struct Gathering {
    opcode: u8,
    data: Vec<u8>,
}

/// Client frames in, the same frames with compressed messages made plain
/// out (see the module doc).
pub struct Inflate {
    /// Bytes read and not yet parsed (a frame's header or a compressed frame
    /// not complete yet).
    pending: Vec<u8>,
    /// Rewritten bytes for tungstenite.
    pub out: Vec<u8>,
    /// Bytes of a plain frame still to copy through as they come.
    through: u64,
    gathering: Option<Gathering>,
    /// Inside a fragmented plain message: its continuations pass through.
    plain_message: bool,
    inflater: Option<Box<Decompress>>,
    client_no_context_takeover: bool,
    /// Largest message (compressed or inflated); past it the connection ends.
    max: usize,
}

/// A client sent what cannot be inflated within the limits.
fn invalid(why: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

impl Inflate {
    pub fn new(agreed: &Agreed, max: usize) -> Self {
        Self {
            pending: Vec::new(),
            out: Vec::new(),
            through: 0,
            gathering: None,
            plain_message: false,
            inflater: None,
            client_no_context_takeover: agreed.client_no_context_takeover,
            max,
        }
    }

    /// Takes bytes read off the socket; what tungstenite may read is in `out`.
    pub fn push(&mut self, mut input: &[u8]) -> io::Result<()> {
        if self.through > 0 {
            let n = input
                .len()
                .min(usize::try_from(self.through).unwrap_or(usize::MAX));
            self.out.extend_from_slice(&input[..n]);
            self.through -= n as u64;
            input = &input[n..];
        }
        if input.is_empty() {
            return Ok(());
        }
        self.pending.extend_from_slice(input);
        let mut at = 0;
        while at < self.pending.len() {
            match self.frame(at)? {
                Some(next) => at = next,
                None => break,
            }
        }
        self.pending.drain(..at);
        if self.pending.capacity() > 4096 && self.pending.len() < 1024 {
            self.pending.shrink_to(1024);
        }
        Ok(())
    }

    /// Handles the frame at `at` in `pending`: returns where the next one
    /// starts, or None if more bytes are needed.
    fn frame(&mut self, at: usize) -> io::Result<Option<usize>> {
        let bytes = &self.pending[at..];
        let Some(&[b0, b1]) = bytes.get(..2) else {
            return Ok(None);
        };
        let (fin, rsv1, opcode) = (b0 & 0x80 != 0, b0 & 0x40 != 0, b0 & 0x0f);
        let masked = b1 & 0x80 != 0;
        let (len, mut head) = match b1 & 0x7f {
            126 => match bytes.get(2..4) {
                Some(l) => (u64::from(u16::from_be_bytes([l[0], l[1]])), 4),
                None => return Ok(None),
            },
            127 => match bytes.get(2..10) {
                Some(l) => (u64::from_be_bytes(l.try_into().expect("8 bytes")), 10),
                None => return Ok(None),
            },
            n => (u64::from(n), 2),
        };
        let mask = if masked {
            let Some(key) = bytes.get(head..head + 4) else {
                return Ok(None);
            };
            head += 4;
            Some([key[0], key[1], key[2], key[3]])
        } else {
            None
        };
        let control = opcode & 0x08 != 0;
        let compressed = !control
            && mask.is_some()
            && match opcode {
                0 => self.gathering.is_some() && !rsv1,
                1 | 2 => rsv1 && self.gathering.is_none() && !self.plain_message,
                _ => false,
            };
        if !compressed {
            // Control frames, plain messages and anything tungstenite should
            // refuse itself (unmasked, RSV on a continuation, …) go through.
            if !control && (1..=2).contains(&opcode) {
                self.plain_message = !fin;
            } else if opcode == 0 && fin {
                self.plain_message = false;
            }
            let available = (bytes.len() - head) as u64;
            let now = len.min(available) as usize;
            self.out.extend_from_slice(&bytes[..head + now]);
            self.through = len - now as u64;
            return Ok(Some(at + head + now));
        }
        let len = usize::try_from(len).map_err(|_| invalid("frame too large"))?;
        let gathered = self.gathering.as_ref().map_or(0, |g| g.data.len());
        if gathered + len > self.max {
            return Err(invalid("compressed message too large"));
        }
        let Some(payload) = bytes.get(head..head + len) else {
            return Ok(None);
        };
        let key = mask.expect("compressed frames are masked");
        let gathering = self.gathering.get_or_insert_with(|| Gathering {
            opcode,
            data: Vec::new(),
        });
        gathering
            .data
            .extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        if fin {
            let message = self.gathering.take().expect("gathering");
            let plain = self.inflate(message.data)?;
            let first = 0x80 | message.opcode;
            protocol::put_frame_header(&mut self.out, first, plain.len(), Some([0; 4]));
            self.out.extend_from_slice(&plain);
        }
        Ok(Some(at + head + len))
    }

    /// One compressed message, inflated; at most `max` + 1 bytes (tungstenite
    /// refuses a message past its limit, and the connection ends there).
    fn inflate(&mut self, mut data: Vec<u8>) -> io::Result<Vec<u8>> {
        data.extend_from_slice(&TAIL);
        let inflater = self
            .inflater
            .get_or_insert_with(|| Box::new(Decompress::new(false)));
        let limit = self.max.saturating_add(1);
        let mut out = Vec::with_capacity((data.len() * 4).min(limit));
        let start_in = inflater.total_in();
        let ended = loop {
            let consumed =
                usize::try_from(inflater.total_in() - start_in).map_err(|_| invalid("inflate"))?;
            let status = inflater
                .decompress_vec(&data[consumed..], &mut out, FlushDecompress::Sync)
                .map_err(|_| invalid("the client's deflate stream is corrupt"))?;
            let consumed =
                usize::try_from(inflater.total_in() - start_in).map_err(|_| invalid("inflate"))?;
            let done = consumed == data.len() && out.len() < out.capacity();
            let ended = matches!(status, Status::StreamEnd);
            if done || ended || out.len() >= limit {
                break ended;
            }
            if out.len() == out.capacity() {
                out.reserve(out.capacity().max(256).min(limit - out.len()));
            } else if matches!(status, Status::BufError) {
                return Err(invalid("the client's deflate stream is truncated"));
            }
        };
        out.truncate(limit);
        // A final block (BFINAL) ended the client's stream: the next message
        // starts a new one.
        if self.client_no_context_takeover || ended {
            self.inflater = None;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn offer(value: &str) -> Option<Agreed> {
        negotiate([HeaderValue::from_str(value).unwrap()].iter())
    }

    #[test]
    fn browsers_offers_are_taken_with_server_no_context_takeover() {
        // Chrome's and Firefox's offers.
        for value in [
            "permessage-deflate; client_max_window_bits",
            "permessage-deflate",
        ] {
            let agreed = offer(value).expect(value);
            assert_eq!(
                agreed.response,
                "permessage-deflate; server_no_context_takeover"
            );
            assert_eq!(agreed.max_compressed, usize::MAX);
            assert!(!agreed.client_no_context_takeover);
        }
        let agreed =
            offer("permessage-deflate; client_no_context_takeover; server_max_window_bits=10")
                .unwrap();
        assert_eq!(
            agreed.response,
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
             server_max_window_bits=10"
        );
        assert_eq!(agreed.max_compressed, 1024);
        assert!(agreed.client_no_context_takeover);
        // The first acceptable offer of several wins.
        let agreed = offer("x-webkit-deflate-frame, permessage-deflate; foo, permessage-deflate");
        assert!(agreed.is_some());
    }

    #[test]
    fn offers_the_bridge_cannot_keep_are_declined() {
        for value in [
            "x-webkit-deflate-frame",
            "permessage-deflate; foo",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; client_max_window_bits=x",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; server_no_context_takeover=1",
        ] {
            assert_eq!(offer(value), None, "{value}");
        }
        assert_eq!(negotiate([].iter()), None);
    }

    /// A raw deflate stream's SYNC_FLUSH output for `data`, its tail cut
    /// (what a client sends; `c` keeps its context across messages).
    fn client_deflate(c: &mut Compress, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len() + 64);
        let start = c.total_in();
        while c.total_in() - start < data.len() as u64 || out.len() == out.capacity() {
            out.reserve(256);
            let at = (c.total_in() - start) as usize;
            c.compress_vec(&data[at..], &mut out, FlushCompress::Sync)
                .unwrap();
        }
        assert!(out.ends_with(&TAIL));
        out.truncate(out.len() - 4);
        out
    }

    fn inflate_alone(payload: &[u8]) -> Vec<u8> {
        let mut d = Decompress::new(false);
        let mut input = payload.to_vec();
        input.extend_from_slice(&TAIL);
        let mut out = Vec::with_capacity(1 << 20);
        d.decompress_vec(&input, &mut out, FlushDecompress::Sync)
            .unwrap();
        out
    }

    #[test]
    fn a_message_is_compressed_alone_into_one_frame_with_rsv1() {
        let json = format!(
            r#"{{"type":"message","data":{}}}"#,
            r#"{"fight":"f1","odds":1.5},"#.repeat(40)
        );
        let plain = crate::protocol::text_frame(json.as_bytes()).0.len();
        let (frame, at) = compress_text(json.as_bytes(), plain).expect("repetitive JSON shrinks");
        assert_eq!(frame[0], 0xC1, "FIN, RSV1, text");
        assert_eq!(usize::from(frame[1]), frame.len() - 2);
        assert_eq!(at, 2);
        assert_eq!(inflate_alone(&frame[at..]), json.as_bytes());
        // Twice the same: no context carried from one message to the next.
        assert_eq!(compress_text(json.as_bytes(), plain).unwrap().0, frame);
        // Too small to gain: sent plain.
        assert_eq!(compress_text(b"{}", 4), None);
    }

    /// A masked client frame.
    fn client_frame(b0: u8, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
        let mut out = Vec::new();
        protocol::put_frame_header(&mut out, b0, payload.len(), Some(key));
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        out
    }

    /// The frames in `bytes`: (first byte, unmasked payload).
    fn frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let (len, mut at) = match bytes[1] & 0x7f {
                126 => (usize::from(u16::from_be_bytes([bytes[2], bytes[3]])), 4),
                127 => (
                    u64::from_be_bytes(bytes[2..10].try_into().unwrap()) as usize,
                    10,
                ),
                n => (usize::from(n), 2),
            };
            let key = if bytes[1] & 0x80 != 0 {
                at += 4;
                bytes[at - 4..at].try_into().unwrap()
            } else {
                [0; 4]
            };
            let payload = bytes[at..at + len]
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ key[i % 4]);
            out.push((bytes[0], payload.collect()));
            bytes = &bytes[at + len..];
        }
        out
    }

    fn agreed(client_no_context_takeover: bool) -> Agreed {
        Agreed {
            response: HeaderValue::from_static("permessage-deflate"),
            max_compressed: usize::MAX,
            client_no_context_takeover,
        }
    }

    /// What a browser-like client sends: compressed messages with context
    /// takeover, one fragmented with a ping between its fragments, and
    /// plain frames among them; and what tungstenite should read.
    fn conversation() -> (Vec<u8>, Vec<(u8, Vec<u8>)>) {
        let mut c = Compress::new(Compression::default(), false);
        let first = br#"{"action":"subscribe","topic":"fights:live"}"#.to_vec();
        let second = br#"{"action":"subscribe","topic":"fights:f2"}"#.to_vec();
        let third = br#"{"action":"ack","seq":12345678}"#.repeat(30);
        let key = [0x37, 0xfa, 0x21, 0x3d];
        let mut wire = client_frame(0xC1, &client_deflate(&mut c, &first), key);
        wire.extend(client_frame(0x89, b"ping", key));
        // The second refers back into the first (context takeover).
        wire.extend(client_frame(0xC1, &client_deflate(&mut c, &second), key));
        wire.extend(client_frame(0x81, b"plain", key));
        let third_deflated = client_deflate(&mut c, &third);
        let (a, b) = third_deflated.split_at(third_deflated.len() / 2);
        wire.extend(client_frame(0x41, a, key));
        wire.extend(client_frame(0x8A, b"pong", key));
        wire.extend(client_frame(0x80, b, key));
        wire.extend(client_frame(0x88, &[0x03, 0xe8], key));
        let want = vec![
            (0x81, first),
            (0x89, b"ping".to_vec()),
            (0x81, second),
            (0x81, b"plain".to_vec()),
            (0x8A, b"pong".to_vec()),
            (0x81, third),
            (0x88, vec![0x03, 0xe8]),
        ];
        (wire, want)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// However the bytes arrive, tungstenite reads the same frames.
        #[test]
        fn compressed_client_messages_come_out_plain_in_order(cuts in prop::collection::vec(1usize..40, 1..200)) {
            let (wire, want) = conversation();
            let mut inflate = Inflate::new(&agreed(false), 64 * 1024);
            let mut rest = &wire[..];
            for cut in cuts.into_iter().chain(std::iter::repeat(usize::MAX)) {
                if rest.is_empty() {
                    break;
                }
                let (now, later) = rest.split_at(cut.min(rest.len()));
                inflate.push(now).unwrap();
                rest = later;
            }
            prop_assert_eq!(frames(&inflate.out), want);
        }
    }

    #[test]
    fn a_client_without_context_takeover_keeps_no_inflater() {
        let mut inflate = Inflate::new(&agreed(true), 1024);
        let mut c = Compress::new(Compression::default(), false);
        inflate
            .push(&client_frame(
                0xC1,
                &client_deflate(&mut c, b"{\"a\":1}"),
                [1, 2, 3, 4],
            ))
            .unwrap();
        assert!(inflate.inflater.is_none());
        assert_eq!(frames(&inflate.out), [(0x81, b"{\"a\":1}".to_vec())]);
    }

    #[test]
    fn a_bomb_stops_past_the_limit_and_garbage_is_refused() {
        let mut c = Compress::new(Compression::default(), false);
        let bomb = client_deflate(&mut c, &vec![b'a'; 1 << 20]);
        assert!(bomb.len() < 4096);
        let mut inflate = Inflate::new(&agreed(false), 4096);
        inflate
            .push(&client_frame(0xC1, &bomb, [9, 9, 9, 9]))
            .unwrap();
        // One byte past the limit: tungstenite refuses it (close 1009).
        let out = frames(&inflate.out);
        assert_eq!(out[0].1.len(), 4097);

        let mut inflate = Inflate::new(&agreed(false), 4096);
        let err = inflate
            .push(&client_frame(0xC1, &[0xff; 64], [1, 2, 3, 4]))
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        // A compressed message larger than the limit is refused before inflating.
        let mut inflate = Inflate::new(&agreed(false), 100);
        assert!(
            inflate
                .push(&client_frame(0xC1, &[0; 200], [1, 2, 3, 4]))
                .is_err()
        );
    }
}
