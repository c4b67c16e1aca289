//! Test fixtures shared by the workspace's integration tests.
//!
//! - [`TestDb`]: a freshly created, uniquely named Postgres database per test,
//!   dropped when the fixture is. The server comes from `DATABASE_URL` (any
//!   database on it; default `postgres://postgres@127.0.0.1:5432/postgres`).
//!   No server is a test failure that says how to start one, never a skip.
//! - [`TestDir`]: a fresh temporary directory per test (SQLite files, keys).
//! - [`cognito_endpoint`]: the local Cognito stand-in, or a failure saying how
//!   to start it; [`cognito::TestPool`]: a user pool of its own on it.
//! - [`eventually`]: poll a condition until a deadline instead of sleeping.
//! - [`prometheus::parse`]: a strict reader of a `/metrics` scrape.
//! - [`free_port`]: a loopback port nobody listens on, for spawned binaries.
//! - [`cluster::PgCluster`] / [`cluster::Pgbouncer`]: a Postgres server (and
//!   a transaction-pooling pgbouncer) of a test's own, to crash and restart.

pub mod cluster;
pub mod cognito;
pub mod process;
pub mod prometheus;
pub mod tls;

use std::{
    future::Future,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use tokio_postgres::NoTls;

const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A database of its own for one test.
pub struct TestDb {
    /// Connection URL of the new database.
    pub url: String,
    name: String,
    admin_url: String,
}

impl TestDb {
    /// Creates an empty database; panics with instructions if Postgres is not there.
    pub async fn create() -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let admin_url =
            std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_owned());
        let name = format!(
            "notify_test_{}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos())
        );
        let admin = admin(&admin_url).await;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name} failed: {e}"));
        let url = with_database(&admin_url, &name);
        Self {
            url,
            name,
            admin_url,
        }
    }
}

/// The local AWS stand-in (moto's server mode: Cognito, SQS and SNS on one
/// port) `scripts/test` starts: `COGNITO_ENDPOINT_URL`, default
/// `http://127.0.0.1:4599`. Panics with how to start it if nothing answers
/// there: a test never skips for want of it.
pub fn moto_endpoint() -> String {
    cognito_endpoint()
}

/// The AWS SDK's configuration for moto (see [`moto_endpoint`]) in
/// `region`, with moto's dummy credentials.
pub async fn moto_aws(region: &'static str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(region))
        .endpoint_url(moto_endpoint())
        .credentials_provider(aws_sdk_cognitoidentityprovider::config::Credentials::new(
            "test", "test", None, None, "test",
        ))
        .load()
        .await
}

/// The local Cognito stand-in: see [`moto_endpoint`].
pub fn cognito_endpoint() -> String {
    let url = std::env::var("COGNITO_ENDPOINT_URL")
        .unwrap_or_else(|_| "http://127.0.0.1:4599".to_owned());
    let hostport = url.trim_start_matches("http://").trim_end_matches('/');
    let reachable = hostport
        .parse::<std::net::SocketAddr>()
        .ok()
        .and_then(|addr| std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok())
        .is_some();
    assert!(
        reachable,
        "no Cognito stand-in answers at {url}: run scripts/test (it installs and starts one), \
         or `pip install 'moto[server]==5.2.5' && moto_server -H 127.0.0.1 -p 4599`, \
         or set COGNITO_ENDPOINT_URL"
    );
    url
}

/// An empty directory of its own for one test, removed when dropped.
pub struct TestDir {
    pub path: std::path::PathBuf,
}

impl TestDir {
    pub fn create(what: &str) -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "notify-{what}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        Self { path }
    }

    /// A path inside the directory.
    pub fn join(&self, name: &str) -> std::path::PathBuf {
        self.path.join(name)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::env::var_os("NOTIFY_TEST_KEEP_DB").is_none() {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if std::env::var_os("NOTIFY_TEST_KEEP_DB").is_some() {
            eprintln!("keeping test database {}", self.name);
            return;
        }
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        // Drop may run inside a runtime: use a thread with a runtime of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                if let Ok((client, conn)) = tokio_postgres::connect(&admin_url, NoTls).await {
                    tokio::spawn(conn);
                    let _ = client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            });
        })
        .join();
    }
}

async fn admin(url: &str) -> tokio_postgres::Client {
    match tokio_postgres::connect(url, NoTls).await {
        Ok((client, conn)) => {
            tokio::spawn(conn);
            client
        }
        Err(e) => panic!(
            "Postgres is not reachable at {url}: {e}.\n\
             These tests need a real Postgres. Run `scripts/test` (it starts or installs one), \
             or start it yourself (`pg_ctlcluster 15 main start`) and/or set DATABASE_URL=postgres://USER@HOST:PORT/postgres."
        ),
    }
}

/// `url` with its database name replaced by `db` (query string kept).
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_part = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{host_part}/{db}?{q}"),
        None => format!("{host_part}/{db}"),
    }
}

/// Polls `check` until it returns `Some` or `within` passes; panics naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Binds `addr` again once the process that held it let go (a service
/// restarted on the same address), trying for up to 10 s.
pub async fn rebind(addr: &str) -> tokio::net::TcpListener {
    eventually(
        "the port is free again",
        Duration::from_secs(10),
        || async { tokio::net::TcpListener::bind(addr).await.ok() },
    )
    .await
}

