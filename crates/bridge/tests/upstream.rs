//! Routed actions end to end: a real backend (a tonic server implementing
//! `notify.v1.Upstream`, on an ephemeral port), a real bridge routing client
//! frames to it, real WebSocket clients. The reply comes back with the
//! frame's id and the verified identity reaches the backend; a backend
//! error, a slow backend and an absent one each give their frame and the
//! socket stays usable; calls in flight are bounded; built-in actions are
//! never routed.

mod common;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use common::Platform;
use notify_bridge::UpstreamArgs;
use notify_proto::v1::{
    self as pb,
    upstream_server::{Upstream, UpstreamServer},
};
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tonic::{Request, Response, Status};

/// The test's backend: what it answers depends on the frame's action.
#[derive(Clone)]
struct Backend {
    /// `hold` calls each wait for a permit the test adds.
    release: Arc<Semaphore>,
}

impl Default for Backend {
    fn default() -> Self {
        Self {
            release: Arc::new(Semaphore::new(0)),
        }
    }
}

#[tonic::async_trait]
impl Upstream for Backend {
    async fn handle(
        &self,
        req: Request<pb::HandleRequest>,
    ) -> Result<Response<pb::HandleResponse>, Status> {
        let token = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let req = req.into_inner();
        let reply = match req.action.as_str() {
            "echo" | "other" => {
                let caller = req.caller.unwrap_or_default();
                json!({
                    "connection_data": req.connection_data,
                    "route": req.route,
                    "frame": serde_json::from_str::<Value>(&req.frame).unwrap(),
                    "user_id": caller.user_id,
                    "username": caller.username,
                    "groups": caller.groups,
                    "realm": caller.realm,
                    "connection_id": caller.connection_id,
                    "bridge_id": caller.bridge_id,
                    "authorization": token,
                })
                .to_string()
            }
            "fail" => return Err(Status::not_found("no such room")),
            "hold" => {
                self.release.acquire().await.unwrap().forget();
                "\"released\"".into()
            }
            "slow" => {
                tokio::time::sleep(Duration::from_secs(5)).await;
                "\"late\"".into()
            }
            _ => return Err(Status::internal("unexpected action")),
        };
        Ok(Response::new(pb::HandleResponse { reply }))
    }

    /// mallory is refused; sam gets a topic and data kept with the
    /// connection; the query (never the token) is checked.
    async fn on_connect(
        &self,
        req: Request<pb::ConnectRequest>,
    ) -> Result<Response<pb::ConnectResponse>, Status> {
        let req = req.into_inner();
        assert!(!req.query.contains("token"), "{}", req.query);
        let caller = req.caller.unwrap_or_default();
        match caller.user_id.as_str() {
            "mallory" => Err(Status::permission_denied("mallory is banned")),
            "sam" => Ok(Response::new(pb::ConnectResponse {
                topics: vec!["room:vip".into()],
                data: json!({"tier": "gold", "query": req.query}).to_string(),
            })),
            _ => Ok(Response::new(pb::ConnectResponse::default())),
        }
    }
}

async fn start_backend(backend: Backend) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(UpstreamServer::new(backend))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    addr
}

/// A platform whose bridge routes `routes` (`action=URL`), with `flags`.
async fn platform(routes: &str, flags: &[&str]) -> Platform {
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        upstream: UpstreamArgs,
    }
    let mut argv = vec![
        "bridge",
        "--routes",
        routes,
        "--upstream-token",
        "backend-secret",
    ];
    argv.extend_from_slice(flags);
    let args = <Cli as clap::Parser>::try_parse_from(argv)
        .unwrap()
        .upstream;
    let upstream = args.config().unwrap();
    Platform::start_with(move |config| config.upstream = upstream).await
}

