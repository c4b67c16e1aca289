//! `notify-bench ws`: the bridge's figures. Opens N authenticated WebSocket
//! clients (dev tokens minted with the key in --data-dir, spread over several
//! 127.0.0.x source addresses), then subscribes them all to one topic and
//! publishes M messages over gRPC with the send time inside each payload.
//! Prints connects/s, the bridge's RSS per idle connection, deliveries/s,
//! publish→receive latency p50/p99, and the bridge's CPU.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Context;
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use notify_auth::{DEV_CLIENT_ID, DEV_ISSUER, DEV_KEY_FILE, DevIssuer, DevToken};
use notify_proto::v1::{self as pb, notify_client::NotifyClient};
use tokio::{net::TcpSocket, sync::Mutex};
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};

#[derive(clap::Args)]
pub struct WsArgs {
    /// The bridge's WebSocket address (host:port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    ws: SocketAddr,
    /// notify-svc gRPC endpoint.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    grpc: String,
    /// Where the dev key is (the bridge must run with AUTH_DEV=1 on the same one).
    #[arg(long, default_value = ".notify")]
    data_dir: std::path::PathBuf,
    /// WebSocket clients.
    #[arg(long, short = 'n', default_value_t = 1000)]
    clients: usize,
    /// Messages published to the topic all clients follow.
    #[arg(long, short = 'm', default_value_t = 1000)]
    messages: usize,
    /// Publish rate, messages per second (0: as fast as commits allow).
    #[arg(long, default_value_t = 0)]
    rate: u32,
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
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(ws: SocketAddr, source: IpAddr, token: &str) -> anyhow::Result<Socket> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    let stream = socket.connect(ws).await?;
    stream.set_nodelay(true)?;
    let mut req = format!("ws://{ws}/ws").into_client_request()?;
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    let (mut socket, _) =
        tokio_tungstenite::client_async(req, tokio_tungstenite::MaybeTlsStream::Plain(stream))
            .await?;
    // The welcome frame.
    socket.next().await.context("no welcome")??;
    Ok(socket)
}

pub async fn run(args: WsArgs) -> anyhow::Result<()> {
    let issuer =
        DevIssuer::load_or_create(&args.data_dir.join(DEV_KEY_FILE), DEV_ISSUER, DEV_CLIENT_ID)?;
    let tokens: Vec<String> = (0..args.clients)
        .map(|i| issuer.mint(&DevToken::access(&format!("bench-ws-{i}"))))
        .collect::<Result<_, _>>()?;
    let pid = crate::find_pid(&args.bridge_process)
        .context("bridge process not found (--bridge-process)")?;
    let rss_before = crate::rss_kib(pid);

    // Phase 1: connects/s.
    let started = Instant::now();
    let sockets = Arc::new(Mutex::new(Vec::with_capacity(args.clients)));
    let next = Arc::new(AtomicU64::new(0));
    let tokens = Arc::new(tokens);
    let mut tasks = Vec::new();
    for _ in 0..args.connect_concurrency {
        let (sockets, next, tokens) = (sockets.clone(), next.clone(), tokens.clone());
        let (ws, sources) = (args.ws, args.source_addresses.max(1));
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= tokens.len() {
                    return Ok::<(), anyhow::Error>(());
                }
                let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i % sources as usize) as u8));
                let socket = connect(ws, source, &tokens[i]).await?;
                sockets.lock().await.push(socket);
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let connect_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = crate::rss_kib(pid);
    let per_conn = (rss_after.saturating_sub(rss_before)) as f64 * 1024.0 / args.clients as f64;

    // Phase 2: subscribe everyone to one topic.
    let topic = format!("room:bench-{}", std::process::id());
    let mut sockets = std::mem::take(&mut *sockets.lock().await);
    for s in &mut sockets {
        s.send(Message::text(
            serde_json::json!({"action": "subscribe", "topic": topic}).to_string(),
        ))
        .await?;
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

    // Phase 3: fan-out; every client records publish→receive latency.
    let expected = args.messages;
    let hist = Arc::new(std::sync::Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let received = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for mut s in sockets {
        let (hist, received) = (hist.clone(), received.clone());
        readers.push(tokio::spawn(async move {
            let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
            let mut got = 0;
            while got < expected {
                let Some(Ok(msg)) = s.next().await else { break };
                let Message::Text(t) = msg else { continue };
                let Ok(v) = serde_json::from_str::<serde_json::Value>(t.as_str()) else {
                    continue;
                };
                if let Some(sent) = v["data"]["sent_us"].as_u64() {
                    let now = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_micros() as u64);
                    let _ = local.record(now.saturating_sub(sent).max(1));
                    got += 1;
                }
            }
            received.fetch_add(got as u64, Ordering::Relaxed);
            hist.lock().expect("hist").add(local).ok();
            s
        }));
    }
    let mut api = NotifyClient::connect(args.grpc.clone()).await?;
    let cpu_before = crate::cpu_ticks(pid);
    let fanout_started = Instant::now();
    let gap = (args.rate > 0).then(|| Duration::from_secs_f64(1.0 / f64::from(args.rate)));
    for _ in 0..args.messages {
        let sent_us = SystemTime::now().duration_since(UNIX_EPOCH)?.as_micros() as u64;
        api.publish(pb::PublishRequest {
            target: Some(pb::publish_request::Target::Topic(topic.clone())),
            event: "bench".into(),
            data: serde_json::json!({"sent_us": sent_us}).to_string(),
            ..Default::default()
        })
        .await?;
        if let Some(gap) = gap {
            tokio::time::sleep(gap).await;
        }
    }
    let mut sockets = Vec::new();
    for r in readers {
        sockets.push(r.await?);
    }
    let fanout_secs = fanout_started.elapsed().as_secs_f64();
    let bridge_cpu_secs =
        crate::cpu_ticks(pid).saturating_sub(cpu_before) as f64 / crate::clock_ticks();
    let deliveries = received.load(Ordering::Relaxed);
    let hist = hist.lock().expect("hist");
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "ws bench: clients={} messages={} rate={} cores={}",
        args.clients,
        args.messages,
        if args.rate == 0 {
            "max".to_owned()
        } else {
            args.rate.to_string()
        },
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "  connects/s            {:>10.0}",
        args.clients as f64 / connect_secs
    );
    println!("  bridge RSS / idle conn {:>9.2} KB", per_conn / 1000.0);
    println!(
        "  deliveries            {deliveries} of {}",
        args.clients * args.messages
    );
    println!(
        "  deliveries/s          {:>10.0}",
        deliveries as f64 / fanout_secs
    );
    println!(
        "  deliveries/bridge-CPU-s {:>8.0}   (bridge CPU {:.0} %)",
        deliveries as f64 / bridge_cpu_secs.max(1e-9),
        bridge_cpu_secs / fanout_secs * 100.0
    );
    println!(
        "  latency ms            p50 {:.2}  p99 {:.2}  max {:.2}",
        ms(0.5),
        ms(0.99),
        ms(1.0)
    );
    drop(sockets);
    Ok(())
}
