//! `notify-bench publish`: C concurrent callers publish for a fixed time;
//! durable publishes/s, p50/p99 latency and the CPU of notify-svc and
//! Postgres over the measured window. `--via grpc` (the Notify API over
//! HTTP/2), `--via http` (the HTTP/JSON API over HTTP/1.1 keep-alive, as
//! curl and webhooks call it) or `--via both`: the two in one run, one after
//! the other against the same notify-svc, and their ratio.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::ValueEnum;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use notify_proto::v1::{self as pb, notify_client::NotifyClient};
use tonic::{metadata::MetadataValue, transport::Channel};

use crate::{CpuSample, Figures, machine_cores, splitmix64};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TargetKind {
    /// Each publish to one of --users users' inboxes.
    User,
    /// Each publish to one of --users topics `room:bench-N`.
    Topic,
}

/// Which way in the callers use.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Via {
    Grpc,
    Http,
    /// gRPC, then HTTP/JSON, in the same run.
    Both,
}

#[derive(clap::Args)]
pub struct PublishArgs {
    /// notify-svc gRPC endpoint (the HTTP/JSON API is on the same port).
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    url: String,
    /// CA (PEM) to trust for an https:// --url (a TLS notify-svc; gRPC only).
    #[arg(long)]
    ca_file: Option<std::path::PathBuf>,
    /// How the callers publish.
    #[arg(long, value_enum, default_value_t = Via::Grpc)]
    via: Via,
    /// Concurrent callers (each has one request in flight at a time).
    #[arg(long, short = 'c', default_value_t = 256)]
    concurrency: usize,
    /// HTTP/2 connections the gRPC callers share (HTTP/JSON callers keep one
    /// HTTP/1.1 connection each).
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
    /// Publish batches of this many messages instead of single publishes.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Bearer token, if notify-svc has NOTIFY_API_TOKENS.
    #[arg(long, env = "NOTIFY_TOKEN")]
    token: Option<String>,
    /// Process name whose CPU is reported as notify-svc's.
    #[arg(long, default_value = "notify-svc")]
    svc_process: String,
    /// Also measure, in the same run, `notify-bench noop-server` at this URL
    /// (a Publish that answers at once: the gRPC stack's ceiling here).
    #[arg(long)]
    noop_url: Option<String>,
    /// Also measure, in the same run, naive single-row commits straight to
    /// this Postgres database (a table of its own, dropped after).
    #[arg(long)]
    naive_database_url: Option<String>,
    /// Clients of the naive phase, one commit in flight each.
    #[arg(long, default_value_t = 64)]
    naive_clients: usize,
    /// Also measure, in the same run, a notify-svc at this URL that keeps
    /// no inbox counts (`--inbox-counts false`, its own database): what
    /// read state and counts cost a publish.
    #[arg(long)]
    counts_off_url: Option<String>,
    /// Process name of that notify-svc (a copy of the binary, so that its
    /// CPU is told apart).
    #[arg(long, default_value = "notify-svc-off")]
    counts_off_process: String,
}

struct Shared {
    measuring: AtomicBool,
    stop: AtomicBool,
    ok: AtomicU64,
    errors: AtomicU64,
}

type HttpClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

/// One caller's way in.
enum Caller {
    Grpc(NotifyClient<Channel>),
    Http(HttpClient),
}

/// One publish (or batch) as the caller sends it.
struct Call<'a> {
    requests: Vec<pb::PublishRequest>,
    token: Option<&'a str>,
    base: &'a str,
}

impl Caller {
    /// Sends one call; how many messages it committed.
    async fn send(&mut self, call: Call<'_>) -> Result<u64, String> {
        match self {
            Self::Grpc(client) => {
                let bearer = call
                    .token
                    .and_then(|t| MetadataValue::try_from(format!("Bearer {t}")).ok());
                if call.requests.len() == 1 {
                    let mut req =
                        tonic::Request::new(call.requests.into_iter().next().expect("one"));
                    if let Some(v) = bearer {
                        req.metadata_mut().insert("authorization", v);
                    }
                    client
                        .publish(req)
                        .await
                        .map(|_| 1)
                        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
                } else {
                    let mut req = tonic::Request::new(pb::PublishBatchRequest {
                        requests: call.requests,
                    });
                    if let Some(v) = bearer {
                        req.metadata_mut().insert("authorization", v);
                    }
                    client
                        .publish_batch(req)
                        .await
                        .map(|r| committed(&r.into_inner()))
                        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
                }
            }
            Self::Http(client) => {
                let (path, body) = if call.requests.len() == 1 {
                    ("/v1/publish", json_of(&call.requests[0]))
                } else {
                    let items: Vec<String> = call.requests.iter().map(json_of).collect();
                    (
                        "/v1/publish-batch",
                        format!("{{\"requests\":[{}]}}", items.join(",")),
                    )
                };
                let mut req = hyper::Request::post(format!("{}{path}", call.base))
                    .header("content-type", "application/json");
                if let Some(t) = call.token {
                    req = req.header("authorization", format!("Bearer {t}"));
                }
                let req = req
                    .body(Full::new(Bytes::from(body)))
                    .map_err(|e| e.to_string())?;
                let answer = client.request(req).await.map_err(|e| e.to_string())?;
                let status = answer.status();
                let bytes = answer
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| e.to_string())?
                    .to_bytes();
                if !status.is_success() {
                    return Err(format!("{status}: {}", String::from_utf8_lossy(&bytes)));
                }
                Ok(if path == "/v1/publish" {
                    1
                } else {
                    // Each `{"ok":…}` item is a committed message.
                    String::from_utf8_lossy(&bytes).matches("{\"ok\":").count() as u64
                })
            }
        }
    }
}

