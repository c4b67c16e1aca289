//! The naive peer of `notify-bench publish`: what Postgres gives a service
//! that commits each publish as its own single-row transaction. Each client
//! owns one connection with a prepared `INSERT` (the fastest a naive service
//! gets; notify-svc itself never prepares, for RDS Proxy) and keeps one
//! commit in flight; the rows are the same size, spread over the same users.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;

use crate::{CpuSample, Figures, connect_db, splitmix64};

/// The table, fresh each run: an inbox row as a naive design stores it.
const TABLE: &str = "DROP TABLE IF EXISTS bench_naive_inbox;
     CREATE TABLE bench_naive_inbox (
         id bigserial PRIMARY KEY,
         user_id text NOT NULL,
         message_id uuid NOT NULL,
         event text NOT NULL,
         data text NOT NULL,
         created_at timestamptz NOT NULL DEFAULT now(),
         expires_at timestamptz NOT NULL
     );
     CREATE INDEX ON bench_naive_inbox (user_id, id);";

const INSERT: &str = "INSERT INTO bench_naive_inbox (user_id, message_id, event, data, expires_at)
     VALUES ($1, gen_random_uuid(), 'bench', $2, now() + interval '1 hour')";

/// What the naive phase runs.
pub struct Naive<'a> {
    pub url: &'a str,
    pub clients: usize,
    pub users: usize,
    pub data: &'a str,
    pub warmup: Duration,
    pub seconds: Duration,
}

/// Runs the naive phase and prints its figures.
pub async fn phase(n: Naive<'_>) -> anyhow::Result<Figures> {
    let admin = connect_db(n.url).await?;
    admin.batch_execute(TABLE).await?;
    let mut clients = Vec::with_capacity(n.clients);
    for _ in 0..n.clients {
        let client = connect_db(n.url).await?;
        let insert = client.prepare(INSERT).await?;
        clients.push((client, insert));
    }
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (i, (client, insert)) in clients.into_iter().enumerate() {
        let (measuring, stop, ok) = (measuring.clone(), stop.clone(), ok.clone());
        let (users, data) = (n.users as u64, n.data.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
            let mut state = (i as u64) << 32;
            while !stop.load(Ordering::Relaxed) {
                let user = format!("bench-{}", splitmix64(&mut state) % users);
                let started = Instant::now();
                client.execute(&insert, &[&user, &data]).await?;
                if measuring.load(Ordering::Relaxed) {
                    ok.fetch_add(1, Ordering::Relaxed);
                    let _ = hist.record(started.elapsed().as_micros().max(1) as u64);
                }
            }
            anyhow::Ok(hist)
        }));
    }
    tokio::time::sleep(n.warmup).await;
    let cpu_before = CpuSample::take(&["postgres"]);
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(n.seconds).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed();
    let cpu_after = CpuSample::take(&["postgres"]);
    stop.store(true, Ordering::Relaxed);
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for task in tasks {
        hist.add(task.await??)?;
    }
    let secs = elapsed.as_secs_f64();
    let per_sec = ok.load(Ordering::Relaxed) as f64 / secs;
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    let (named, bench) = cpu_before.percent_until(&cpu_after, elapsed);
    println!(
        "naive single-row commits: clients={} spread={} data={}B measured={secs:.1}s",
        n.clients,
        n.users,
        n.data.len()
    );
    println!("  commits/s     {per_sec:>10.0}   (one row, one transaction each)");
    println!(
        "  latency ms    p50 {:.2}  p99 {:.2}  max {:.2}",
        ms(0.5),
        ms(0.99),
        ms(1.0)
    );
    println!(
        "  cpu %         postgres {:.0}  this bench {bench:.0}  (100 = one core)",
        named[0]
    );
    admin
        .batch_execute("DROP TABLE IF EXISTS bench_naive_inbox")
        .await?;
    Ok(Figures {
        per_sec,
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
    })
}
