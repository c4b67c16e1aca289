//! The SQS consumer: pollers long-poll each queue, map every message to a
//! publish ([`crate::envelope`]) and commit them through the Notify API in
//! one `PublishBatch` per receive. A message is deleted only after its
//! commit (or once notify-svc says it had it already: the idempotency key);
//! one that cannot be published is made visible again at once and left to
//! the queue's redrive policy, which moves it to the dead-letter queue —
//! never retried forever, never dropped. While notify-svc is away or busy
//! the batch is retried with backoff and its messages' visibility is
//! extended, so no other poller takes them meanwhile.

use std::{
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, bail};
use aws_sdk_sqs::{
    Client as Sqs,
    types::{
        ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, Message,
        MessageSystemAttributeName, QueueAttributeName,
    },
};
use notify_proto::v1::{self as pb, notify_client::NotifyClient};
use tokio_util::sync::CancellationToken;
use tonic::{Code, metadata::MetadataValue, transport::Channel};

use notify_relay::NotifyCaller;

use crate::{
    config::{IngestConfig, OutboxSource},
    envelope::{Received, Routes, publish_of},
    metrics::{self, Stats},
};

/// SQS hands out at most 10 messages per receive.
const RECEIVE_MAX: i32 = 10;
const RETRY_FIRST: Duration = Duration::from_millis(100);
/// A longer wait would only delay the catch-up once notify-svc is back.
const RETRY_MAX: Duration = Duration::from_secs(5);
/// A publish call that hangs this long is retried (DEADLINE_EXCEEDED): a
/// notify-svc that stopped answering must not hold a poller forever.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);

/// A queue as the consumer found it at start.
#[derive(Debug, Clone)]
struct Queue {
    url: String,
    /// The queue's visibility timeout: extensions renew it while a batch waits.
    visibility: Duration,
}

/// An SQS client for `config`: the default credential chain (environment,
/// profile, instance role), the configured region and endpoint.
pub async fn sqs_client(config: &IngestConfig) -> Sqs {
    if config.queues.is_empty() {
        // Never called: spares an outbox-only run the SDK's region and
        // credential lookups (instance metadata probes on a laptop).
        return Sqs::from_conf(
            aws_sdk_sqs::Config::builder()
                .behavior_version(aws_config::BehaviorVersion::latest())
                .build(),
        );
    }
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(region) = &config.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    if let Some(url) = &config.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    Sqs::new(&loader.load().await)
}

/// Consumes every queue of `config` and relays its outbox until
/// `shutdown`; fails at start if a queue cannot be read or has no redrive
/// policy, or if the outbox table is not there.
pub async fn run(
    config: IngestConfig,
    sqs: Sqs,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let channel =
        notify_proto::channel::endpoint(&config.notify_url, &config.notify_tls)?.connect_lazy();
    let token = match &config.notify_token {
        Some(t) => Some(MetadataValue::try_from(format!("Bearer {t}")).context("the token")?),
        None => None,
    };
    let relay = match &config.outbox {
        Some(outbox) => Some(start_relay(outbox, &config, &stats, &shutdown).await?),
        None => None,
    };
    let mut queues = Vec::new();
    for url in &config.queues {
        queues.push(check(&sqs, url).await?);
    }
    if relay.is_some() {
        // Ready once the relay read the outbox too.
        let stats = stats.clone();
        tokio::spawn(async move {
            while !stats.relay.ready.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            stats.ready.store(true, Ordering::Relaxed);
        });
    } else {
        stats.ready.store(true, Ordering::Relaxed);
    }
    let consumer = Arc::new(Consumer {
        sqs,
        notify: NotifyClient::new(channel),
        token,
        routes: config.routes,
        stats,
        wait: config.wait,
        shutdown,
    });
    let mut pollers = tokio::task::JoinSet::new();
    for queue in queues {
        tracing::info!(queue = queue.url, visibility = ?queue.visibility, "consuming");
        for _ in 0..config.pollers {
            pollers.spawn(consumer.clone().poll(queue.clone()));
        }
    }
    while pollers.join_next().await.is_some() {}
    if let Some(relay) = relay {
        relay.await??;
    }
    Ok(())
}

