//! `notify-bench ws`: the bridge's figures, side by side with a plain Node
//! `ws` server's and the kernel's send floor in the same run. Opens N
//! WebSocket clients (the bridge's with RS256 dev tokens minted with the key
//! in --data-dir), spread over several 127.0.0.x source addresses, then
//! subscribes them all to one topic and publishes M messages with the send
//! time inside each payload (to the bridge over gRPC, durable commit
//! included; to the peer over HTTP). Prints connects/s, RSS per idle
//! connection, deliveries/s, deliveries per second of server CPU,
//! publish→receive latency p50/p99, and where the CPU went — each over
//! `--runs` rounds and their median — then the two servers' medians, their
//! ratio, and the bridge's deliveries per CPU-second against the floor.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpSocket,
    sync::Mutex,
};
use tokio_rustls::{TlsConnector, rustls::pki_types::ServerName};
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};

use crate::{
    CpuSample,
    under_test::{BridgeArgs, UnderTest},
};

#[derive(clap::Args)]
pub struct WsArgs {
    #[command(flatten)]
    bridge: BridgeArgs,
    /// WebSocket clients.
    #[arg(long, short = 'n', default_value_t = 1000)]
    clients: usize,
    /// Messages published to the topic all clients follow, per round.
    #[arg(long, short = 'm', default_value_t = 1000)]
    messages: usize,
    /// Publish rate, messages per second (0: as fast as commits allow).
    #[arg(long, default_value_t = 0)]
    rate: u32,
    /// Publishes in flight at once when `--rate` is 0 (1: each waits for the
    /// one before, so a commit's round trip paces the fan-out; more: bursts
    /// of commits, as many producers make).
    #[arg(long, default_value_t = 1)]
    in_flight: usize,
    /// Rounds of connects and of fan-out; the median is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Concurrent connects while opening the clients.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// Source addresses 127.0.0.2 ..= 127.0.0.(1+N), to stay clear of one
    /// address's ephemeral port range.
    #[arg(long, default_value_t = 8)]
    source_addresses: u8,
    /// Process name of the bridge, for RSS and CPU.
    #[arg(long, default_value = "bridge")]
    bridge_process: String,
    /// CA (PEM) of the bridge's certificate: connect over wss (as `localhost`).
    #[arg(long)]
    ca_file: Option<std::path::PathBuf>,
    /// Process name of notify-svc, for CPU.
    #[arg(long, default_value = "notify-svc")]
    svc_process: String,
    /// The Node `ws` peer's WebSocket address (`crates/bench/peer`): measured
    /// the same way right after the bridge.
    #[arg(long, requires = "peer_http")]
    peer_ws: Option<SocketAddr>,
    /// The peer's HTTP address (`POST /publish?topic=T`).
    #[arg(long)]
    peer_http: Option<SocketAddr>,
    /// The peer's process name.
    #[arg(long, default_value = "ws-peer")]
    peer_process: String,
    /// Core the servers are pinned to: the send floor's writer runs there.
    #[arg(long, default_value_t = 0)]
    server_core: usize,
    /// Skip the send floor (it opens 2 × N more sockets).
    #[arg(long)]
    no_floor: bool,
}

impl WsArgs {
    /// `--rate` as printed.
    fn rate_name(&self) -> String {
        if self.rate == 0 {
            "max".to_owned()
        } else {
            self.rate.to_string()
        }
    }
}

/// What a bench socket runs over: TCP (ws) or TLS over TCP (wss).
pub(crate) trait Transport: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Transport for T {}

pub(crate) type Socket = tokio_tungstenite::WebSocketStream<Box<dyn Transport>>;

/// The wss connector for `--ca-file`, if one is given.
pub(crate) fn wss(ca: Option<&std::path::Path>) -> anyhow::Result<Option<TlsConnector>> {
    let Some(ca) = ca else { return Ok(None) };
    let config = notify_ops::tls::client_config(Some(ca))?;
    Ok(Some(TlsConnector::from(Arc::new(config))))
}

