//! `username:NAME` publish targets: a producer that knows a user by
//! username or email (Cognito's alias) rather than by `sub` names them so,
//! and the name is turned into the `sub` the inbox is keyed by, asking
//! Cognito (`AdminGetUser`, cached) before validation.

use std::sync::Arc;

use notify_auth::Cognito;
use notify_proto::v1::{self as pb, publish_request::Target};

/// The prefix of a user target that is a username, not a `sub`.
pub const PREFIX: &str = "username:";

/// Why a `username:` target could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UsernameError {
    /// No user pool is configured.
    NoPool,
    /// The pool has no such user.
    Unknown(String),
    /// Cognito did not answer.
    Unreachable { name: String, why: String },
}

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
    /// (`status.rs` says why not in gRPC terms.)
    pub async fn resolve(&self, req: &mut pb::PublishRequest) -> Result<(), UsernameError> {
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

    async fn resolve_one(&self, user: &mut String) -> Result<(), UsernameError> {
        let Some(name) = user.strip_prefix(PREFIX) else {
            return Ok(());
        };
        let cognito = self.cognito.as_ref().ok_or(UsernameError::NoPool)?;
        // Boxed: the AWS SDK's call is kilobytes of future, and every
        // publish's future would carry it although few name a username.
        match Box::pin(cognito.sub_of(name)).await {
            Ok(Some(sub)) => {
                *user = sub;
                Ok(())
            }
            Ok(None) => Err(UsernameError::Unknown(name.to_owned())),
            Err(e) => Err(UsernameError::Unreachable {
                name: name.to_owned(),
                why: e.to_string(),
            }),
        }
    }
}
