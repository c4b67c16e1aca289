//! `notify echo-backend`: an example `notify.v1.Upstream` backend for trying
//! routed actions locally (`BRIDGE_ROUTES=echo=http://127.0.0.1:50061`, or
//! `notify up --routes …`). It answers every routed frame with the frame
//! and the verified caller it got, and a frame with `"fail": true` with
//! NOT_FOUND, so a client sees both a reply and a backend's error. Every
//! connect is admitted. A real backend starts from the same generated stubs.

use std::net::SocketAddr;

use notify_proto::v1::{
    self as pb,
    upstream_server::{Upstream, UpstreamServer},
};
use serde_json::{Value, json};
use tonic::{Request, Response, Status};

use crate::cli::Failure;

#[derive(clap::Args)]
pub struct EchoArgs {
    /// Where it serves gRPC.
    #[arg(long, default_value = "127.0.0.1:50061")]
    addr: SocketAddr,
}

struct Echo;

#[tonic::async_trait]
impl Upstream for Echo {
    async fn handle(
        &self,
        req: Request<pb::HandleRequest>,
    ) -> Result<Response<pb::HandleResponse>, Status> {
        let req = req.into_inner();
        let frame: Value = serde_json::from_str(&req.frame).unwrap_or(Value::Null);
        if frame["fail"] == true {
            return Err(Status::not_found("the echo backend was asked to fail"));
        }
        let caller = req.caller.unwrap_or_default();
        let reply = json!({
            "route": req.route,
            "action": req.action,
            "frame": frame,
            "caller": {
                "user_id": caller.user_id,
                "username": caller.username,
                "groups": caller.groups,
                "realm": caller.realm,
                "connection_id": caller.connection_id,
                "bridge_id": caller.bridge_id,
            },
        });
        Ok(Response::new(pb::HandleResponse {
            reply: reply.to_string(),
        }))
    }

    async fn on_connect(
        &self,
        _: Request<pb::ConnectRequest>,
    ) -> Result<Response<pb::ConnectResponse>, Status> {
        Ok(Response::new(pb::ConnectResponse::default()))
    }
}

/// Serves until Ctrl-C.
pub async fn serve(args: EchoArgs) -> Result<(), Failure> {
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .map_err(|e| anyhow::anyhow!("bind {}: {e}", args.addr))?;
    let addr = listener.local_addr().map_err(anyhow::Error::from)?;
    // The address on stdout: a script (or test) that asked for port 0 learns it.
    println!("{}", json!({ "serving": addr.to_string() }));
    tonic::transport::Server::builder()
        .add_service(UpstreamServer::new(Echo))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            async {
                let _ = tokio::signal::ctrl_c().await;
            },
        )
        .await
        .map_err(|e| anyhow::Error::from(e).into())
}
