//! The HTTP/JSON API: the Notify API's unary operations for producers that
//! cannot speak gRPC (curl, webhooks, scripts). tonic serves these axum
//! routes on the gRPC port, over HTTP/1.1 or HTTP/2 and the same TLS.
//!
//! Each handler turns its JSON into the gRPC request (the HTTP headers
//! become its metadata, so `authorization: Bearer` is the same caller
//! credential), runs the caller interceptor and calls the same
//! [`NotifyApi`] method: rights, validation, limits and metrics are the gRPC
//! call's. A refusal is `{"error": "<gRPC status name>", "message": …}`
//! with 400 / 401 / 403 / 404 / 429 / 503 (500 for the rest). Streams
//! (Watch, WatchConnections) and EmitFightEvent stay gRPC-only. [`inbox`]
//! has the user's side of the inbox (marks, pages, preferences, edits);
//! [`push`] the push devices.
//! `GET /v1/openapi.json` describes it, derived from these handlers.

mod inbox;
mod push;
mod shapes;

use axum::{
    Json, Router,
    extract::{
        DefaultBodyLimit, Query, State,
        rejection::{JsonRejection, QueryRejection},
    },
    http::{StatusCode, request::Parts},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use notify_proto::{
    convert::code_name,
    json::{PublishJson, PublishedJson},
    v1::{self as pb, notify_server::Notify},
};
use tonic::Status;
use utoipa::OpenApi;

use crate::{api::NotifyApi, caller::Authenticator};
use shapes::{
    DisconnectJson, DisconnectedJson, ErrorJson, HistoryJson, HistoryQuery, PresenceJson,
    PresenceQuery, PublishBatchJson, PublishBatchResultJson, PublishResultJson, SubscribedJson,
    SubscriptionJson, UnsubscribedJson,
};

#[derive(Clone)]
struct Http {
    api: NotifyApi,
    auth: Authenticator,
}

/// The routes, to serve beside the gRPC services; `max_body` bounds a
/// request body as the gRPC decoder bounds a message.
pub fn routes(api: NotifyApi, auth: Authenticator, max_body: usize) -> Router {
    Router::new()
        .route("/v1/publish", post(publish))
        .route("/v1/publish-batch", post(publish_batch))
        .route("/v1/subscribe", post(subscribe))
        .route("/v1/unsubscribe", post(unsubscribe))
        .route("/v1/disconnect", post(disconnect))
        .route("/v1/presence", get(presence))
        .route("/v1/history", get(history))
        .route("/v1/inbox", get(inbox::page))
        .route("/v1/inbox/mark", post(inbox::mark))
        .route("/v1/inbox/counts", get(inbox::counts))
        .route("/v1/devices", get(push::list).post(push::register))
        .route("/v1/devices/remove", post(push::remove))
        .route(
            "/v1/preferences",
            get(inbox::preferences).post(inbox::change_preferences),
        )
        .route("/v1/messages/update", post(inbox::update_message))
        .route("/v1/messages/retract", post(inbox::retract_message))
        .route("/v1/openapi.json", get(openapi))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(Http { api, auth })
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "notify HTTP/JSON API",
        description = "The Notify API's unary operations over HTTP/JSON: same callers (Authorization: Bearer), same validation, statuses mapped from gRPC."
    ),
    paths(
        publish,
        publish_batch,
        subscribe,
        unsubscribe,
        disconnect,
        presence,
        history,
        inbox::page,
        inbox::mark,
        inbox::counts,
        inbox::preferences,
        inbox::change_preferences,
        inbox::update_message,
        inbox::retract_message,
        push::register,
        push::list,
        push::remove
    ),
    components(schemas(ErrorJson))
)]
struct ApiDoc;

/// The OpenAPI 3.1 document of this API.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(openapi_document())
}

/// A refusal as HTTP.
struct Refused(StatusCode, ErrorJson);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        (self.0, Json(self.1)).into_response()
    }
}

impl From<Status> for Refused {
    fn from(s: Status) -> Self {
        Refused(
            http_status(s.code()),
            ErrorJson {
                error: code_name(s.code()).to_owned(),
                message: s.message().to_owned(),
            },
        )
    }
}

/// A body or query that is not the documented shape: 400 like any
/// INVALID_ARGUMENT.
fn bad_request(message: impl ToString) -> Refused {
    Refused(
        StatusCode::BAD_REQUEST,
        ErrorJson {
            error: "INVALID_ARGUMENT".into(),
            message: message.to_string(),
        },
    )
}

/// A body axum could not take as JSON: 400 (axum's own 415 and 422 are
/// folded in: one status for bad input), or 413 when it is over the limit.
fn bad_body(rejection: JsonRejection) -> Refused {
    let mut refused = bad_request(rejection.body_text());
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        refused.0 = StatusCode::PAYLOAD_TOO_LARGE;
    }
    refused
}

