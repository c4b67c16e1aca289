//! The push providers' stand-in (`tests/providers/push_providers.py`): one
//! local HTTPS server playing a Web Push service, FCM and APNs, checking
//! requests with independent implementations (PyJWT, http_ece). Started per
//! test in its own directory; `scripts/test` installs its Python packages.

use std::{path::PathBuf, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use notify_push::client::Https;
use serde_json::Value;
use test_support::TestDir;

pub struct Providers {
    child: tokio::process::Child,
    pub dir: TestDir,
    pub origin: String,
    https: Https,
}

impl Providers {
    pub async fn start() -> Self {
        let python = std::env::var("NOTIFY_PYTHON").unwrap_or_else(|_| {
            let home = std::env::var("HOME").unwrap_or_default();
            format!("{home}/.cache/notify/moto-venv/bin/python")
        });
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/providers/push_providers.py");
        let dir = TestDir::create("push-providers");
        let child = tokio::process::Command::new(&python)
            .arg(&script)
            .arg("--dir")
            .arg(&dir.path)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{python}: {e}; scripts/test installs the push stand-in's packages (hypercorn, http_ece, PyJWT) into that venv (or set NOTIFY_PYTHON)")
            });
        let port_file = dir.join("port");
        let mut waited = Duration::ZERO;
        while !port_file.exists() {
            assert!(
                waited < Duration::from_secs(20),
                "the push stand-in did not start within 20 s (missing packages? run scripts/test once)"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
            waited += Duration::from_millis(50);
        }
        let port = std::fs::read_to_string(&port_file).unwrap();
        let https = Https::new(Some(&dir.join("cert.pem"))).unwrap();
        Self {
            child,
            origin: format!("https://127.0.0.1:{}", port.trim()),
            dir,
            https,
        }
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let request = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.origin))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(
                body.map(|b| b.to_string()).unwrap_or_default(),
            )))
            .unwrap();
        let answer = self.https.send(request).await.expect("stand-in answers");
        assert!(answer.status.is_success(), "{path}: {}", answer.status);
        serde_json::from_slice(&answer.body).unwrap_or(Value::Null)
    }

    /// A new Web Push subscription, as a browser's `pushManager.subscribe`
    /// gives it: `{endpoint, keys: {p256dh, auth}}`.
    pub async fn subscribe(&self) -> Value {
        self.call("POST", "/_subscribe", None).await
    }

    /// Every request the stand-in accepted or refused, in order.
    pub async fn received(&self) -> Vec<Value> {
        match self.call("GET", "/_received", None).await {
            Value::Array(all) => all,
            other => panic!("received: {other}"),
        }
    }

    /// The next answers an address gets (then success).
    pub async fn script(&self, address: &str, statuses: &[u16]) {
        let body = serde_json::json!({"address": address, "statuses": statuses});
        self.call("POST", "/_script", Some(body)).await;
    }

    /// Every Web Push answer waits this long from now on.
    pub async fn call_slow(&self, ms: u64) {
        self.call("POST", "/_slow", Some(serde_json::json!({"ms": ms})))
            .await;
    }

    /// From now on the address answers as unregistered.
    pub async fn gone(&self, address: &str) {
        let body = serde_json::json!({"address": address});
        self.call("POST", "/_gone", Some(body)).await;
    }

    /// Waits until `pred` holds for what was received (at most 20 s).
    pub async fn wait_for(&self, what: &str, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        for _ in 0..400 {
            let received = self.received().await;
            if pred(&received) {
                return received;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "{what}: not within 20 s; received {:#?}",
            self.received().await
        );
    }
}

impl Drop for Providers {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}