pub(crate) async fn connect(
    ws: SocketAddr,
    source: IpAddr,
    token: Option<&str>,
    tls: Option<&TlsConnector>,
) -> anyhow::Result<Socket> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    let stream = socket.connect(ws).await?;
    stream.set_nodelay(true)?;
    let (io, scheme): (Box<dyn Transport>, _) = match tls {
        Some(tls) => {
            let name = ServerName::try_from("localhost")?;
            (Box::new(tls.connect(name, stream).await?), "wss")
        }
        None => (Box::new(stream), "ws"),
    };
    let mut req = format!("{scheme}://{ws}/ws").into_client_request()?;
    if let Some(token) = token {
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
    }
    let (mut socket, _) = tokio_tungstenite::client_async(req, io).await?;
    // The welcome frame.
    socket.next().await.context("no welcome")??;
    Ok(socket)
}

/// Where the CPU went during a phase, % of one core.
struct CpuShare {
    server: f64,
    svc: f64,
    postgres: f64,
    bench: f64,
}

impl std::fmt::Display for CpuShare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cpu % server {:.0}, notify-svc {:.0}, postgres {:.0}, bench {:.0}",
            self.server, self.svc, self.postgres, self.bench
        )
    }
}

/// Measures CPU of the server under test and of the platform's other
/// processes over a phase.
struct CpuWatch<'a> {
    names: [&'a str; 3],
    before: CpuSample,
    started: Instant,
}

impl<'a> CpuWatch<'a> {
    fn start(process: &'a str, args: &'a WsArgs) -> Self {
        let names = [process, &args.svc_process, "postgres"];
        Self {
            before: CpuSample::take(&names),
            names,
            started: Instant::now(),
        }
    }

    fn stop(&self) -> (Duration, CpuShare) {
        let elapsed = self.started.elapsed();
        let (named, bench) = self
            .before
            .percent_until(&CpuSample::take(&self.names), elapsed);
        let share = CpuShare {
            server: named[0],
            svc: named[1],
            postgres: named[2],
            bench,
        };
        (elapsed, share)
    }
}

/// Opens every client, `concurrency` at a time.
async fn connect_all(args: &WsArgs, server: &UnderTest) -> anyhow::Result<Vec<Socket>> {
    let sockets = Arc::new(Mutex::new(Vec::with_capacity(args.clients)));
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let tls = if server.tls {
        wss(args.ca_file.as_deref())?
    } else {
        None
    };
    for _ in 0..args.connect_concurrency {
        let (sockets, next, tokens) = (sockets.clone(), next.clone(), server.tokens.clone());
        let (ws, sources, clients) = (server.ws, args.source_addresses.max(1), args.clients);
        let tls = tls.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= clients {
                    return Ok::<(), anyhow::Error>(());
                }
                let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i % sources as usize) as u8));
                let token = tokens.as_ref().map(|t| t[i].as_str());
                let socket = connect(ws, source, token, tls.as_ref()).await?;
                sockets.lock().await.push(socket);
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(std::mem::take(&mut *sockets.lock().await))
}

