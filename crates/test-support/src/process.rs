//! Real service binaries as child processes that a test can kill -9 and
//! start again with the same command line.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
};

use tokio::process::{Child, Command};

/// A binary of the workspace beside `any_built_binary` (pass
/// `env!("CARGO_BIN_EXE_notify")`: Cargo builds them all into one directory).
pub fn sibling_binary(any_built_binary: &str, name: &str) -> PathBuf {
    let path = Path::new(any_built_binary).with_file_name(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace's binaries first (scripts/test does)",
        path.display()
    );
    path
}

/// One restartable process: its command line stays, its pid changes.
pub struct ServiceProcess {
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub envs: Vec<(String, String)>,
    child: Option<Child>,
}

impl ServiceProcess {
    pub fn new(name: &str, program: PathBuf) -> Self {
        Self {
            name: name.to_owned(),
            program,
            args: Vec::new(),
            envs: Vec::new(),
            child: None,
        }
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// notify-svc (the binary beside `any_built_binary`) serving gRPC on
    /// `grpc` over the database at `db_url`, its ops port on a free port, in
    /// dev mode (loopback callers, unless the test configures credentials).
    pub fn notify_svc(any_built_binary: &str, grpc: &str, db_url: &str) -> Self {
        Self::new("notify-svc", sibling_binary(any_built_binary, "notify-svc"))
            .env("NOTIFY_DEV", "1")
            .env("NOTIFY_GRPC_ADDR", grpc)
            .env(
                "NOTIFY_HTTP_ADDR",
                format!("127.0.0.1:{}", crate::free_port()),
            )
            .env("DATABASE_URL", db_url)
    }

    /// A bridge (the binary beside `any_built_binary`) serving WebSockets
    /// on `ws` and its ops port on `ops`, linked to `notify_urls`
    /// (comma-separated), in dev auth with its key under `data_dir`.
    pub fn dev_bridge(
        any_built_binary: &str,
        name: &str,
        ws: &str,
        ops: &str,
        notify_urls: &str,
        data_dir: &std::path::Path,
    ) -> Self {
        Self::new(name, sibling_binary(any_built_binary, "bridge"))
            .env("BRIDGE_WS_ADDR", ws)
            .env("BRIDGE_HTTP_ADDR", ops)
            .env("BRIDGE_NOTIFY_URLS", notify_urls)
            .env("BRIDGE_DATA_DIR", data_dir.display().to_string())
            .env("AUTH_DEV", "1")
    }

    /// The running process's id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    pub fn env(mut self, key: &str, value: impl Into<String>) -> Self {
        self.envs.push((key.to_owned(), value.into()));
        self
    }

    /// Starts it (logs at `NOTIFY_TEST_LOG`, default error, on stderr).
    pub fn start(&mut self) {
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env(
                "RUST_LOG",
                std::env::var("NOTIFY_TEST_LOG").unwrap_or_else(|_| "error".into()),
            )
            .stdout(Stdio::null())
            .kill_on_drop(true);
        self.child = Some(
            command
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {}: {e}", self.name)),
        );
    }

    /// Starts it again if it ended by itself (as systemd's Restart= would);
    /// true if it had.
    pub fn revive(&mut self) -> bool {
        let ended = self
            .child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_some());
        if ended {
            eprintln!("{} ended by itself: restarting it", self.name);
            self.start();
        }
        ended
    }

    pub async fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    /// SIGTERM, then waits for the exit; the exit status, None if it was not running.
    pub async fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        if let Some(pid) = child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        child.wait().await.ok()
    }
}
