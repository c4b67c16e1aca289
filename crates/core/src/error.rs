//! What can be wrong with an input. Each edge maps these to its own protocol
//! (gRPC status, WebSocket error frame); the messages are written for the caller.

/// An input that breaks a rule; the message names the field and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error("no target: set exactly one of user_id, users, topic or broadcast")]
    NoTarget,
    #[error("{field} is empty")]
    Empty { field: &'static str },
    #[error("{field} is {len} bytes, over the limit of {max}")]
    TooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{field} contains a control character")]
    ControlCharacter { field: &'static str },
    #[error("users lists {count} users, over the limit of {max}")]
    TooManyUsers { count: usize, max: usize },
    #[error("data is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("data is {len} bytes, over the limit of {max}")]
    DataTooLarge { len: usize, max: usize },
    #[error("data nests {depth} levels deep, over the limit of {max}")]
    TooDeep { depth: usize, max: usize },
    #[error("ttl_seconds {ttl} is over the maximum of {max}")]
    TtlTooLong { ttl: u64, max: u64 },
    #[error("topic {topic:?} is not `namespace:rest` ({why})")]
    BadTopic { topic: String, why: &'static str },
    #[error("unknown namespace {namespace:?}; configured: {known}")]
    UnknownNamespace { namespace: String, known: String },
    #[error("{field} {value:?} is not a valid id")]
    BadId { field: &'static str, value: String },
    #[error("{field} {value:?} is not one of: {choices}")]
    BadChoice {
        field: &'static str,
        value: String,
        choices: &'static str,
    },
    #[error("set exactly one of {fields}")]
    OneOf { fields: &'static str },
    #[error("{field} lists {count}, over the limit of {max}")]
    TooMany {
        field: &'static str,
        count: usize,
        max: usize,
    },
}
