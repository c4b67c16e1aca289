//! The `notify` CLI against a real notify-svc (in-process, real gRPC, real
//! Postgres): what it prints, what it reads from stdin, and its exit codes
//! (0 ok, 1 refused, 2 usage).

use std::{
    io::Write,
    process::{Command, Output, Stdio},
    time::Duration,
};

use notify_harness::InProcessSvc;
use serde_json::Value;
use test_support::TestDb;
use tokio::net::TcpListener;

struct Svc {
    url: String,
    /// Flags every command gets (TLS files).
    flags: Vec<String>,
    db: TestDb,
    running: InProcessSvc,
}

impl Svc {
    async fn start() -> Self {
        Self::start_with(|_| {}, Vec::new()).await
    }

    /// notify-svc with `tweak` applied; every command gets `flags`.
    async fn start_with(tweak: impl FnOnce(&mut notify_svc::Config), flags: Vec<String>) -> Self {
        let db = TestDb::create().await;
        let mut config = notify_svc::Config::for_database(&db.url).unwrap();
        tweak(&mut config);
        let running = InProcessSvc::start(config).await;
        Self {
            url: running.url(),
            flags,
            db,
            running,
        }
    }

    /// Runs `notify ARGS --url …` (stdin if given), off the runtime's threads.
    async fn notify(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut command = Command::new(env!("CARGO_BIN_EXE_notify"));
        command
            .args(args)
            .args(["--url", &self.url])
            .args(&self.flags)
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
    // Push options go along: refused where a push cannot go, or out of range.
    for (args, why) in [
        (
            &["--topic", "room:x", "--push", "offline"][..],
            "inbox targets",
        ),
        (
            &["--user", "alice", "--push", "unacked", "--push-after", "0"][..],
            "after_seconds",
        ),
    ] {
        let out = svc
            .notify(&[&["publish", "--data", "1"][..], args].concat(), None)
            .await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains("InvalidArgument") && stderr.contains(why),
            "{args:?}: {stderr}"
        );
    }
    let out = svc
        .notify(
            &[
                "publish", "--user", "alice", "--data", "1", "--push", "offline", "--title", "Hi",
                "--body", "there",
            ],
            None,
        )
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = svc
        .notify(
            &["publish", "--user", "alice", "--data", "1", "--title", "Hi"],
            None,
        )
        .await;
    assert_eq!(out.status.code(), Some(2), "--title needs --push");
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
    // `--since 0` is live only: a tail that opens its stream after the
    // publishes (a loaded machine) would see none. Seq 1 goes first, the
    // tail follows after it: replay or live, it must print 2, 3, 4.
    let probe = svc
        .notify(&["publish", "--topic", "room:news", "--data", "0"], None)
        .await;
    assert!(probe.status.success());
    let mut tail = tokio::process::Command::new(env!("CARGO_BIN_EXE_notify"))
        .args([
            "tail",
            "--topic",
            "room:news",
            "--since",
            "1",
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
    assert_eq!(seqs, [2, 3, 4]);
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

#[tokio::test]
async fn the_cli_speaks_mutual_tls_with_a_ca_and_a_client_certificate() {
    let pki = test_support::tls::TestPki::new("cli");
    let server = pki.server("svc");
    let client = pki.client("ops");
    let path = |p: &std::path::Path| p.display().to_string();
    let flags = vec![
        "--ca-file".into(),
        path(&pki.ca),
        "--client-cert".into(),
        path(&client.cert),
        "--client-key".into(),
        path(&client.key),
    ];
    let svc = Svc::start_with(
        |config| {
            config.tls = notify_ops::tls::TlsFiles::from_settings(
                Some(server.cert.clone()),
                Some(server.key.clone()),
                notify_ops::tls::ClientAuth::Required(pki.ca.clone()),
            )
            .unwrap();
        },
        flags,
    )
    .await;
    let out = svc
        .notify(&["publish", "--user", "tina", "--data", "1"], None)
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(lines(&out)[0]["seq"], 1);

    // Without the client certificate the handshake fails: exit 1, a reason.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_notify"))
        .args([
            "publish", "--user", "tina", "--data", "2", "--url", &svc.url,
        ])
        .args(["--ca-file", &path(&pki.ca)])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(!out.stderr.is_empty());
    // TLS files with a plaintext URL are a usage error.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_notify"))
        .args(["publish", "--user", "tina", "--data", "2"])
        .args(["--url", "http://127.0.0.1:1", "--ca-file", &path(&pki.ca)])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not https://"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn notify_connect_follows_a_wss_bridge_checked_against_its_ca() {
    use tokio::io::AsyncBufReadExt;
    let svc = Svc::start().await;
    let pki = test_support::tls::TestPki::new("connect");
    let cert = pki.server("bridge");
    let issuer = notify_auth::DevIssuer::generate("http://dev", "app").unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let bridge = notify_bridge::BridgeConfig {
        tls: notify_ops::tls::TlsFiles::from_settings(
            Some(cert.cert.clone()),
            Some(cert.key.clone()),
            notify_ops::tls::ClientAuth::Off,
        )
        .unwrap(),
        ..notify_bridge::BridgeConfig::new(
            "wss",
            &notify_bridge::SocketArgs::from_env(),
            issuer.verifier(),
            vec![svc.url.clone()],
        )
    };
    tokio::spawn(notify_bridge::run(
        bridge,
        listener,
        svc.running.stop.clone(),
    ));
    let token = issuer
        .mint(&notify_auth::DevToken::access("wendy"))
        .unwrap();
    let ws = format!("wss://localhost:{port}/ws");
    let follow = || {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_notify"));
        command
            .args(["connect", "--ws", &ws, "--token", &token, "--ws-ca-file"])
            .arg(&pki.ca)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    };
    // The bridge answers 503 until its link is attached; retry until welcome.
    let mut lines = test_support::eventually(
        "notify connect over wss",
        Duration::from_secs(20),
        || async {
            let mut child = follow().spawn().unwrap();
            let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
            let first = tokio::time::timeout(Duration::from_secs(5), lines.next_line())
                .await
                .ok()?
                .ok()??;
            let frame: Value = serde_json::from_str(&first).ok()?;
            (frame["type"] == "welcome").then_some((child, lines))
        },
    )
    .await;
    svc.notify(
        &["publish", "--user", "wendy", "--data", r#""over wss""#],
        None,
    )
    .await;
    let line = tokio::time::timeout(Duration::from_secs(10), lines.1.next_line())
        .await
        .expect("a frame within 10 s")
        .unwrap()
        .expect("still connected");
    let frame: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        (frame["type"].as_str(), frame["data"].as_str()),
        (Some("message"), Some("over wss"))
    );
    lines.0.kill().await.unwrap();

    // Without the CA the system's roots refuse the bridge's certificate.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_notify"))
        .args(["connect", "--ws", &ws, "--token", &token])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let why = String::from_utf8_lossy(&out.stderr);
    assert!(why.contains("TLS"), "{why}");
}

#[tokio::test]
async fn notify_send_to_a_connection_that_is_gone_is_refused_not_found() {
    let svc = Svc::start().await;
    let id = "0193a0c4-5b2e-7000-8000-000000000000";
    let out = svc
        .notify(&["send", "--connection", id, "--data", "1"], None)
        .await;
    assert_eq!(out.status.code(), Some(1));
    let why = String::from_utf8_lossy(&out.stderr);
    assert!(why.contains("not connected"), "{why}");
}
