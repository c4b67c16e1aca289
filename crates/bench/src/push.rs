//! The push sender (issue 23): pushes/s a notify-svc sustains to a local
//! Web Push endpoint, and the delay from publish to the push request for
//! offline users (p50/p99). The endpoint is a sink in this process (HTTPS,
//! HTTP/2 and 1.1, a throw-away certificate) that answers 201 at once and
//! notes when each push (by its `Topic`, the message id) arrived, so the
//! delay is read on one clock. The notify-svc it measures is started here
//! with a fresh VAPID key and the sink's certificate trusted.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use notify_proto::v1::{self as pb, notify_client::NotifyClient};
use tokio::sync::Notify;

use crate::CpuSample;

#[derive(Args)]
pub struct PushArgs {
    /// The notify-svc binary to start.
    #[arg(long, default_value = "target/release/notify-svc")]
    svc: std::path::PathBuf,
    /// Its database (a fresh one: the bench registers devices).
    #[arg(long)]
    database_url: String,
    /// Users, one Web Push device each.
    #[arg(short, long, default_value_t = 2_000)]
    users: usize,
    /// Pushes in the throughput phase (one PublishBatch per 1,000).
    #[arg(short, long, default_value_t = 20_000)]
    pushes: usize,
    /// Publishes per second in the delay phase (one at a time, paced).
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// Seconds of the delay phase.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
}

/// When each push arrived at the sink, by its Topic (message id, hex).
#[derive(Default)]
struct Sink {
    arrived: Mutex<HashMap<String, Instant>>,
    news: Notify,
}

