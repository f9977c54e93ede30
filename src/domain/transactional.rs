//! A transactional send: the App API body, with the template named by id or by name.

use super::event::{object, required_str};
use super::{ParseError, PersonRef, UserId};
use serde_json::{Map, Value};

/// The App API's transactional channels (`POST /v1/send/<channel>`): email, push, SMS, in-app
/// messages rendered by Customer.io's SDKs, and inbox messages for a web notification centre.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    Email,
    Push,
    Sms,
    InApp,
    InboxMessage,
}

impl Channel {
    pub const ALL: [Channel; 5] = [
        Self::Email,
        Self::Push,
        Self::Sms,
        Self::InApp,
        Self::InboxMessage,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Email => "email",
            Channel::Push => "push",
            Channel::Sms => "sms",
            Channel::InApp => "in_app",
            Channel::InboxMessage => "inbox_message",
        }
    }

    fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == value)
    }
}

/// Which message to send: Customer.io's id (number or trigger name), a template name the
/// gateway maps to an id from config, or an email composed inline (`body`, `subject`, `from`).
#[derive(Debug, Clone, PartialEq)]
pub enum TemplateRef {
    Id(Value),
    Named(String),
    Inline,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TransactionalRequest {
    pub channel: Channel,
    pub template: TemplateRef,
    pub identifiers: PersonRef,
    /// The rest of the send body (`to`, `message_data`, `subject`, ...), passed through as given.
    pub body: Map<String, Value>,
}

impl TransactionalRequest {
    /// Parses a send for `user`; without `identifiers` in the payload, it goes to that id.
    pub fn parse(payload: &Value, user: &UserId) -> Result<Self, ParseError> {
        Self::parse_for(payload, PersonRef::id(user))
    }

    /// Parses a send; without `identifiers` in the payload, it goes to `person` (the
    /// envelope's `identifiers`).
    pub fn parse_for(payload: &Value, person: PersonRef) -> Result<Self, ParseError> {
        let mut body = object(payload)?.clone();
        let channel = match body.remove("channel") {
            None | Some(Value::Null) => Channel::Email,
            Some(Value::String(s)) => Channel::parse(&s).ok_or_else(|| {
                ParseError::new(
                    "channel",
                    format!("must be email, push, sms, in_app or inbox_message, got {s:?}"),
                )
            })?,
            Some(_) => return Err(ParseError::new("channel", "must be a string")),
        };
        let template = match (
            body.remove("transactional_message_id"),
            body.remove("template"),
        ) {
            (Some(_), Some(_)) => {
                return Err(ParseError::new(
                    "template",
                    "give either transactional_message_id or template, not both",
                ));
            }
            (Some(id @ Value::Number(_)), None) => TemplateRef::Id(id),
            (Some(Value::String(s)), None) if !s.is_empty() => TemplateRef::Id(Value::String(s)),
            (Some(_), None) => {
                return Err(ParseError::new(
                    "transactional_message_id",
                    "must be a number or a non-empty string",
                ));
            }
            (None, Some(Value::String(s))) if !s.is_empty() => TemplateRef::Named(s),
            (None, Some(_)) => {
                return Err(ParseError::new("template", "must be a non-empty string"));
            }
            (None, None) if channel == Channel::Email && is_inline_email(&body) => {
                TemplateRef::Inline
            }
            (None, None) => {
                return Err(ParseError::new(
                    "transactional_message_id",
                    "is required (or template, or body + subject + from for email)",
                ));
            }
        };
        let identifiers = match body.remove("identifiers") {
            None | Some(Value::Null) => person,
            Some(v) => PersonRef::parse(&v).map_err(|e| e.within("identifiers"))?,
        };
        if body.get("message_data").is_some_and(|d| !d.is_object()) {
            return Err(ParseError::new("message_data", "must be an object"));
        }
        if body.get("to").is_some_and(|to| !to.is_string()) {
            return Err(ParseError::new("to", "must be a string"));
        }
        Ok(Self {
            channel,
            template,
            identifiers,
            body,
        })
    }
}

fn is_inline_email(body: &Map<String, Value>) -> bool {
    ["body", "subject", "from"]
        .iter()
        .all(|k| required_str(body, k).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn user() -> UserId {
        UserId::parse("42").unwrap()
    }

    #[test]
    fn template_forms() {
        let r =
            TransactionalRequest::parse(&json!({"transactional_message_id": 7}), &user()).unwrap();
        assert_eq!(r.template, TemplateRef::Id(json!(7)));
        assert_eq!(r.identifiers.value, "42");
        let r =
            TransactionalRequest::parse(&json!({"template": "welcome", "channel": "sms"}), &user())
                .unwrap();
        assert_eq!(r.template, TemplateRef::Named("welcome".into()));
        assert_eq!(r.channel, Channel::Sms);
        assert!(TransactionalRequest::parse(&json!({"to": "a@b.c"}), &user()).is_err());
        assert!(
            TransactionalRequest::parse(&json!({"template": "x", "channel": "fax"}), &user())
                .is_err()
        );
        for channel in Channel::ALL {
            let r = TransactionalRequest::parse(
                &json!({"template": "x", "channel": channel.as_str()}),
                &user(),
            )
            .unwrap();
            assert_eq!(r.channel, channel);
        }
        let inline = json!({"body": "hi", "subject": "s", "from": "a@b.c", "to": "x@y.z"});
        assert_eq!(
            TransactionalRequest::parse(&inline, &user())
                .unwrap()
                .template,
            TemplateRef::Inline
        );
    }
}
