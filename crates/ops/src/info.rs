//! `/info` on the ops port: what runs (service, version, the commit it was
//! built from, since when) and with which settings, secrets redacted — the
//! first thing to read when two replicas behave differently.
//!
//! Each service lists its effective settings (after defaults and the
//! environment) with [`Info::set`]; anything secret goes through
//! [`Info::secret`], which shows only whether it is set.

use std::{fmt, time::SystemTime};

/// The commit the binary was built from: `NOTIFY_BUILD_COMMIT` at build time
/// (the Docker build passes it), else `git rev-parse` by build.rs, else
/// "unknown".
pub const BUILD_COMMIT: &str = env!("NOTIFY_BUILD_COMMIT");

/// A service's identity and settings, as `/info` shows them.
#[derive(Debug, Clone)]
pub struct Info {
    service: &'static str,
    version: &'static str,
    started: SystemTime,
    settings: Vec<(&'static str, String)>,
}

impl Info {
    /// `version` is the service crate's `CARGO_PKG_VERSION`.
    pub fn new(service: &'static str, version: &'static str) -> Self {
        Self {
            service,
            version,
            started: SystemTime::now(),
            settings: Vec::new(),
        }
    }

    /// One setting, shown as its `Debug` form (strings unquoted).
    pub fn set(mut self, name: &'static str, value: impl fmt::Debug) -> Self {
        let shown = format!("{value:?}");
        let shown = shown
            .strip_prefix('"')
            .and_then(|s| s.strip_suffix('"'))
            .map_or(shown.clone(), str::to_owned);
        self.settings.push((name, shown));
        self
    }

    /// A secret setting: only whether it is set.
    pub fn secret(mut self, name: &'static str, is_set: bool) -> Self {
        let shown = if is_set { "<redacted>" } else { "<unset>" };
        self.settings.push((name, shown.to_owned()));
        self
    }

    /// The JSON document `/info` answers with.
    pub fn to_json(&self) -> serde_json::Value {
        let started = self
            .started
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let uptime = self.started.elapsed().map_or(0, |d| d.as_secs());
        let settings: serde_json::Map<String, serde_json::Value> = self
            .settings
            .iter()
            .map(|(k, v)| ((*k).to_owned(), serde_json::Value::String(v.clone())))
            .collect();
        serde_json::json!({
            "service": self.service,
            "version": self.version,
            "commit": BUILD_COMMIT,
            "started_at_unix": started,
            "uptime_seconds": uptime,
            "settings": settings,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_show_only_whether_they_are_set() {
        let info = Info::new("svc", "1.0")
            .set("grpc_addr", "0.0.0.0:50051")
            .set("pool", 16)
            .secret("api_tokens", true)
            .secret("tls_key", false)
            .to_json();
        assert_eq!(info["settings"]["grpc_addr"], "0.0.0.0:50051");
        assert_eq!(info["settings"]["pool"], "16");
        assert_eq!(info["settings"]["api_tokens"], "<redacted>");
        assert_eq!(info["settings"]["tls_key"], "<unset>");
        assert_eq!(info["commit"], BUILD_COMMIT);
    }
}
