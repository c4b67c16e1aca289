//! Who is calling: the interceptor that turns a bearer token (or a loopback
//! peer when no tokens are configured) into a [`Caller`] extension.

use std::sync::Arc;

use tonic::{Request, Status};

use crate::config::CallerTokens;

/// The authenticated caller, inserted into every Notify request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Names idempotency keys' scope and appears in logs and metrics.
    pub name: String,
}

/// Name given to unauthenticated loopback callers in dev mode.
pub const LOOPBACK_CALLER: &str = "loopback";

/// Checks the caller of every Notify request.
#[derive(Clone)]
pub struct Authenticator {
    tokens: Arc<CallerTokens>,
}

impl Authenticator {
    pub fn new(tokens: CallerTokens) -> Self {
        if tokens.is_empty() {
            tracing::warn!(
                "NOTIFY_API_TOKENS is empty: accepting unauthenticated callers from loopback only"
            );
        }
        Self {
            tokens: Arc::new(tokens),
        }
    }

    fn authenticate<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        if self.tokens.is_empty() {
            return match req.remote_addr() {
                Some(addr) if addr.ip().is_loopback() => Ok(Caller {
                    name: LOOPBACK_CALLER.into(),
                }),
                _ => Err(Status::unauthenticated(
                    "no API tokens are configured (NOTIFY_API_TOKENS): only loopback callers are accepted",
                )),
            };
        }
        let header = req
            .metadata()
            .get("authorization")
            .ok_or_else(|| Status::unauthenticated("missing authorization: Bearer <token>"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .ok_or_else(|| Status::unauthenticated("authorization must be `Bearer <token>`"))?;
        self.tokens
            .caller(token.trim())
            .map(|name| Caller { name: name.into() })
            .ok_or_else(|| Status::unauthenticated("unknown API token"))
    }
}

impl tonic::service::Interceptor for Authenticator {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let caller = self.authenticate(&req)?;
        req.extensions_mut().insert(caller);
        Ok(req)
    }
}

/// The caller the interceptor attached to a request.
pub fn caller_of<T>(req: &Request<T>) -> Result<Caller, Status> {
    req.extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no caller"))
}
