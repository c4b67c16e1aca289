//! A Postgres server of a test's own, for tests that must restart Postgres
//! (the shared server of `DATABASE_URL` serves every other test at the same
//! time), and a pgbouncer of its own in front of it in transaction pooling
//! mode, the RDS Proxy stand-in.
//!
//! Both use Debian's packages (`postgresql`, `pgbouncer`; `scripts/test`
//! installs them); a missing one fails the test saying so. Run as root, the
//! servers run as the `postgres` user: neither starts as root.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use crate::{TestDir, free_port};

/// The server binaries' directory: `PG_BINDIR`, else the newest
/// `/usr/lib/postgresql/*/bin` with an `initdb`.
fn bindir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PG_BINDIR") {
        return dir.into();
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).unwrap_or_else(|| {
        panic!(
            "no Postgres server binaries under /usr/lib/postgresql: run scripts/test \
             (it installs them) or `apt-get install -y postgresql`, or set PG_BINDIR"
        )
    })
}

fn is_root() -> bool {
    // `id -u` rather than a libc dependency for one call.
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// A server program's command, run as `postgres` when we are root.
fn server_command(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// Runs a server program to its end; panics with its output if it fails.
fn run_as_server(program: &Path, args: &[&str]) {
    let out = server_command(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", program.display()));
    assert!(
        out.status.success(),
        "{} {args:?} failed: {}{}",
        program.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Hands a directory to the `postgres` user when we are root.
fn own(dir: &Path) {
    if is_root() {
        let ok = Command::new("chown")
            .args(["-R", "postgres"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "chown -R postgres {} failed", dir.display());
    }
}

/// A Postgres cluster in a temporary directory, on a loopback port of its own.
pub struct PgCluster {
    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub url: String,
    pub port: u16,
    bin: PathBuf,
    data: PathBuf,
    log: PathBuf,
    /// Extra server options (TLS).
    options: String,
    _dir: TestDir,
}

impl PgCluster {
    /// initdb and start; panics saying what is missing.
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// Like [`start`](Self::start), serving TLS (`ssl=on`) with this
    /// certificate and key beside plain connections.
    pub fn start_with_tls(tls: &crate::tls::CertFiles) -> Self {
        Self::start_with(Some(tls))
    }

    fn start_with(tls: Option<&crate::tls::CertFiles>) -> Self {
        let bin = bindir();
        let dir = TestDir::create("pgcluster");
        let data = dir.join("data");
        let log = dir.join("postgres.log");
        own(&dir.path);
        run_as_server(
            &bin.join("initdb"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        let mut options = Vec::new();
        if let Some(tls) = tls {
            // The server reads them as itself, and wants the key private.
            let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
            std::fs::copy(&tls.cert, &cert).expect("copying the certificate");
            std::fs::copy(&tls.key, &key).expect("copying the key");
            own(&dir.path);
            let ok = Command::new("chmod")
                .arg("0600")
                .arg(&key)
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "chmod 0600 {}", key.display());
            options.push(format!(
                "-c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                cert.display(),
                key.display()
            ));
        }
        let port = free_port();
        let cluster = Self {
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            port,
            bin,
            data,
            log,
            options: options.join(" "),
            _dir: dir,
        };
        cluster.pg_ctl_start();
        cluster
    }

    fn pg_ctl_start(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories= -c max_connections=300 {}",
            self.port, self.options
        );
        run_as_server(
            &self.bin.join("pg_ctl"),
            &[
                "-D",
                self.data.to_str().unwrap(),
                "-l",
                self.log.to_str().unwrap(),
                "-o",
                &options,
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
    }

    /// Stops the way a crash does (`-m immediate`: no checkpoint, recovery
    /// from the WAL at the next start).
    pub fn crash(&self) {
        run_as_server(
            &self.bin.join("pg_ctl"),
            &[
                "-D",
                self.data.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
    }

    /// Starts again after [`crash`](Self::crash) on the same port.
    pub fn start_again(&self) {
        self.pg_ctl_start();
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = server_command(&self.bin.join("pg_ctl"))
            .args(["-D", self.data.to_str().unwrap(), "-m", "immediate", "stop"])
            .output();
    }
}

/// pgbouncer in transaction pooling mode in front of a [`PgCluster`].
pub struct Pgbouncer {
    /// `postgres://postgres@127.0.0.1:PORT/postgres` through the pooler.
    pub url: String,
    pid_file: PathBuf,
    _dir: TestDir,
}

impl Pgbouncer {
    /// Starts a pgbouncer (Debian's package) in front of `cluster`.
    pub fn start(cluster: &PgCluster) -> Self {
        let program = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .unwrap_or_else(|| {
                panic!(
                    "pgbouncer is not installed: run scripts/test (it installs it) or \
                     `apt-get install -y pgbouncer`"
                )
            });
        let dir = TestDir::create("pgbouncer");
        let port = free_port();
        let pid_file = dir.join("pgbouncer.pid");
        std::fs::write(dir.join("userlist.txt"), "\"postgres\" \"\"\n").unwrap();
        let ini = format!(
            "[databases]\n* = host=127.0.0.1 port={upstream} user=postgres\n\n\
             [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n\
             unix_socket_dir =\nauth_type = trust\nauth_file = {users}\n\
             pool_mode = transaction\nmax_client_conn = 2000\ndefault_pool_size = 40\n\
             server_login_retry = 1\nlogfile = {log}\npidfile = {pid}\n",
            upstream = cluster.port,
            users = dir.join("userlist.txt").display(),
            log = dir.join("pgbouncer.log").display(),
            pid = pid_file.display(),
        );
        let ini_path = dir.join("pgbouncer.ini");
        std::fs::write(&ini_path, ini).unwrap();
        own(&dir.path);
        run_as_server(&program, &["-d", ini_path.to_str().unwrap()]);
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let up = (0..100).any(|_| {
            std::net::TcpStream::connect(addr).is_ok() || {
                std::thread::sleep(std::time::Duration::from_millis(50));
                false
            }
        });
        assert!(
            up,
            "pgbouncer did not start: see {}",
            dir.join("pgbouncer.log").display()
        );
        Self {
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            pid_file,
            _dir: dir,
        }
    }
}

impl Drop for Pgbouncer {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(&self.pid_file) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
    }
}
