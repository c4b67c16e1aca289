//! `notify-bench`: drives a running notify-svc and prints what it measured.
//!
//! Each bench is a module: [`publish`] (durable publishes/s over gRPC and
//! HTTP/JSON), [`ws`] (the bridge beside a plain Node `ws` server, see
//! [`under_test`], and the send floor), [`routed`], [`fights`], [`floor`],
//! [`ingest`] (the SQS consumer), [`outbox`] (the outbox relay),
//! [`deflate`] (permessage-deflate on a fights:live stream), [`marks`] (the
//! inbox's read state: marks and the counts they push), [`push`] (the push
//! sender against a local Web Push endpoint), and the
//! publish bench's peers: [`noop`] (a Notify server that stores nothing, for
//! the gRPC ceiling) and [`naive`] (single-row commits to Postgres). CPU
//! is read from /proc over each measured window.

use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "notify-bench", about = "Benchmarks of the notify platform")]
struct Cli {
    #[command(subcommand)]
    command: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// Durable publishes/s and latency at C concurrent callers.
    Publish(publish::PublishArgs),
    /// WebSocket bridge figures: connects/s, RSS per connection, fan-out.
    Ws(ws::WsArgs),
    /// Routed actions: round trips to a no-op backend beside the bridge's own echo.
    Routed(routed::RoutedArgs),
    /// The SQS consumer's CPU per message (a queue filled, then drained).
    Ingest(ingest::IngestArgs),
    /// The outbox relay: rows/s drained beside direct publishes, commit -> frame.
    Outbox(outbox::OutboxArgs),
    /// BetTracker's lag: fight change committed -> WebSocket frame.
    Fights(fights::FightsArgs),
    /// The inbox's read state: marks/s with counts pushed to a second
    /// device per user, and the count frame's latency.
    Marks(marks::MarksArgs),
    /// Push: pushes/s to a local Web Push endpoint, and publish -> push
    /// request delay for offline users.
    Push(push::PushArgs),
    /// permessage-deflate on a fights:live stream: bytes on the wire and
    /// bridge CPU per delivery, with and without.
    Deflate(deflate::DeflateArgs),
    /// The cost of one write per subscriber per message on this machine.
    SendFloor(floor::FloorArgs),
    /// A Notify server whose Publish answers at once and stores nothing: run
    /// `publish` against it to measure the gRPC stack's own ceiling here.
    NoopServer {
        #[arg(long, default_value = "127.0.0.1:50152")]
        addr: std::net::SocketAddr,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Bench::Publish(args) => publish::run(args).await,
        Bench::Push(args) => push::run(args).await,
        Bench::NoopServer { addr } => noop::serve(addr).await,
        Bench::Ws(args) => ws::run(args).await,
        Bench::Routed(args) => routed::run(args).await,
        Bench::SendFloor(args) => floor::run(&args),
        Bench::Fights(args) => fights::run(args).await,
        Bench::Deflate(args) => deflate::run(args).await,
        Bench::Ingest(args) => ingest::run(args).await,
        Bench::Outbox(args) => outbox::run(args).await,
        Bench::Marks(args) => marks::run(args).await,
    }
}

mod deflate;
mod fights;
mod floor;
mod ingest;
mod marks;
mod naive;
mod noop;
mod outbox;
mod publish;
mod push;
mod routed;
mod under_test;
mod ws;

/// Calls `publish(i)` for each of `count` messages: on a steady schedule at
/// `rate` per second (a slow call does not shift the ones after it), or as
/// fast as `in_flight` calls at a time allow when `rate` is 0.
async fn paced<F, Fut, T, E>(
    count: usize,
    rate: u32,
    in_flight: usize,
    mut publish: F,
) -> Result<(), E>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    use futures::StreamExt;
    if rate > 0 {
        let gap = Duration::from_secs_f64(1.0 / f64::from(rate));
        let started = tokio::time::Instant::now();
        for i in 0..count {
            tokio::time::sleep_until(started + gap * i as u32).await;
            publish(i).await?;
        }
        return Ok(());
    }
    let mut calls = futures::stream::iter(0..count)
        .map(publish)
        .buffer_unordered(in_flight.max(1));
    while let Some(result) = calls.next().await {
        result?;
    }
    Ok(())
}