/// Checks that the outbox table is there, then relays it in a task of its own.
async fn start_relay(
    outbox: &OutboxSource,
    config: &IngestConfig,
    stats: &Stats,
    shutdown: &CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<Result<(), notify_store::StoreError>>> {
    let database = &outbox.database;
    database
        .publish_outbox()?
        .lag(0)
        .await
        .with_context(|| {
            format!(
                "reading notify_outbox at {database} (apply migrations/notify_outbox.sql to that database)"
            )
        })?;
    let notify = NotifyCaller::new(
        &config.notify_url,
        &config.notify_tls,
        config.notify_token.as_deref(),
    )?;
    tracing::info!(%database, group = outbox.args.group, holder = outbox.holder, "relaying the outbox");
    let (database, args, holder) = (database.clone(), outbox.args.clone(), outbox.holder.clone());
    let (stats, shutdown) = (stats.relay.clone(), shutdown.clone());
    Ok(tokio::spawn(async move {
        notify_relay::publish::run(&database, &args, &holder, notify, stats, shutdown).await
    }))
}

/// The queue's visibility timeout; an error unless it has a redrive policy.
async fn check(sqs: &Sqs, url: &str) -> anyhow::Result<Queue> {
    let answer = sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::RedrivePolicy)
        .attribute_names(QueueAttributeName::VisibilityTimeout)
        .send()
        .await
        .with_context(|| format!("reading the attributes of {url}"))?;
    let attributes = answer.attributes().cloned().unwrap_or_default();
    if !attributes.contains_key(&QueueAttributeName::RedrivePolicy) {
        bail!(
            "{url} has no redrive policy: a message that cannot be published would come back \
             forever. Give it a dead-letter queue, e.g. aws sqs set-queue-attributes \
             --queue-url {url} --attributes '{{\"RedrivePolicy\":\"{{\\\"deadLetterTargetArn\\\":\\\"<DLQ ARN>\\\",\\\"maxReceiveCount\\\":\\\"5\\\"}}\"}}'"
        );
    }
    let visibility = attributes
        .get(&QueueAttributeName::VisibilityTimeout)
        .and_then(|v| v.parse().ok())
        .map_or(Duration::from_secs(30), Duration::from_secs);
    Ok(Queue {
        url: url.to_owned(),
        visibility,
    })
}

struct Consumer {
    sqs: Sqs,
    notify: NotifyClient<Channel>,
    token: Option<MetadataValue<tonic::metadata::Ascii>>,
    routes: Routes,
    stats: Arc<Stats>,
    wait: Duration,
    shutdown: CancellationToken,
}

/// Worth calling again: notify-svc away, busy or failing for now.
fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::ResourceExhausted
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::Internal
            | Code::Unknown
            | Code::Cancelled
    )
}

