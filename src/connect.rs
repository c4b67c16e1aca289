//! `notify connect`: a WebSocket client in the CLI, so a newcomer can watch
//! messages arrive with nothing else installed. It connects to a bridge
//! with a token (or mints a dev token for `--user`), prints every server
//! frame as one JSON line, acks inbox messages as it prints them, and
//! subscribes to `--topic`s. Ctrl-C closes the socket normally. wss is
//! checked against the system's roots or `--ws-ca-file`.

use clap::Args;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};
use tokio_rustls::{TlsConnector, rustls::pki_types::ServerName};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{Message, client::IntoClientRequest, protocol::CloseFrame},
};

use crate::cli::Failure;

/// Who connects, where, and what to follow.
#[derive(Args)]
pub struct ConnectArgs {
    /// The bridge's WebSocket URL.
    #[arg(long, env = "NOTIFY_WS_URL", default_value = "ws://127.0.0.1:8080/ws")]
    ws: String,
    /// A token (Cognito or dev). Without it, a dev token is minted for --user.
    // The id of the global caller token (`--token`, NOTIFY_TOKEN): this
    // command's `--token` is the bridge's and takes its place.
    #[arg(
        long,
        id = "NOTIFY_TOKEN",
        env = "NOTIFY_WS_TOKEN",
        hide_env_values = true,
        conflicts_with = "user"
    )]
    token: Option<String>,
    /// Mint a dev token for this user (the bridge must trust the dev key, as
    /// `notify up` does).
    #[arg(long, required_unless_present = "NOTIFY_TOKEN")]
    user: Option<String>,
    /// Where the dev key is (`notify up`'s --data-dir).
    #[arg(long, default_value = notify_bridge::DEV_DATA_DIR)]
    data_dir: std::path::PathBuf,
    /// Replay the inbox after this seq instead of after the last ack.
    #[arg(long)]
    since: Option<u64>,
    /// Topics to subscribe to, comma separated (e.g. fights:live).
    #[arg(long, value_delimiter = ',')]
    topic: Vec<String>,
    /// Do not ack inbox messages (they are replayed on the next connect).
    #[arg(long)]
    no_ack: bool,
    /// CA (PEM) to trust for a wss:// bridge instead of the system's roots.
    #[arg(long, env = "NOTIFY_WS_CA_FILE")]
    ws_ca_file: Option<std::path::PathBuf>,
}

pub async fn connect(args: ConnectArgs) -> Result<(), Failure> {
    let token = match (args.token, args.user) {
        (Some(token), _) => token,
        (None, Some(user)) => crate::mint_dev_token(&args.data_dir, &user)?,
        (None, None) => return Err(Failure::Usage("--token or --user is needed".into())),
    };
    let mut url = format!("{}?token={token}", args.ws);
    if let Some(since) = args.since {
        url.push_str(&format!("&since={since}"));
    }
    let mut socket = open(&url, &args.ws, args.ws_ca_file.as_deref()).await?;
    for topic in &args.topic {
        let frame = json!({"action": "subscribe", "topic": topic});
        send(&mut socket, &frame).await?;
    }
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(notify_ops::signals::cancel_on_signal(stop.clone()));
    loop {
        let frame = tokio::select! {
            () = stop.cancelled() => {
                let _ = socket.close(None).await;
                return Ok(());
            }
            frame = socket.next() => frame,
        };
        match frame {
            Some(Ok(Message::Text(text))) => {
                println!("{text}");
                let frame: Value = serde_json::from_str(text.as_str()).unwrap_or_default();
                // Inbox messages carry a seq and no topic; acks are cumulative.
                if !args.no_ack
                    && frame["type"] == "message"
                    && frame["topic"].is_null()
                    && let Some(seq) = frame["seq"].as_u64()
                {
                    send(&mut socket, &json!({"action": "ack", "seq": seq})).await?;
                }
            }
            Some(Ok(Message::Close(close))) => return closed(close),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(anyhow::anyhow!("connection lost: {e}").into()),
            None => return Err(anyhow::anyhow!("connection closed without a close frame").into()),
        }
    }
}

/// Why the upgrade failed, with the bridge's own reason when it gave one
/// (a 401 carries `{"error":…,"message":…}`).
/// What a WebSocket runs over: TCP for ws://, TLS over TCP for wss://.
trait Transport: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Transport for T {}

/// Opens `url` (the bridge's `ws` plus the query); wss is checked against
/// `ca` or the system's roots.
async fn open(
    url: &str,
    ws: &str,
    ca: Option<&std::path::Path>,
) -> Result<WebSocketStream<Box<dyn Transport>>, Failure> {
    let request = url
        .into_client_request()
        .map_err(|e| Failure::Usage(format!("--ws {ws:?}: {e}")))?;
    let uri = request.uri();
    let secure = match uri.scheme_str() {
        Some("wss") => true,
        Some("ws") if ca.is_none() => false,
        Some("ws") => return Err(Failure::Usage("--ws-ca-file needs a wss:// URL".into())),
        _ => return Err(Failure::Usage(format!("--ws {ws:?}: use ws:// or wss://"))),
    };
    let host = uri
        .host()
        .ok_or_else(|| Failure::Usage(format!("--ws {ws:?} has no host")))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach {ws}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let io: Box<dyn Transport> = if secure {
        let config = notify_ops::tls::client_config(ca).map_err(|e| anyhow::anyhow!("{e}"))?;
        let name =
            ServerName::try_from(host).map_err(|e| Failure::Usage(format!("--ws {ws:?}: {e}")))?;
        let tls = TlsConnector::from(std::sync::Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| anyhow::anyhow!("TLS with {ws}: {e}"))?;
        Box::new(tls)
    } else {
        Box::new(tcp)
    };
    let (socket, _) = tokio_tungstenite::client_async(request, io)
        .await
        .map_err(|e| refused(ws, e))?;
    Ok(socket)
}

fn refused(ws: &str, e: tokio_tungstenite::tungstenite::Error) -> Failure {
    use tokio_tungstenite::tungstenite::Error;
    match e {
        Error::Http(response) => {
            let body = response
                .body()
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            anyhow::anyhow!("{ws} refused the connection: {} {body}", response.status()).into()
        }
        e => anyhow::anyhow!("cannot connect to {ws}: {e}").into(),
    }
}

async fn send<S>(socket: &mut S, frame: &Value) -> Result<(), Failure>
where
    S: SinkExt<Message> + Unpin,
    S::Error: std::fmt::Display,
{
    socket
        .send(Message::text(frame.to_string()))
        .await
        .map_err(|e| anyhow::anyhow!("sending {frame}: {e}").into())
}

/// The server closed: print why; a normal close is a success.
fn closed(close: Option<CloseFrame>) -> Result<(), Failure> {
    let (code, reason) = close.map_or((1005, String::new()), |c| {
        (u16::from(c.code), c.reason.to_string())
    });
    println!(
        "{}",
        json!({"type": "closed", "code": code, "reason": reason})
    );
    if matches!(code, 1000 | 1001) {
        Ok(())
    } else {
        Err(anyhow::anyhow!("closed by the server: {code} {reason}").into())
    }
}
