//! Where a sender's secret comes from: a file (mounted secrets, systemd
//! credentials) or the environment (container secrets). Its `Debug` names
//! the file or says "inline", never the secret, so settings can be shown
//! in logs and `/info`.

use std::path::PathBuf;

#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    File(PathBuf),
    Inline(String),
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(path) => write!(f, "file {}", path.display()),
            Self::Inline(_) => f.write_str("inline (set, not shown)"),
        }
    }
}

impl Secret {
    /// The one of a file and an inline value that is given; both is a
    /// mistake (`what` names the setting in the message).
    pub fn either(
        file: Option<PathBuf>,
        inline: Option<String>,
        what: &str,
    ) -> Result<Option<Self>, String> {
        match (file, inline.filter(|v| !v.trim().is_empty())) {
            (Some(_), Some(_)) => Err(format!("{what}: give the file or the value, not both")),
            (Some(path), None) => Ok(Some(Self::File(path))),
            (None, Some(value)) => Ok(Some(Self::Inline(value))),
            (None, None) => Ok(None),
        }
    }

    /// The secret's text.
    pub fn read(&self) -> Result<String, String> {
        match self {
            Self::File(path) => {
                std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
            }
            Self::Inline(value) => Ok(value.clone()),
        }
    }
}
