//! How a relay calls notify-svc: one lazily connected channel, the relay's
//! bearer token on every request, a deadline per call.

use std::time::Duration;

use notify_proto::{channel::ClientTls, v1::notify_client::NotifyClient};
use tonic::{Request, metadata::MetadataValue, transport::Channel};

/// A call that takes longer is retried (its key makes the retry safe).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// notify-svc, as a relay calls it; cheap to clone.
#[derive(Clone)]
pub struct NotifyCaller {
    client: NotifyClient<Channel>,
    token: Option<MetadataValue<tonic::metadata::Ascii>>,
}

impl NotifyCaller {
    /// Connects lazily to `url` (http:// or https:// with `tls`), sending
    /// `token` as a bearer credential if given.
    pub fn new(url: &str, tls: &ClientTls, token: Option<&str>) -> anyhow::Result<Self> {
        let channel = notify_proto::channel::endpoint(url, tls)?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .connect_lazy();
        let token = match token {
            Some(t) => Some(format!("Bearer {t}").parse()?),
            None => None,
        };
        Ok(Self {
            client: NotifyClient::new(channel),
            token,
        })
    }

    /// A client to call with (clones share the channel).
    pub fn client(&self) -> NotifyClient<Channel> {
        self.client.clone()
    }

    /// `message` with the credential and the deadline.
    pub fn request<T>(&self, message: T) -> Request<T> {
        let mut req = Request::new(message);
        req.set_timeout(CALL_TIMEOUT);
        if let Some(token) = &self.token {
            req.metadata_mut().insert("authorization", token.clone());
        }
        req
    }
}
