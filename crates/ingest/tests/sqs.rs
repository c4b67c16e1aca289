//! The SQS/SNS consumer against moto's SQS and SNS (server mode, the same
//! stand-in as Cognito) and a real notify-svc on a real Postgres: an SNS
//! topic delivering to a queue, a raw message, SNS's redelivery stored once,
//! a poison message moved to the dead-letter queue while the rest flow, a
//! notify-svc outage ridden out, and a queue without a dead-letter queue
//! refused at start.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use aws_sdk_sqs::types::QueueAttributeName;
use notify_harness::InProcessSvc;
use notify_ingest::{IngestConfig, SqsArgs, Stats};
use notify_proto::v1::{self as pb, notify_client::NotifyClient};
use serde_json::{Value, json};
use test_support::{Relay, TestDb, eventually};
use tokio_util::sync::CancellationToken;

const REGION: &str = "us-east-1";

async fn aws() -> aws_config::SdkConfig {
    test_support::moto_aws(REGION).await
}

/// A name no other test (or earlier run against the same moto) uses.
fn unique(what: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{what}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A queue with a dead-letter queue behind it (after `max_receives`), 2 s
/// visibility.
struct Queues {
    sqs: aws_sdk_sqs::Client,
    url: String,
    arn: String,
    dlq_url: String,
}

impl Queues {
    async fn create() -> Self {
        Self::create_with(2).await
    }

    async fn create_with(max_receives: u32) -> Self {
        let sqs = aws_sdk_sqs::Client::new(&aws().await);
        let dlq_url = sqs
            .create_queue()
            .queue_name(unique("dlq"))
            .send()
            .await
            .expect("CreateQueue (DLQ)")
            .queue_url
            .unwrap();
        let dlq_arn = arn_of(&sqs, &dlq_url).await;
        let redrive =
            json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receives.to_string()});
        let url = sqs
            .create_queue()
            .queue_name(unique("ingest"))
            .attributes(QueueAttributeName::RedrivePolicy, redrive.to_string())
            .attributes(QueueAttributeName::VisibilityTimeout, "2")
            .send()
            .await
            .expect("CreateQueue")
            .queue_url
            .unwrap();
        let arn = arn_of(&sqs, &url).await;
        Self {
            sqs,
            url,
            arn,
            dlq_url,
        }
    }

    async fn send(&self, body: &str) {
        self.sqs
            .send_message()
            .queue_url(&self.url)
            .message_body(body)
            .send()
            .await
            .expect("SendMessage");
    }

    /// Messages the dead-letter queue holds now (taken off it).
    async fn dead_letters(&self) -> Vec<String> {
        let answer = self
            .sqs
            .receive_message()
            .queue_url(&self.dlq_url)
            .max_number_of_messages(10)
            .send()
            .await
            .expect("ReceiveMessage (DLQ)");
        answer
            .messages
            .unwrap_or_default()
            .into_iter()
            .filter_map(|m| m.body)
            .collect()
    }
}

async fn arn_of(sqs: &aws_sdk_sqs::Client, url: &str) -> String {
    sqs.get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .expect("GetQueueAttributes")
        .attributes
        .unwrap()
        .remove(&QueueAttributeName::QueueArn)
        .unwrap()
}

/// A consumer of `queue` publishing to `notify_url`, with `sns_routes`.
struct Running {
    stats: Arc<Stats>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn consume(queue: &str, notify_url: &str, sns_routes: &str) -> Running {
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        sqs: SqsArgs,
    }
    let argv = [
        "notify-ingest",
        "--sqs-queues",
        queue,
        "--sns-routes",
        sns_routes,
        "--sqs-wait-secs",
        "1",
    ];
    let args = <Cli as clap::Parser>::try_parse_from(argv).unwrap().sqs;
    let config = IngestConfig::new(&args, None, notify_url).unwrap();
    let sqs = aws_sdk_sqs::Client::new(&aws().await);
    let stats = Arc::new(Stats::default());
    let stop = CancellationToken::new();
    let task = tokio::spawn(notify_ingest::run(config, sqs, stats.clone(), stop.clone()));
    Running { stats, stop, task }
}

impl Running {
    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap().unwrap();
    }
}

