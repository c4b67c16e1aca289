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
use notify_proto::v1::{self as pb, notify_server::Notify, push_destination::Destination as D};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{ErrorJson, Http, Refused, bad_body, bad_request, inbox::UserQuery};

/// A browser's `PushSubscription.toJSON()`.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct WebPushJson {
    pub endpoint: String,
    pub keys: WebPushKeysJson,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct WebPushKeysJson {
    pub p256dh: String,
    pub auth: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct FcmJson {
    pub token: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct ApnsJson {
    pub token: String,
    /// The app's bundle id.
    pub topic: String,
    #[serde(default)]
    pub sandbox: bool,
}

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
pub struct DeviceJson {
    pub device_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub web_push: Option<WebPushJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fcm: Option<FcmJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub apns: Option<ApnsJson>,
    /// Unix milliseconds.
    pub registered_ms: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RegisteredJson {
    pub device: DeviceJson,
    /// The user's devices forgotten to make room (at most 20 are kept).
    pub evicted: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DevicesJson {
    pub devices: Vec<DeviceJson>,
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

fn device(d: pb::PushDevice) -> DeviceJson {
    let mut json = DeviceJson {
        device_id: d.device_id,
        web_push: None,
        fcm: None,
        apns: None,
        registered_ms: d.registered_ms,
    };
    match d.destination.and_then(|d| d.destination) {
        Some(D::WebPush(w)) => {
            json.web_push = Some(WebPushJson {
                endpoint: w.endpoint,
                keys: WebPushKeysJson {
                    p256dh: w.p256dh,
                    auth: w.auth,
                },
            })
        }
        Some(D::Fcm(f)) => json.fcm = Some(FcmJson { token: f.token }),
        Some(D::Apns(a)) => {
            json.apns = Some(ApnsJson {
                token: a.token,
                topic: a.topic,
                sandbox: a.sandbox,
            })
        }
        None => {}
    }
    json
}

impl From<pb::RegisterDeviceResponse> for RegisteredJson {
    fn from(r: pb::RegisterDeviceResponse) -> Self {
        Self {
            device: device(r.device.unwrap_or_default()),
            evicted: r.evicted,
        }
    }
}

impl From<pb::ListDevicesResponse> for DevicesJson {
    fn from(r: pb::ListDevicesResponse) -> Self {
        Self {
            devices: r.devices.into_iter().map(device).collect(),
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
    let destination = match (r.web_push, r.fcm, r.apns) {
        (Some(w), None, None) => D::WebPush(pb::WebPushSubscription {
            endpoint: w.endpoint,
            p256dh: w.keys.p256dh,
            auth: w.keys.auth,
        }),
        (None, Some(f), None) => D::Fcm(pb::FcmToken { token: f.token }),
        (None, None, Some(a)) => D::Apns(pb::ApnsToken {
            token: a.token,
            topic: a.topic,
            sandbox: a.sandbox,
        }),
        _ => return Err(bad_request("give exactly one of web_push, fcm, apns")),
    };
    let message = pb::RegisterDeviceRequest {
        user_id: r.user_id,
        destination: Some(pb::PushDestination {
            destination: Some(destination),
        }),
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
