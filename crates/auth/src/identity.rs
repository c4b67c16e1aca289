//! The verified identity a token carries.

use std::time::SystemTime;

use notify_core::UserId;

/// Which Cognito token it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenUse {
    /// An access token: `client_id` names the app client, `scope` the rights.
    Access,
    /// An ID token: `aud` names the app client.
    Id,
}

/// A verified bearer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The `sub` claim.
    pub user: UserId,
    pub token_use: TokenUse,
    /// The app client the token was issued to.
    pub client_id: String,
    /// `cognito:groups`.
    pub groups: Vec<String>,
    /// `custom:realm`, for realm-scoped topics.
    pub realm: Option<String>,
    /// `username` (access tokens) or `cognito:username` (ID tokens): what a
    /// routed action tells its backend beside the `sub`.
    pub username: Option<Box<str>>,
    /// `scope`, split on spaces (access tokens).
    pub scopes: Vec<String>,
    pub expires_at: SystemTime,
}

/// What a revocation check asks about a verified token, read from it only
/// when the check is on (an idle socket keeps no more than it needs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// `iat`: a sign-out seen later refuses the token.
    pub issued_at: SystemTime,
    /// `cognito:username` (ID tokens; `username` in access tokens): whom to
    /// ask Cognito about.
    pub username: Option<String>,
}

impl Identity {
    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }
}
