//! `notify-bench outbox`: the transactional outbox's relay, three ways in
//! one run against one running notify-svc (and a bridge for the live part):
//!
//! 1. **drain**: N rows committed to `notify_outbox` first, then
//!    `notify-ingest` started on it; rows/s until its cursor reaches the
//!    head, and the CPU it and notify-svc spent per row;
//! 2. **direct**: the same N publishes called straight at `Notify.Publish`
//!    with the relay's concurrency (64 in flight), the same user spread: the
//!    ceiling the relay is measured against (ratio printed);
//! 3. **live**: rows committed one per transaction at a fixed rate while
//!    WebSocket clients of the users listen; commit → frame p50/p99 (from
//!    the writer's clock just before its INSERT to the frame's arrival).

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    process::Stdio,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Context;
use futures::StreamExt;
use hdrhistogram::Histogram;
use notify_auth::{DEV_CLIENT_ID, DEV_ISSUER, DEV_KEY_FILE, DevIssuer, DevToken};
use notify_proto::v1::{self as pb, notify_client::NotifyClient};
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;

use crate::{CpuSample, machine_cores};

/// The relay's own concurrency (notify_relay::IN_FLIGHT), for the direct side.
const IN_FLIGHT: usize = 64;

#[derive(clap::Args)]
pub struct OutboxArgs {
    /// The service database holding `notify_outbox` (emptied first).
    #[arg(long)]
    database_url: String,
    /// notify-svc's gRPC endpoint.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    notify_url: String,
    /// The bridge's WebSocket address (dev tokens: AUTH_DEV=1 on `data_dir`).
    #[arg(long, default_value = "127.0.0.1:8080")]
    ws: SocketAddr,
    #[arg(long, default_value = ".notify")]
    data_dir: std::path::PathBuf,
    /// Rows drained (and publishes called directly).
    #[arg(long, default_value_t = 20_000)]
    rows: usize,
    /// Distinct users the rows spread over (each a live socket in part 3).
    #[arg(long, default_value_t = 100)]
    users: usize,
    /// Rows committed per second in part 3, one transaction each.
    #[arg(long, default_value_t = 500)]
    rate: u32,
    /// How long part 3 writes.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// The notify-ingest binary (default: beside this one).
    #[arg(long)]
    ingest_bin: Option<std::path::PathBuf>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

pub async fn run(args: OutboxArgs) -> anyhow::Result<()> {
    let db = crate::connect_db(&args.database_url).await?;
    db.batch_execute(include_str!("../../../migrations/notify_outbox.sql"))
        .await?;
    db.batch_execute(
        "DELETE FROM notify_outbox; DELETE FROM tracker_cursors WHERE name = 'bench';
         DELETE FROM tracker_leases WHERE name = 'bench'",
    )
    .await?;
    let head: i64 = db
        .query_one("SELECT last_id FROM notify_outbox_head", &[])
        .await?
        .get(0);
    // The relay starts at the head: earlier runs' rows are gone.
    db.execute(
        "INSERT INTO tracker_cursors (name, outbox_id) VALUES ('bench', $1)",
        &[&head],
    )
    .await?;

    // 1. Drain: a backlog, then the relay.
    let run_id = std::process::id();
    db.execute(
        "INSERT INTO notify_outbox (publish)
         SELECT jsonb_build_object('user_id', 'drain-' || $3::text || '-' || (n % $2),
                                   'event', 'bench', 'data', jsonb_build_object('n', n))
         FROM generate_series(1, $1::int) n",
        &[
            &i32::try_from(args.rows)?,
            &i32::try_from(args.users)?,
            &run_id.to_string(),
        ],
    )
    .await?;
    let target = head + args.rows as i64;
    let ops = format!("127.0.0.1:{}", crate::free_port()?);
    let bin = args.ingest_bin.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .expect("own path")
            .with_file_name("notify-ingest")
    });
    let cpu_before = CpuSample::take(&["notify-ingest", "notify-svc", "postgres"]);
    let started = Instant::now();
    let mut relay = tokio::process::Command::new(&bin)
        .env("INGEST_OUTBOX_DATABASE_URL", &args.database_url)
        .env("INGEST_OUTBOX_GROUP", "bench")
        .env("INGEST_NOTIFY_URL", &args.notify_url)
        .env("INGEST_HTTP_ADDR", &ops)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if let Some(status) = relay.try_wait()? {
            anyhow::bail!("notify-ingest exited early: {status}");
        }
        if cursor(&ops).await.unwrap_or(0.0) >= target as f64 {
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            anyhow::bail!("the relay did not drain {} rows in 10 minutes", args.rows);
        }
    }
    let drained = started.elapsed();
    let cpu_after = CpuSample::take(&["notify-ingest", "notify-svc", "postgres"]);
    let (drain_cpu, _) = cpu_before.percent_until(&cpu_after, drained);

    // 2. Direct: the same publishes at the relay's concurrency.
    let (direct, direct_cpu) = direct(&args, run_id).await?;

    // 3. Live: commit -> frame while the relay idles between rows.
    let (lag, written) = live(&args).await?;
    relay.start_kill().ok();

    let secs = drained.as_secs_f64();
    let per_row = |pct: f64, secs: f64| pct / 100.0 * secs * 1e6 / args.rows as f64;
    let relay_rate = args.rows as f64 / secs;
    let direct_rate = args.rows as f64 / direct.as_secs_f64();
    println!(
        "outbox bench: {} rows over {} users, cores={}",
        args.rows,
        args.users,
        machine_cores()
    );
    println!(
        "  drain   relay   {relay_rate:>8.0} rows/s   cpu/row notify-ingest {:.1} µs  notify-svc {:.1} µs  postgres {:.1} µs",
        per_row(drain_cpu[0], secs),
        per_row(drain_cpu[1], secs),
        per_row(drain_cpu[2], secs)
    );
    println!(
        "  direct  Publish {direct_rate:>8.0} /s        cpu/msg  notify-svc {:.1} µs  postgres {:.1} µs   ({IN_FLIGHT} in flight)",
        per_row(direct_cpu[0], direct.as_secs_f64()),
        per_row(direct_cpu[1], direct.as_secs_f64())
    );
    println!("  ratio   relay / direct = {:.2}", relay_rate / direct_rate);
    println!(
        "  live    {written} rows at {}/s, {} frames: commit -> frame p50 {} ms  p99 {} ms  max {} ms",
        args.rate,
        lag.len(),
        lag.value_at_quantile(0.5),
        lag.value_at_quantile(0.99),
        lag.max()
    );
    Ok(())
}

