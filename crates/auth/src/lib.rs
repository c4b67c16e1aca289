//! Who a token says its bearer is: verification of Cognito-style RS256 JWTs.
//!
//! - [`Verifier`] checks a token against the keys of a [`KeySet`] (a JWKS at
//!   an `http://` URL or a `file:` path, cached, refetched on an unknown `kid`
//!   at most once per 30 s) and the configured issuer and app clients, and
//!   yields an [`Identity`].
//! - [`Cognito`] asks the user pool what a token cannot say: revoked
//!   tokens (`GetUser`) and usernames → `sub` (`AdminGetUser`), cached.
//! - [`VerifierArgs`] and [`CognitoArgs`]: the settings that build them, as
//!   arg groups every binary flattens under its own names.
//! - [`DevIssuer`] mints tokens of the same shape with a local RSA key whose
//!   JWKS the verifier trusts in dev mode: one verification path for dev and
//!   Cognito.
//!
//! The algorithm comes from the key (every key is RS256), never from the
//! token: `none`, `HS*` and anything else a token names is refused.

mod cognito;
mod dev;
mod error;
mod identity;
mod keys;
mod settings;
mod verify;

pub use cognito::{Cognito, CognitoConfig};
pub use dev::{DEV_CLIENT_ID, DEV_ISSUER, DEV_KEY_FILE, DevIssuer, DevToken};
pub use error::AuthError;
pub use identity::{Identity, Session, TokenUse};
pub use keys::{KeySet, KeySource};
pub use settings::{CognitoArgs, VerifierArgs, VerifierNames};
pub use verify::{Verifier, VerifierConfig, session_of};