#[tokio::test]
async fn a_routed_action_gets_its_backends_reply_with_the_callers_verified_identity() {
    let backend = start_backend(Backend::default()).await;
    let p = platform(&format!("echo=http://{backend}"), &[]).await;
    let mut amy = p.connect("amy", "").await;
    let welcome = amy.next().await;
    amy.send(json!({"action": "echo", "id": "e1", "message": "hi"}))
        .await;
    let reply = amy.next().await;
    assert_eq!(reply["type"], "reply", "{reply}");
    assert_eq!(
        (reply["id"].as_str(), reply["action"].as_str()),
        (Some("e1"), Some("echo"))
    );
    let data = &reply["data"];
    assert_eq!(data["route"], "echo");
    assert_eq!(data["frame"]["message"], "hi", "the client's frame as sent");
    assert_eq!(data["user_id"], "amy");
    assert_eq!(data["username"], "amy", "the dev token's username claim");
    assert_eq!(data["connection_id"], welcome["connection_id"]);
    assert_eq!(data["bridge_id"], "bridge-test");
    assert_eq!(data["authorization"], "Bearer backend-secret");
    // Built-in actions are the bridge's own: ping is never routed.
    amy.send(json!({"action": "ping", "id": 2})).await;
    assert_eq!(amy.next().await["type"], "pong");
    // An action no route takes is still unknown.
    amy.send(json!({"action": "nowhere", "id": 3})).await;
    let unknown = amy.next().await;
    assert_eq!(
        (unknown["code"].as_str(), unknown["id"].as_i64()),
        (Some("unknown_action"), Some(3))
    );
    // A routed frame over the 64 KiB frame limit never reaches the backend:
    // the socket closes with 1009, as for any frame.
    let big = "x".repeat(70 * 1024);
    amy.send(json!({"action": "echo", "id": "big", "message": big}))
        .await;
    assert_eq!(common::closing_code(&mut amy).await, Some(1009));
}

#[tokio::test]
async fn the_default_route_takes_every_other_action() {
    let backend = start_backend(Backend::default()).await;
    let p = platform(&format!("$default=http://{backend}"), &[]).await;
    let mut ben = p.connect("ben", "").await;
    ben.next().await;
    ben.send(json!({"action": "other", "id": 1})).await;
    let reply = ben.next().await;
    assert_eq!(
        (reply["type"].as_str(), reply["data"]["route"].as_str()),
        (Some("reply"), Some("$default"))
    );
    // A built-in action with a wrong field is the bridge's bad_request, not routed.
    ben.send(json!({"action": "subscribe", "id": 2})).await;
    assert_eq!(ben.next().await["code"], "bad_request");
}

#[tokio::test]
async fn backend_errors_slowness_and_absence_each_get_their_frame_and_the_socket_lives_on() {
    let backend = start_backend(Backend::default()).await;
    let gone = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let routes = format!("fail=http://{backend},slow=http://{backend},gone=http://{gone}");
    let p = platform(&routes, &["--upstream-timeout-ms", "300"]).await;
    let mut cal = p.connect("cal", "").await;
    cal.next().await;

    cal.send(json!({"action": "fail", "id": "f"})).await;
    let failed = cal.next().await;
    assert_eq!(
        (
            failed["type"].as_str(),
            failed["code"].as_str(),
            failed["status"].as_str(),
            failed["message"].as_str(),
            failed["id"].as_str()
        ),
        (
            Some("error"),
            Some("bad_request"),
            Some("NOT_FOUND"),
            Some("no such room"),
            Some("f")
        ),
        "{failed}"
    );

    let started = std::time::Instant::now();
    cal.send(json!({"action": "slow", "id": "s"})).await;
    let slow = cal.next().await;
    assert_eq!(
        (slow["code"].as_str(), slow["id"].as_str()),
        (Some("unavailable"), Some("s")),
        "{slow}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "answered at the timeout, not the backend's pace"
    );

    cal.send(json!({"action": "gone", "id": "g"})).await;
    let gone = cal.next().await;
    assert_eq!(
        (gone["code"].as_str(), gone["id"].as_str()),
        (Some("unavailable"), Some("g")),
        "{gone}"
    );
    assert!(
        gone["message"].as_str().unwrap().contains("retry"),
        "{gone}"
    );

    cal.send(json!({"action": "ping", "id": "p"})).await;
    assert_eq!(
        cal.next().await["type"],
        "pong",
        "the socket is still usable"
    );
}

