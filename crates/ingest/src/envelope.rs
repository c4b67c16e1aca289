//! What an SQS message asks to publish. Two shapes arrive:
//!
//! - an **SNS notification** (an SNS topic's delivery to an SQS queue,
//!   without raw delivery): `{"Type": "Notification", "MessageId",
//!   "TopicArn", "Message", "MessageAttributes"}`. If `Message` is itself a
//!   publish (a JSON object naming a target), it is used as it is;
//!   otherwise the topic ARN's route in the config names the target
//!   (broadcast, a topic, or the user in a message attribute) and `Message`
//!   is the data (JSON, or a JSON string when it is not JSON);
//! - a **raw SQS message** whose body is a publish in our JSON shape
//!   ([`notify_proto::json::PublishJson`]).
//!
//! The idempotency key is the publish's own if it has one, else
//! `sns:{MessageId}` or `sqs:{MessageId}`: a message SNS or SQS delivers
//! twice is stored once.

use std::collections::HashMap;

use notify_proto::{json::PublishJson, v1 as pb};
use serde_json::Value;

/// Where an SNS topic's messages go when they do not name a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnsRoute {
    /// Every live connection.
    Broadcast,
    /// This topic's log.
    Topic(String),
    /// The inbox of the user named by the message attribute (see
    /// [`Routes::user_attribute`]).
    User,
}

/// How messages become publishes.
#[derive(Debug, Clone)]
pub struct Routes {
    /// By SNS topic ARN.
    pub sns: HashMap<String, SnsRoute>,
    /// The message attribute naming the user for [`SnsRoute::User`].
    pub user_attribute: String,
    /// The message attribute naming the event (else `default_event`).
    pub event_attribute: String,
    pub default_event: String,
}

impl Default for Routes {
    fn default() -> Self {
        Self {
            sns: HashMap::new(),
            user_attribute: "user_id".into(),
            event_attribute: "event".into(),
            default_event: "sns".into(),
        }
    }
}

/// Parses `ARN=broadcast|topic:NAME|user,…` (the `INGEST_SNS_ROUTES` form).
pub fn parse_sns_routes(spec: &str) -> Result<HashMap<String, SnsRoute>, String> {
    let mut routes = HashMap::new();
    for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        // An ARN has colons, never '=': split at the last '='.
        let (arn, route) = entry
            .rsplit_once('=')
            .ok_or_else(|| format!("{entry:?}: expected ARN=broadcast|topic:NAME|user"))?;
        if !arn.starts_with("arn:") {
            return Err(format!("{arn:?} is not an SNS topic ARN (arn:aws:sns:…)"));
        }
        let route = match route {
            "broadcast" => SnsRoute::Broadcast,
            "user" => SnsRoute::User,
            t if t.starts_with("topic:") && t.len() > "topic:".len() => {
                SnsRoute::Topic(t["topic:".len()..].to_owned())
            }
            other => {
                return Err(format!(
                    "{arn}: route {other:?} is not broadcast, topic:NAME or user"
                ));
            }
        };
        routes.insert(arn.to_owned(), route);
    }
    Ok(routes)
}

/// Why a message cannot be published (it goes back to its queue and, past
/// the redrive policy's receive count, to the dead-letter queue).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Rejection {
    #[error("the body is not JSON: {0}")]
    NotJson(String),
    #[error("the body is not a publish ({0})")]
    NotAPublish(String),
    #[error("SNS topic {0} has no route (INGEST_SNS_ROUTES) and the message names no target")]
    UnroutedTopic(String),
    #[error("message attribute {0:?} (the user) is missing")]
    NoUser(String),
}

impl Rejection {
    /// Every value of [`Self::reason`].
    pub const REASONS: [&'static str; 4] =
        ["not_json", "not_a_publish", "unrouted_topic", "no_user"];

    /// The metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotJson(_) => "not_json",
            Self::NotAPublish(_) => "not_a_publish",
            Self::UnroutedTopic(_) => "unrouted_topic",
            Self::NoUser(_) => "no_user",
        }
    }
}

/// One SQS message as received: its id and body.
#[derive(Debug, Clone, Copy)]
pub struct Received<'a> {
    pub message_id: &'a str,
    pub body: &'a str,
}

const TARGET_KEYS: [&str; 5] = ["user_id", "users", "topic", "broadcast", "connection_id"];

/// The publish `received` asks for.
pub fn publish_of(
    routes: &Routes,
    received: &Received<'_>,
) -> Result<pb::PublishRequest, Rejection> {
    let body: Value =
        serde_json::from_str(received.body).map_err(|e| Rejection::NotJson(e.to_string()))?;
    if body["Type"] == "Notification" && body["TopicArn"].is_string() {
        return from_sns(routes, &body);
    }
    let key = format!("sqs:{}", received.message_id);
    publish_shape(body, key)
}

/// A publish in our shape, keyed by `key` unless it has its own key.
fn publish_shape(value: Value, key: String) -> Result<pb::PublishRequest, Rejection> {
    let mut shape: PublishJson =
        serde_json::from_value(value).map_err(|e| Rejection::NotAPublish(e.to_string()))?;
    shape.idempotency_key.get_or_insert(key);
    shape
        .into_request()
        .map_err(|e| Rejection::NotAPublish(e.to_string()))
}