/// gRPC code → HTTP status: the caller's faults are 4xx with their own
/// meaning; what a retry may cure is 503.
fn http_status(code: tonic::Code) -> StatusCode {
    use tonic::Code;
    match code {
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::FailedPrecondition => StatusCode::PRECONDITION_FAILED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl Http {
    /// `message` as a gRPC request carrying the HTTP request's headers and
    /// connection, admitted by the caller interceptor.
    fn request<T>(&self, parts: Parts, message: T) -> Result<tonic::Request<T>, Refused> {
        let mut req = tonic::Request::from_http(axum::http::Request::from_parts(parts, message));
        self.auth.admit(&mut req)?;
        Ok(req)
    }

    /// Sends `message` to the API `method` as the HTTP request's caller;
    /// the answer as its JSON twin.
    async fn call<Req, Resp, Out, Fut>(
        &self,
        parts: Parts,
        message: Req,
        method: impl FnOnce(NotifyApi, tonic::Request<Req>) -> Fut,
    ) -> Result<Json<Out>, Refused>
    where
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
        Out: From<Resp>,
    {
        let req = self.request(parts, message)?;
        let answer = method(self.api.clone(), req).await?;
        Ok(Json(answer.into_inner().into()))
    }
}

/// `user_id` or `topic`, exactly one.
fn user_or_topic(user_id: Option<String>, topic: Option<String>) -> Result<UserOrTopic, Refused> {
    match (user_id, topic) {
        (Some(user), None) => Ok(UserOrTopic::User(user)),
        (None, Some(topic)) => Ok(UserOrTopic::Topic(topic)),
        _ => Err(bad_request("give exactly one of user_id and topic")),
    }
}

enum UserOrTopic {
    User(String),
    Topic(String),
}

#[utoipa::path(
    post, path = "/v1/publish", request_body = PublishJson,
    responses(
        (status = 200, description = "Committed", body = PublishedJson),
        (status = 400, description = "Invalid", body = ErrorJson),
        (status = 413, description = "Body over the request limit", body = ErrorJson),
        (status = 401, description = "No or bad credentials", body = ErrorJson),
        (status = 403, description = "The caller lacks the right", body = ErrorJson),
        (status = 404, description = "The connection is gone (connection_id)", body = ErrorJson),
        (status = 429, description = "The commit queue is full: retry later", body = ErrorJson),
        (status = 503, description = "The database is unavailable: retry (same idempotency_key)", body = ErrorJson),
    )
)]
async fn publish(
    State(http): State<Http>,
    parts: Parts,
    body: Result<Json<PublishJson>, JsonRejection>,
) -> Result<Json<PublishedJson>, Refused> {
    let Json(body) = body.map_err(bad_body)?;
    let message = body.into_request().map_err(bad_request)?;
    http.call(
        parts,
        message,
        |api, req| async move { api.publish(req).await },
    )
    .await
}

#[utoipa::path(
    post, path = "/v1/publish-batch", request_body = PublishBatchJson,
    responses(
        (status = 200, description = "Each item's result, in order", body = PublishBatchResultJson),
        (status = 400, description = "Invalid (more than 1,000 items, not JSON)", body = ErrorJson),
        (status = 413, body = ErrorJson),
        (status = 401, body = ErrorJson), (status = 403, body = ErrorJson),
        (status = 503, body = ErrorJson),
    )
)]
async fn publish_batch(
    State(http): State<Http>,
    parts: Parts,
    body: Result<Json<PublishBatchJson>, JsonRejection>,
) -> Result<Json<PublishBatchResultJson>, Refused> {
    let Json(body) = body.map_err(bad_body)?;
    // An item that is not a publish fails alone, as the API's items do: the
    // shape errors stay here by position, the requests move into the call.
    let mut requests = Vec::with_capacity(body.requests.len());
    let shape_errors: Vec<Option<String>> = body
        .requests
        .into_iter()
        .map(|item| match item.into_request() {
            Ok(req) => {
                requests.push(req);
                None
            }
            Err(e) => Some(e.to_string()),
        })
        .collect();
    let req = http.request(parts, pb::PublishBatchRequest { requests })?;
    let mut answers = http
        .api
        .publish_batch(req)
        .await?
        .into_inner()
        .results
        .into_iter();
    let results = shape_errors
        .into_iter()
        .map(|shape_error| match shape_error {
            Some(message) => PublishResultJson::Error(ErrorJson {
                error: "INVALID_ARGUMENT".into(),
                message,
            }),
            None => match answers.next().and_then(|a| a.result) {
                Some(pb::publish_result::Result::Ok(ok)) => PublishResultJson::Ok(ok.into()),
                Some(pb::publish_result::Result::Error(e)) => PublishResultJson::Error(ErrorJson {
                    error: code_name(tonic::Code::from_i32(e.code)).to_owned(),
                    message: e.message,
                }),
                None => PublishResultJson::Error(ErrorJson {
                    error: "INTERNAL".into(),
                    message: "no result for this item".into(),
                }),
            },
        })
        .collect();
    Ok(Json(PublishBatchResultJson { results }))
}

