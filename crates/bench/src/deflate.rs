//! `notify-bench deflate`: what permessage-deflate saves on the wire and
//! costs the bridge, on a `fights:live` stream. Twice in one run — clients
//! that offer deflate, then clients that do not — N raw-socket clients follow
//! `fights:live` and M fight events (as BetTracker publishes them) are
//! published durably; each client counts the bytes and message frames it
//! reads. Prints bytes on the wire per delivery, bridge CPU per delivery,
//! and the two side by side.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use notify_proto::v1::{self as pb, notify_client::NotifyClient};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};

use crate::{CpuSample, under_test::BridgeArgs};

#[derive(clap::Args)]
pub struct DeflateArgs {
    #[command(flatten)]
    bridge: BridgeArgs,
    /// WebSocket clients following `fights:live`.
    #[arg(long, short = 'n', default_value_t = 1000)]
    clients: usize,
    /// Fight events published per pass.
    #[arg(long, short = 'm', default_value_t = 500)]
    messages: usize,
    /// Publishes per second (0: as fast as `--in-flight` allows; a load
    /// tool on one core falls behind plain frames then, and the bridge
    /// closes its sockets as slow consumers).
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// Publishes in flight at once when `--rate` is 0.
    #[arg(long, default_value_t = 16)]
    in_flight: usize,
    /// Process name of the bridge, for CPU.
    #[arg(long, default_value = "bridge")]
    bridge_process: String,
}

/// One pass's figures.
struct Pass {
    deliveries: u64,
    wire_bytes: u64,
    cpu_secs: f64,
    elapsed: Duration,
}

impl Pass {
    fn bytes_per_delivery(&self) -> f64 {
        self.wire_bytes as f64 / self.deliveries.max(1) as f64
    }

    fn cpu_us_per_delivery(&self) -> f64 {
        self.cpu_secs * 1e6 / self.deliveries.max(1) as f64
    }
}

/// A fight event as BetTracker publishes it to `fights:live` (the fields
/// vary per event the way a live board's do).
pub fn fight_event(n: usize) -> String {
    serde_json::json!({
        "fight_id": format!("f-{:06}", n % 40),
        "status": if n.is_multiple_of(7) { "settling" } else { "live" },
        "round": n % 12 + 1,
        "red": {"user_id": format!("user-{:06}", n * 31 % 100_000), "stake": 2500 + n % 500, "odds": 1.85},
        "blue": {"user_id": format!("user-{:06}", n * 17 % 100_000), "stake": 2500 + n % 300, "odds": 2.05},
        "pot": 5000 + n % 800,
        "viewers": 10_000 + n,
        "updated_at": "2026-12-07T15:00:00.000Z",
    })
    .to_string()
}

pub async fn run(args: DeflateArgs) -> anyhow::Result<()> {
    if args.clients == 0 || args.messages == 0 {
        bail!("--clients and --messages must be at least 1");
    }
    let tokens = args.bridge.tokens("bench-deflate", args.clients)?;
    let api = NotifyClient::connect(args.bridge.grpc.clone())
        .await
        .with_context(|| format!("connecting to notify-svc at {}", args.bridge.grpc))?;
    println!(
        "deflate bench: clients={} messages={} rate={} in-flight={} machine cores={}",
        args.clients,
        args.messages,
        args.rate,
        args.in_flight,
        crate::machine_cores()
    );
    let deflate = pass(&args, &api, &tokens, true).await?;
    let plain = pass(&args, &api, &tokens, false).await?;
    let sample = fight_event(1).len();
    println!("fights:live, {sample}-byte events (one sample), medians not taken (one pass each):");
    println!(
        "  {:<32} {:>12} {:>12} {:>8}",
        "", "deflate", "plain", "ratio"
    );
    let row = |name: &str, a: f64, b: f64| {
        println!("  {name:<32} {a:>12.2} {b:>12.2} {:>7.2}×", a / b.max(1e-9));
    };
    row(
        "bytes on the wire per delivery",
        deflate.bytes_per_delivery(),
        plain.bytes_per_delivery(),
    );
    row(
        "bridge CPU µs per delivery",
        deflate.cpu_us_per_delivery(),
        plain.cpu_us_per_delivery(),
    );
    row(
        "deliveries/s",
        deflate.deliveries as f64 / deflate.elapsed.as_secs_f64(),
        plain.deliveries as f64 / plain.elapsed.as_secs_f64(),
    );
    let expected = (args.clients * args.messages) as u64;
    if deflate.deliveries != expected || plain.deliveries != expected {
        bail!("deliveries were lost");
    }
    Ok(())
}