/// A loopback port free at the time of the call, for a process the test
/// spawns. Chosen below the kernel's ephemeral range (32768+ by default), so
/// the `bind(…:0)` of tests running in parallel can never take it between
/// this call and the spawned process's bind.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Spread processes apart: pid and time pick a start, a counter steps on.
    let seed = std::process::id().wrapping_mul(2_654_435_761).wrapping_add(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos()),
    );
    for _ in 0..1000 {
        let step = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 20_000 + (seed.wrapping_add(step.wrapping_mul(7919)) % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in 20000..32000");
}

/// `n` loopback addresses on [`free_port`]s.
pub fn free_addrs(n: usize) -> Vec<String> {
    (0..n)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect()
}

/// A TCP relay on loopback in front of a real server (Postgres, notify-svc),
/// which a test can cut to play a network failure or a database outage, or
/// pause to play a server that answers late, and restore.
pub struct Relay {
    /// Where clients connect.
    pub addr: std::net::SocketAddr,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    generation: tokio::sync::watch::Sender<u64>,
    paused: tokio::sync::watch::Sender<bool>,
}

impl Relay {
    /// Relays 127.0.0.1:ephemeral to `target`.
    pub async fn start(target: std::net::SocketAddr) -> Self {
        use std::sync::{Arc, atomic::AtomicBool};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind relay");
        let addr = listener.local_addr().expect("relay addr");
        let cut = Arc::new(AtomicBool::new(false));
        let (generation, _) = tokio::sync::watch::channel(0u64);
        let (paused, _) = tokio::sync::watch::channel(false);
        let (cut2, gen2, paused2) = (cut.clone(), generation.clone(), paused.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if cut2.load(Ordering::SeqCst) {
                    continue; // dropped: the client sees a reset
                }
                let mut killed = gen2.subscribe();
                let (up, down) = (paused2.subscribe(), paused2.subscribe());
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let (from_client, to_client) = inbound.split();
                    let (from_server, to_server) = outbound.split();
                    tokio::select! {
                        () = pipe(from_client, to_server, up) => {}
                        () = pipe(from_server, to_client, down) => {}
                        _ = killed.changed() => {}
                    }
                });
            }
        });
        Self {
            addr,
            cut,
            generation,
            paused,
        }
    }

    /// Holds every byte on the open connections (both ways) until
    /// [`resume`](Self::resume): the server looks alive but answers late.
    pub fn pause(&self) {
        self.paused.send_replace(true);
    }

    /// Lets held bytes through again.
    pub fn resume(&self) {
        self.paused.send_replace(false);
    }

    /// Refuses new connections and kills the open ones.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

/// Copies one direction of a relayed connection, holding bytes while paused.
async fn pipe(
    mut from: tokio::net::tcp::ReadHalf<'_>,
    mut to: tokio::net::tcp::WriteHalf<'_>,
    mut paused: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if paused.wait_for(|p| !*p).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// The host:port of a Postgres URL, resolved.
pub fn postgres_addr(url: &str) -> std::net::SocketAddr {
    use std::net::ToSocketAddrs;
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let hostport = rest.split(['/', '?']).next().unwrap_or("127.0.0.1:5432");
    let hostport = if hostport.contains(':') {
        hostport.to_owned()
    } else {
        format!("{hostport}:5432")
    };
    hostport
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .unwrap_or_else(|| panic!("cannot resolve {hostport}"))
}

/// `url` pointing at `addr` instead of its own host and port.
pub fn via(url: &str, addr: std::net::SocketAddr) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
    let (userinfo, hostrest) = match rest.rsplit_once('@') {
        Some((u, h)) => (format!("{u}@"), h),
        None => (String::new(), rest),
    };
    let tail = hostrest.find(['/', '?']).map_or("", |i| &hostrest[i..]);
    format!("{scheme}://{userinfo}{addr}{tail}")
}

/// `GET path` on `addr` (HTTP/1.0, the whole answer as text: status line,
/// headers, body); None if the server cannot be reached.
pub async fn http_get(addr: &str, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut out = String::new();
    stream.read_to_string(&mut out).await.ok()?;
    Some(out)
}

/// Waits (up to a minute) until `addr`'s ops port answers `/readyz` with 200.
pub async fn wait_ready(addr: &str) {
    eventually(
        &format!("{addr}/readyz"),
        Duration::from_secs(60),
        || async {
            http_get(addr, "/readyz")
                .await
                .filter(|a| a.contains(" 200 "))
        },
    )
    .await;
}

/// A TCP connection to `addr` whose receive buffer is kept small (64 KiB):
/// a client that will stop reading, so that what the kernel absorbs for it
/// is a known few MB (the sender's buffer, at most `tcp_wmem`'s 4 MiB here)
/// rather than whatever the receive side's autotuning allows.
pub async fn stalling_stream(addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    socket.connect(addr).await.unwrap()
}

/// An HTTP/1.1 call with hyper's client: `method path` on `addr` with
/// `headers` and `body` (JSON, sent as `application/json` when given);
/// the status and the body as text.
pub async fn http_call(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, String) {
    use http_body_util::{BodyExt, Full};
    use hyper::body::Bytes;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or_default().to_owned())))
        .expect("a well-formed request");
    let answer = client.request(req).await.expect("the server answers");
    let status = answer.status().as_u16();
    let bytes = answer
        .into_body()
        .collect()
        .await
        .expect("the whole body")
        .to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn replaces_the_database_name() {
        assert_eq!(
            with_database("postgres://u@h:5432/postgres?sslmode=disable", "t1"),
            "postgres://u@h:5432/t1?sslmode=disable"
        );
        assert_eq!(with_database("postgres://u@h", "t1"), "postgres://u@h/t1");
    }
}
