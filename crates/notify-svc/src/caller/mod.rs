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
    pub fn may_publish_to(&self, target: &Target) -> Result<(), Refusal> {
        match target {
            Target::Topic(topic) => self.may_use_topic(topic),
            Target::Broadcast if self.namespaces.is_some() => Err(Refusal::Broadcast {
                caller: self.name.clone(),
                namespaces: self.namespace_list(),
            }),
            Target::Broadcast | Target::User(_) | Target::Users(_) => Ok(()),
        }
    }

    /// Refuses a topic outside the caller's namespaces (publish, Subscribe).
    pub fn may_use_topic(&self, topic: &Topic) -> Result<(), Refusal> {
        match &self.namespaces {
            Some(allowed) if !allowed.contains(topic.namespace()) => Err(Refusal::Namespace {
                caller: self.name.clone(),
                namespaces: self.namespace_list(),
                namespace: topic.namespace().to_owned(),
            }),
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

/// Why a caller is refused; `status.rs` says it in gRPC terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Dev mode serves loopback callers only.
    NotLoopback,
    /// No `authorization` metadata.
    Missing,
    /// `authorization` is not `Bearer <token>`.
    Malformed,
    /// Neither a static token nor (without a JWKS) anything else to check.
    UnknownToken,
    /// The JWKS could not be read: not the caller's fault.
    KeysUnavailable(String),
    /// The M2M token did not verify.
    TokenRefused(String),
    /// An ID token where a client-credentials access token belongs.
    IdToken,
    /// The call needs a right the caller lacks.
    MissingScope {
        needed: String,
        caller: String,
        granted: String,
    },
    /// A namespace-limited caller asked for a broadcast.
    Broadcast { caller: String, namespaces: String },
    /// A namespace-limited caller named a topic outside its namespaces.
    Namespace {
        caller: String,
        namespaces: String,
        namespace: String,
    },
    /// A panel publish, but no NOTIFY_USERS_* to check the admin with.
    PanelUnverifiable,
    /// The users' JWKS could not be read.
    PanelKeysUnavailable(String),
    /// The relayed admin token did not verify.
    PanelTokenRefused(String),
    /// The relayed user is not in the admin group.
    PanelNotAdmin(String),
}

impl Refusal {
    /// The label of `notify_auth_failures_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotLoopback => "not_loopback",
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::UnknownToken => "unknown_token",
            Self::KeysUnavailable(_) | Self::PanelKeysUnavailable(_) => "keys_unavailable",
            Self::TokenRefused(_) => "token_refused",
            Self::IdToken => "id_token",
            Self::MissingScope { .. } => "missing_scope",
            Self::Broadcast { .. } | Self::Namespace { .. } => "namespace",
            Self::PanelUnverifiable => "panel_unverifiable",
            Self::PanelTokenRefused(_) => "panel_token_refused",
            Self::PanelNotAdmin(_) => "panel_not_admin",
        }
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
        // Boxed as `verify` is: the panel's publishes are few.
        let admin = Box::pin(self.panel_admin(relayed.to_str().unwrap_or_default())).await;
        let admin = self.counted(admin)?;
        tracing::debug!(bridge = bridge.name, admin = admin.name, "panel publish");
        Ok(admin)
    }

    /// The Dev Panel's admin from their own token.
    async fn panel_admin(&self, token: &str) -> Result<Caller, Refusal> {
        let users = self.users.as_ref().ok_or(Refusal::PanelUnverifiable)?;
        let admin = users.verify(token).await.map_err(|e| match e {
            notify_auth::AuthError::Keys(_) => Refusal::PanelKeysUnavailable(e.to_string()),
            e => Refusal::PanelTokenRefused(e.to_string()),
        })?;
        if !admin.in_group(notify_core::topic::ADMIN_GROUP) {
            return Err(Refusal::PanelNotAdmin(admin.user.to_string()));
        }
        Ok(Caller {
            name: format!("panel:{}", admin.user),
            rights: vec![Right::Publish],
            namespaces: None,
        })
    }

    fn counted<T>(&self, result: Result<T, Refusal>) -> Result<T, Status> {
        result.map_err(|refusal| {
            self.metrics.auth_failure(refusal.reason());
            Status::from(refusal)
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
                _ => Err(Refusal::NotLoopback),
            };
        }
        let header = req
            .metadata()
            .get("authorization")
            .ok_or(Refusal::Missing)?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .ok_or(Refusal::Malformed)?
            .trim()
            .to_owned();
        if let Some(caller) = self.tokens.caller(&token) {
            req.extensions_mut().insert(caller.clone());
            return Ok(());
        }
        if self.verifier.is_none() {
            return Err(Refusal::UnknownToken);
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
                    .ok_or(Refusal::Missing)?;
                // Boxed: a JWKS fetch is kilobytes of future, and every
                // call's future would carry it although most callers are
                // verified by the interceptor.
                Box::pin(self.verify(token)).await?
            }
        };
        if !rights.iter().any(|r| caller.rights.contains(r)) {
            let granted: Vec<&str> = caller.rights.iter().map(|r| r.scope()).collect();
            let needed: Vec<&str> = rights.iter().map(|r| r.scope()).collect();
            return Err(Refusal::MissingScope {
                needed: needed.join(" or "),
                caller: caller.name,
                granted: if granted.is_empty() {
                    "none".to_owned()
                } else {
                    granted.join(" ")
                },
            });
        }
        Ok(caller)
    }

    /// A Cognito client-credentials access token → its app client and rights.
    async fn verify(&self, token: &str) -> Result<Caller, Refusal> {
        let verifier = self.verifier.as_ref().ok_or(Refusal::UnknownToken)?;
        let identity = verifier.verify(token).await.map_err(|e| match e {
            // The JWKS could not be read: not the caller's fault, retry.
            notify_auth::AuthError::Keys(_) => Refusal::KeysUnavailable(e.to_string()),
            e => Refusal::TokenRefused(e.to_string()),
        })?;
        if identity.token_use != TokenUse::Access {
            return Err(Refusal::IdToken);
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

impl Authenticator {
    /// What the interceptor does to a gRPC call, for a request that did
    /// not come through it (the HTTP/JSON API).
    pub fn admit<T>(&self, req: &mut Request<T>) -> Result<(), Status> {
        let intercepted = self.intercept(req);
        self.counted(intercepted)
    }
}

impl tonic::service::Interceptor for Authenticator {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        self.admit(&mut req)?;
        Ok(req)
    }
}