#[tokio::test]
async fn calls_in_flight_are_bounded_per_connection_and_freed_by_the_answers() {
    let backend = Backend::default();
    let release = backend.release.clone();
    let addr = start_backend(backend).await;
    let p = platform(
        &format!("hold=http://{addr}"),
        &[
            "--upstream-calls-per-connection",
            "2",
            "--upstream-timeout-ms",
            "20000",
        ],
    )
    .await;
    let mut dee = p.connect("dee", "").await;
    dee.next().await;
    for id in 1..=3 {
        dee.send(json!({"action": "hold", "id": id})).await;
    }
    let refused = dee.next().await;
    assert_eq!(
        (refused["code"].as_str(), refused["id"].as_i64()),
        (Some("rate_limited"), Some(3)),
        "{refused}"
    );
    // A flood beyond the bound costs the bridge nothing: every extra call is
    // refused at once while the two wait.
    for id in 4..=50 {
        dee.send(json!({"action": "hold", "id": id})).await;
        assert_eq!(dee.next().await["code"], "rate_limited");
    }
    release.add_permits(2);
    let mut answered = Vec::new();
    for _ in 0..2 {
        let reply = dee.next().await;
        assert_eq!(reply["data"], "released", "{reply}");
        answered.push(reply["id"].as_i64().unwrap());
    }
    answered.sort_unstable();
    assert_eq!(answered, [1, 2]);
    // Places are free again.
    dee.send(json!({"action": "hold", "id": 99})).await;
    release.add_permits(1);
    assert_eq!(dee.next().await["id"], 99);
}