/// A plain Postgres connection (the benches that write rows themselves).
async fn connect_db(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    use anyhow::Context;
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    tokio::spawn(conn);
    Ok(client)
}

/// The `/metrics` text of an ops port (plain HTTP/1.0, no client needed).
async fn scrape(ops: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(ops).await.ok()?;
    stream
        .write_all(format!("GET /metrics HTTP/1.0\r\nHost: {ops}\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await.ok()?;
    Some(text)
}

/// The value of the unlabelled series `name` in a scrape.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(name)?
            .strip_prefix(' ')?
            .trim()
            .parse::<f64>()
            .ok()
    })
}

/// A free loopback port.
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The first process whose name is `name`.
fn find_pid(name: &str) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
        (comm.trim() == name).then_some(pid)
    })
}

/// Resident memory of `pid`, KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// The command name and user + system CPU ticks of a `/proc/PID/stat` line.
fn stat_ticks(stat: &str) -> Option<(&str, u64)> {
    // comm is in parentheses and may hold spaces; fields follow the last ')'.
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    let fields: Vec<&str> = stat.get(close + 2..)?.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat, 11 and 12 after comm/state.
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Some((&stat[open + 1..close], field(11) + field(12)))
}

/// What one phase of a throughput bench measured (the publish bench and its
/// naive peer).
struct Figures {
    per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// SplitMix64: a uniform spread of targets, different for every caller (a
/// plain counter made all callers hit the same user at once, i.e. measured lock
/// contention on one row instead of throughput).
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// CPU ticks used so far by the processes with the given names (summed per
/// name) and by this bench.
struct CpuSample {
    named: Vec<u64>,
    bench: u64,
    ticks_per_sec: f64,
}

impl CpuSample {
    fn take(names: &[&str]) -> Self {
        let mut named = vec![0; names.len()];
        let mut bench = 0;
        let me = std::process::id().to_string();
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for entry in dir.flatten() {
                // Processes only: `self` and `thread-self` are this bench
                // again (counted twice when a peer shares its name).
                let is_pid = entry
                    .file_name()
                    .to_str()
                    .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()));
                if !is_pid {
                    continue;
                }
                let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                    continue;
                };
                let Some((comm, ticks)) = stat_ticks(&stat) else {
                    continue;
                };
                if entry.file_name().to_str() == Some(me.as_str()) {
                    bench += ticks;
                } else if let Some(i) = names.iter().position(|n| *n == comm) {
                    named[i] += ticks;
                }
            }
        }
        Self {
            named,
            bench,
            ticks_per_sec: clock_ticks(),
        }
    }

    /// CPU% (100 = one core) of each name, and of this bench, over
    /// `elapsed`. Processes that exit during the window are missed (Postgres
    /// backends: the pools keep them alive).
    fn percent_until(&self, later: &Self, elapsed: Duration) -> (Vec<f64>, f64) {
        let pct = |a: u64, b: u64| {
            b.saturating_sub(a) as f64 / self.ticks_per_sec / elapsed.as_secs_f64() * 100.0
        };
        let named = self
            .named
            .iter()
            .zip(&later.named)
            .map(|(a, b)| pct(*a, *b))
            .collect();
        (named, pct(self.bench, later.bench))
    }
}

/// Cores of the machine (not of this process's CPU affinity: the benches
/// run pinned).
fn machine_cores() -> usize {
    std::fs::read_to_string("/proc/cpuinfo")
        .map(|s| s.lines().filter(|l| l.starts_with("processor")).count())
        .ok()
        .filter(|n| *n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(0, |n| n.get()))
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        // Linux's USER_HZ is 100 on every common architecture.
        .unwrap_or(100.0)
}