pub async fn run(args: PushArgs) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("notify-bench-push-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let sink = Arc::new(Sink::default());
    let sink_addr = serve_sink(&dir, sink.clone()).await?;
    let key = notify_push::vapid::Vapid::generate("mailto:bench@example.com")
        .map_err(anyhow::Error::msg)?;
    std::fs::write(dir.join("vapid.pem"), key.to_pem())?;
    let grpc = format!("127.0.0.1:{}", crate::free_port()?);
    let http = format!("127.0.0.1:{}", crate::free_port()?);
    let mut svc = tokio::process::Command::new(&args.svc)
        .args(["--dev", "--grpc-addr", &grpc, "--http-addr", &http])
        .arg("--database-url")
        .arg(&args.database_url)
        .arg("--vapid-key-file")
        .arg(dir.join("vapid.pem"))
        .arg("--push-ca-file")
        .arg(dir.join("cert.pem"))
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", args.svc.display()))?;
    let mut api = connect(&grpc).await?;
    let p256dh = subscription_key()?;
    for n in 0..args.users {
        api.register_device(pb::RegisterDeviceRequest {
            user_id: format!("push-{n}"),
            destination: Some(pb::PushDestination {
                destination: Some(pb::push_destination::Destination::WebPush(
                    pb::WebPushSubscription {
                        endpoint: format!("https://{sink_addr}/wp/{n}"),
                        p256dh: p256dh.clone(),
                        auth: "BTBZMqHH6r4Tts7J_aSIgg".into(),
                    },
                )),
            }),
        })
        .await?;
    }
    // The process under measure is notify-svc (a wrapper may exec it).
    let svc_name = "notify-svc";
    println!(
        "cores: {}; {} users with one Web Push device each; sink in this process",
        crate::machine_cores(),
        args.users
    );

    // Throughput: every push queued at once, then drained by the worker.
    let before = CpuSample::take(&[svc_name]);
    let started = Instant::now();
    let mut ids = Vec::with_capacity(args.pushes);
    for chunk in (0..args.pushes).collect::<Vec<_>>().chunks(1_000) {
        let requests = chunk
            .iter()
            .map(|&n| push_request(n % args.users))
            .collect();
        let answer = api
            .publish_batch(pb::PublishBatchRequest { requests })
            .await?
            .into_inner();
        for r in answer.results {
            if let Some(pb::publish_result::Result::Ok(ok)) = r.result {
                ids.push(ok.message_id.replace('-', ""));
            }
        }
    }
    wait_for(&sink, &ids, Duration::from_secs(300)).await?;
    let elapsed = started.elapsed();
    let after = CpuSample::take(&[svc_name]);
    let (cpu, _) = before.percent_until(&after, elapsed);
    let rate = ids.len() as f64 / elapsed.as_secs_f64();
    println!(
        "throughput: {} pushes in {:.2} s = {:.0} pushes/s; notify-svc CPU {:.0} % = {:.1} µs per push (publish + queue + send)",
        ids.len(),
        elapsed.as_secs_f64(),
        rate,
        cpu[0],
        cpu[0] / 100.0 * elapsed.as_secs_f64() * 1e6 / ids.len() as f64
    );

    // Delay: paced single publishes to offline users, publish sent -> push
    // request at the sink.
    let mut sent: Vec<(String, Instant)> = Vec::new();
    let total = u64::from(args.rate) * args.seconds;
    let gap = Duration::from_secs_f64(1.0 / f64::from(args.rate));
    let mut tick = tokio::time::interval(gap);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for n in 0..total as usize {
        tick.tick().await;
        let at = Instant::now();
        let ok = api
            .publish(push_request(n % args.users))
            .await?
            .into_inner();
        sent.push((ok.message_id.replace('-', ""), at));
    }
    let wanted: Vec<String> = sent.iter().map(|(id, _)| id.clone()).collect();
    wait_for(&sink, &wanted, Duration::from_secs(120)).await?;
    let mut delay = Histogram::<u64>::new(3)?;
    {
        let arrived = sink.arrived.lock().expect("sink lock");
        for (id, at) in &sent {
            let got = arrived[id];
            delay.record(got.saturating_duration_since(*at).as_micros() as u64)?;
        }
    }
    println!(
        "delay at {}/s for {} s (publish sent -> push request): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        args.rate,
        args.seconds,
        delay.value_at_quantile(0.5) as f64 / 1000.0,
        delay.value_at_quantile(0.99) as f64 / 1000.0,
        delay.max() as f64 / 1000.0
    );
    svc.start_kill()?;
    let _ = svc.wait().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn push_request(user: usize) -> pb::PublishRequest {
    pb::PublishRequest {
        target: Some(pb::publish_request::Target::UserId(format!("push-{user}"))),
        event: "fight.accepted".into(),
        data: r#"{"opponent":"bea","stake":20}"#.into(),
        push: Some(pb::PushOptions {
            when: pb::PushWhen::Offline as i32,
            title: "bea took your bet".into(),
            body: "Stake 20".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A valid subscription key (a P-256 point), as a browser would hand out.
fn subscription_key() -> anyhow::Result<String> {
    use aws_lc_rs::agreement::{ECDH_P256, PrivateKey};
    use base64::Engine;
    let key = PrivateKey::generate(&ECDH_P256).map_err(|_| anyhow::anyhow!("P-256 key"))?;
    let public = key
        .compute_public_key()
        .map_err(|_| anyhow::anyhow!("P-256 public key"))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(public.as_ref()))
}

async fn connect(grpc: &str) -> anyhow::Result<NotifyClient<tonic::transport::Channel>> {
    for _ in 0..300 {
        if let Ok(client) = NotifyClient::connect(format!("http://{grpc}")).await {
            return Ok(client);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("notify-svc did not answer on {grpc}")
}

async fn wait_for(sink: &Sink, ids: &[String], limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let news = sink.news.notified();
        let missing = {
            let arrived = sink.arrived.lock().expect("sink lock");
            ids.iter().filter(|id| !arrived.contains_key(*id)).count()
        };
        if missing == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!("{missing} pushes never arrived");
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), news).await;
    }
}

/// The sink: HTTPS on a free loopback port with a certificate for
/// 127.0.0.1 (written to `dir/cert.pem` for notify-svc to trust).
async fn serve_sink(dir: &std::path::Path, sink: Arc<Sink>) -> anyhow::Result<SocketAddr> {
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])?;
    std::fs::write(dir.join("cert.pem"), cert.cert.pem())?;
    let key = rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der())
        .map_err(|e| anyhow::anyhow!("sink key: {e}"))?;
    let mut tls = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)?;
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = tcp.set_nodelay(true);
            let (acceptor, sink) = (acceptor.clone(), sink.clone());
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let sink = sink.clone();
                        async move {
                            let topic = req
                                .headers()
                                .get("topic")
                                .and_then(|t| t.to_str().ok())
                                .map(str::to_owned);
                            let _ = req.into_body().collect().await;
                            if let Some(topic) = topic {
                                sink.arrived
                                    .lock()
                                    .expect("sink lock")
                                    .entry(topic)
                                    .or_insert_with(Instant::now);
                                sink.news.notify_waiters();
                            }
                            Ok::<_, std::convert::Infallible>(
                                hyper::Response::builder()
                                    .status(201)
                                    .body(Full::new(Bytes::new()))
                                    .expect("a response"),
                            )
                        }
                    },
                );
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(io, service)
                .await;
            });
        }
    });
    Ok(addr)
}
