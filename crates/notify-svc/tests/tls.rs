//! gRPC over TLS: clients that trust the CA publish, others are refused;
//! with mutual TLS a client without a certificate (or with one from another
//! CA) fails the handshake; a certificate rotated on disk, or announced with
//! SIGHUP to the real binary, serves new connections while open streams
//! keep flowing. Real rustls on both ends, a throw-away CA from rcgen.

mod common;

use std::time::Duration;

use common::{Svc, to_user};
use notify_proto::{
    channel::{self, ClientTls},
    v1::{self as pb, notify_client::NotifyClient},
};
use test_support::{
    TestDb, eventually,
    tls::{CertFiles, TestPki},
};
use tonic::transport::Channel;

/// notify-svc with `cert` and `extra` flags, on a fresh Postgres database.
async fn start(cert: &CertFiles, extra: &[&str]) -> Svc {
    let db = TestDb::create().await;
    let (c, k) = (
        cert.cert.display().to_string(),
        cert.key.display().to_string(),
    );
    let mut flags = vec!["--tls-cert", &c, "--tls-key", &k];
    flags.extend_from_slice(extra);
    let cfg = common::config(&db.url, &flags);
    Svc::start_config(db, cfg).await
}

fn trusting(ca: &TestPki, client: Option<&CertFiles>) -> ClientTls {
    ClientTls {
        ca: Some(ca.ca.clone()),
        cert: client.map(|c| c.cert.clone()),
        key: client.map(|c| c.key.clone()),
    }
}

async fn connect(addr: &str, tls: &ClientTls) -> Result<NotifyClient<Channel>, String> {
    let channel = channel::endpoint(&format!("https://{addr}"), tls)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))?;
    Ok(NotifyClient::new(channel))
}

