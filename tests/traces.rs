//! Traces over OTLP, with the real binaries and a collector of the test's
//! own (the OTLP/gRPC TraceService): one publish is one trace — the gRPC
//! request on notify-svc, the group commit that follows from it (the store's
//! commit inside it), and the
//! bridge's delivery span, a child of the request across BridgeLink — and
//! every span names the message it carried.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt;
use notify_proto::v1::{self as pb, notify_client::NotifyClient};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{AnyValue, any_value::Value as Any},
    trace::v1::Span,
};
use test_support::{TestDb, TestDir, eventually, free_port, process::ServiceProcess, wait_ready};
use tokio_tungstenite::tungstenite::Message;

/// Spans received, with the `service.name` of their resource.
#[derive(Default, Clone)]
struct Collector(Arc<Mutex<Vec<(String, Span)>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| text(a.value.as_ref()))
                .unwrap_or_default();
            for scope in resource.scope_spans {
                spans.extend(scope.spans.into_iter().map(|s| (service.clone(), s)));
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn text(value: Option<&AnyValue>) -> Option<String> {
    match value?.value.as_ref()? {
        Any::StringValue(s) => Some(s.clone()),
        Any::IntValue(i) => Some(i.to_string()),
        _ => None,
    }
}

fn attributes(span: &Span) -> HashMap<String, String> {
    span.attributes
        .iter()
        .filter_map(|a| Some((a.key.clone(), text(a.value.as_ref())?)))
        .collect()
}

#[tokio::test]
async fn one_publish_is_one_trace_from_request_to_bridge_delivery() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let db = TestDb::create().await;
    let data = TestDir::create("traces");
    let exe = env!("CARGO_BIN_EXE_notify");
    let grpc = format!("127.0.0.1:{}", free_port());
    let (ws, bridge_http) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let mut svc = ServiceProcess::notify_svc(exe, &grpc, &db.url)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &otlp)
        // Export every 100 ms instead of every 5 s.
        .env("OTEL_BSP_SCHEDULE_DELAY", "100");
    let url = format!("http://{grpc}");
    let mut bridge = ServiceProcess::dev_bridge(exe, "bridge", &ws, &bridge_http, &url, &data.path)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &otlp)
        .env("OTEL_BSP_SCHEDULE_DELAY", "100");
    svc.start();
    bridge.start();
    wait_ready(&bridge_http).await;

    let issuer = notify_auth::DevIssuer::load_or_create(
        &data.join(notify_auth::DEV_KEY_FILE),
        notify_auth::DEV_ISSUER,
        notify_auth::DEV_CLIENT_ID,
    )
    .unwrap();
    let token = issuer.mint(&notify_auth::DevToken::access("tess")).unwrap();
    let (mut socket, _) = tokio_tungstenite::connect_async(format!("ws://{ws}/ws?token={token}"))
        .await
        .unwrap();
    let mut client = NotifyClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    let sent = client
        .publish(pb::PublishRequest {
            target: Some(pb::publish_request::Target::UserId("tess".into())),
            event: "traced".into(),
            data: "{}".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("the message within 10 s")
            .unwrap()
            .unwrap();
        if let Message::Text(t) = frame
            && t.contains("\"traced\"")
        {
            break;
        }
    }

    let named = |service: &str, name: &str, id: &str| {
        collector
            .0
            .lock()
            .unwrap()
            .iter()
            .find(|(s, span)| {
                s == service
                    && span.name == name
                    && (id.is_empty()
                        || attributes(span).get("message_id").is_some_and(|m| m == id))
            })
            .map(|(_, span)| span.clone())
    };
    let id = sent.message_id.clone();
    let seen = || {
        collector
            .0
            .lock()
            .unwrap()
            .iter()
            .map(|(s, span)| format!("{s}/{}", span.name))
            .collect::<Vec<_>>()
    };
    // Our own deadline first, so that a failure lists the spans that did come.
    let waited = tokio::time::timeout(
        Duration::from_secs(20),
        eventually("the three spans", Duration::from_secs(30), || {
            let found = (
                named("notify-svc", "Publish", &id),
                named("notify-svc", "group_commit", ""),
                named("bridge", "deliver", &id),
            );
            async move {
                match found {
                    (Some(r), Some(c), Some(d)) => Some((r, c, d)),
                    _ => None,
                }
            }
        }),
    )
    .await;
    let Ok((request, commit, deliver)) = waited else {
        panic!(
            "the request, group commit and delivery spans; got {:?}",
            seen()
        );
    };
    assert_eq!(
        attributes(&request).get("seq").map(String::as_str),
        Some(&*sent.seq.to_string())
    );
    assert!(
        commit.links.iter().any(|l| l.span_id == request.span_id),
        "the commit follows from the request"
    );
    assert_eq!(
        deliver.trace_id, request.trace_id,
        "the bridge joins the publish's trace"
    );
    assert_eq!(deliver.parent_span_id, request.span_id);
    assert_eq!(
        attributes(&deliver).get("sockets").map(String::as_str),
        Some("1")
    );

    bridge.kill9().await;
    svc.kill9().await;
}
