//! Identifiers: users (`sub` of a token), messages (UUIDv7) and connections.

use std::fmt;

use uuid::Uuid;

use crate::ValidationError;

/// Longest accepted user id in bytes; Cognito `sub`s are 36.
pub const MAX_USER_ID_BYTES: usize = 128;

/// Checks a text field: non-empty, at most `max` bytes, no control characters.
pub(crate) fn bounded_text(
    field: &'static str,
    raw: &str,
    max: usize,
) -> Result<String, ValidationError> {
    if raw.is_empty() {
        return Err(ValidationError::Empty { field });
    }
    if raw.len() > max {
        return Err(ValidationError::TooLong {
            field,
            len: raw.len(),
            max,
        });
    }
    if raw.chars().any(char::is_control) {
        return Err(ValidationError::ControlCharacter { field });
    }
    Ok(raw.to_owned())
}

/// A user, as the `sub` claim of their token names them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(String);

impl UserId {
    /// Checks that `raw` is a usable id: non-empty, bounded, no control characters.
    pub fn parse(field: &'static str, raw: &str) -> Result<Self, ValidationError> {
        bounded_text(field, raw, MAX_USER_ID_BYTES).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A committed message. UUIDv7, so ids sort by creation time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub Uuid);

impl MessageId {
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    pub fn parse(field: &'static str, raw: &str) -> Result<Self, ValidationError> {
        parse_uuid(field, raw).map(Self)
    }
}

fn parse_uuid(field: &'static str, raw: &str) -> Result<Uuid, ValidationError> {
    Uuid::parse_str(raw).map_err(|_| ValidationError::BadId {
        field,
        value: raw.chars().take(64).collect(),
    })
}

impl Default for MessageId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One WebSocket connection on some bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnectionId(pub Uuid);

impl ConnectionId {
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    pub fn parse(field: &'static str, raw: &str) -> Result<Self, ValidationError> {
        parse_uuid(field, raw).map(Self)
    }
}

impl Default for ConnectionId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