#[tokio::test]
async fn a_publish_to_a_connection_id_reaches_that_socket_only_and_is_not_stored() {
    let backend = start_backend(Backend::default()).await;
    let p = platform(&format!("echo=http://{backend}"), &[]).await;
    let mut phone = p.connect("eve", "").await;
    let mut laptop = p.connect("eve", "").await;
    phone.next().await;
    laptop.next().await;
    // The backend learns the socket's id from a routed action.
    phone.send(json!({"action": "echo", "id": 1})).await;
    let connection = phone.next().await["data"]["connection_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut api = p.api().await;
    let to_phone = |data: &str| pb::PublishRequest {
        target: Some(pb::publish_request::Target::ConnectionId(
            connection.clone(),
        )),
        event: "your_turn".into(),
        data: data.into(),
        ..Default::default()
    };
    let sent = api
        .publish(to_phone(r#"{"n":1}"#))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((sent.seq, sent.delivered), (0, 1));
    let got = phone.next().await;
    assert_eq!(
        (
            got["type"].as_str(),
            got["event"].as_str(),
            got["seq"].as_u64(),
            got["id"].as_str()
        ),
        (
            Some("message"),
            Some("your_turn"),
            Some(0),
            Some(sent.message_id.as_str())
        ),
        "{got}"
    );
    assert_eq!(got["data"]["n"], 1);
    // The other socket of the same user got nothing: its next frame is the pong.
    laptop.send(json!({"action": "ping", "id": "after"})).await;
    assert_eq!(laptop.next().await["type"], "pong");
    // Not stored: the inbox has nothing, and a reconnect replays nothing.
    let inbox = api
        .history(common::history("eve"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(inbox.head_seq, 0, "nothing stored");
    // Stored-publish fields do not apply; nor does a batch.
    let keyed = pb::PublishRequest {
        idempotency_key: "k1".into(),
        ..to_phone("1")
    };
    assert_eq!(
        api.publish(keyed).await.unwrap_err().code(),
        tonic::Code::InvalidArgument
    );
    let batch = api
        .publish_batch(pb::PublishBatchRequest {
            requests: vec![to_phone("1")],
        })
        .await
        .unwrap()
        .into_inner();
    let Some(pb::publish_result::Result::Error(refused)) = &batch.results[0].result else {
        panic!("a batched connection target is refused: {batch:?}");
    };
    assert_eq!(refused.code, tonic::Code::InvalidArgument as i32);
    // Gone: NOT_FOUND, as API Gateway's 410 GoneException said.
    drop(phone);
    p.until_connections("eve", 1).await;
    let gone = test_support::eventually(
        "the phone is out of routing",
        Duration::from_secs(10),
        || {
            let mut api = api.clone();
            let req = to_phone("2");
            async move {
                api.publish(req)
                    .await
                    .err()
                    .filter(|s| s.code() == tonic::Code::NotFound)
            }
        },
    )
    .await;
    assert!(gone.message().contains("not connected"), "{gone:?}");
}

/// Connects `user` with `query`; the HTTP refusal if the upgrade is refused.
async fn try_connect(
    p: &Platform,
    user: &str,
    query: &str,
) -> Result<common::Client, tokio_tungstenite::tungstenite::http::Response<Option<Vec<u8>>>> {
    use tokio_tungstenite::tungstenite::{Error, client::IntoClientRequest};
    let mut req = format!("{}{query}", p.ws).into_client_request().unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", p.token(user)).parse().unwrap(),
    );
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(common::Client { ws }),
        Err(Error::Http(response)) => Err(*response),
        Err(e) => panic!("neither an upgrade nor an HTTP refusal: {e}"),
    }
}

#[tokio::test]
async fn the_connect_hook_refuses_one_user_and_subscribes_another_before_the_upgrade() {
    let backend = start_backend(Backend::default()).await;
    let hook = format!("http://{backend}");
    let p = platform(&format!("echo={hook}"), &["--connect-hook", &hook]).await;
    // Refused with the hook's status and reason, before any welcome.
    let refused = try_connect(&p, "mallory", "?device=phone")
        .await
        .err()
        .unwrap();
    assert_eq!(refused.status(), 403);
    let body: Value = serde_json::from_slice(refused.body().as_deref().unwrap()).unwrap();
    assert_eq!(
        (body["reason"].as_str(), body["message"].as_str()),
        (Some("hook_refused"), Some("mallory is banned"))
    );
    p.until_connections("mallory", 0).await;
    // Subscribed by the hook: `subscribed` (source server) right after welcome,
    // and the topic's messages arrive; the hook's data rides with routed actions.
    let mut sam = try_connect(&p, "sam", "?device=phone").await.unwrap();
    assert_eq!(sam.next().await["type"], "welcome");
    let subscribed = sam.next().await;
    assert_eq!(
        (
            subscribed["type"].as_str(),
            subscribed["topic"].as_str(),
            subscribed["source"].as_str()
        ),
        (Some("subscribed"), Some("room:vip"), Some("server")),
        "{subscribed}"
    );
    let mut api = p.api().await;
    api.publish(common::to_topic("room:vip", "\"doors open\""))
        .await
        .unwrap();
    assert_eq!(sam.next().await["data"], "doors open");
    sam.send(json!({"action": "echo", "id": 1})).await;
    let data: Value = serde_json::from_str(
        sam.next().await["data"]["connection_data"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(data, json!({"tier": "gold", "query": "device=phone"}));
    // Anyone else is let in as usual.
    let mut tom = try_connect(&p, "tom", "").await.unwrap();
    assert_eq!(tom.next().await["type"], "welcome");
}

#[tokio::test]
async fn a_connect_hook_that_cannot_be_asked_fails_closed_unless_told_to_fail_open() {
    let gone = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let closed = platform("", &["--connect-hook", &gone]).await;
    let refused = try_connect(&closed, "uma", "").await.err().unwrap();
    assert_eq!(refused.status(), 503);
    let body: Value = serde_json::from_slice(refused.body().as_deref().unwrap()).unwrap();
    assert_eq!(body["reason"], "hook_unavailable", "{body}");
    let open = platform(
        "",
        &["--connect-hook", &gone, "--connect-hook-fail-open", "true"],
    )
    .await;
    let mut uma = try_connect(&open, "uma", "").await.unwrap();
    assert_eq!(uma.next().await["type"], "welcome");
}

#[tokio::test]
async fn routes_and_connection_publishes_work_across_two_bridges_and_two_replicas() {
    let backend = start_backend(Backend::default()).await;
    let p = platform(&format!("echo=http://{backend}"), &[]).await;
    // A second notify-svc replica, and a second bridge attached to both,
    // routing the same action.
    let replica = common::start_svc(&p.db.url, None).await;
    let mut second = p.bridge_config("bridge-two", notify_bridge::SendBound::default());
    second.notify_urls = vec![p.grpc.clone(), replica.url()];
    second.upstream = notify_bridge::UpstreamArgs::from_routes(&format!("echo=http://{backend}"));
    let ws_two = p.run_bridge(second).await;
    let mut far = p.connect_to(&ws_two, "zoe", "").await;
    far.next().await;
    far.send(json!({"action": "echo", "id": "z"})).await;
    let reply = far.next().await;
    assert_eq!(reply["data"]["bridge_id"], "bridge-two", "{reply}");
    let connection = reply["data"]["connection_id"].as_str().unwrap().to_owned();
    // Either replica routes a connection publish to the bridge holding it.
    for (n, url) in [p.grpc.clone(), replica.url()].into_iter().enumerate() {
        let mut api = notify_proto::v1::notify_client::NotifyClient::connect(url)
            .await
            .unwrap();
        let sent = api
            .publish(pb::PublishRequest {
                target: Some(pb::publish_request::Target::ConnectionId(
                    connection.clone(),
                )),
                event: "ping".into(),
                data: n.to_string(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(sent.delivered, 1);
        assert_eq!(far.next().await["data"], n, "through replica {n}");
    }
}
