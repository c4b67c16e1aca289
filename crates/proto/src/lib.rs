//! The `notify.v1` protobuf and gRPC code, generated at build time with the
//! vendored `protoc`, plus [`convert`]: the one place where protobuf messages
//! become domain types and back, so domain code never sees prost,
//! [`channel`]: how clients reach notify-svc (plaintext or TLS), and
//! [`json`]: the JSON shape of a publish for the ways in that are not gRPC.

pub mod channel;
pub mod convert;
pub mod json;

/// Generated messages, client and server of `notify.v1`.
#[allow(clippy::all, missing_docs, rust_2018_idioms)]
pub mod v1 {
    tonic::include_proto!("notify.v1");
}

/// The encoded `FileDescriptorSet` of every `notify.v1` file, for gRPC
/// server reflection.
/// Request metadata a bridge sends with a Dev Panel `Publish`: the
/// signed-in admin's token, which notify-svc checks; the publish is then the
/// admin's, not the bridge's.
pub const PANEL_ADMIN_METADATA: &str = "x-notify-panel-admin";

pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("notify_descriptor");
