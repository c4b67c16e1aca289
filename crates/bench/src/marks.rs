//! `notify-bench marks`: the inbox's read state under load. U users, two
//! devices each (two sockets on the bridge); each inbox is seeded with K
//! messages. W workers take the users in turn, one mark in flight per user:
//! device A sends `mark` (read, then unread, of one seq, so every mark moves
//! the counts), and the worker waits for A's `marked` answer and for B's
//! `counts` frame. Prints marks/s sustained, the answer's latency and the
//! count frame's (mark sent on A → counts on B) p50/p99, and the CPU of the
//! bridge, notify-svc and Postgres per mark.

use std::{
    net::{IpAddr, Ipv4Addr},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use notify_proto::v1::{self as pb, notify_client::NotifyClient};
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;

use crate::{
    CpuSample,
    under_test::BridgeArgs,
    ws::{Socket, connect},
};

#[derive(clap::Args)]
pub struct MarksArgs {
    #[command(flatten)]
    bridge: BridgeArgs,
    /// Users, each with two devices.
    #[arg(long, short = 'u', default_value_t = 10_000)]
    users: usize,
    /// Messages seeded in each inbox (the marks toggle these).
    #[arg(long, default_value_t = 4)]
    messages: usize,
    /// Workers, each with one mark in flight.
    #[arg(long, short = 'w', default_value_t = 256)]
    workers: usize,
    /// Measured seconds (after the warm-up).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Source addresses the sockets spread over (127.0.0.2, .3, …): one
    /// address has ~28k ephemeral ports.
    #[arg(long, default_value_t = 4)]
    source_addresses: u8,
    #[arg(long, default_value = "bridge")]
    bridge_process: String,
    #[arg(long, default_value = "notify-svc")]
    svc_process: String,
}

/// A user's two devices.
struct Devices {
    phone: Socket,
    laptop: Socket,
    /// The next mark is `read` (else `unread`), of seq `next_seq`.
    read: bool,
    next_seq: u64,
}

/// One worker's figures.
struct Tally {
    marks: u64,
    answer: Histogram<u64>,
    counts: Histogram<u64>,
}

fn histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 60_000_000, 3)?)
}

pub async fn run(args: MarksArgs) -> anyhow::Result<()> {
    if args.users == 0 || args.workers == 0 || args.messages == 0 {
        bail!("--users, --workers and --messages must be at least 1");
    }
    seed(&args).await?;
    let users = connect_all(&args).await?;
    println!(
        "{} users x 2 devices connected ({} sockets); {} workers, one mark in flight each",
        args.users,
        args.users * 2,
        args.workers
    );
    // Workers own disjoint users: a user's sockets are read by one task.
    let mut shares: Vec<Vec<Devices>> = (0..args.workers).map(|_| Vec::new()).collect();
    for (i, devices) in users.into_iter().enumerate() {
        shares[i % args.workers].push(devices);
    }
    let started = Instant::now();
    let warm = started + Duration::from_secs(args.warmup);
    let end = warm + Duration::from_secs(args.seconds);
    let names = [
        args.bridge_process.as_str(),
        args.svc_process.as_str(),
        "postgres",
    ];
    let messages = args.messages as u64;
    let tasks: Vec<_> = shares
        .into_iter()
        .filter(|s| !s.is_empty())
        .map(|share| tokio::spawn(work(share, messages, warm, end)))
        .collect();
    // CPU over the measured window only.
    tokio::time::sleep_until(warm.into()).await;
    let (cpu_before, measured_from) = (CpuSample::take(&names), Instant::now());
    let mut total = Tally {
        marks: 0,
        answer: histogram()?,
        counts: histogram()?,
    };
    for task in tasks {
        let tally = task.await??;
        total.marks += tally.marks;
        total.answer.add(&tally.answer)?;
        total.counts.add(&tally.counts)?;
    }
    let (cpu, bench_cpu) =
        cpu_before.percent_until(&CpuSample::take(&names), measured_from.elapsed());
    let per_sec = total.marks as f64 / args.seconds as f64;
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "marks/s sustained: {per_sec:.0} ({} marks in {} s), cores={}",
        total.marks,
        args.seconds,
        crate::machine_cores()
    );
    println!(
        "  mark -> its answer on the device: p50 {:.2} ms, p99 {:.2} ms",
        ms(&total.answer, 0.5),
        ms(&total.answer, 0.99)
    );
    println!(
        "  mark -> counts frame on the other device: p50 {:.2} ms, p99 {:.2} ms",
        ms(&total.counts, 0.5),
        ms(&total.counts, 0.99)
    );
    let per_mark = |pct: f64| pct / 100.0 / per_sec * 1e6;
    println!(
        "  cpu %: bridge {:.0}, notify-svc {:.0}, postgres {:.0}, bench {bench_cpu:.0}; \
         µs per mark: bridge {:.1}, notify-svc {:.1}, postgres {:.1}",
        cpu[0],
        cpu[1],
        cpu[2],
        per_mark(cpu[0]),
        per_mark(cpu[1]),
        per_mark(cpu[2]),
    );
    Ok(())
}

