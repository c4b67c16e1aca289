//! Push devices over HTTP/JSON (docs/design.md §4.8): the JSON twins of
//! `RegisterDevice`, `ListDevices` and `RemoveDevice`, for services that
//! register their users' phones from their own backends.

use axum::{
    Json,
    extract::{
        Query, State,
        rejection::{JsonRejection, QueryRejection},
    },
    http::request::Parts,
};
use notify_proto::{
    json::{ApnsJson, FcmJson, PushDestinationJson, PushDeviceJson, WebPushJson},
    v1::{self as pb, notify_server::Notify},
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{ErrorJson, Http, Refused, bad_body, bad_request, inbox::UserQuery};

/// Registers a device of `user_id`: exactly one of the three.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterDeviceJson {
    pub user_id: String,
    #[serde(default)]
    pub web_push: Option<WebPushJson>,
    #[serde(default)]
    pub fcm: Option<FcmJson>,
    #[serde(default)]
    pub apns: Option<ApnsJson>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RegisteredJson {
    pub device: PushDeviceJson,
    /// The user's devices forgotten to make room (at most 20 are kept).
    pub evicted: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DevicesJson {
    pub devices: Vec<PushDeviceJson>,
    /// base64url, for `pushManager.subscribe`; absent without Web Push.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vapid_public_key: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RemoveDeviceJson {
    pub user_id: String,
    pub device_id: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RemovedJson {
    pub removed: bool,
}

impl From<pb::RegisterDeviceResponse> for RegisteredJson {
    fn from(r: pb::RegisterDeviceResponse) -> Self {
        Self {
            device: r.device.unwrap_or_default().into(),
            evicted: r.evicted,
        }
    }
}

impl From<pb::ListDevicesResponse> for DevicesJson {
    fn from(r: pb::ListDevicesResponse) -> Self {
        Self {
            devices: r.devices.into_iter().map(Into::into).collect(),
            vapid_public_key: (!r.vapid_public_key.is_empty()).then_some(r.vapid_public_key),
        }
    }
}

impl From<pb::RemoveDeviceResponse> for RemovedJson {
    fn from(r: pb::RemoveDeviceResponse) -> Self {
        Self { removed: r.removed }
    }
}

#[utoipa::path(
    post, path = "/v1/devices", request_body = RegisterDeviceJson,
    responses(
        (status = 200, description = "Registered (the same address again: the same device)", body = RegisteredJson),
        (status = 400, body = ErrorJson), (status = 401, body = ErrorJson),
        (status = 403, body = ErrorJson), (status = 413, body = ErrorJson),
        (status = 503, body = ErrorJson),
    )
)]
pub async fn register(
    State(http): State<Http>,
    parts: Parts,
    body: Result<Json<RegisterDeviceJson>, JsonRejection>,
) -> Result<Json<RegisteredJson>, Refused> {
    let Json(r) = body.map_err(bad_body)?;
    let destination = PushDestinationJson {
        web_push: r.web_push,
        fcm: r.fcm,
        apns: r.apns,
    }
    .into_destination()
    .map_err(bad_request)?;
    let message = pb::RegisterDeviceRequest {
        user_id: r.user_id,
        destination: Some(destination),
    };
    http.call(parts, message, |api, req| async move {
        Notify::register_device(&api, req).await
    })
    .await
}

#[utoipa::path(
    get, path = "/v1/devices", params(UserQuery),
    responses(
        (status = 200, description = "The user's devices and the VAPID public key", body = DevicesJson),
        (status = 400, body = ErrorJson), (status = 401, body = ErrorJson),
        (status = 403, body = ErrorJson), (status = 503, body = ErrorJson),
    )
)]
pub async fn list(
    State(http): State<Http>,
    parts: Parts,
    query: Result<Query<UserQuery>, QueryRejection>,
) -> Result<Json<DevicesJson>, Refused> {
    let Query(q) = query.map_err(bad_request)?;
    let message = pb::ListDevicesRequest { user_id: q.user_id };
    http.call(parts, message, |api, req| async move {
        Notify::list_devices(&api, req).await
    })
    .await
}

#[utoipa::path(
    post, path = "/v1/devices/remove", request_body = RemoveDeviceJson,
    responses(
        (status = 200, description = "Whether the user had that device", body = RemovedJson),
        (status = 400, body = ErrorJson), (status = 401, body = ErrorJson),
        (status = 403, body = ErrorJson), (status = 413, body = ErrorJson),
        (status = 503, body = ErrorJson),
    )
)]
pub async fn remove(
    State(http): State<Http>,
    parts: Parts,
    body: Result<Json<RemoveDeviceJson>, JsonRejection>,
) -> Result<Json<RemovedJson>, Refused> {
    let Json(r) = body.map_err(bad_body)?;
    let message = pb::RemoveDeviceRequest {
        user_id: r.user_id,
        device_id: r.device_id,
    };
    http.call(parts, message, |api, req| async move {
        Notify::remove_device(&api, req).await
    })
    .await
}
