//! Publish requests as tests write them: an event `note` with the given data.

use notify_proto::v1::{self as pb, publish_request::Target};

/// `data` (JSON text) to `user`'s inbox.
pub fn to_user(user: &str, data: &str) -> pb::PublishRequest {
    pb::PublishRequest {
        target: Some(Target::UserId(user.into())),
        event: "note".into(),
        data: data.into(),
        ..Default::default()
    }
}

/// `data` to each of `users`' inboxes.
pub fn to_users(users: &[&str], data: &str) -> pb::PublishRequest {
    pb::PublishRequest {
        target: Some(Target::Users(pb::UserList {
            user_ids: users.iter().map(|u| u.to_string()).collect(),
        })),
        ..to_user("", data)
    }
}

/// `data` to `topic`'s subscribers.
pub fn to_topic(topic: &str, data: &str) -> pb::PublishRequest {
    pb::PublishRequest {
        target: Some(Target::Topic(topic.into())),
        ..to_user("", data)
    }
}
