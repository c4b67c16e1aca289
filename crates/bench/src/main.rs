//! `notify-bench`: drives a running notify-svc and prints what it measured.
//!
//! `notify-bench publish` runs C concurrent `Publish` callers for a fixed time
//! and prints durable publishes/s, p50/p99 latency and the CPU used by
//! notify-svc and by Postgres over the measured window (read from /proc).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use hdrhistogram::Histogram;
use notify_proto::v1::{self as pb, notify_client::NotifyClient};
use tonic::metadata::MetadataValue;

#[derive(Parser)]
#[command(name = "notify-bench", about = "Benchmarks of the notify platform")]
struct Cli {
    #[command(subcommand)]
    command: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// Durable publishes/s and latency at C concurrent callers.
    Publish(PublishArgs),
    /// WebSocket bridge figures: connects/s, RSS per connection, fan-out.
    Ws(ws::WsArgs),
    /// Routed actions: round trips to a no-op backend beside the bridge's own echo.
    Routed(routed::RoutedArgs),
    /// BetTracker's lag: fight change committed -> WebSocket frame.
    Fights(fights::FightsArgs),
    /// The cost of one write per subscriber per message on this machine.
    SendFloor(floor::FloorArgs),
    /// A Notify server whose Publish answers at once and stores nothing: run
    /// `publish` against it to measure the gRPC stack's own ceiling here.
    NoopServer {
        #[arg(long, default_value = "127.0.0.1:50152")]
        addr: std::net::SocketAddr,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum TargetKind {
    /// Each publish to one of --users users' inboxes.
    User,
    /// Each publish to one of --users topics `room:bench-N`.
    Topic,
}

#[derive(clap::Args)]
struct PublishArgs {
    /// notify-svc gRPC endpoint.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    url: String,
    /// CA (PEM) to trust for an https:// --url (a TLS notify-svc).
    #[arg(long)]
    ca_file: Option<std::path::PathBuf>,
    /// Concurrent callers (each has one request in flight at a time).
    #[arg(long, short = 'c', default_value_t = 256)]
    concurrency: usize,
    /// HTTP/2 connections the callers share.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Measured seconds (after the warm-up).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Warm-up seconds, not measured.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    #[arg(long, value_enum, default_value_t = TargetKind::User)]
    target: TargetKind,
    /// Distinct users (or topics) the publishes spread over.
    #[arg(long, default_value_t = 10_000)]
    users: usize,
    /// Size of each message's JSON data in bytes.
    #[arg(long, default_value_t = 100)]
    data_bytes: usize,
    /// Give every publish an idempotency key.
    #[arg(long)]
    idempotency_keys: bool,
    /// Send PublishBatch calls of this many messages instead of single Publish calls.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Bearer token, if notify-svc has NOTIFY_API_TOKENS.
    #[arg(long, env = "NOTIFY_TOKEN")]
    token: Option<String>,
    /// Process name whose CPU is reported as notify-svc's.
    #[arg(long, default_value = "notify-svc")]
    svc_process: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Bench::Publish(args) => publish(args).await,
        Bench::NoopServer { addr } => noop::serve(addr).await,
        Bench::Ws(args) => ws::run(args).await,
        Bench::Routed(args) => routed::run(args).await,
        Bench::SendFloor(args) => floor::run(&args),
        Bench::Fights(args) => fights::run(args).await,
    }
}

mod fights;
mod floor;
mod noop;
mod routed;
mod ws;

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

struct Shared {
    measuring: AtomicBool,
    stop: AtomicBool,
    ok: AtomicU64,
    errors: AtomicU64,
}

async fn publish(args: PublishArgs) -> anyhow::Result<()> {
    if args.concurrency == 0 || args.connections == 0 || args.users == 0 || args.batch == 0 {
        bail!("--concurrency, --connections, --users and --batch must be at least 1");
    }
    let tls = notify_proto::channel::ClientTls {
        ca: args.ca_file.clone(),
        ..Default::default()
    };
    let mut channels = Vec::new();
    for _ in 0..args.connections {
        channels.push(
            notify_proto::channel::endpoint(&args.url, &tls)?
                .connect()
                .await
                .with_context(|| format!("connecting to {}", args.url))?,
        );
    }
    let token: Option<MetadataValue<_>> = match &args.token {
        Some(t) => Some(format!("Bearer {t}").parse().context("token")?),
        None => None,
    };
    let data = format!(
        "{{\"pad\":\"{}\"}}",
        "x".repeat(args.data_bytes.saturating_sub(10))
    );
    let shared = Arc::new(Shared {
        measuring: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        ok: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    });
    let mut tasks = Vec::new();
    for caller in 0..args.concurrency {
        let mut client = NotifyClient::new(channels[caller % channels.len()].clone());
        let (shared, data, token) = (shared.clone(), data.clone(), token.clone());
        let (target, users, keys, batch) =
            (args.target, args.users, args.idempotency_keys, args.batch);
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
            let mut n: u64 = (caller as u64) << 32;
            let mut first_error = None;
            while !shared.stop.load(Ordering::Relaxed) {
                let requests: Vec<pb::PublishRequest> = (0..batch)
                    .map(|_| {
                        let who = (splitmix64(&mut n) % users as u64) as usize;
                        let target = match target {
                            TargetKind::User => {
                                pb::publish_request::Target::UserId(format!("bench-{who}"))
                            }
                            TargetKind::Topic => {
                                pb::publish_request::Target::Topic(format!("room:bench-{who}"))
                            }
                        };
                        pb::PublishRequest {
                            target: Some(target),
                            event: "bench".into(),
                            data: data.clone(),
                            idempotency_key: if keys {
                                format!("bench-{caller}-{n}")
                            } else {
                                String::new()
                            },
                            ttl_seconds: 3600,
                        }
                    })
                    .collect();
                let started = Instant::now();
                let result = if batch == 1 {
                    let mut req = tonic::Request::new(requests.into_iter().next().expect("one"));
                    if let Some(t) = &token {
                        req.metadata_mut().insert("authorization", t.clone());
                    }
                    client.publish(req).await.map(|_| 1)
                } else {
                    let mut req = tonic::Request::new(pb::PublishBatchRequest { requests });
                    if let Some(t) = &token {
                        req.metadata_mut().insert("authorization", t.clone());
                    }
                    client.publish_batch(req).await.map(|r| {
                        r.into_inner()
                            .results
                            .iter()
                            .filter(|r| matches!(r.result, Some(pb::publish_result::Result::Ok(_))))
                            .count() as u64
                    })
                };
                let took = started.elapsed();
                if !shared.measuring.load(Ordering::Relaxed) {
                    continue;
                }
                match result {
                    Ok(committed) => {
                        shared.ok.fetch_add(committed, Ordering::Relaxed);
                        let _ = hist.record(took.as_micros().max(1) as u64);
                    }
                    Err(status) => {
                        shared.errors.fetch_add(1, Ordering::Relaxed);
                        first_error.get_or_insert(status);
                    }
                }
            }
            (hist, first_error)
        }));
    }
    tokio::time::sleep(Duration::from_secs(args.warmup)).await;
    let cpu_before = CpuSample::take(&[&args.svc_process, "postgres"]);
    shared.measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    shared.measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed();
    let cpu_after = CpuSample::take(&[&args.svc_process, "postgres"]);
    shared.stop.store(true, Ordering::Relaxed);

    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut first_error = None;
    for task in tasks {
        let (h, e) = task.await?;
        hist.add(h)?;
        if first_error.is_none() {
            first_error = e;
        }
    }
    let ok = shared.ok.load(Ordering::Relaxed);
    let errors = shared.errors.load(Ordering::Relaxed);
    let secs = elapsed.as_secs_f64();
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "publish bench: C={} connections={} batch={} target={} spread={} data={}B keys={} measured={:.1}s cores={}",
        args.concurrency,
        args.connections,
        args.batch,
        match args.target {
            TargetKind::User => "user",
            TargetKind::Topic => "topic",
        },
        args.users,
        data.len(),
        args.idempotency_keys,
        secs,
        machine_cores(),
    );
    println!(
        "  publishes/s   {:>10.0}   (messages committed per second)",
        ok as f64 / secs
    );
    println!("  ok / errors   {ok} messages / {errors} failed calls");
    println!(
        "  latency ms    p50 {:.2}  p99 {:.2}  max {:.2}",
        ms(0.5),
        ms(0.99),
        ms(1.0)
    );
    let (named, bench) = cpu_before.percent_until(&cpu_after, elapsed);
    let (svc, pg) = (named[0], named[1]);
    println!(
        "  cpu %         {} {svc:.0}  postgres {pg:.0}  this bench {bench:.0}  (100 = one core)",
        args.svc_process
    );
    if let Some(e) = first_error {
        println!("  first error   {:?}: {}", e.code(), e.message());
    }
    Ok(())
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