/// The number after `key` in a bench payload (`sent_us`, the send time, or
/// `n`, the message's index), without parsing the whole frame (the bench's
/// core must not be what limits the figures).
fn number(frame: &str, key: &str) -> Option<u64> {
    let start = frame.find(key)? + key.len();
    let digits = &frame[start..];
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// One fan-out round's figures.
struct Round {
    deliveries: u64,
    per_sec: f64,
    per_server_cpu_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// The publish call's own p50 and p99 (ms).
    call_ms: (f64, f64),
    /// Per message, publish → its first frame on any socket: p50 and p99
    /// (ms). The commit and the way to the server's first write.
    first_ms: (f64, f64),
    /// Per message, its first frame → its last: p50 and p99 (ms). The
    /// fan-out's own spread over the sockets (and the readers' lag).
    spread_ms: (f64, f64),
    cpu: CpuShare,
}

/// Per message, the earliest and latest publish → frame latency (µs) any
/// client saw: where a message's time goes, before the fan-out and during it.
struct Spread {
    first: Vec<AtomicU64>,
    last: Vec<AtomicU64>,
}

impl Spread {
    fn new(messages: usize) -> Self {
        Self {
            first: (0..messages).map(|_| AtomicU64::new(u64::MAX)).collect(),
            last: (0..messages).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn saw(&self, n: usize, latency_us: u64) {
        if let (Some(first), Some(last)) = (self.first.get(n), self.last.get(n)) {
            first.fetch_min(latency_us, Ordering::Relaxed);
            last.fetch_max(latency_us, Ordering::Relaxed);
        }
    }

    /// (first p50, first p99) and (spread p50, spread p99), in ms.
    fn quantiles(&self) -> ((f64, f64), (f64, f64)) {
        let mut first = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
        let mut spread = first.clone();
        for (f, l) in self.first.iter().zip(&self.last) {
            let (f, l) = (f.load(Ordering::Relaxed), l.load(Ordering::Relaxed));
            if f != u64::MAX {
                let _ = first.record(f.max(1));
                let _ = spread.record(l.saturating_sub(f).max(1));
            }
        }
        let q = |h: &Histogram<u64>| {
            (
                h.value_at_quantile(0.5) as f64 / 1000.0,
                h.value_at_quantile(0.99) as f64 / 1000.0,
            )
        };
        (q(&first), q(&spread))
    }
}

/// Publishes `messages` to `topic`; every client records publish→receive latency.
async fn fan_out(
    args: &WsArgs,
    server: &UnderTest,
    topic: &str,
    sockets: Vec<Socket>,
) -> anyhow::Result<(Round, Vec<Socket>)> {
    let expected = args.messages;
    let hist = Arc::new(std::sync::Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let received = Arc::new(AtomicU64::new(0));
    let spread = Arc::new(Spread::new(expected));
    let mut readers = Vec::new();
    for mut s in sockets {
        let (hist, received, spread) = (hist.clone(), received.clone(), spread.clone());
        readers.push(tokio::spawn(async move {
            let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
            let mut got = 0;
            while got < expected {
                // A frame that never comes is a lost delivery, reported as such.
                let next = tokio::time::timeout(Duration::from_secs(20), s.next()).await;
                let msg = match next {
                    Ok(Some(Ok(msg))) => msg,
                    Ok(Some(Err(e))) => {
                        eprintln!("a client's socket failed after {got} messages: {e}");
                        break;
                    }
                    Ok(None) => {
                        eprintln!("a client's socket closed after {got} messages");
                        break;
                    }
                    Err(_) => {
                        eprintln!("a client waited 20 s for a frame after {got} messages");
                        break;
                    }
                };
                let Message::Text(t) = msg else { continue };
                if let Some(sent) = number(t.as_str(), "\"sent_us\":") {
                    let latency = now_us().saturating_sub(sent).max(1);
                    let _ = local.record(latency);
                    if let Some(n) = number(t.as_str(), "\"n\":") {
                        spread.saw(n as usize, latency);
                    }
                    got += 1;
                }
            }
            received.fetch_add(got as u64, Ordering::Relaxed);
            hist.lock().expect("hist").add(local).ok();
            s
        }));
    }
    let process = server.process.clone();
    let cpu = CpuWatch::start(&process, args);
    // How long the publish call itself takes: for the bridge the durable
    // commit (the svc answers once committed), for Node the whole broadcast.
    let calls = std::sync::Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?);
    let publish = |n| {
        let started = Instant::now();
        let call = server.publish(topic, format!("{{\"sent_us\":{},\"n\":{n}}}", now_us()));
        let calls = &calls;
        async move {
            call.await?;
            let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            let _ = calls.lock().expect("calls").record(us.max(1));
            anyhow::Ok(())
        }
    };
    crate::paced(args.messages, args.rate, args.in_flight, publish).await?;
    let mut sockets = Vec::new();
    for r in readers {
        sockets.push(r.await?);
    }
    let (elapsed, cpu) = cpu.stop();
    let calls = calls.into_inner().expect("calls");
    let deliveries = received.load(Ordering::Relaxed);
    let hist = hist.lock().expect("hist");
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    let (first_ms, spread_ms) = spread.quantiles();
    let server_cpu_secs = cpu.server / 100.0 * elapsed.as_secs_f64();
    let round = Round {
        deliveries,
        per_sec: deliveries as f64 / elapsed.as_secs_f64(),
        per_server_cpu_sec: deliveries as f64 / server_cpu_secs.max(1e-9),
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        max_ms: ms(1.0),
        call_ms: (
            calls.value_at_quantile(0.5) as f64 / 1000.0,
            calls.value_at_quantile(0.99) as f64 / 1000.0,
        ),
        first_ms,
        spread_ms,
        cpu,
    };
    Ok((round, sockets))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// One server's medians over the rounds.
struct Figures {
    connects_per_sec: f64,
    connects_per_cpu_sec: f64,
    rss_kb_per_conn: f64,
    deliveries_per_sec: f64,
    deliveries_per_cpu_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    lost: u64,
}

pub async fn run(args: WsArgs) -> anyhow::Result<()> {
    if args.runs == 0 || args.clients == 0 {
        bail!("--runs and --clients must be at least 1");
    }
    let tokens = args.bridge.tokens("bench-ws", args.clients)?;
    println!(
        "ws bench: clients={} messages={} rate={} in-flight={} runs={} machine cores={}",
        args.clients,
        args.messages,
        args.rate_name(),
        args.in_flight,
        args.runs,
        crate::machine_cores()
    );
    let bridge = UnderTest::bridge(
        args.bridge.ws,
        &args.bridge_process,
        &args.bridge.grpc,
        Arc::new(tokens),
        args.ca_file.is_some(),
    )
    .await?;
    let ours = measure(&args, &bridge).await?;
    drop(bridge);
    let peer = match (args.peer_ws, args.peer_http) {
        (Some(ws), Some(http)) => {
            let node = UnderTest::node_peer(ws, http, &args.peer_process);
            Some(measure(&args, &node).await?)
        }
        _ => None,
    };
    let floor = if args.no_floor {
        None
    } else {
        Some(send_floor(&args)?)
    };
    compare(&args, &ours, peer.as_ref(), floor);
    if ours.lost > 0 || peer.as_ref().is_some_and(|p| p.lost > 0) {
        bail!("deliveries were lost");
    }
    Ok(())
}

/// Connects, idle memory and fan-out rounds against one server.
async fn measure(args: &WsArgs, server: &UnderTest) -> anyhow::Result<Figures> {
    let pid = crate::find_pid(&server.process)
        .with_context(|| format!("{} process {:?} not found", server.name, server.process))?;
    println!("{} ({}, pid {pid}):", server.name, server.ws);

    // Phase 1: connects/s, each round from no connection at all; the RSS
    // growth is taken in the first round (freed memory is kept by the
    // allocator for the next).
    let rss_before = crate::rss_kib(pid);
    let mut connect_rates: Vec<(f64, f64)> = Vec::new();
    let mut sockets = Vec::new();
    let mut rss_kb_per_conn = 0.0;
    for round in 0..args.runs {
        if round > 0 {
            drop(std::mem::take(&mut sockets));
            // Let the server see every close before the next storm.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let cpu = CpuWatch::start(&server.process, args);
        sockets = connect_all(args, server).await?;
        let (elapsed, share) = cpu.stop();
        let rate = args.clients as f64 / elapsed.as_secs_f64();
        // What one core of the server would take: the bench (and for the
        // bridge notify-svc and Postgres) share this machine's other core.
        let per_cpu = rate / (share.server / 100.0).max(1e-9);
        println!("  connects/s            {rate:>10.0}   ({per_cpu:.0} per server-CPU-s; {share})");
        connect_rates.push((rate, per_cpu));
        if round == 0 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let rss_after = crate::rss_kib(pid);
            rss_kb_per_conn =
                rss_after.saturating_sub(rss_before) as f64 * 1.024 / args.clients as f64;
            println!("  RSS / idle conn       {rss_kb_per_conn:>10.2} KB");
        }
    }

    // Phase 2: subscribe everyone to one topic; `subscribed` means in routing.
    let topic = format!("room:bench-{}", std::process::id());
    let subscribe = serde_json::json!({"action": "subscribe", "topic": topic}).to_string();
    for s in &mut sockets {
        s.send(Message::text(subscribe.clone())).await?;
    }
    for s in &mut sockets {
        loop {
            let msg = s.next().await.context("socket closed")??;
            if let Message::Text(t) = msg
                && t.as_str().contains("\"subscribed\"")
            {
                break;
            }
        }
    }

    // Phase 3: fan-out rounds.
    let mut rounds = Vec::new();
    for _ in 0..args.runs {
        let (round, back) = fan_out(args, server, &topic, sockets).await?;
        sockets = back;
        println!(
            "  fan-out: {} of {} delivered, {:.0}/s, {:.0} per server-CPU-s, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; publish call p50 {:.2} ms, p99 {:.2} ms; first frame p50 {:.2} ms, p99 {:.2} ms; first -> last p50 {:.2} ms, p99 {:.2} ms   ({})",
            round.deliveries,
            args.clients * args.messages,
            round.per_sec,
            round.per_server_cpu_sec,
            round.p50_ms,
            round.p99_ms,
            round.max_ms,
            round.call_ms.0,
            round.call_ms.1,
            round.first_ms.0,
            round.first_ms.1,
            round.spread_ms.0,
            round.spread_ms.1,
            round.cpu
        );
        rounds.push(round);
    }
    drop(sockets);
    let of = |f: fn(&Round) -> f64| median(rounds.iter().map(f).collect());
    let expected = (args.clients * args.messages * args.runs) as u64;
    Ok(Figures {
        connects_per_sec: median(connect_rates.iter().map(|r| r.0).collect()),
        connects_per_cpu_sec: median(connect_rates.iter().map(|r| r.1).collect()),
        rss_kb_per_conn,
        deliveries_per_sec: of(|r| r.per_sec),
        deliveries_per_cpu_sec: of(|r| r.per_server_cpu_sec),
        p50_ms: of(|r| r.p50_ms),
        p99_ms: of(|r| r.p99_ms),
        lost: expected.saturating_sub(rounds.iter().map(|r| r.deliveries).sum()),
    })
}

/// `notify-bench send-floor` with the same sockets and messages, its writer
/// on the servers' core: writes per writer-CPU-second.
fn send_floor(args: &WsArgs) -> anyhow::Result<f64> {
    // Each floor socket is a pair of descriptors: past 5,000 the floor would
    // meet a 20,000-descriptor limit, and the cost per write is the same.
    let sockets = args.clients.min(5000);
    let out = std::process::Command::new(std::env::current_exe()?)
        .args(["send-floor", "-n", &sockets.to_string()])
        .args(["-m", &args.messages.to_string()])
        .args(["--writer-core", &args.server_core.to_string()])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    print!("{text}");
    if !out.status.success() {
        bail!(
            "send-floor failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    text.lines()
        .find_map(|l| l.trim().strip_prefix("writes per writer-CPU-s"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .context("send-floor printed no writes per writer-CPU-s")
}

/// The medians side by side, with the bridge over the peer and over the floor.
fn compare(args: &WsArgs, ours: &Figures, peer: Option<&Figures>, floor: Option<f64>) {
    println!(
        "median of {} (clients={} messages={} rate={} in-flight={}):",
        args.runs,
        args.clients,
        args.messages,
        args.rate_name(),
        args.in_flight
    );
    println!(
        "  {:<28} {:>12} {:>12} {:>8}",
        "", "bridge", "node ws", "ratio"
    );
    let row = |name: &str, f: fn(&Figures) -> f64, digits: usize| {
        let theirs = peer.map(f);
        let ratio = theirs.map_or(String::new(), |t| format!("{:.2}×", f(ours) / t.max(1e-9)));
        let theirs = theirs.map_or(String::from("-"), |t| format!("{t:.digits$}"));
        println!(
            "  {name:<28} {:>12.digits$} {theirs:>12} {ratio:>8}",
            f(ours)
        );
    };
    row("connects/s", |f| f.connects_per_sec, 0);
    row("connects per server-CPU-s", |f| f.connects_per_cpu_sec, 0);
    row("RSS per idle conn (KB)", |f| f.rss_kb_per_conn, 2);
    row("deliveries/s", |f| f.deliveries_per_sec, 0);
    row(
        "deliveries per server-CPU-s",
        |f| f.deliveries_per_cpu_sec,
        0,
    );
    row("publish→frame p50 (ms)", |f| f.p50_ms, 2);
    row("publish→frame p99 (ms)", |f| f.p99_ms, 2);
    row("lost deliveries", |f| f.lost as f64, 0);
    if let Some(floor) = floor {
        println!(
            "  send floor: {floor:.0} writes per CPU-s; bridge deliveries per CPU-s / floor = {:.2}×",
            ours.deliveries_per_cpu_sec / floor.max(1e-9)
        );
    }
}
