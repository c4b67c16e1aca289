//! `username:NAME` publish targets: a producer that knows a user by
//! username or email (Cognito's alias) rather than by `sub` names them so,
//! and the name is turned into the `sub` the inbox is keyed by, asking
//! Cognito (`AdminGetUser`, cached) before validation.

use std::sync::Arc;

use notify_auth::Cognito;
use notify_proto::v1::{self as pb, publish_request::Target};
use tonic::Status;

/// The prefix of a user target that is a username, not a `sub`.
pub const PREFIX: &str = "username:";

/// Resolves usernames when a user pool is configured.
#[derive(Clone)]
pub struct Usernames {
    cognito: Option<Arc<Cognito>>,
}

impl Usernames {
    pub fn new(cognito: Option<Arc<Cognito>>) -> Self {
        Self { cognito }
    }

    /// Replaces every `username:` target of `req` by its user's `sub`.
    /// Unknown user: NOT_FOUND; no pool configured: INVALID_ARGUMENT;
    /// Cognito not answering: UNAVAILABLE.
    pub async fn resolve(&self, req: &mut pb::PublishRequest) -> Result<(), Status> {
        match &mut req.target {
            Some(Target::UserId(user)) => self.resolve_one(user).await,
            Some(Target::Users(list)) => {
                for user in &mut list.user_ids {
                    self.resolve_one(user).await?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    async fn resolve_one(&self, user: &mut String) -> Result<(), Status> {
        let Some(name) = user.strip_prefix(PREFIX) else {
            return Ok(());
        };
        let cognito = self.cognito.as_ref().ok_or_else(|| {
            Status::invalid_argument(
                "username: targets need a user pool: set COGNITO_REGION and COGNITO_USER_POOL_ID",
            )
        })?;
        match cognito.sub_of(name).await {
            Ok(Some(sub)) => {
                *user = sub;
                Ok(())
            }
            Ok(None) => Err(Status::not_found(format!("no user {name:?} in the pool"))),
            Err(e) => Err(Status::unavailable(format!("cannot resolve {name:?}: {e}"))),
        }
    }
}
