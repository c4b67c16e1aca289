//! The ceiling of the gRPC stack: a Notify server whose `Publish` answers at
//! once. Same tonic server settings as notify-svc (TCP_NODELAY), no store, no
//! validation, no pipeline.

use notify_proto::v1::{
    self as pb,
    notify_server::{Notify, NotifyServer},
};
use tonic::{Request, Response, Status};

struct Noop;

fn unimplemented<T>() -> Result<T, Status> {
    Err(Status::unimplemented(
        "the noop server only answers Publish",
    ))
}

#[tonic::async_trait]
impl Notify for Noop {
    async fn publish(
        &self,
        _req: Request<pb::PublishRequest>,
    ) -> Result<Response<pb::PublishResponse>, Status> {
        Ok(Response::new(pb::PublishResponse {
            message_id: "00000000-0000-0000-0000-000000000000".into(),
            seq: 1,
            ..Default::default()
        }))
    }

    async fn publish_batch(
        &self,
        _req: Request<pb::PublishBatchRequest>,
    ) -> Result<Response<pb::PublishBatchResponse>, Status> {
        unimplemented()
    }

    async fn emit_fight_event(
        &self,
        _req: Request<pb::EmitFightEventRequest>,
    ) -> Result<Response<pb::EmitFightEventResponse>, Status> {
        unimplemented()
    }

    async fn subscribe(
        &self,
        _req: Request<pb::SubscribeRequest>,
    ) -> Result<Response<pb::SubscribeResponse>, Status> {
        unimplemented()
    }

    async fn unsubscribe(
        &self,
        _req: Request<pb::UnsubscribeRequest>,
    ) -> Result<Response<pb::UnsubscribeResponse>, Status> {
        unimplemented()
    }

    async fn mark_inbox(
        &self,
        _req: Request<pb::MarkInboxRequest>,
    ) -> Result<Response<pb::MarkInboxResponse>, Status> {
        unimplemented()
    }

    async fn list_inbox(
        &self,
        _req: Request<pb::ListInboxRequest>,
    ) -> Result<Response<pb::ListInboxResponse>, Status> {
        unimplemented()
    }

    async fn register_device(
        &self,
        _req: Request<pb::RegisterDeviceRequest>,
    ) -> Result<Response<pb::RegisterDeviceResponse>, Status> {
        unimplemented()
    }

    async fn list_devices(
        &self,
        _req: Request<pb::ListDevicesRequest>,
    ) -> Result<Response<pb::ListDevicesResponse>, Status> {
        unimplemented()
    }

    async fn remove_device(
        &self,
        _req: Request<pb::RemoveDeviceRequest>,
    ) -> Result<Response<pb::RemoveDeviceResponse>, Status> {
        unimplemented()
    }

    async fn get_inbox_counts(
        &self,
        _req: Request<pb::GetInboxCountsRequest>,
    ) -> Result<Response<pb::GetInboxCountsResponse>, Status> {
        unimplemented()
    }

    async fn get_preferences(
        &self,
        _req: Request<pb::GetPreferencesRequest>,
    ) -> Result<Response<pb::Preferences>, Status> {
        unimplemented()
    }

    async fn update_preferences(
        &self,
        _req: Request<pb::UpdatePreferencesRequest>,
    ) -> Result<Response<pb::Preferences>, Status> {
        unimplemented()
    }

    async fn update_message(
        &self,
        _req: Request<pb::UpdateMessageRequest>,
    ) -> Result<Response<pb::UpdateMessageResponse>, Status> {
        unimplemented()
    }

    async fn retract_message(
        &self,
        _req: Request<pb::RetractMessageRequest>,
    ) -> Result<Response<pb::RetractMessageResponse>, Status> {
        unimplemented()
    }

    async fn get_presence(
        &self,
        _req: Request<pb::GetPresenceRequest>,
    ) -> Result<Response<pb::GetPresenceResponse>, Status> {
        unimplemented()
    }

    async fn disconnect(
        &self,
        _req: Request<pb::DisconnectRequest>,
    ) -> Result<Response<pb::DisconnectResponse>, Status> {
        unimplemented()
    }

    async fn history(
        &self,
        _req: Request<pb::HistoryRequest>,
    ) -> Result<Response<pb::HistoryResponse>, Status> {
        unimplemented()
    }

    type WatchStream = tokio_stream::Empty<Result<pb::StoredMessage, Status>>;

    async fn watch(
        &self,
        _req: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        unimplemented()
    }

    type WatchConnectionsStream = tokio_stream::Empty<Result<pb::ConnectionEvents, Status>>;

    async fn watch_connections(
        &self,
        _req: Request<pb::WatchConnectionsRequest>,
    ) -> Result<Response<Self::WatchConnectionsStream>, Status> {
        unimplemented()
    }
}

/// Serves until killed.
pub async fn serve(addr: std::net::SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    eprintln!("noop Notify server on {addr}");
    tonic::transport::Server::builder()
        .add_service(NotifyServer::new(Noop))
        .serve_with_incoming(incoming)
        .await?;
    Ok(())
}
