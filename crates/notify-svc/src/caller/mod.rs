//! Who is calling and what they may do.
//!
//! The interceptor checks what it can on its own: a static bearer token
//! (`NOTIFY_API_TOKENS`, each with the rights its entry names, `publish`
//! alone by default) or, in dev mode (`--dev`, and no credentials
//! configured), a loopback peer. Any other bearer, when a JWKS is
//! configured, is left for [`Authenticator::authorize`], which each RPC
//! calls with the [`Right`]s that allow it: it verifies the token as a
//! Cognito client-credentials (M2M) access token and maps its scopes to
//! rights. A publish right may be limited to topic namespaces. A bridge may
//! publish for the Dev Panel's signed-in admin (`notify_proto::PANEL_ADMIN_METADATA`): the
//! admin's own token is checked here, and the publish is the admin's. Refusals
//! are UNAUTHENTICATED (who are you?) or PERMISSION_DENIED (not allowed),
//! each with the reason.

mod tokens;

pub use tokens::CallerTokens;

use std::{collections::BTreeSet, sync::Arc};

use notify_auth::{TokenUse, Verifier};
use notify_core::{Target, Topic};
use tonic::{Request, Status};

/// What an RPC needs, as Cognito resource-server scopes name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Right {
    /// Publish, PublishBatch, EmitFightEvent, Subscribe, Unsubscribe.
    Publish,
    /// GetPresence, Disconnect, History, Watch: other users' data and sockets.
    Admin,
    /// BridgeLink.Attach (and History, for replays): only bridges.
    Bridge,
}

impl Right {
    pub fn scope(self) -> &'static str {
        match self {
            Self::Publish => "notify/publish",
            Self::Admin => "notify/admin",
            Self::Bridge => "notify/bridge",
        }
    }

    /// The right's name in a `NOTIFY_API_TOKENS` entry.
    pub fn name(self) -> &'static str {
        self.scope().trim_start_matches("notify/")
    }

    pub const ALL: [Self; 3] = [Self::Publish, Self::Admin, Self::Bridge];
}

/// The authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Names idempotency keys' scope and appears in logs and metrics: the
    /// static token's name, or the M2M token's app client.
    pub name: String,
    /// Rights granted; a dev-mode loopback caller has all.
    pub rights: Vec<Right>,
    /// The topic namespaces its publish right is limited to; None: all.
    /// A limited caller may still publish to users' inboxes, never broadcast.
    pub namespaces: Option<BTreeSet<String>>,
}

impl Caller {
    /// Refuses a publish target outside the caller's namespaces.
    pub fn may_publish_to(&self, target: &Target) -> Result<(), Status> {
        match target {
            Target::Topic(topic) => self.may_use_topic(topic),
            Target::Broadcast if self.namespaces.is_some() => {
                Err(Status::permission_denied(format!(
                    "caller {} may publish to namespaces {} only; a broadcast reaches every namespace's sockets",
                    self.name,
                    self.namespace_list()
                )))
            }
            Target::Broadcast | Target::User(_) | Target::Users(_) => Ok(()),
        }
    }

    /// Refuses a topic outside the caller's namespaces (publish, Subscribe).
    pub fn may_use_topic(&self, topic: &Topic) -> Result<(), Status> {
        match &self.namespaces {
            Some(allowed) if !allowed.contains(topic.namespace()) => {
                Err(Status::permission_denied(format!(
                    "caller {} may use namespaces {} only, not {:?}",
                    self.name,
                    self.namespace_list(),
                    topic.namespace()
                )))
            }
            _ => Ok(()),
        }
    }

    fn namespace_list(&self) -> String {
        let names: Vec<&str> = self
            .namespaces
            .iter()
            .flatten()
            .map(String::as_str)
            .collect();
        names.join(", ")
    }
}

/// Name given to unauthenticated loopback callers in dev mode.
pub const LOOPBACK_CALLER: &str = "loopback";

/// A bearer token the interceptor could not check by itself (a JWT).
#[derive(Clone)]
struct Unverified(String);

