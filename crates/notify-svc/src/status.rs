//! The one mapping from errors to gRPC statuses: validation, the store, the
//! pipeline, callers refused, usernames that cannot be resolved.

use notify_core::ValidationError;
use notify_store::StoreError;
use tonic::Status;

use crate::{
    caller::Refusal, delivery::pipeline::PipelineError, marks::MarkError, usernames::UsernameError,
};

pub fn invalid(e: ValidationError) -> Status {
    Status::invalid_argument(e.to_string())
}

pub fn store(e: StoreError) -> Status {
    match e {
        StoreError::Unavailable(msg) => Status::unavailable(format!(
            "database unavailable ({msg}); retry later (a publish retried with the same \
             idempotency key is never stored twice)"
        )),
        StoreError::Internal(msg) => {
            tracing::error!(error = %msg, "store error");
            Status::internal("internal database error")
        }
        e @ StoreError::MigrationChanged { .. } => Status::internal(e.to_string()),
    }
}

pub fn mark(e: MarkError) -> Status {
    match e {
        MarkError::Store(e) => store(e),
        MarkError::Overloaded => {
            Status::resource_exhausted("too many marks are waiting; retry with backoff")
        }
        MarkError::Stopped => Status::unavailable("notify-svc is shutting down; retry"),
    }
}

pub fn pipeline(e: PipelineError) -> Status {
    match e {
        PipelineError::Store(e) => store(e),
        PipelineError::Overloaded => {
            Status::resource_exhausted("publish queue is full; retry with backoff")
        }
        PipelineError::Stopped => Status::unavailable("notify-svc is shutting down; retry"),
    }
}

/// A status as the `(code, message)` pair of a batch item.
pub fn code_and_message(status: &Status) -> (i32, String) {
    (status.code() as i32, status.message().to_owned())
}

/// A refused caller: UNAUTHENTICATED (who are you?), PERMISSION_DENIED (not
/// allowed), UNAVAILABLE (cannot check now, retry), FAILED_PRECONDITION
/// (this notify-svc is not configured for it); each says why. (A `From`, so
/// that the caller module needs no path back here.)
impl From<Refusal> for Status {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::NotLoopback => Status::unauthenticated(
                "no API tokens are configured (NOTIFY_API_TOKENS): only loopback callers are accepted",
            ),
            Refusal::Missing => Status::unauthenticated("missing authorization: Bearer <token>"),
            Refusal::Malformed => Status::unauthenticated("authorization must be `Bearer <token>`"),
            Refusal::UnknownToken => Status::unauthenticated("unknown API token"),
            Refusal::KeysUnavailable(e) => Status::unavailable(format!("cannot check tokens: {e}")),
            Refusal::TokenRefused(e) => Status::unauthenticated(format!("token refused: {e}")),
            Refusal::IdToken => Status::unauthenticated(
                "token refused: an ID token; services use client-credentials access tokens",
            ),
            Refusal::MissingScope {
                needed,
                caller,
                granted,
            } => Status::permission_denied(format!(
                "this call needs scope {needed}; caller {caller} has {granted}"
            )),
            Refusal::Broadcast { caller, namespaces } => Status::permission_denied(format!(
                "caller {caller} may publish to namespaces {namespaces} only; a broadcast reaches every namespace's sockets"
            )),
            Refusal::Namespace {
                caller,
                namespaces,
                namespace,
            } => Status::permission_denied(format!(
                "caller {caller} may use namespaces {namespaces} only, not {namespace:?}"
            )),
            Refusal::PanelUnverifiable => Status::failed_precondition(
                "notify-svc cannot check panel admins: set NOTIFY_USERS_JWKS_URL, NOTIFY_USERS_ISSUER and NOTIFY_USERS_CLIENT_IDS",
            ),
            Refusal::PanelKeysUnavailable(e) => {
                Status::unavailable(format!("cannot check the admin's token: {e}"))
            }
            Refusal::PanelTokenRefused(e) => {
                Status::unauthenticated(format!("the admin's token refused: {e}"))
            }
            Refusal::PanelNotAdmin(user) => Status::permission_denied(format!(
                "user {user} is not in the {} group: panel publishes are for admins",
                notify_core::topic::ADMIN_GROUP
            )),
        }
    }
}

/// A `username:` target that could not be resolved: INVALID_ARGUMENT without
/// a user pool, NOT_FOUND for an unknown user, UNAVAILABLE when Cognito does
/// not answer.
impl From<UsernameError> for Status {
    fn from(e: UsernameError) -> Self {
        match e {
            UsernameError::NoPool => Status::invalid_argument(
                "username: targets need a user pool: set COGNITO_REGION and COGNITO_USER_POOL_ID",
            ),
            UsernameError::Unknown(name) => {
                Status::not_found(format!("no user {name:?} in the pool"))
            }
            UsernameError::Unreachable { name, why } => {
                Status::unavailable(format!("cannot resolve {name:?}: {why}"))
            }
        }
    }
}
