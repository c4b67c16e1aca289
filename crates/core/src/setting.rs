//! The names of one configuration setting: its command-line flag and its
//! environment variable. Arg groups that several binaries flatten under their
//! own names (a JWT verifier, server TLS, the log format) take them from a
//! names type, so every name stays written out in one place and greppable.

/// A setting's `--long` flag and its environment variable (which is also
/// its clap id: two groups in one command never share an environment name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    pub long: &'static str,
    pub env: &'static str,
}

impl Setting {
    pub const fn new(long: &'static str, env: &'static str) -> Self {
        Self { long, env }
    }
}