impl Consumer {
    /// One poller: receive, publish, delete, until shutdown.
    async fn poll(self: Arc<Self>, queue: Queue) {
        let mut backoff = RETRY_FIRST;
        loop {
            let receive = self
                .sqs
                .receive_message()
                .queue_url(&queue.url)
                .max_number_of_messages(RECEIVE_MAX)
                .wait_time_seconds(i32::try_from(self.wait.as_secs()).unwrap_or(20))
                .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
                .send();
            let received = tokio::select! {
                () = self.shutdown.cancelled() => return,
                received = receive => received,
            };
            self.stats.beats.fetch_add(1, Ordering::Relaxed);
            match received {
                Ok(answer) => {
                    backoff = RETRY_FIRST;
                    let messages = answer.messages.unwrap_or_default();
                    if !messages.is_empty() {
                        self.handle(&queue, messages).await;
                    }
                }
                Err(e) => {
                    tracing::warn!(queue = queue.url, error = %aws_sdk_sqs::error::DisplayErrorContext(&e), retry_in = ?backoff, "receive failed");
                    tokio::select! {
                        () = self.shutdown.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(RETRY_MAX);
                }
            }
        }
    }

    /// Publishes one receive's messages; deletes the committed ones and
    /// hands the rest back.
    async fn handle(&self, queue: &Queue, messages: Vec<Message>) {
        let mut pending = Vec::new();
        let mut refused = Vec::new();
        for m in messages {
            self.stats.received.inc();
            let received = Received {
                message_id: m.message_id().unwrap_or_default(),
                body: m.body().unwrap_or_default(),
            };
            match publish_of(&self.routes, &received) {
                Ok(req) => pending.push((m, req)),
                Err(why) => {
                    tracing::warn!(queue = queue.url, message = received.message_id, reason = %why, "cannot publish: left to the dead-letter queue");
                    self.stats.rejected(why.reason());
                    refused.push(m);
                }
            }
        }
        let mut committed = Vec::new();
        let mut backoff = RETRY_FIRST;
        let mut extended = Instant::now();
        while !pending.is_empty() {
            let requests = pending.iter().map(|(_, r)| r.clone()).collect();
            match self.publish(requests).await {
                Ok(results) => {
                    let mut again = Vec::new();
                    for ((m, req), result) in pending.into_iter().zip(results) {
                        match result.result {
                            Some(pb::publish_result::Result::Ok(ok)) => {
                                if ok.duplicate {
                                    self.stats.duplicates.inc();
                                } else {
                                    self.stats.published.inc();
                                }
                                self.observe_lag(&m);
                                committed.push(m);
                            }
                            Some(pb::publish_result::Result::Error(e))
                                if !retryable(Code::from_i32(e.code)) =>
                            {
                                tracing::warn!(queue = queue.url, message = m.message_id().unwrap_or_default(), code = ?Code::from_i32(e.code), error = e.message, "notify-svc refused it: left to the dead-letter queue");
                                self.stats.rejected(metrics::REFUSED);
                                refused.push(m);
                            }
                            _ => again.push((m, req)),
                        }
                    }
                    pending = again;
                }
                Err(status) => {
                    tracing::warn!(queue = queue.url, code = ?status.code(), error = status.message(), retry_in = ?backoff, "publishing failed: retrying");
                }
            }
            if pending.is_empty() || self.shutdown.is_cancelled() {
                // At shutdown, what is pending comes back after its visibility.
                break;
            }
            self.stats.retries.inc();
            // Waiting for notify-svc is the loop alive, not stuck.
            self.stats.beats.fetch_add(1, Ordering::Relaxed);
            tokio::select! {
                () = self.shutdown.cancelled() => break,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(RETRY_MAX);
            if extended.elapsed() >= queue.visibility / 2 {
                let waiting: Vec<&Message> = pending.iter().map(|(m, _)| m).collect();
                self.set_visibility(queue, &waiting, queue.visibility).await;
                extended = Instant::now();
            }
        }
        self.delete(queue, &committed).await;
        let refused: Vec<&Message> = refused.iter().collect();
        // Visible again at once: the redrive policy counts this receive.
        self.set_visibility(queue, &refused, Duration::ZERO).await;
    }

    async fn publish(
        &self,
        requests: Vec<pb::PublishRequest>,
    ) -> Result<Vec<pb::PublishResult>, tonic::Status> {
        let mut req = tonic::Request::new(pb::PublishBatchRequest { requests });
        req.set_timeout(PUBLISH_TIMEOUT);
        if let Some(token) = &self.token {
            req.metadata_mut().insert("authorization", token.clone());
        }
        let mut notify = self.notify.clone();
        Ok(notify.publish_batch(req).await?.into_inner().results)
    }

    fn observe_lag(&self, m: &Message) {
        let sent = m
            .attributes()
            .and_then(|a| a.get(&MessageSystemAttributeName::SentTimestamp))
            .and_then(|ms| ms.parse::<u64>().ok());
        if let Some(sent) = sent {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            self.stats
                .lag
                .observe(now.saturating_sub(sent) as f64 / 1000.0);
        }
    }

    /// Deletes committed messages (a failed delete only means a redelivery,
    /// which its idempotency key makes a duplicate, stored once).
    async fn delete(&self, queue: &Queue, messages: &[Message]) {
        if messages.is_empty() {
            return;
        }
        let entries = messages
            .iter()
            .enumerate()
            .filter_map(|(i, m)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(m.receipt_handle().unwrap_or_default())
                    .build()
                    .ok()
            })
            .collect();
        let deleted = self
            .sqs
            .delete_message_batch()
            .queue_url(&queue.url)
            .set_entries(Some(entries))
            .send()
            .await;
        match deleted {
            Ok(answer) if !answer.failed().is_empty() => {
                tracing::warn!(
                    queue = queue.url,
                    failed = answer.failed().len(),
                    "some deletes failed: those messages come back and are stored once"
                );
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(queue = queue.url, error = %aws_sdk_sqs::error::DisplayErrorContext(&e), "delete failed: those messages come back and are stored once");
            }
        }
    }

    async fn set_visibility(&self, queue: &Queue, messages: &[&Message], visibility: Duration) {
        if messages.is_empty() {
            return;
        }
        let secs = i32::try_from(visibility.as_secs()).unwrap_or(i32::MAX);
        let entries = messages
            .iter()
            .enumerate()
            .filter_map(|(i, m)| {
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(m.receipt_handle().unwrap_or_default())
                    .visibility_timeout(secs)
                    .build()
                    .ok()
            })
            .collect();
        if let Err(e) = self
            .sqs
            .change_message_visibility_batch()
            .queue_url(&queue.url)
            .set_entries(Some(entries))
            .send()
            .await
        {
            tracing::warn!(queue = queue.url, error = %aws_sdk_sqs::error::DisplayErrorContext(&e), "changing visibility failed");
        }
    }
}