/// A publish over a fresh TLS connection: Ok, or why not.
async fn publish_over(addr: &str, tls: &ClientTls, user: &str) -> Result<u64, String> {
    let mut client = connect(addr, tls).await?;
    let r = client
        .publish(to_user(user, r#""over tls""#))
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
    Ok(r.into_inner().seq)
}

#[tokio::test]
async fn tls_clients_publish_and_untrusting_or_plaintext_clients_do_not() {
    let pki = TestPki::new("grpc");
    let svc = start(&pki.server("svc"), &[]).await;
    let addr = svc.grpc.to_string();

    assert_eq!(
        publish_over(&addr, &trusting(&pki, None), "alice").await,
        Ok(1)
    );

    // A client that trusts another CA does not get through the handshake.
    let other = TestPki::new("other");
    let refused = publish_over(&addr, &trusting(&other, None), "alice").await;
    assert!(refused.is_err(), "{refused:?}");
    // Nor does plaintext h2c on the TLS port.
    let mut plain = NotifyClient::new(
        Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy(),
    );
    plain
        .publish(to_user("alice", "1"))
        .await
        .expect_err("plaintext on a TLS port");

    // Only the one TLS publish was stored.
    let mut client = connect(&addr, &trusting(&pki, None)).await.unwrap();
    assert_eq!(
        common::all_seqs(
            &mut client,
            pb::history_request::Target::UserId("alice".into())
        )
        .await,
        vec![1]
    );
    svc.stop().await;
}

#[tokio::test]
async fn mutual_tls_refuses_clients_without_a_certificate_from_the_ca() {
    let pki = TestPki::new("mtls");
    let callers = TestPki::new("callers");
    let ca = callers.ca.display().to_string();
    let svc = start(&pki.server("svc"), &["--tls-client-ca", &ca]).await;
    let addr = svc.grpc.to_string();

    let billing = callers.client("billing");
    assert_eq!(
        publish_over(&addr, &trusting(&pki, Some(&billing)), "bob").await,
        Ok(1)
    );
    let anonymous = publish_over(&addr, &trusting(&pki, None), "bob").await;
    assert!(anonymous.is_err(), "no client certificate: {anonymous:?}");
    let stranger = TestPki::new("stranger").client("billing");
    let foreign = publish_over(&addr, &trusting(&pki, Some(&stranger)), "bob").await;
    assert!(foreign.is_err(), "certificate from another CA: {foreign:?}");
    svc.stop().await;

    // Optional: no certificate is fine, a bad one is still refused.
    let svc = start(
        &pki.server("svc2"),
        &["--tls-client-ca", &ca, "--tls-client-auth", "optional"],
    )
    .await;
    let addr = svc.grpc.to_string();
    assert_eq!(
        publish_over(&addr, &trusting(&pki, None), "bob").await,
        Ok(1)
    );
    assert_eq!(
        publish_over(&addr, &trusting(&pki, Some(&billing)), "bob").await,
        Ok(2)
    );
    assert!(
        publish_over(&addr, &trusting(&pki, Some(&stranger)), "bob")
            .await
            .is_err()
    );
    svc.stop().await;
}

#[test]
fn tls_settings_that_cannot_work_are_refused_at_start() {
    let parse = |flags: &[&str]| {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            svc: notify_svc::SvcArgs,
        }
        let mut argv = vec!["notify-svc", "--dev", "--database-url", "sqlite:x.db"];
        argv.extend_from_slice(flags);
        notify_svc::Config::from_args(&<Cli as clap::Parser>::try_parse_from(argv).unwrap().svc)
    };
    let half = parse(&["--tls-cert", "/etc/notify/tls.crt"]).err().unwrap();
    assert!(half[0].contains("key"), "{half:?}");
    let ca_alone = parse(&["--tls-client-ca", "/etc/notify/ca.pem"])
        .err()
        .unwrap();
    assert!(ca_alone[0].contains("certificate and key"), "{ca_alone:?}");
    let mode = parse(&[
        "--tls-cert",
        "a",
        "--tls-key",
        "b",
        "--tls-client-ca",
        "c",
        "--tls-client-auth",
        "sometimes",
    ])
    .err()
    .unwrap();
    assert!(mode[0].contains("required or optional"), "{mode:?}");
}

#[tokio::test]
async fn a_missing_certificate_stops_start_up_with_its_path() {
    let db = TestDb::create().await;
    let cfg = common::config(
        &db.url,
        &[
            "--tls-cert",
            "/nonexistent/tls.crt",
            "--tls-key",
            "/nonexistent/tls.key",
        ],
    );
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = notify_svc::run(cfg, grpc, http, Default::default())
        .await
        .expect_err("no certificate, no start");
    assert!(err.to_string().contains("/nonexistent/tls.crt"), "{err}");
}

/// A Watch stream of `user`'s live messages on `client`.
async fn watch(
    client: &mut NotifyClient<Channel>,
    user: &str,
) -> tonic::Streaming<pb::StoredMessage> {
    client
        .watch(pb::WatchRequest {
            target: Some(pb::watch_request::Target::UserId(user.into())),
            since: 0,
        })
        .await
        .expect("watch")
        .into_inner()
}

async fn next_seq(stream: &mut tonic::Streaming<pb::StoredMessage>) -> u64 {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a watched message within 10 s")
        .expect("the stream is open")
        .expect("the stream has not ended")
        .seq
}

/// Opens a connection trusting `first`, rotates `live` to a certificate of a
/// new CA, runs `reload`, then checks that new handshakes show the new
/// certificate while the connection from before keeps its Watch stream and
/// its calls (a dropped connection could not reconnect: its client trusts
/// only the old CA).
async fn rotation_keeps_open_streams(
    addr: &str,
    first: &TestPki,
    live: &CertFiles,
    reload: impl AsyncFnOnce(),
) -> TestPki {
    let mut old = connect(addr, &trusting(first, None)).await.unwrap();
    let mut stream = watch(&mut old, "carol").await;
    old.publish(to_user("carol", "1")).await.unwrap();
    assert_eq!(next_seq(&mut stream).await, 1);

    let second = TestPki::new("rotated");
    live.rotate_to(&second.server("next"));
    reload().await;
    eventually(
        "new handshakes show the rotated certificate",
        Duration::from_secs(15),
        || async {
            publish_over(addr, &trusting(&second, None), "dave")
                .await
                .ok()
        },
    )
    .await;
    let stale = publish_over(addr, &trusting(first, None), "dave").await;
    assert!(
        stale.is_err(),
        "a new handshake still shows the old certificate: {stale:?}"
    );

    old.publish(to_user("carol", "2"))
        .await
        .expect("the old connection still serves calls");
    assert_eq!(next_seq(&mut stream).await, 2, "the old stream still flows");
    second
}

#[tokio::test]
async fn a_certificate_rotated_on_disk_is_picked_up_without_dropping_connections() {
    let pki = TestPki::new("rotate");
    let live = pki.server("live");
    let svc = start(&live, &[]).await;
    let addr = svc.grpc.to_string();
    // No signal: the file watcher notices the change.
    let rotated = rotation_keeps_open_streams(&addr, &pki, &live, async || {}).await;

    // A broken rotation (a key that belongs to another certificate) is
    // refused; the certificate in use stays.
    let broken = CertFiles {
        cert: pki.server("a").cert,
        key: pki.server("b").key,
    };
    live.rotate_to(&broken);
    tokio::time::sleep(notify_ops::tls::WATCH_EVERY * 2).await;
    assert!(
        publish_over(&addr, &trusting(&rotated, None), "erin")
            .await
            .is_ok(),
        "a failed reload keeps the certificate in use"
    );
    svc.stop().await;
}

#[tokio::test]
async fn the_real_binary_reloads_its_certificate_on_sighup() {
    let db = TestDb::create().await;
    let pki = TestPki::new("sighup");
    let live = pki.server("live");
    let (mut child, grpc) = binary(
        &db.url,
        &[
            "--tls-cert".as_ref(),
            live.cert.as_os_str(),
            "--tls-key".as_ref(),
            live.key.as_os_str(),
            // No file watching: only the signal can cause the reload.
            "--tls-watch-secs".as_ref(),
            "0".as_ref(),
        ],
    );
    eventually("notify-svc over TLS", Duration::from_secs(30), || async {
        publish_over(&grpc, &trusting(&pki, None), "probe")
            .await
            .ok()
    })
    .await;
    rotation_keeps_open_streams(&grpc, &pki, &live, async || hang_up(&child)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "SIGHUP did not stop the service"
    );
    child.kill().await.unwrap();
}

/// The notify-svc binary on free ports with `extra` flags: (child, gRPC address).
fn binary(database_url: &str, extra: &[&std::ffi::OsStr]) -> (tokio::process::Child, String) {
    let (mut command, grpc) = common::binary(database_url);
    let child = command.args(extra).spawn().expect("spawn notify-svc");
    (child, grpc)
}

fn hang_up(child: &tokio::process::Child) {
    let pid = child.id().expect("running").to_string();
    let sent = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .expect("kill -HUP");
    assert!(sent.success());
}

#[tokio::test]
async fn a_plaintext_service_lives_through_sighup() {
    // `systemctl reload` sends SIGHUP whether or not TLS is configured.
    let db = TestDb::create().await;
    let (mut child, grpc) = binary(&db.url, &[]);
    let url = format!("http://{grpc}");
    let mut client = eventually("notify-svc answers", Duration::from_secs(30), || async {
        NotifyClient::connect(url.clone()).await.ok()
    })
    .await;
    hang_up(&child);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "SIGHUP killed notify-svc"
    );
    client
        .publish(to_user("hal", "1"))
        .await
        .expect("still serving");
    child.kill().await.unwrap();
}
