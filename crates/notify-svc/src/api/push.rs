//! The Notify API's side of push (docs/design.md §4.8): what a publish asks
//! to push (its own options over the event's configured default), and the
//! devices a user registers, lists and removes — a user through a bridge,
//! or a service for its users.

use notify_core::{
    Publish, Target,
    push::{DeviceId, PushOrder, When},
};
use notify_proto::{convert, v1 as pb};
use tonic::{Request, Status};

use super::{NotifyApi, user_id};
use crate::{caller::Right, status};

/// Who may manage a user's devices: the user through a bridge, or a
/// service that publishes to them (as for marks and preferences).
const DEVICES: &[Right] = &[Right::Publish, Right::Admin, Right::Bridge];

impl NotifyApi {
    /// The push a publish asks for, resolved against the event's default.
    pub(super) fn push_order(
        &self,
        publish: &Publish,
        asked: Option<&pb::PushOptions>,
    ) -> Result<Option<PushOrder>, Status> {
        let when = match asked.map(|a| pb::PushWhen::try_from(a.when)) {
            None | Some(Ok(pb::PushWhen::Default)) => None,
            Some(Ok(pb::PushWhen::Never)) => Some(When::Never),
            Some(Ok(pb::PushWhen::Offline)) => Some(When::Offline),
            Some(Ok(pb::PushWhen::Unacked)) => Some(
                When::parse("unacked", u64::from(asked.map_or(0, |a| a.after_seconds)))
                    .map_err(status::invalid)?,
            ),
            Some(Err(_)) => {
                return Err(Status::invalid_argument(
                    "push.when is not a PushWhen (DEFAULT, NEVER, OFFLINE, UNACKED)",
                ));
            }
        };
        let inbox = matches!(publish.target, Target::User(_) | Target::Users(_));
        if !inbox {
            // A topic's subscribers are not a list of users to push to.
            return match when {
                Some(When::Offline | When::Unacked(_)) => Err(Status::invalid_argument(
                    "push applies to inbox targets (user_id, users), not topics or broadcast",
                )),
                _ => Ok(None),
            };
        }
        let (title, body) = asked.map_or(("", ""), |a| (a.title.as_str(), a.body.as_str()));
        self.services
            .push_policy
            .resolve(&publish.event, &publish.data, when, title, body)
            .map_err(status::invalid)
    }

    pub(super) async fn register_device(
        &self,
        req: Request<pb::RegisterDeviceRequest>,
    ) -> Result<pb::RegisterDeviceResponse, Status> {
        self.services.auth.authorize_any(&req, DEVICES).await?;
        let req = req.into_inner();
        let user = user_id(&req.user_id)?;
        let destination = convert::destination_of(req.destination.as_ref())
            .ok_or_else(|| Status::invalid_argument("destination: set one of web_push, fcm, apns"))?
            .check()
            .map_err(status::invalid)?;
        let registered = self
            .services
            .store
            .register_device(&user, &destination)
            .await
            .map_err(status::store)?;
        if let Some(before) = &registered.moved_from {
            tracing::info!(device = %registered.device.id, from = %before, to = %user, "push device moved");
        }
        Ok(pb::RegisterDeviceResponse {
            device: Some(convert::push_device(&registered.device)),
            evicted: registered.evicted.iter().map(ToString::to_string).collect(),
        })
    }

    pub(super) async fn list_devices(
        &self,
        req: Request<pb::ListDevicesRequest>,
    ) -> Result<pb::ListDevicesResponse, Status> {
        self.services.auth.authorize_any(&req, DEVICES).await?;
        let user = user_id(&req.get_ref().user_id)?;
        let devices = self
            .services
            .store
            .devices(&user)
            .await
            .map_err(status::store)?;
        Ok(pb::ListDevicesResponse {
            devices: devices.iter().map(convert::push_device).collect(),
            vapid_public_key: self.services.vapid_public_key.clone().unwrap_or_default(),
        })
    }

    pub(super) async fn remove_device(
        &self,
        req: Request<pb::RemoveDeviceRequest>,
    ) -> Result<pb::RemoveDeviceResponse, Status> {
        self.services.auth.authorize_any(&req, DEVICES).await?;
        let req = req.into_inner();
        let user = user_id(&req.user_id)?;
        let device = DeviceId::parse(&req.device_id).map_err(status::invalid)?;
        let removed = self
            .services
            .store
            .remove_device(Some(&user), &device)
            .await
            .map_err(status::store)?;
        Ok(pb::RemoveDeviceResponse { removed })
    }
}
