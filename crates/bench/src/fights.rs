//! `notify-bench fights`: BetTracker's end-to-end lag. One WebSocket client
//! (a dev token) follows `fights:live` while fights change (run `bet-tracker
//! simulate` beside it); for every fight event it receives it takes the lag
//! from the change's commit (`data.fight.updated_at_ms`, stamped by the
//! database) to the frame's arrival, through outbox, tracker, notify-svc and
//! bridge. Prints events/s and the lag's p50/p99/max. `fight_expired` is no
//! row change: its lag is taken from the deadline, apart (the tracker
//! sweeps for overdue fights once a second).

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use notify_auth::{DEV_CLIENT_ID, DEV_ISSUER, DEV_KEY_FILE, DevIssuer, DevToken};
use tokio_tungstenite::tungstenite::Message;

#[derive(clap::Args)]
pub struct FightsArgs {
    /// The bridge's WebSocket address (host:port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    ws: SocketAddr,
    /// Where the dev key is (the bridge must run with AUTH_DEV=1 on the same one).
    #[arg(long, default_value = ".notify")]
    data_dir: std::path::PathBuf,
    /// How long to listen.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

pub async fn run(args: FightsArgs) -> anyhow::Result<()> {
    let issuer =
        DevIssuer::load_or_create(&args.data_dir.join(DEV_KEY_FILE), DEV_ISSUER, DEV_CLIENT_ID)?;
    let token = issuer.mint(&DevToken::access("bench-fights"))?;
    let mut socket =
        crate::ws::connect(args.ws, IpAddr::V4(Ipv4Addr::LOCALHOST), Some(&token), None).await?;
    socket
        .send(Message::text(
            serde_json::json!({"action": "subscribe", "topic": "fights:live"}).to_string(),
        ))
        .await?;
    let mut lag = Histogram::<u64>::new_with_bounds(1, 600_000, 3)?;
    let mut expiry_lag = Histogram::<u64>::new_with_bounds(1, 600_000, 3)?;
    let mut kinds = std::collections::BTreeMap::<String, u64>::new();
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.seconds);
    while let Ok(Some(frame)) = tokio::time::timeout_at(deadline, socket.next()).await {
        let Message::Text(text) = frame? else {
            continue;
        };
        let frame: serde_json::Value = serde_json::from_str(text.as_str())?;
        if frame["type"] != "message" {
            continue;
        }
        let fight = &frame["data"]["fight"];
        let (reference, histogram) = if frame["event"] == "fight_expired" {
            (fight["accept_deadline_ms"].as_i64(), &mut expiry_lag)
        } else {
            (fight["updated_at_ms"].as_i64(), &mut lag)
        };
        let Some(reference) = reference else { continue };
        let _ = histogram.record(u64::try_from(now_ms() - reference).unwrap_or(0).max(1));
        *kinds
            .entry(frame["event"].as_str().unwrap_or("?").to_owned())
            .or_default() += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    let ms = |q: f64| lag.value_at_quantile(q);
    println!(
        "fights bench: {} s on fights:live, machine cores={}",
        args.seconds,
        crate::machine_cores()
    );
    println!(
        "  events           {} ({:.0}/s) {:?}",
        lag.len() + expiry_lag.len(),
        (lag.len() + expiry_lag.len()) as f64 / secs,
        kinds
    );
    println!(
        "  commit -> frame  p50 {} ms  p99 {} ms  max {} ms   (changes)",
        ms(0.5),
        ms(0.99),
        ms(1.0)
    );
    println!(
        "  deadline -> frame p50 {} ms  p99 {} ms   (fight_expired, swept every second)",
        expiry_lag.value_at_quantile(0.5),
        expiry_lag.value_at_quantile(0.99)
    );
    Ok(())
}