/// K messages in each user's inbox, 1,000 publishes a call.
async fn seed(args: &MarksArgs) -> anyhow::Result<()> {
    let mut api = NotifyClient::connect(args.bridge.grpc.clone())
        .await
        .context("connecting to notify-svc")?;
    let started = Instant::now();
    let all: Vec<pb::PublishRequest> = (0..args.users)
        .flat_map(|u| {
            (0..args.messages).map(move |m| pb::PublishRequest {
                target: Some(pb::publish_request::Target::UserId(format!(
                    "bench-marks-{u}"
                ))),
                event: "bench".into(),
                data: format!(r#"{{"m":{m}}}"#),
                ..Default::default()
            })
        })
        .collect();
    for chunk in all.chunks(1000) {
        let answer = api
            .publish_batch(pb::PublishBatchRequest {
                requests: chunk.to_vec(),
            })
            .await?
            .into_inner();
        if let Some(failed) = answer
            .results
            .iter()
            .find(|r| matches!(r.result, Some(pb::publish_result::Result::Error(_))))
        {
            bail!("seeding failed: {failed:?}");
        }
    }
    println!(
        "seeded {} messages in {:.1} s",
        all.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Both devices of every user, 64 connects at a time.
async fn connect_all(args: &MarksArgs) -> anyhow::Result<Vec<Devices>> {
    let tokens = Arc::new(args.bridge.tokens("bench-marks", args.users)?);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let done = Arc::new(Mutex::new(Vec::with_capacity(args.users)));
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (tokens, next, done) = (tokens.clone(), next.clone(), done.clone());
        let (ws, users, sources) = (args.bridge.ws, args.users, args.source_addresses.max(1));
        tasks.push(tokio::spawn(async move {
            loop {
                let u = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if u >= users {
                    return anyhow::Ok(());
                }
                let source = |n: usize| {
                    IpAddr::V4(Ipv4Addr::new(
                        127,
                        0,
                        0,
                        2 + (n % usize::from(sources)) as u8,
                    ))
                };
                let token = Some(tokens[u].as_str());
                let phone = connect(ws, source(2 * u), token, None).await?;
                let laptop = connect(ws, source(2 * u + 1), token, None).await?;
                done.lock().await.push(Devices {
                    phone,
                    laptop,
                    read: true,
                    next_seq: 1,
                });
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(std::mem::take(&mut *done.lock().await))
}

/// Marks for the users of one worker, in turn, until `end` (counted from
/// `warm` on).
async fn work(
    mut users: Vec<Devices>,
    messages: u64,
    warm: Instant,
    end: Instant,
) -> anyhow::Result<Tally> {
    let mut tally = Tally {
        marks: 0,
        answer: histogram()?,
        counts: histogram()?,
    };
    let mut n = 0u64;
    'run: loop {
        for devices in users.iter_mut() {
            if Instant::now() >= end {
                break 'run;
            }
            n += 1;
            let kind = if devices.read { "read" } else { "unread" };
            let frame = format!(
                r#"{{"action":"mark","as":"{kind}","seqs":[{}],"id":{n}}}"#,
                devices.next_seq
            );
            let sent = Instant::now();
            devices.phone.send(Message::text(frame)).await?;
            let answered = until(&mut devices.phone, "\"marked\"").await?;
            let counted = until(&mut devices.laptop, "\"counts\"").await?;
            if sent >= warm {
                tally.marks += 1;
                tally
                    .answer
                    .record((answered - sent).as_micros().max(1) as u64)?;
                tally
                    .counts
                    .record((counted - sent).as_micros().max(1) as u64)?;
            }
            // Read, then unread, of each seq in turn: every mark moves the counts.
            if !devices.read {
                devices.next_seq = devices.next_seq % messages + 1;
            }
            devices.read = !devices.read;
        }
    }
    Ok(tally)
}

/// Reads `socket` until a text frame containing `marker`; when it came.
async fn until(socket: &mut Socket, marker: &str) -> anyhow::Result<Instant> {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(20), socket.next())
            .await
            .context("no frame within 20 s")?
            .context("socket closed")??;
        if let Message::Text(text) = frame {
            anyhow::ensure!(!text.contains("\"error\""), "refused: {text}");
            if text.contains(marker) {
                return Ok(Instant::now());
            }
        }
    }
}