fn committed(batch: &pb::PublishBatchResponse) -> u64 {
    batch
        .results
        .iter()
        .filter(|r| matches!(r.result, Some(pb::publish_result::Result::Ok(_))))
        .count() as u64
}

/// The HTTP/JSON body of a publish the bench made (data is JSON text already).
fn json_of(r: &pb::PublishRequest) -> String {
    use pb::publish_request::Target;
    let target = match &r.target {
        Some(Target::UserId(u)) => format!("\"user_id\":\"{u}\""),
        Some(Target::Topic(t)) => format!("\"topic\":\"{t}\""),
        _ => unreachable!("the bench publishes to users or topics"),
    };
    let key = if r.idempotency_key.is_empty() {
        String::new()
    } else {
        format!(",\"idempotency_key\":\"{}\"", r.idempotency_key)
    };
    format!(
        "{{{target},\"event\":\"{}\",\"data\":{},\"ttl_seconds\":{}{key}}}",
        r.event, r.data, r.ttl_seconds
    )
}

pub async fn run(args: PublishArgs) -> anyhow::Result<()> {
    if args.concurrency == 0 || args.connections == 0 || args.users == 0 || args.batch == 0 {
        bail!("--concurrency, --connections, --users and --batch must be at least 1");
    }
    let ours = Server {
        url: &args.url,
        process: &args.svc_process,
    };
    let grpc = match args.via {
        Via::Grpc => phase(&args, Via::Grpc, &ours).await?,
        Via::Http => {
            phase(&args, Via::Http, &ours).await?;
            return Ok(());
        }
        Via::Both => {
            let grpc = phase(&args, Via::Grpc, &ours).await?;
            let http = phase(&args, Via::Http, &ours).await?;
            println!(
                "HTTP/JSON vs gRPC: {:.2}x the publishes/s; p50 {:.2} vs {:.2} ms, p99 {:.2} vs {:.2} ms",
                http.per_sec / grpc.per_sec,
                http.p50_ms,
                grpc.p50_ms,
                http.p99_ms,
                grpc.p99_ms
            );
            grpc
        }
    };
    peers(&args, &grpc).await
}

/// The peers measured in the same run, each beside our gRPC figure.
async fn peers(args: &PublishArgs, ours: &Figures) -> anyhow::Result<()> {
    let mut lines = Vec::new();
    if let Some(url) = &args.counts_off_url {
        let off = Server {
            url,
            process: &args.counts_off_process,
        };
        let off = phase(args, Via::Grpc, &off).await?;
        lines.push(format!(
            "  counts on vs off (NOTIFY_INBOX_COUNTS): {:.0} vs {:.0}/s = {:.2}x; p99 {:.2} vs {:.2} ms",
            ours.per_sec,
            off.per_sec,
            ours.per_sec / off.per_sec,
            ours.p99_ms,
            off.p99_ms
        ));
    }
    if let Some(url) = &args.naive_database_url {
        let naive = crate::naive::phase(crate::naive::Naive {
            url,
            clients: args.naive_clients,
            users: args.users,
            data: &payload(args.data_bytes),
            warmup: Duration::from_secs(args.warmup),
            seconds: Duration::from_secs(args.seconds),
        })
        .await?;
        lines.push(format!(
            "  vs naive single-row commits ({} clients): {:.0} vs {:.0}/s = {:.2}x",
            args.naive_clients,
            ours.per_sec,
            naive.per_sec,
            ours.per_sec / naive.per_sec
        ));
    }
    if let Some(url) = &args.noop_url {
        let noop = Server {
            url,
            process: "notify-bench",
        };
        let noop = phase(args, Via::Grpc, &noop).await?;
        lines.push(format!(
            "  vs a no-op gRPC server (same C): {:.0} vs {:.0} calls/s = {:.2}x",
            ours.per_sec,
            noop.per_sec,
            ours.per_sec / noop.per_sec
        ));
    }
    if !lines.is_empty() {
        println!("durable publishes/s, same run, cores={}:", machine_cores());
        for line in lines {
            println!("{line}");
        }
    }
    Ok(())
}