async fn svc() -> (InProcessSvc, TestDb) {
    let db = TestDb::create().await;
    let config = notify_svc::Config::for_database(&db.url).unwrap();
    (InProcessSvc::start(config).await, db)
}

/// A user's inbox: (event, data) in seq order.
async fn inbox(svc: &InProcessSvc, user: &str) -> Vec<(String, Value)> {
    let mut api = NotifyClient::connect(svc.url()).await.unwrap();
    let page = api
        .history(pb::HistoryRequest {
            target: Some(pb::history_request::Target::UserId(user.into())),
            since: 0,
            limit: 1000,
            after_acked: false,
        })
        .await
        .unwrap()
        .into_inner();
    page.messages
        .into_iter()
        .map(|m| (m.event, serde_json::from_str(&m.data).unwrap()))
        .collect()
}

async fn inbox_of_len(svc: &InProcessSvc, user: &str, n: usize) -> Vec<(String, Value)> {
    eventually(
        &format!("{n} messages in {user}'s inbox"),
        Duration::from_secs(30),
        || async { Some(inbox(svc, user).await).filter(|i| i.len() >= n) },
    )
    .await
}

#[tokio::test]
async fn an_sns_topic_delivers_through_its_queue_and_a_redelivery_is_stored_once() {
    let (svc, _db) = svc().await;
    let queues = Queues::create().await;
    let sns = aws_sdk_sns::Client::new(&aws().await);
    let topic = sns
        .create_topic()
        .name(unique("user-notifications"))
        .send()
        .await
        .expect("CreateTopic")
        .topic_arn
        .unwrap();
    sns.subscribe()
        .topic_arn(&topic)
        .protocol("sqs")
        .endpoint(&queues.arn)
        .send()
        .await
        .expect("Subscribe");
    let consumer = consume(&queues.url, &svc.url(), &format!("{topic}=user")).await;

    // What the migrated services do today: SNS publish with the user in an
    // attribute.
    let attribute = |v: &str| {
        aws_sdk_sns::types::MessageAttributeValue::builder()
            .data_type("String")
            .string_value(v)
            .build()
            .unwrap()
    };
    sns.publish()
        .topic_arn(&topic)
        .message(r#"{"text":"your fight was accepted"}"#)
        .message_attributes("user_id", attribute("ann"))
        .message_attributes("event", attribute("fight_accepted"))
        .send()
        .await
        .expect("Publish");
    let got = inbox_of_len(&svc, "ann", 1).await;
    assert_eq!(
        got,
        [(
            "fight_accepted".to_owned(),
            json!({"text": "your fight was accepted"})
        )]
    );

    // SNS delivers at least once: the same notification (same SNS
    // MessageId) arriving again in a second SQS message is stored once.
    let again = json!({
        "Type": "Notification",
        "MessageId": "sns-redelivered-1",
        "TopicArn": topic,
        "Message": "{\"text\":\"twice\"}",
        "MessageAttributes": {"user_id": {"Type": "String", "Value": "bob"}},
    })
    .to_string();
    queues.send(&again).await;
    queues.send(&again).await;
    // A raw message in the publish shape, too.
    queues
        .send(r#"{"user_id":"bob","event":"raw","data":{"n":1}}"#)
        .await;
    eventually("both copies handled", Duration::from_secs(30), || async {
        (consumer.stats.duplicates.get() >= 1 && consumer.stats.published.get() >= 3).then_some(())
    })
    .await;
    let mut got = inbox(&svc, "bob").await;
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        got,
        [
            ("raw".to_owned(), json!({"n": 1})),
            ("sns".to_owned(), json!({"text": "twice"})),
        ],
        "the redelivery stored once"
    );
    consumer.stop().await;
}

#[tokio::test]
async fn a_poison_message_goes_to_the_dead_letter_queue_and_the_rest_flow() {
    let (svc, _db) = svc().await;
    let queues = Queues::create().await;
    let consumer = consume(&queues.url, &svc.url(), "").await;
    queues.send("this is not json").await;
    queues
        .send(r#"{"user_id":"cy","event":"e","data":1,"no_such_field":true}"#)
        .await;
    for n in 0..5 {
        queues
            .send(&json!({"user_id": "cy", "event": "e", "data": n}).to_string())
            .await;
    }
    let got = inbox_of_len(&svc, "cy", 5).await;
    let mut data: Vec<i64> = got.iter().map(|(_, d)| d.as_i64().unwrap()).collect();
    data.sort();
    assert_eq!(data, [0, 1, 2, 3, 4]);
    // Each poison message is received twice (maxReceiveCount), then moved.
    let mut dead = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while dead.len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "dead-lettered: {dead:?}"
        );
        dead.extend(queues.dead_letters().await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    dead.sort();
    assert_eq!(
        dead,
        [
            "this is not json",
            r#"{"user_id":"cy","event":"e","data":1,"no_such_field":true}"#,
        ]
    );
    assert!(consumer.stats.rejected_total.get() >= 2);
    assert_eq!(inbox(&svc, "cy").await.len(), 5, "nothing else stored");
    consumer.stop().await;
}

#[tokio::test]
async fn a_notify_svc_outage_is_ridden_out_and_nothing_is_lost_or_doubled() {
    let (svc, _db) = svc().await;
    let relay = Relay::start(svc.grpc).await;
    let queues = Queues::create().await;
    let consumer = consume(&queues.url, &format!("http://{}", relay.addr), "").await;
    queues
        .send(r#"{"user_id":"dee","event":"e","data":0}"#)
        .await;
    inbox_of_len(&svc, "dee", 1).await;
    // notify-svc unreachable for 4 s (twice the queue's visibility timeout:
    // the consumer must extend it, or another poller would take them).
    relay.cut();
    for n in 1..=20 {
        queues
            .send(&json!({"user_id": "dee", "event": "e", "data": n}).to_string())
            .await;
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    relay.restore();
    let got = inbox_of_len(&svc, "dee", 21).await;
    let mut data: Vec<i64> = got.iter().map(|(_, d)| d.as_i64().unwrap()).collect();
    data.sort();
    assert_eq!(data, (0..=20).collect::<Vec<_>>(), "each once");
    assert!(consumer.stats.retries.get() > 0, "it retried");
    assert_eq!(
        consumer.stats.rejected_total.get(),
        0,
        "nothing dead-lettered"
    );
    assert!(queues.dead_letters().await.is_empty());
    consumer.stop().await;
}

#[tokio::test]
async fn a_message_whose_visibility_lapses_mid_work_is_stored_once() {
    let (svc, _db) = svc().await;
    let relay = Relay::start(svc.grpc).await;
    // Receives by both consumers must not dead-letter it.
    let queues = Queues::create_with(10).await;
    // Consumer A reaches notify-svc through a relay the test holds: its
    // publish hangs past the queue's 2 s visibility, so SQS hands the same
    // message to consumer B, which commits it; then A's call goes through.
    let a = consume(&queues.url, &format!("http://{}", relay.addr), "").await;
    queues
        .send(r#"{"user_id":"eve","event":"e","data":0}"#)
        .await;
    inbox_of_len(&svc, "eve", 1).await;
    relay.pause();
    queues
        .send(r#"{"user_id":"eve","event":"e","data":1}"#)
        .await;
    eventually("A took it", Duration::from_secs(10), || async {
        (a.stats.received.get() >= 2).then_some(())
    })
    .await;
    let b = consume(&queues.url, &svc.url(), "").await;
    inbox_of_len(&svc, "eve", 2).await;
    relay.resume();
    eventually("A's call answered", Duration::from_secs(20), || async {
        (a.stats.duplicates.get() + b.stats.duplicates.get() >= 1).then_some(())
    })
    .await;
    let data: Vec<i64> = inbox(&svc, "eve")
        .await
        .iter()
        .map(|(_, d)| d.as_i64().unwrap())
        .collect();
    assert_eq!(data, [0, 1], "delivered twice, stored once");
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_queue_without_a_dead_letter_queue_is_refused_at_start() {
    let sqs = aws_sdk_sqs::Client::new(&aws().await);
    let url = sqs
        .create_queue()
        .queue_name(unique("no-dlq"))
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let consumer = consume(&url, "http://127.0.0.1:1", "").await;
    let error = consumer.task.await.unwrap().unwrap_err().to_string();
    assert!(error.contains("no redrive policy"), "{error}");
    assert!(error.contains("dead-letter queue"), "{error}");
}