#[utoipa::path(
    post, path = "/v1/subscribe", request_body = SubscriptionJson,
    responses(
        (status = 200, description = "Stored, and followed by every live connection of the user", body = SubscribedJson),
        (status = 400, body = ErrorJson), (status = 413, body = ErrorJson), (status = 401, body = ErrorJson),
        (status = 403, body = ErrorJson), (status = 503, body = ErrorJson),
    )
)]
async fn subscribe(
    State(http): State<Http>,
    parts: Parts,
    body: Result<Json<SubscriptionJson>, JsonRejection>,
) -> Result<Json<SubscribedJson>, Refused> {
    let Json(s) = body.map_err(bad_body)?;
    let message = pb::SubscribeRequest {
        user_id: s.user_id,
        topic: s.topic,
    };
    http.call(parts, message, |api, req| async move {
        api.subscribe(req).await
    })
    .await
}

#[utoipa::path(
    post, path = "/v1/unsubscribe", request_body = SubscriptionJson,
    responses(
        (status = 200, description = "Ended, stored and on every live connection", body = UnsubscribedJson),
        (status = 400, body = ErrorJson), (status = 413, body = ErrorJson), (status = 401, body = ErrorJson),
        (status = 403, body = ErrorJson), (status = 503, body = ErrorJson),
    )
)]
async fn unsubscribe(
    State(http): State<Http>,
    parts: Parts,
    body: Result<Json<SubscriptionJson>, JsonRejection>,
) -> Result<Json<UnsubscribedJson>, Refused> {
    let Json(s) = body.map_err(bad_body)?;
    let message = pb::UnsubscribeRequest {
        user_id: s.user_id,
        topic: s.topic,
    };
    http.call(parts, message, |api, req| async move {
        api.unsubscribe(req).await
    })
    .await
}

#[utoipa::path(
    post, path = "/v1/disconnect", request_body = DisconnectJson,
    responses(
        (status = 200, description = "How many sockets were told to close (4003)", body = DisconnectedJson),
        (status = 400, body = ErrorJson), (status = 413, body = ErrorJson), (status = 401, body = ErrorJson),
        (status = 403, body = ErrorJson),
    )
)]
async fn disconnect(
    State(http): State<Http>,
    parts: Parts,
    body: Result<Json<DisconnectJson>, JsonRejection>,
) -> Result<Json<DisconnectedJson>, Refused> {
    use pb::disconnect_request::Target;
    let Json(d) = body.map_err(bad_body)?;
    let target = match (d.user_id, d.connection_id) {
        (Some(user), None) => Target::UserId(user),
        (None, Some(id)) => Target::ConnectionId(id),
        _ => return Err(bad_request("give exactly one of user_id and connection_id")),
    };
    let message = pb::DisconnectRequest {
        target: Some(target),
        reason: d.reason,
    };
    http.call(parts, message, |api, req| async move {
        api.disconnect(req).await
    })
    .await
}

#[utoipa::path(
    get, path = "/v1/presence", params(PresenceQuery),
    responses(
        (status = 200, description = "A user's live connections, or a topic's subscribers", body = PresenceJson),
        (status = 400, body = ErrorJson), (status = 401, body = ErrorJson),
        (status = 403, body = ErrorJson), (status = 503, body = ErrorJson),
    )
)]
async fn presence(
    State(http): State<Http>,
    parts: Parts,
    query: Result<Query<PresenceQuery>, QueryRejection>,
) -> Result<Json<PresenceJson>, Refused> {
    use pb::get_presence_request::Target;
    let Query(q) = query.map_err(bad_request)?;
    let target = match user_or_topic(q.user_id, q.topic)? {
        UserOrTopic::User(user) => Target::UserId(user),
        UserOrTopic::Topic(topic) => Target::Topic(topic),
    };
    let message = pb::GetPresenceRequest {
        target: Some(target),
    };
    http.call(parts, message, |api, req| async move {
        api.get_presence(req).await
    })
    .await
}

#[utoipa::path(
    get, path = "/v1/history", params(HistoryQuery),
    responses(
        (status = 200, description = "One page, oldest first", body = HistoryJson),
        (status = 400, body = ErrorJson), (status = 401, body = ErrorJson),
        (status = 403, body = ErrorJson), (status = 503, body = ErrorJson),
    )
)]
async fn history(
    State(http): State<Http>,
    parts: Parts,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Json<HistoryJson>, Refused> {
    use pb::history_request::Target;
    let Query(q) = query.map_err(bad_request)?;
    let target = match user_or_topic(q.user_id, q.topic)? {
        UserOrTopic::User(user) => Target::UserId(user),
        UserOrTopic::Topic(topic) => Target::Topic(topic),
    };
    let message = pb::HistoryRequest {
        target: Some(target),
        since: q.since,
        limit: q.limit,
        after_acked: q.after_acked,
    };
    http.call(
        parts,
        message,
        |api, req| async move { api.history(req).await },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_codes_become_the_statuses_the_readme_lists() {
        use tonic::Code;
        let statuses: Vec<u16> = [
            Code::InvalidArgument,
            Code::Unauthenticated,
            Code::PermissionDenied,
            Code::NotFound,
            Code::ResourceExhausted,
            Code::Unavailable,
            Code::Internal,
        ]
        .into_iter()
        .map(|c| http_status(c).as_u16())
        .collect();
        assert_eq!(statuses, [400, 401, 403, 404, 429, 503, 500]);
    }
}
