//! Why a token was refused, in words fit for a 401 body.

/// A refused token or an unusable key source.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("malformed token")]
    Malformed,
    #[error("token algorithm {0} is not accepted (RS256 only)")]
    Algorithm(String),
    #[error("token has no kid")]
    NoKeyId,
    #[error("unknown signing key {0:?}")]
    UnknownKey(String),
    #[error("bad signature")]
    Signature,
    #[error("token expired")]
    Expired,
    #[error("token not valid yet")]
    NotYetValid,
    #[error("token issuer is not the configured one")]
    Issuer,
    #[error("token_use must be `access` or `id`")]
    TokenUse,
    #[error("app client {0:?} is not allowed")]
    Client(String),
    #[error("token claims are incomplete: {0}")]
    Claims(String),
    #[error("signing keys unavailable: {0}")]
    Keys(String),
}

impl AuthError {
    /// A short stable name, for metrics labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::Algorithm(_) => "algorithm",
            Self::NoKeyId => "no_kid",
            Self::UnknownKey(_) => "unknown_kid",
            Self::Signature => "signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::Issuer => "issuer",
            Self::TokenUse => "token_use",
            Self::Client(_) => "client",
            Self::Claims(_) => "claims",
            Self::Keys(_) => "keys",
        }
    }
}
