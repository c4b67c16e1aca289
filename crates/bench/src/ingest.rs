//! `notify-bench ingest`: the SQS consumer's own cost. Fills a fresh queue
//! (with a dead-letter queue) with N publishes, then starts `notify-ingest`
//! on it against a running notify-svc and waits until it has committed them
//! all; prints messages/s and the CPU the consumer (and notify-svc) spent
//! per message. Against moto, SQS itself is no speed reference (moto is
//! Python): the consumer's CPU per message is the figure.

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::Context;
use aws_sdk_sqs::types::{QueueAttributeName, SendMessageBatchRequestEntry};

use crate::{CpuSample, machine_cores};

#[derive(clap::Args)]
pub struct IngestArgs {
    /// The SQS endpoint (moto's server).
    #[arg(long, default_value = "http://127.0.0.1:4599")]
    endpoint_url: String,
    #[arg(long, default_value = "us-east-1")]
    region: String,
    /// notify-svc's gRPC endpoint.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    notify_url: String,
    /// Messages to put on the queue, then consume.
    #[arg(long, default_value_t = 2000)]
    messages: usize,
    /// Distinct users the messages spread over.
    #[arg(long, default_value_t = 1000)]
    users: usize,
    /// Pollers per queue for the consumer.
    #[arg(long, default_value_t = 4)]
    pollers: usize,
    /// The notify-ingest binary (default: beside this one).
    #[arg(long)]
    ingest_bin: Option<std::path::PathBuf>,
    /// Process name whose CPU is reported as notify-svc's.
    #[arg(long, default_value = "notify-svc")]
    svc_process: String,
}

pub async fn run(args: IngestArgs) -> anyhow::Result<()> {
    let aws = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(args.region.clone()))
        .endpoint_url(&args.endpoint_url)
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "bench", "bench", None, None, "bench",
        ))
        .load()
        .await;
    let sqs = aws_sdk_sqs::Client::new(&aws);
    let run_id = std::process::id();
    let dlq = sqs
        .create_queue()
        .queue_name(format!("bench-dlq-{run_id}"))
        .send()
        .await
        .context("creating the dead-letter queue (is moto running?)")?
        .queue_url
        .unwrap_or_default();
    let dlq_arn = sqs
        .get_queue_attributes()
        .queue_url(&dlq)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await?
        .attributes
        .and_then(|mut a| a.remove(&QueueAttributeName::QueueArn))
        .unwrap_or_default();
    let redrive = serde_json::json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "5"});
    let queue = sqs
        .create_queue()
        .queue_name(format!("bench-in-{run_id}"))
        .attributes(QueueAttributeName::RedrivePolicy, redrive.to_string())
        .send()
        .await?
        .queue_url
        .unwrap_or_default();

    // Fill it first: the consumer then runs flat out.
    let filled = Instant::now();
    let mut sends = tokio::task::JoinSet::new();
    for chunk in (0..args.messages).collect::<Vec<_>>().chunks(10) {
        let entries: Vec<SendMessageBatchRequestEntry> = chunk
            .iter()
            .map(|n| {
                let body = serde_json::json!({
                    "user_id": format!("bench-{}", n % args.users),
                    "event": "bench",
                    "data": {"n": n},
                });
                SendMessageBatchRequestEntry::builder()
                    .id(n.to_string())
                    .message_body(body.to_string())
                    .build()
                    .expect("an entry")
            })
            .collect();
        let (sqs, queue) = (sqs.clone(), queue.clone());
        sends.spawn(async move {
            sqs.send_message_batch()
                .queue_url(queue)
                .set_entries(Some(entries))
                .send()
                .await
        });
        // moto serves one request at a time well; more only queue up there.
        while sends.len() >= 4 {
            sends.join_next().await.expect("a task")??;
        }
    }
    while let Some(sent) = sends.join_next().await {
        sent??;
    }
    println!(
        "queue filled: {} messages in {:.1}s",
        args.messages,
        filled.elapsed().as_secs_f64()
    );

    let bin = args.ingest_bin.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .expect("own path")
            .with_file_name("notify-ingest")
    });
    let ops = format!("127.0.0.1:{}", crate::free_port()?);
    let cpu_before = CpuSample::take(&["notify-ingest", &args.svc_process]);
    let started = Instant::now();
    let mut child = tokio::process::Command::new(&bin)
        .env("INGEST_SQS_QUEUES", &queue)
        .env("INGEST_SQS_ENDPOINT_URL", &args.endpoint_url)
        .env("INGEST_SQS_REGION", &args.region)
        .env("INGEST_SQS_POLLERS", args.pollers.to_string())
        .env("INGEST_SQS_WAIT_SECS", "1")
        .env("INGEST_NOTIFY_URL", &args.notify_url)
        .env("INGEST_HTTP_ADDR", &ops)
        .env("AWS_ACCESS_KEY_ID", "bench")
        .env("AWS_SECRET_ACCESS_KEY", "bench")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let target = args.messages as f64;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("notify-ingest exited early: {status}");
        }
        let done = published(&ops).await.unwrap_or(0.0);
        if done >= target {
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            anyhow::bail!("only {done} of {target} published within 10 minutes");
        }
    }
    let elapsed = started.elapsed();
    let cpu_after = CpuSample::take(&["notify-ingest", &args.svc_process]);
    child.start_kill().ok();
    let (named, _) = cpu_before.percent_until(&cpu_after, elapsed);
    let secs = elapsed.as_secs_f64();
    let per_msg = |pct: f64| pct / 100.0 * secs * 1e6 / target;
    println!(
        "ingest bench: {} messages, {} pollers, measured={secs:.1}s cores={}",
        args.messages,
        args.pollers,
        machine_cores()
    );
    println!(
        "  messages/s    {:>10.0}   (moto's SQS is the bound: not a speed reference)",
        target / secs
    );
    println!(
        "  cpu %         notify-ingest {:.0}  {} {:.0}  (100 = one core)",
        named[0], args.svc_process, named[1]
    );
    println!(
        "  cpu/message   notify-ingest {:.1} µs  {} {:.1} µs",
        per_msg(named[0]),
        args.svc_process,
        per_msg(named[1])
    );
    Ok(())
}

/// `ingest_published_total` (plus duplicates) on the consumer's ops port.
async fn published(ops: &str) -> Option<f64> {
    let text = crate::scrape(ops).await?;
    Some(
        crate::metric(&text, "ingest_published_total")?
            + crate::metric(&text, "ingest_duplicates_total").unwrap_or(0.0),
    )
}