/// `args.rows` publishes at IN_FLIGHT concurrency; how long, and the CPU
/// of notify-svc and Postgres meanwhile.
async fn direct(args: &OutboxArgs, run_id: u32) -> anyhow::Result<(Duration, Vec<f64>)> {
    let client = NotifyClient::connect(args.notify_url.clone()).await?;
    let cpu_before = CpuSample::take(&["notify-svc", "postgres"]);
    let started = Instant::now();
    let calls = (0..args.rows).map(|n| {
        let mut client = client.clone();
        let users = args.users;
        async move {
            client
                .publish(pb::PublishRequest {
                    target: Some(pb::publish_request::Target::UserId(format!(
                        "direct-{run_id}-{}",
                        n % users
                    ))),
                    event: "bench".into(),
                    data: format!(r#"{{"n":{n}}}"#),
                    idempotency_key: format!("direct:{run_id}:{n}"),
                    ttl_seconds: 0,
                    push: None,
                })
                .await
        }
    });
    let answers: Vec<_> = futures::stream::iter(calls)
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    let elapsed = started.elapsed();
    for answer in answers {
        answer?;
    }
    let (cpu, _) = cpu_before.percent_until(&CpuSample::take(&["notify-svc", "postgres"]), elapsed);
    Ok((elapsed, cpu))
}

/// Sockets for every user, then rows at `rate`/s for `seconds`; the lag of
/// every frame that arrives (data.t is the writer's clock before INSERT).
async fn live(args: &OutboxArgs) -> anyhow::Result<(Histogram<u64>, u64)> {
    let issuer =
        DevIssuer::load_or_create(&args.data_dir.join(DEV_KEY_FILE), DEV_ISSUER, DEV_CLIENT_ID)?;
    let lag = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 600_000, 3,
    )?));
    let mut listeners = Vec::new();
    for u in 0..args.users {
        let token = issuer.mint(&DevToken::access(&format!("live-{u}")))?;
        let mut socket =
            crate::ws::connect(args.ws, IpAddr::V4(Ipv4Addr::LOCALHOST), Some(&token), None)
                .await?;
        let lag = lag.clone();
        listeners.push(tokio::spawn(async move {
            loop {
                let Some(Ok(Message::Text(text))) = socket.next().await else {
                    return;
                };
                let Ok(frame) = serde_json::from_str::<serde_json::Value>(text.as_str()) else {
                    continue;
                };
                if frame["type"] != "message" {
                    continue;
                }
                if let Some(t) = frame["data"]["t"].as_i64() {
                    let _ = lag
                        .lock()
                        .await
                        .record(u64::try_from(now_ms() - t).unwrap_or(0).max(1));
                }
            }
        }));
    }
    let interval = Duration::from_secs_f64(1.0 / f64::from(args.rate.max(1)));
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let until = Instant::now() + Duration::from_secs(args.seconds);
    let mut written = 0u64;
    // A few writers: one connection's round trip would cap the rate.
    let writers: Vec<_> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(Arc::new(crate::connect_db(&args.database_url).await?));
        }
        v
    };
    let mut inserts = tokio::task::JoinSet::new();
    while Instant::now() < until {
        tick.tick().await;
        let writer = writers[written as usize % writers.len()].clone();
        let user = written as usize % args.users;
        inserts.spawn(async move {
            let publish = serde_json::json!({
                "user_id": format!("live-{user}"),
                "event": "bench",
                "data": {"t": now_ms()},
            })
            .to_string();
            writer
                .execute(
                    "INSERT INTO notify_outbox (publish) VALUES ($1::text::jsonb)",
                    &[&publish],
                )
                .await
        });
        written += 1;
        while let Some(done) = inserts.try_join_next() {
            done??;
        }
    }
    while let Some(done) = inserts.join_next().await {
        done??;
    }
    // Let the last frames land.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for listener in listeners {
        listener.abort();
        let _ = listener.await;
    }
    let lag = Arc::try_unwrap(lag)
        .map_err(|_| anyhow::anyhow!("listeners still hold the histogram"))?
        .into_inner();
    Ok((lag, written))
}

/// `ingest_relay_cursor` on the relay's ops port.
async fn cursor(ops: &str) -> Option<f64> {
    crate::metric(&crate::scrape(ops).await?, "ingest_relay_cursor")
}
