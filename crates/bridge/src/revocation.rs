//! Revoked tokens. Cognito is asked whether an access token still stands
//! (GetUser: a sign-out revokes it) and whether an ID token's user is still
//! enabled (AdminGetUser: Cognito cannot be asked about an ID token's
//! session). A user seen signed out through any access token has every token
//! issued before that moment refused on this bridge, ID tokens included.
//! Open sockets are asked about again every interval (the answers' cache
//! life) and closed with 4009 once revoked.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use notify_auth::{AuthError, Cognito, Identity, TokenUse};
use notify_core::{ConnectionId, UserId};
use notify_proto::v1 as pb;
use tokio_util::sync::CancellationToken;

use crate::{hub::Hub, protocol};

/// Most Cognito questions per second from one bridge's re-checks: Cognito's
/// user-read quotas are ~120 requests per second per pool, shared by every
/// bridge. Past `rate × interval` open tokens the round takes longer.
const CHECKS_PER_SEC: u32 = 50;

/// How a bridge checks tokens against Cognito.
#[derive(Clone)]
pub struct RevocationCheck {
    pub cognito: Arc<Cognito>,
    /// How often open sockets are asked about again (and how long an
    /// answer is cached).
    pub every: Duration,
}

/// A sign-out is remembered this long: Cognito's tokens last a day at most,
/// so older ones have expired by themselves.
const SIGN_OUT_KEPT: Duration = Duration::from_secs(24 * 3600);

/// What is asked about one token.
#[derive(Clone)]
struct Held {
    user: UserId,
    token_use: TokenUse,
    username: Option<String>,
    issued_at: SystemTime,
    token: Box<str>,
}

/// Revocation state of one bridge.
pub struct Revocation {
    check: RevocationCheck,
    /// When each user was seen signed out.
    signed_out: Mutex<HashMap<UserId, SystemTime>>,
    /// The open sockets' credentials.
    open: Mutex<HashMap<ConnectionId, Held>>,
}

impl Revocation {
    pub fn new(check: RevocationCheck) -> Arc<Self> {
        Arc::new(Self {
            check,
            signed_out: Mutex::default(),
            open: Mutex::default(),
        })
    }

    /// Whether `token` (verified as `identity`) is revoked; `Err` when
    /// Cognito cannot be asked.
    pub async fn revoked(&self, identity: &Identity, token: &str) -> Result<bool, AuthError> {
        self.is_revoked(&Held::of(identity, token)).await
    }

    async fn is_revoked(&self, held: &Held) -> Result<bool, AuthError> {
        let signed_out = self.signed_out_at(&held.user);
        if signed_out.is_some_and(|at| held.issued_at <= at) {
            return Ok(true);
        }
        let cognito = &self.check.cognito;
        let revoked = match (held.token_use, &held.username) {
            (TokenUse::Access, _) => cognito.is_revoked(&held.token).await?,
            (TokenUse::Id, Some(username)) => cognito.is_user_disabled(username).await?,
            // Nothing to ask Cognito with: a hand-made token.
            (TokenUse::Id, None) => false,
        };
        if revoked && held.token_use == TokenUse::Access {
            // The session is over: its ID tokens, which Cognito cannot be
            // asked about, go with it.
            let now = SystemTime::now();
            let mut signed_out = self.signed_out.lock().unwrap_or_else(|e| e.into_inner());
            signed_out
                .entry(held.user.clone())
                .and_modify(|at| *at = (*at).max(now))
                .or_insert(now);
        }
        Ok(revoked)
    }

    fn signed_out_at(&self, user: &UserId) -> Option<SystemTime> {
        let signed_out = self.signed_out.lock().unwrap_or_else(|e| e.into_inner());
        signed_out.get(user).copied()
    }

    /// Re-checks `id`'s token every interval from now on (a refresh
    /// replaces it).
    pub fn hold(&self, id: ConnectionId, identity: &Identity, token: &str) {
        let held = Held::of(identity, token);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.insert(id, held);
    }

    /// `id` closed.
    pub fn release(&self, id: ConnectionId) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.remove(&id);
    }

    /// Asks about every open socket's token each interval, closing the
    /// revoked ones with 4009, until `shutdown`.
    pub async fn recheck(self: Arc<Self>, hub: Hub, shutdown: CancellationToken) {
        let pace = Duration::from_secs(1) / CHECKS_PER_SEC;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(self.check.every) => {}
            }
            self.forget_old_sign_outs();
            let ids: Vec<ConnectionId> = {
                let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
                open.keys().copied().collect()
            };
            for id in ids {
                let held = {
                    let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
                    open.get(&id).cloned()
                };
                let Some(held) = held else {
                    continue; // closed meanwhile
                };
                match self.is_revoked(&held).await {
                    Ok(true) => hub.kick(pb::Kick {
                        connection_ids: vec![id.to_string()],
                        close_code: u32::from(protocol::CLOSE_TOKEN_EXPIRED),
                        reason: "token revoked (signed out)".into(),
                    }),
                    Ok(false) => {}
                    // Cognito unreachable: the socket stays, asked again
                    // next round (a refusal needs an answer).
                    Err(e) => tracing::debug!(error = %e, "revocation re-check failed"),
                }
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(pace) => {}
                }
            }
        }
    }

    fn forget_old_sign_outs(&self) {
        let mut signed_out = self.signed_out.lock().unwrap_or_else(|e| e.into_inner());
        signed_out.retain(|_, at| at.elapsed().map_or(true, |age| age < SIGN_OUT_KEPT));
    }
}

impl Held {
    fn of(identity: &Identity, token: &str) -> Self {
        // The token was verified: its claims parse (else: no username, and
        // issued as early as can be, so any sign-out seen refuses it).
        let session = notify_auth::session_of(token);
        Self {
            user: identity.user.clone(),
            token_use: identity.token_use,
            username: session.as_ref().and_then(|s| s.username.clone()),
            issued_at: session.map_or(SystemTime::UNIX_EPOCH, |s| s.issued_at),
            token: token.into(),
        }
    }
}
