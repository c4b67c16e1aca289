//! The `notify` CLI against a real notify-svc (in-process, real gRPC, real
//! Postgres): what it prints, what it reads from stdin, and its exit codes
//! (0 ok, 1 refused, 2 usage).

use std::{
    io::Write,
    process::{Command, Output, Stdio},
    time::Duration,
};

use serde_json::Value;
use test_support::TestDb;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

struct Svc {
    url: String,
    db: TestDb,
    stop: CancellationToken,
}

impl Svc {
    async fn start() -> Self {
        let db = TestDb::create().await;
        let config = notify_svc::Config::for_database(&db.url).unwrap();
        let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", grpc.local_addr().unwrap());
        let stop = CancellationToken::new();
        tokio::spawn(notify_svc::run(config, grpc, http, stop.clone()));
        let svc = Self { url, db, stop };
        test_support::eventually("notify-svc answers", Duration::from_secs(20), || async {
            svc.notify(&["presence", "--user", "probe"], None)
                .await
                .status
                .success()
                .then_some(())
        })
        .await;
        svc
    }

    /// Runs `notify ARGS --url …` (stdin if given), off the runtime's threads.
    async fn notify(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut command = Command::new(env!("CARGO_BIN_EXE_notify"));
        command
            .args(args)
            .args(["--url", &self.url])
            .env("DATABASE_URL", &self.db.url)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let stdin = stdin.map(str::to_owned);
        tokio::task::spawn_blocking(move || {
            let mut child = command.spawn().expect("run notify");
            if let Some(text) = stdin {
                child
                    .stdin
                    .take()
                    .unwrap()
                    .write_all(text.as_bytes())
                    .unwrap();
            }
            child.wait_with_output().unwrap()
        })
        .await
        .unwrap()
    }
}

impl Drop for Svc {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn publish_history_presence_and_disconnect_print_json() {
    let svc = Svc::start().await;
    let out = svc
        .notify(
            &["publish", "--user", "alice", "--data", r#"{"text":"hi"}"#],
            None,
        )
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let published = &lines(&out)[0];
    assert_eq!(
        (published["seq"].as_u64(), published["duplicate"].as_bool()),
        (Some(1), Some(false))
    );

    // Data from stdin, an idempotency key twice: stored once.
    for _ in 0..2 {
        let out = svc
            .notify(
                &[
                    "publish",
                    "--topic",
                    "room:lobby",
                    "--event",
                    "score",
                    "--key",
                    "k1",
                ],
                Some("{\"score\":3}\n"),
            )
            .await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let out = svc.notify(&["history", "--user", "alice"], None).await;
    let history = lines(&out);
    assert_eq!(history.len(), 1);
    assert_eq!(
        (
            history[0]["seq"].as_u64(),
            history[0]["data"]["text"].as_str()
        ),
        (Some(1), Some("hi"))
    );
    let out = svc
        .notify(&["history", "--topic", "room:lobby"], None)
        .await;
    let topic = lines(&out);
    assert_eq!(topic.len(), 1, "the repeated key stored nothing");
    assert_eq!(
        (
            topic[0]["event"].as_str(),
            topic[0]["data"]["score"].as_u64()
        ),
        (Some("score"), Some(3))
    );

    let out = svc.notify(&["presence", "--user", "alice"], None).await;
    assert_eq!(lines(&out)[0]["connections"], serde_json::json!([]));
    let out = svc.notify(&["disconnect", "--user", "alice"], None).await;
    assert!(out.status.success());
    assert_eq!(lines(&out)[0]["disconnected"], 0);
}

#[tokio::test]
async fn refusals_exit_1_with_the_status_and_usage_errors_exit_2() {
    let svc = Svc::start().await;
    let out = svc
        .notify(&["publish", "--user", "alice", "--data", "{not json"], None)
        .await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("InvalidArgument") && stderr.contains("JSON"),
        "{stderr}"
    );

    // No target at all: clap's usage error.
    let out = svc.notify(&["publish", "--data", "1"], None).await;
    assert_eq!(out.status.code(), Some(2));
    // Nobody listening there.
    let out = Command::new(env!("CARGO_BIN_EXE_notify"))
        .args(["presence", "--user", "a", "--url"])
        .arg(format!("http://127.0.0.1:{}", test_support::free_port()))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach"));
    // Every subcommand explains itself with examples.
    for sub in [
        "publish",
        "tail",
        "history",
        "presence",
        "disconnect",
        "migrate",
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_notify"))
            .args([sub, "--help"])
            .output()
            .unwrap();
        assert!(out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Example"),
            "{sub} --help"
        );
    }
}

#[tokio::test]
async fn tail_prints_what_is_published_and_migrate_reports_none_left() {
    let svc = Svc::start().await;
    let mut tail = tokio::process::Command::new(env!("CARGO_BIN_EXE_notify"))
        .args([
            "tail",
            "--topic",
            "room:news",
            "--since",
            "0",
            "--url",
            &svc.url,
        ])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    for n in 1..=3 {
        let out = svc
            .notify(
                &["publish", "--topic", "room:news", "--data", &n.to_string()],
                None,
            )
            .await;
        assert!(out.status.success());
    }
    use tokio::io::AsyncBufReadExt;
    let mut reader = tokio::io::BufReader::new(tail.stdout.take().unwrap()).lines();
    let mut seqs = Vec::new();
    while seqs.len() < 3 {
        let line = tokio::time::timeout(Duration::from_secs(20), reader.next_line())
            .await
            .expect("a line within 20 s")
            .unwrap()
            .expect("tail still running");
        let m: Value = serde_json::from_str(&line).unwrap();
        seqs.push(m["seq"].as_u64().unwrap());
    }
    assert_eq!(seqs, [1, 2, 3]);
    tail.kill().await.ok();

    // notify-svc migrated at start: nothing left to apply.
    let out = svc.notify(&["migrate"], None).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(lines(&out)[0]["applied"], 0);
}