/// Checks the caller of every request.
#[derive(Clone)]
pub struct Authenticator {
    tokens: Arc<CallerTokens>,
    /// Verifies M2M access tokens, when a JWKS is configured.
    verifier: Option<Verifier>,
    /// Verifies users' tokens (the Dev Panel's admins), when configured.
    users: Option<Verifier>,
    /// Refusals are counted by reason (`notify_auth_failures_total`).
    metrics: crate::metrics::Metrics,
}

/// A refusal and its reason label.
type Refusal = (&'static str, Status);

impl Authenticator {
    pub fn new(
        tokens: CallerTokens,
        verifier: Option<Verifier>,
        users: Option<Verifier>,
        metrics: crate::metrics::Metrics,
    ) -> Self {
        if tokens.is_empty() && verifier.is_none() {
            tracing::warn!(
                "NOTIFY_API_TOKENS and NOTIFY_AUTH_JWKS_URL are empty: accepting unauthenticated callers from loopback only"
            );
        }
        Self {
            tokens: Arc::new(tokens),
            verifier,
            users,
            metrics,
        }
    }

    /// Who publishes `req`: the Dev Panel's admin when a bridge relays one
    /// (the bridge needs `bridge`, the admin's token is checked here),
    /// else the caller, who needs `publish`.
    pub async fn publisher<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        let Some(relayed) = req.metadata().get(notify_proto::PANEL_ADMIN_METADATA) else {
            return self.authorize(req, Right::Publish).await;
        };
        let bridge = self.authorize(req, Right::Bridge).await?;
        let admin = self.panel_admin(relayed.to_str().unwrap_or_default()).await;
        let admin = self.counted(admin)?;
        tracing::debug!(bridge = bridge.name, admin = admin.name, "panel publish");
        Ok(admin)
    }

    /// The Dev Panel's admin from their own token.
    async fn panel_admin(&self, token: &str) -> Result<Caller, Refusal> {
        let users = self.users.as_ref().ok_or_else(|| {
            (
                "panel_unverifiable",
                Status::failed_precondition(
                    "notify-svc cannot check panel admins: set NOTIFY_USERS_JWKS_URL, NOTIFY_USERS_ISSUER and NOTIFY_USERS_CLIENT_IDS",
                ),
            )
        })?;
        let admin = users.verify(token).await.map_err(|e| match e {
            notify_auth::AuthError::Keys(_) => (
                "keys_unavailable",
                Status::unavailable(format!("cannot check the admin's token: {e}")),
            ),
            e => (
                "panel_token_refused",
                Status::unauthenticated(format!("the admin's token refused: {e}")),
            ),
        })?;
        if !admin.in_group(notify_core::topic::ADMIN_GROUP) {
            return Err((
                "panel_not_admin",
                Status::permission_denied(format!(
                    "user {} is not in the {} group: panel publishes are for admins",
                    admin.user,
                    notify_core::topic::ADMIN_GROUP
                )),
            ));
        }
        Ok(Caller {
            name: format!("panel:{}", admin.user),
            rights: vec![Right::Publish],
            namespaces: None,
        })
    }

    fn counted<T>(&self, result: Result<T, Refusal>) -> Result<T, Status> {
        result.map_err(|(reason, status)| {
            self.metrics.auth_failure(reason);
            status
        })
    }

    /// No credentials configured: only `--dev` starts like this (see
    /// [`Config`](crate::Config)), and only on loopback.
    fn dev_mode(&self) -> bool {
        self.tokens.is_empty() && self.verifier.is_none()
    }

    fn intercept<T>(&self, req: &mut Request<T>) -> Result<(), Refusal> {
        if self.dev_mode() {
            return match req.remote_addr() {
                Some(addr) if addr.ip().is_loopback() => {
                    req.extensions_mut().insert(Caller {
                        name: LOOPBACK_CALLER.into(),
                        rights: Right::ALL.to_vec(),
                        namespaces: None,
                    });
                    Ok(())
                }
                _ => Err((
                    "not_loopback",
                    Status::unauthenticated(
                        "no API tokens are configured (NOTIFY_API_TOKENS): only loopback callers are accepted",
                    ),
                )),
            };
        }
        let header = req.metadata().get("authorization").ok_or_else(|| {
            (
                "missing",
                Status::unauthenticated("missing authorization: Bearer <token>"),
            )
        })?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .ok_or_else(|| {
                (
                    "malformed",
                    Status::unauthenticated("authorization must be `Bearer <token>`"),
                )
            })?
            .trim()
            .to_owned();
        if let Some(caller) = self.tokens.caller(&token) {
            req.extensions_mut().insert(caller.clone());
            return Ok(());
        }
        if self.verifier.is_none() {
            return Err((
                "unknown_token",
                Status::unauthenticated("unknown API token"),
            ));
        }
        req.extensions_mut().insert(Unverified(token));
        Ok(())
    }

    /// The caller of `req` if it has `right`; verifies its token first if
    /// the interceptor left that to here.
    pub async fn authorize<T>(&self, req: &Request<T>, right: Right) -> Result<Caller, Status> {
        self.authorize_any(req, &[right]).await
    }

    /// The caller of `req` if it has any of `rights`.
    pub async fn authorize_any<T>(
        &self,
        req: &Request<T>,
        rights: &[Right],
    ) -> Result<Caller, Status> {
        let authorized = self.authorize_uncounted(req, rights).await;
        self.counted(authorized)
    }

    async fn authorize_uncounted<T>(
        &self,
        req: &Request<T>,
        rights: &[Right],
    ) -> Result<Caller, Refusal> {
        let caller = match req.extensions().get::<Caller>() {
            Some(caller) => caller.clone(),
            None => {
                let Unverified(token) = req
                    .extensions()
                    .get::<Unverified>()
                    .ok_or_else(|| ("missing", Status::unauthenticated("no caller")))?;
                self.verify(token).await?
            }
        };
        if !rights.iter().any(|r| caller.rights.contains(r)) {
            let granted: Vec<&str> = caller.rights.iter().map(|r| r.scope()).collect();
            let needed: Vec<&str> = rights.iter().map(|r| r.scope()).collect();
            return Err((
                "missing_scope",
                Status::permission_denied(format!(
                    "this call needs scope {}; caller {} has {}",
                    needed.join(" or "),
                    caller.name,
                    if granted.is_empty() {
                        "none".to_owned()
                    } else {
                        granted.join(" ")
                    }
                )),
            ));
        }
        Ok(caller)
    }

    /// A Cognito client-credentials access token → its app client and rights.
    async fn verify(&self, token: &str) -> Result<Caller, Refusal> {
        let verifier = self.verifier.as_ref().ok_or_else(|| {
            (
                "unknown_token",
                Status::unauthenticated("unknown API token"),
            )
        })?;
        let identity = verifier.verify(token).await.map_err(|e| match e {
            // The JWKS could not be read: not the caller's fault, retry.
            notify_auth::AuthError::Keys(_) => (
                "keys_unavailable",
                Status::unavailable(format!("cannot check tokens: {e}")),
            ),
            e => (
                "token_refused",
                Status::unauthenticated(format!("token refused: {e}")),
            ),
        })?;
        if identity.token_use != TokenUse::Access {
            return Err((
                "id_token",
                Status::unauthenticated(
                    "token refused: an ID token; services use client-credentials access tokens",
                ),
            ));
        }
        Ok(Caller::from_scopes(identity.client_id, &identity.scopes))
    }
}

impl Caller {
    /// An M2M token's rights: `notify/publish`, `notify/admin`,
    /// `notify/bridge`, and `notify/publish:NAMESPACE` for a publish right
    /// limited to that namespace (several add up; `notify/publish` is all).
    pub fn from_scopes(name: String, scopes: &[String]) -> Self {
        let mut rights: Vec<Right> = Right::ALL
            .into_iter()
            .filter(|r| scopes.iter().any(|s| s == r.scope()))
            .collect();
        let limited: BTreeSet<String> = scopes
            .iter()
            .filter_map(|s| s.strip_prefix("notify/publish:"))
            .filter(|ns| !ns.is_empty())
            .map(str::to_owned)
            .collect();
        let namespaces = if rights.contains(&Right::Publish) || limited.is_empty() {
            None
        } else {
            rights.insert(0, Right::Publish);
            Some(limited)
        };
        Self {
            name,
            rights,
            namespaces,
        }
    }
}

impl tonic::service::Interceptor for Authenticator {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let intercepted = self.intercept(&mut req);
        self.counted(intercepted)?;
        Ok(req)
    }
}