/// The server one phase drives, and the process whose CPU is its.
struct Server<'a> {
    url: &'a str,
    process: &'a str,
}

/// A message's JSON data of about `bytes` bytes.
fn payload(bytes: usize) -> String {
    format!("{{\"pad\":\"{}\"}}", "x".repeat(bytes.saturating_sub(10)))
}

/// One measured phase through `via`; prints its figures.
async fn phase(args: &PublishArgs, via: Via, server: &Server<'_>) -> anyhow::Result<Figures> {
    let mut callers = Vec::new();
    match via {
        Via::Grpc => {
            let tls = notify_proto::channel::ClientTls {
                ca: args.ca_file.clone(),
                ..Default::default()
            };
            let mut channels = Vec::new();
            for _ in 0..args.connections {
                channels.push(
                    notify_proto::channel::endpoint(server.url, &tls)?
                        .connect()
                        .await
                        .with_context(|| format!("connecting to {}", server.url))?,
                );
            }
            for caller in 0..args.concurrency {
                callers.push(Caller::Grpc(NotifyClient::new(
                    channels[caller % channels.len()].clone(),
                )));
            }
        }
        _ => {
            // One pool: each caller, one request in flight, keeps a connection.
            let client: HttpClient =
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .pool_max_idle_per_host(args.concurrency)
                    .build_http();
            callers.extend((0..args.concurrency).map(|_| Caller::Http(client.clone())));
        }
    }
    let data = payload(args.data_bytes);
    let shared = Arc::new(Shared {
        measuring: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        ok: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    });
    let base: Arc<str> = server.url.trim_end_matches('/').into();
    let token: Option<Arc<str>> = args.token.as_deref().map(Into::into);
    // Keys stay unique across phases: the HTTP phase must not repeat gRPC's.
    let phase_bit: u64 = if via == Via::Http { 1 << 63 } else { 0 };
    let mut tasks = Vec::new();
    for (caller, mut client) in callers.into_iter().enumerate() {
        let (shared, data, token, base) =
            (shared.clone(), data.clone(), token.clone(), base.clone());
        let (target, users, keys, batch) =
            (args.target, args.users, args.idempotency_keys, args.batch);
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
            let mut n: u64 = phase_bit | ((caller as u64) << 32);
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
                            push: None,
                        }
                    })
                    .collect();
                let started = Instant::now();
                let call = Call {
                    requests,
                    token: token.as_deref(),
                    base: &base,
                };
                let result = client.send(call).await;
                let took = started.elapsed();
                if !shared.measuring.load(Ordering::Relaxed) {
                    continue;
                }
                match result {
                    Ok(committed) => {
                        shared.ok.fetch_add(committed, Ordering::Relaxed);
                        let _ = hist.record(took.as_micros().max(1) as u64);
                    }
                    Err(e) => {
                        shared.errors.fetch_add(1, Ordering::Relaxed);
                        first_error.get_or_insert(e);
                    }
                }
            }
            (hist, first_error)
        }));
    }
    tokio::time::sleep(Duration::from_secs(args.warmup)).await;
    let cpu_before = CpuSample::take(&[server.process, "postgres"]);
    shared.measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    shared.measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed();
    let cpu_after = CpuSample::take(&[server.process, "postgres"]);
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
        "publish bench via {} to {}: C={} connections={} batch={} target={} spread={} data={}B keys={} measured={:.1}s cores={}",
        if via == Via::Http {
            "HTTP/JSON (HTTP/1.1)"
        } else {
            "gRPC"
        },
        server.url,
        args.concurrency,
        if via == Via::Http {
            args.concurrency
        } else {
            args.connections
        },
        args.batch,
        if args.target == TargetKind::User {
            "user"
        } else {
            "topic"
        },
        args.users,
        data.len(),
        args.idempotency_keys,
        secs,
        machine_cores(),
    );
    let per_sec = ok as f64 / secs;
    println!("  publishes/s   {per_sec:>10.0}   (messages committed per second)");
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
        server.process
    );
    if ok > 0 {
        println!(
            "  svc cpu/msg   {:.1} µs",
            svc / 100.0 * secs * 1e6 / ok as f64
        );
    }
    if let Some(e) = first_error {
        println!("  first error   {e}");
    }
    Ok(Figures {
        per_sec,
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
    })
}
