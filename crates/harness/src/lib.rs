//! What integration tests around notify-svc share, so that each writes what
//! it checks and not how to get there:
//! - [`svc`]: a notify-svc in the test's own process ([`InProcessSvc`]);
//! - [`requests`]: the publish requests tests send most;
//! - [`frames`]: the next JSON frame a WebSocket client receives.

pub mod frames;
pub mod requests;
pub mod svc;

pub use frames::{next_frame, next_json, next_json_within};
pub use requests::{to_topic, to_user, to_users};
pub use svc::InProcessSvc;
