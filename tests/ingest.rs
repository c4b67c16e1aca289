//! The SNS → SQS → notify → WebSocket path with the real binary: `notify up`
//! consuming a queue (moto's SQS and SNS, the Cognito stand-in's server)
//! that an SNS topic delivers to; a user's WebSocket client receives what a
//! service published to SNS, as the services being migrated publish today.

use std::{process::Stdio, time::Duration};

use aws_sdk_sqs::types::QueueAttributeName;
use serde_json::json;
use test_support::{TestDir, free_port, moto_endpoint};
use tokio::{io::AsyncBufReadExt, process::Command};

const REGION: &str = "us-east-1";

async fn aws() -> aws_config::SdkConfig {
    test_support::moto_aws(REGION).await
}

#[tokio::test]
async fn an_sns_publish_reaches_the_users_websocket_through_notify_up() {
    let run = format!("{}-{}", std::process::id(), free_port());
    let sqs = aws_sdk_sqs::Client::new(&aws().await);
    let sns = aws_sdk_sns::Client::new(&aws().await);
    let dlq = sqs
        .create_queue()
        .queue_name(format!("up-dlq-{run}"))
        .send()
        .await
        .expect("CreateQueue")
        .queue_url
        .unwrap();
    let arn = |url: String| {
        let sqs = sqs.clone();
        async move {
            sqs.get_queue_attributes()
                .queue_url(url)
                .attribute_names(QueueAttributeName::QueueArn)
                .send()
                .await
                .unwrap()
                .attributes
                .unwrap()
                .remove(&QueueAttributeName::QueueArn)
                .unwrap()
        }
    };
    let redrive = json!({"deadLetterTargetArn": arn(dlq).await, "maxReceiveCount": "3"});
    let queue = sqs
        .create_queue()
        .queue_name(format!("up-in-{run}"))
        .attributes(QueueAttributeName::RedrivePolicy, redrive.to_string())
        .send()
        .await
        .expect("CreateQueue")
        .queue_url
        .unwrap();
    let topic = sns
        .create_topic()
        .name(format!("user-notifications-{run}"))
        .send()
        .await
        .unwrap()
        .topic_arn
        .unwrap();
    sns.subscribe()
        .topic_arn(&topic)
        .protocol("sqs")
        .endpoint(arn(queue.clone()).await)
        .send()
        .await
        .unwrap();

    // notify up, consuming the queue.
    let data = TestDir::create("up-ingest");
    let ws = format!("127.0.0.1:{}", free_port());
    let routes = format!("{topic}=user");
    let mut up = Command::new(env!("CARGO_BIN_EXE_notify"))
        .args(["up", "--grpc-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--http-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--ws-addr", &ws])
        .args(["--bridge-http-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--sqs-queues", &queue, "--sns-routes", &routes])
        .args([
            "--sqs-endpoint-url",
            &moto_endpoint(),
            "--sqs-region",
            REGION,
        ])
        .arg("--data-dir")
        .arg(&data.path)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn notify up");
    let mut banner = tokio::io::BufReader::new(up.stdout.take().unwrap()).lines();
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = banner.next_line().await.unwrap() {
            if line.contains("Ctrl-C") {
                return;
            }
        }
        panic!("notify up ended before its banner");
    })
    .await
    .expect("notify up's banner within 60 s");

    // alice is connected when the service publishes to SNS.
    let token = std::process::Command::new(env!("CARGO_BIN_EXE_notify"))
        .args(["token", "--user", "alice", "--data-dir"])
        .arg(&data.path)
        .output()
        .unwrap();
    let token = String::from_utf8(token.stdout).unwrap();
    let (mut socket, _) =
        tokio_tungstenite::connect_async(format!("ws://{ws}/ws?token={}", token.trim()))
            .await
            .expect("the bridge takes the socket");
    assert_eq!(
        notify_harness::next_json(&mut socket).await["type"],
        "welcome"
    );
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
        .message_attributes("user_id", attribute("alice"))
        .message_attributes("event", attribute("fight_accepted"))
        .send()
        .await
        .unwrap();
    let frame = notify_harness::next_json_within(&mut socket, Duration::from_secs(30)).await;
    assert_eq!(frame["type"], "message", "{frame}");
    assert_eq!(
        (frame["event"].as_str(), frame["seq"].as_u64()),
        (Some("fight_accepted"), Some(1))
    );
    assert_eq!(frame["data"], json!({"text": "your fight was accepted"}));
    up.start_kill().ok();
}