/// Connects every client (offering deflate or not), publishes the events
/// and waits until every client read them all.
async fn pass(
    args: &DeflateArgs,
    api: &NotifyClient<tonic::transport::Channel>,
    tokens: &[String],
    offer: bool,
) -> anyhow::Result<Pass> {
    let pid = crate::find_pid(&args.bridge_process).context("bridge process not found")?;
    let mut clients = Vec::with_capacity(tokens.len());
    for (i, token) in tokens.iter().enumerate() {
        let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i % 8) as u8));
        clients.push(Client::connect(args.bridge.ws, source, token, offer).await?);
    }
    for c in &mut clients {
        c.subscribe("fights:live").await?;
    }
    let expected = args.messages as u64;
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut c| tokio::spawn(async move { c.read_messages(expected).await }))
        .collect();
    let names = [args.bridge_process.as_str()];
    let before = CpuSample::take(&names);
    let started = Instant::now();
    let publish = |n: usize| {
        let mut api = api.clone();
        async move {
            api.publish(pb::PublishRequest {
                target: Some(pb::publish_request::Target::Topic("fights:live".into())),
                event: "fight".into(),
                data: fight_event(n),
                ..Default::default()
            })
            .await
        }
    };
    crate::paced(args.messages, args.rate, args.in_flight, publish).await?;
    let (mut deliveries, mut wire_bytes) = (0, 0);
    for r in readers {
        let (n, bytes) = r.await??;
        deliveries += n;
        wire_bytes += bytes;
    }
    let elapsed = started.elapsed();
    let (cpu, _) = before.percent_until(&CpuSample::take(&names), elapsed);
    let cpu_secs = cpu[0] / 100.0 * elapsed.as_secs_f64();
    println!(
        "  {}: {deliveries} deliveries, {:.1} bytes each on the wire, bridge {:.2} µs CPU each (pid {pid}), {:.0}/s",
        if offer { "deflate" } else { "plain  " },
        wire_bytes as f64 / deliveries.max(1) as f64,
        cpu_secs * 1e6 / deliveries.max(1) as f64,
        deliveries as f64 / elapsed.as_secs_f64()
    );
    Ok(Pass {
        deliveries,
        wire_bytes,
        cpu_secs,
        elapsed,
    })
}

/// A WebSocket client over a raw socket: enough of RFC 6455 to subscribe
/// and count message frames as they come (compressed or not).
struct Client {
    stream: TcpStream,
    read: Vec<u8>,
}

impl Client {
    async fn connect(
        ws: SocketAddr,
        source: IpAddr,
        token: &str,
        offer: bool,
    ) -> anyhow::Result<Self> {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(source, 0))?;
        let mut stream = socket.connect(ws).await?;
        stream.set_nodelay(true)?;
        let extensions = if offer {
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
        } else {
            ""
        };
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: {ws}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Authorization: Bearer {token}\r\n{extensions}\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut read = Vec::new();
        let end = loop {
            if let Some(at) = read.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let mut chunk = [0u8; 2048];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                bail!("the bridge hung up during the upgrade");
            }
            read.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&read[..end]).to_lowercase();
        if !head.starts_with("http/1.1 101") {
            bail!("upgrade refused: {head}");
        }
        if offer != head.contains("permessage-deflate") {
            bail!("deflate offered: {offer}, agreed: {head}");
        }
        read.drain(..end);
        Ok(Self { stream, read })
    }

    /// Subscribes and waits for `subscribed` (the bridge's replies go plain).
    async fn subscribe(&mut self, topic: &str) -> anyhow::Result<()> {
        let text = serde_json::json!({"action": "subscribe", "topic": topic}).to_string();
        let key = [7, 7, 7, 7];
        let mut frame = vec![0x81, 0x80 | u8::try_from(text.len())?];
        frame.extend_from_slice(&key);
        frame.extend(text.bytes().enumerate().map(|(i, b)| b ^ key[i % 4]));
        self.stream.write_all(&frame).await?;
        loop {
            let (_, payload, _) = self.frame().await?;
            if payload.windows(12).any(|w| w == b"\"subscribed\"") {
                return Ok(());
            }
        }
    }

    /// Reads `count` message frames; returns them and their bytes on the wire.
    async fn read_messages(&mut self, count: u64) -> anyhow::Result<(u64, u64)> {
        let (mut got, mut bytes) = (0, 0);
        while got < count {
            let (b0, _, len) = self.frame().await?;
            if b0 & 0x0f == 1 {
                got += 1;
                bytes += len as u64;
            }
        }
        Ok((got, bytes))
    }

    /// The next whole frame: first byte, payload, bytes on the wire.
    async fn frame(&mut self) -> anyhow::Result<(u8, Vec<u8>, usize)> {
        loop {
            if let Some((len, at)) = frame_len(&self.read)
                && self.read.len() >= at + len
            {
                let b0 = self.read[0];
                let payload = self.read[at..at + len].to_vec();
                self.read.drain(..at + len);
                if b0 & 0x0f == 8 {
                    let code = payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
                    let reason = String::from_utf8_lossy(payload.get(2..).unwrap_or_default());
                    bail!("the bridge closed the connection: {code:?} {reason}");
                }
                return Ok((b0, payload, at + len));
            }
            let mut chunk = [0u8; 8192];
            let n = tokio::time::timeout(Duration::from_secs(30), self.stream.read(&mut chunk))
                .await
                .context("no frame within 30 s")??;
            if n == 0 {
                bail!("the bridge closed the socket");
            }
            self.read.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Payload length and header length of the unmasked frame at the start of
/// `bytes`, once its header is complete.
fn frame_len(bytes: &[u8]) -> Option<(usize, usize)> {
    match *bytes.get(1)? & 0x7f {
        126 => Some((
            usize::from(u16::from_be_bytes(bytes.get(2..4)?.try_into().ok()?)),
            4,
        )),
        127 => Some((
            usize::try_from(u64::from_be_bytes(bytes.get(2..10)?.try_into().ok()?)).ok()?,
            10,
        )),
        n => Some((usize::from(n), 2)),
    }
}