fn from_sns(routes: &Routes, envelope: &Value) -> Result<pb::PublishRequest, Rejection> {
    let arn = envelope["TopicArn"].as_str().unwrap_or_default();
    let key = format!("sns:{}", envelope["MessageId"].as_str().unwrap_or_default());
    let message = envelope["Message"].as_str().unwrap_or_default();
    let data: Value =
        serde_json::from_str(message).unwrap_or_else(|_| Value::String(message.to_owned()));
    let names_target = data
        .as_object()
        .is_some_and(|o| TARGET_KEYS.iter().any(|k| o.contains_key(*k)));
    if names_target {
        return publish_shape(data, key);
    }
    // SNS attributes: {"name": {"Type": "String", "Value": "…"}}.
    let attribute = |name: &str| {
        envelope["MessageAttributes"][name]["Value"]
            .as_str()
            .map(str::to_owned)
    };
    let route = routes
        .sns
        .get(arn)
        .ok_or_else(|| Rejection::UnroutedTopic(arn.to_owned()))?;
    use pb::publish_request::Target;
    let target = match route {
        SnsRoute::Broadcast => Target::Broadcast(true),
        SnsRoute::Topic(topic) => Target::Topic(topic.clone()),
        SnsRoute::User => Target::UserId(
            attribute(&routes.user_attribute)
                .ok_or_else(|| Rejection::NoUser(routes.user_attribute.clone()))?,
        ),
    };
    Ok(pb::PublishRequest {
        target: Some(target),
        event: attribute(&routes.event_attribute).unwrap_or_else(|| routes.default_event.clone()),
        data: data.to_string(),
        idempotency_key: key,
        ttl_seconds: 0,
        // SNS carries no push options: the event's configured default.
        push: None,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const USERS_ARN: &str = "arn:aws:sns:us-east-1:123456789012:user-notifications";
    const NEWS_ARN: &str = "arn:aws:sns:us-east-1:123456789012:broadcast";

    fn routes() -> Routes {
        Routes {
            sns: parse_sns_routes(&format!("{USERS_ARN}=user,{NEWS_ARN}=broadcast")).unwrap(),
            ..Routes::default()
        }
    }

    fn sns(arn: &str, message: &str, attributes: Value) -> String {
        json!({
            "Type": "Notification",
            "MessageId": "sns-1",
            "TopicArn": arn,
            "Message": message,
            "MessageAttributes": attributes,
        })
        .to_string()
    }

    fn map(body: &str) -> Result<pb::PublishRequest, Rejection> {
        let received = Received {
            message_id: "sqs-1",
            body,
        };
        publish_of(&routes(), &received)
    }

    #[test]
    fn an_sns_message_goes_where_its_topic_routes_it_with_its_attributes() {
        let body = sns(
            USERS_ARN,
            r#"{"text":"your fight was accepted"}"#,
            json!({"user_id": {"Type": "String", "Value": "ann"}, "event": {"Type": "String", "Value": "fight_accepted"}}),
        );
        let req = map(&body).unwrap();
        assert_eq!(
            req.target,
            Some(pb::publish_request::Target::UserId("ann".into()))
        );
        assert_eq!(req.event, "fight_accepted");
        assert_eq!(req.data, r#"{"text":"your fight was accepted"}"#);
        assert_eq!(
            req.idempotency_key, "sns:sns-1",
            "SNS's id: a redelivery is stored once"
        );
        // Not JSON: the text is the data, as a JSON string; the default event.
        let req = map(&sns(NEWS_ARN, "maintenance at 2am", json!({}))).unwrap();
        assert_eq!(
            req.target,
            Some(pb::publish_request::Target::Broadcast(true))
        );
        assert_eq!(
            (req.event.as_str(), req.data.as_str()),
            ("sns", r#""maintenance at 2am""#)
        );
    }

    #[test]
    fn a_message_that_names_its_target_is_used_as_it_is() {
        let own = r#"{"topic":"room:lobby","event":"e","data":{"n":1},"idempotency_key":"mine"}"#;
        let req = map(&sns("arn:aws:sns:us-east-1:1:unrouted", own, json!({}))).unwrap();
        assert_eq!(
            req.target,
            Some(pb::publish_request::Target::Topic("room:lobby".into()))
        );
        assert_eq!(req.idempotency_key, "mine");
        let raw = map(r#"{"user_id":"bob","event":"e","data":2}"#).unwrap();
        assert_eq!(raw.idempotency_key, "sqs:sqs-1");
    }

    #[test]
    fn what_cannot_be_published_says_why() {
        assert_eq!(map("nope").unwrap_err().reason(), "not_json");
        assert_eq!(map(r#"{"hello":1}"#).unwrap_err().reason(), "not_a_publish");
        let unrouted = sns("arn:aws:sns:us-east-1:1:other", "{}", json!({}));
        assert_eq!(map(&unrouted).unwrap_err().reason(), "unrouted_topic");
        let anonymous = sns(USERS_ARN, "{}", json!({}));
        assert_eq!(
            map(&anonymous).unwrap_err(),
            Rejection::NoUser("user_id".into())
        );
    }

    #[test]
    fn routes_parse_and_bad_ones_are_named() {
        let r = parse_sns_routes(
            "arn:aws:sns:eu-west-1:1:a=topic:room:news, arn:aws:sns:eu-west-1:1:b=user",
        )
        .unwrap();
        assert_eq!(
            r["arn:aws:sns:eu-west-1:1:a"],
            SnsRoute::Topic("room:news".into())
        );
        assert_eq!(r["arn:aws:sns:eu-west-1:1:b"], SnsRoute::User);
        assert!(
            parse_sns_routes("x=broadcast")
                .unwrap_err()
                .contains("not an SNS topic ARN")
        );
        assert!(
            parse_sns_routes("arn:aws:sns:r:1:a=inbox")
                .unwrap_err()
                .contains("inbox")
        );
    }
}
