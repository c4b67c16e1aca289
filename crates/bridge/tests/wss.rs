//! TLS end to end with the real `bridge` binary: clients connect over wss,
//! the bridge reaches notify-svc (in-process, real gRPC, real Postgres)
//! over https with a client certificate because notify-svc requires mutual
//! TLS, and a certificate rotated and announced with SIGHUP serves new
//! handshakes while the open sockets keep receiving.

use std::{path::Path, process::Stdio, time::Duration};

use notify_auth::{DEV_CLIENT_ID, DEV_ISSUER, DEV_KEY_FILE, DevIssuer, DevToken};
use notify_harness::{next_json, to_user};
use notify_ops::tls::{ClientAuth, TlsFiles};
use notify_proto::{
    channel::{self, ClientTls},
    v1::notify_client::NotifyClient,
};
use test_support::{
    TestDb, TestDir, eventually, free_port,
    tls::{CertFiles, TestPki},
};
use tokio::net::TcpStream;
use tokio_rustls::{TlsConnector, client::TlsStream, rustls::pki_types::ServerName};
use tokio_tungstenite::{WebSocketStream, tungstenite::client::IntoClientRequest};

type Wss = WebSocketStream<TlsStream<TcpStream>>;

/// Opens `wss://addr/ws` trusting only `ca`; the HTTP status if refused.
async fn wss(addr: &str, ca: &Path, token: &str) -> Result<Wss, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let config = notify_ops::tls::client_config(Some(ca)).unwrap();
    let tls = TlsConnector::from(std::sync::Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let mut req = format!("wss://{addr}/ws").into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (ws, _) = tokio_tungstenite::client_async(req, tls)
        .await
        .map_err(|e| e.to_string())?;
    Ok(ws)
}

#[tokio::test]
async fn wss_clients_reach_a_mutual_tls_notify_svc_and_keep_their_sockets_across_a_reload() {
    // notify-svc: gRPC over TLS, client certificates required.
    let db = TestDb::create().await;
    let svc_pki = TestPki::new("svc");
    let callers = TestPki::new("callers");
    let svc_cert = svc_pki.server("svc");
    let mut config = notify_svc::Config::for_database(&db.url).unwrap();
    config.tls = TlsFiles::from_settings(
        Some(svc_cert.cert.clone()),
        Some(svc_cert.key.clone()),
        ClientAuth::Required(callers.ca.clone()),
    )
    .unwrap();
    let mut svc = notify_harness::InProcessSvc::start(config).await;
    let grpc_addr = svc.grpc;
    let publisher = ClientTls {
        ca: Some(svc_pki.ca.clone()),
        ..callers_identity(&callers.client("publisher"))
    };
    let api = eventually("notify-svc over mTLS", Duration::from_secs(20), || async {
        let channel = channel::endpoint(&format!("https://{grpc_addr}"), &publisher)
            .ok()?
            .connect()
            .await
            .ok()?;
        Some(NotifyClient::new(channel))
    })
    .await;

    // The real bridge binary: wss outside, https + client certificate inside.
    let edge = TestPki::new("edge");
    let live = edge.server("bridge");
    let bridge_cert = callers.client("bridge");
    let data = TestDir::create("wss-bridge");
    let issuer =
        DevIssuer::load_or_create(&data.join(DEV_KEY_FILE), DEV_ISSUER, DEV_CLIENT_ID).unwrap();
    let ws_addr = format!("127.0.0.1:{}", free_port());
    let mut bridge = tokio::process::Command::new(env!("CARGO_BIN_EXE_bridge"))
        .env("BRIDGE_WS_ADDR", &ws_addr)
        .env("BRIDGE_HTTP_ADDR", format!("127.0.0.1:{}", free_port()))
        .env(
            "BRIDGE_NOTIFY_URLS",
            format!("https://localhost:{}", grpc_addr.port()),
        )
        .env("BRIDGE_NOTIFY_CA", &svc_pki.ca)
        .env("BRIDGE_NOTIFY_CERT", &bridge_cert.cert)
        .env("BRIDGE_NOTIFY_KEY", &bridge_cert.key)
        .env("BRIDGE_TLS_CERT", &live.cert)
        .env("BRIDGE_TLS_KEY", &live.key)
        // Only SIGHUP reloads here, so the test shows the signal works.
        .env("BRIDGE_TLS_WATCH_SECS", "0")
        .env("AUTH_DEV", "1")
        .env("BRIDGE_DATA_DIR", &data.path)
        .env(
            "RUST_LOG",
            std::env::var("NOTIFY_TEST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn bridge");

    let token = issuer.mint(&DevToken::access("alice")).unwrap();
    // 503 until the bridge's link to notify-svc is attached (over mTLS).
    let mut alice = eventually("a wss connection", Duration::from_secs(30), || async {
        wss(&ws_addr, &edge.ca, &token).await.ok()
    })
    .await;
    assert_eq!(next_json(&mut alice).await["type"], "welcome");
    let sent = api
        .clone()
        .publish(to_user("alice", r#"{"n":1}"#))
        .await
        .unwrap();
    let m = next_json(&mut alice).await;
    assert_eq!(
        (m["type"].as_str(), m["seq"].as_u64()),
        (Some("message"), Some(sent.into_inner().seq))
    );

    // A plain ws client on the wss port gets no WebSocket.
    let plain = tokio_tungstenite::connect_async(format!("ws://{ws_addr}/ws?token={token}")).await;
    assert!(plain.is_err(), "plaintext on the wss port");

    // Rotate the bridge's certificate to a new CA and announce it.
    let next_edge = TestPki::new("edge-next");
    live.rotate_to(&next_edge.server("next"));
    let pid = bridge.id().expect("running").to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let bob_token = issuer.mint(&DevToken::access("bob")).unwrap();
    let mut bob = eventually(
        "a wss handshake with the new certificate",
        Duration::from_secs(15),
        || async { wss(&ws_addr, &next_edge.ca, &bob_token).await.ok() },
    )
    .await;
    assert_eq!(next_json(&mut bob).await["type"], "welcome");
    assert!(
        wss(&ws_addr, &edge.ca, &bob_token).await.is_err(),
        "new handshakes no longer show the old certificate"
    );
    // alice's socket, opened before the reload, still receives.
    api.clone()
        .publish(to_user("alice", r#"{"n":2}"#))
        .await
        .unwrap();
    let m = next_json(&mut alice).await;
    assert_eq!(m["data"]["n"], 2);
    assert!(
        bridge.try_wait().unwrap().is_none(),
        "SIGHUP did not stop the bridge"
    );

    bridge.kill().await.unwrap();
    svc.stop().await.unwrap();
    drop(db);
}

fn callers_identity(cert: &CertFiles) -> ClientTls {
    ClientTls {
        ca: None,
        cert: Some(cert.cert.clone()),
        key: Some(cert.key.clone()),
    }
}
