//! The one error type of the store, free of backend types.

/// Why a store call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or did not answer in time; the call may
    /// be retried (nothing was committed, or the outcome is unknown and an
    /// idempotency key makes the retry safe).
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The database refused the request for a reason a retry will not fix.
    #[error("database error: {0}")]
    Internal(String),
    /// A migration file differs from the one applied under the same version.
    #[error("migration {version} ({name}) was changed after it was applied")]
    MigrationChanged { version: i32, name: &'static str },
}

impl StoreError {
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}
