//! Events, page and screen views, devices and person references: the parts of Track operations.

use super::{Attributes, ParseError, UserId, attributes::kind, limits};
use serde_json::{Map, Value};
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(transparent)]
pub struct EventName(String);

impl EventName {
    pub fn parse(value: &str) -> Result<Self, ParseError> {
        let trimmed = value.trim();
        if trimmed.is_empty() {
            return Err(ParseError::new("name", "must not be empty"));
        }
        if trimmed.len() > limits::MAX_EVENT_NAME_BYTES {
            return Err(ParseError::new(
                "name",
                format!(
                    "is {} bytes, Customer.io allows at most {}",
                    trimmed.len(),
                    limits::MAX_EVENT_NAME_BYTES
                ),
            ));
        }
        Ok(Self(trimmed.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EventName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A named event with its properties; `timestamp` is unix seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub name: EventName,
    pub data: Attributes,
    pub timestamp: Option<i64>,
}

impl Event {
    pub fn parse(payload: &Value) -> Result<Self, ParseError> {
        let obj = object(payload)?;
        let name = match obj.get("name") {
            Some(Value::String(s)) => EventName::parse(s)?,
            Some(other) => {
                return Err(ParseError::new(
                    "name",
                    format!("must be a string, got {}", kind(other)),
                ));
            }
            None => return Err(ParseError::new("name", "is required for track")),
        };
        let data = optional_data(obj)?;
        let timestamp = match obj.get("timestamp") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_i64()
                    .filter(|t| *t > 0)
                    .ok_or_else(|| ParseError::new("timestamp", "must be unix seconds"))?,
            ),
        };
        Ok(Self {
            name,
            data,
            timestamp,
        })
    }
}

/// A page or screen view: Customer.io records it as an event of type `page` or `screen`,
/// named by the page's path or the screen's name.
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    pub name: String,
    pub data: Attributes,
}

impl View {
    /// A page view, payload `{path, data?}`.
    pub fn page(payload: &Value) -> Result<Self, ParseError> {
        Self::parse(payload, "path")
    }

    /// A mobile screen view, payload `{name, data?}`.
    pub fn screen(payload: &Value) -> Result<Self, ParseError> {
        Self::parse(payload, "name")
    }

    fn parse(payload: &Value, name_key: &str) -> Result<Self, ParseError> {
        let obj = object(payload)?;
        let name = required_str(obj, name_key)?;
        // Customer.io gives no limit for a view's name; a bound keeps a runaway value out.
        if name.len() > limits::MAX_EVENT_NAME_BYTES * 10 {
            return Err(ParseError::new(name_key, "is too long"));
        }
        Ok(Self {
            name: name.to_string(),
            data: optional_data(obj)?,
        })
    }
}

/// A mobile device token registered for push.
#[derive(Debug, Clone, PartialEq)]
pub struct Device {
    pub id: String,
    pub platform: String,
    pub data: Attributes,
}

impl Device {
    pub fn parse(payload: &Value) -> Result<Self, ParseError> {
        let obj = object(payload)?;
        let id = required_str(obj, "deviceId")?.to_string();
        let platform = required_str(obj, "platform")?.to_string();
        if !matches!(platform.as_str(), "ios" | "android") {
            return Err(ParseError::new(
                "platform",
                "must be \"ios\" or \"android\"",
            ));
        }
        Ok(Self {
            id,
            platform,
            data: optional_data(obj)?,
        })
    }

    pub fn parse_id(payload: &Value) -> Result<String, ParseError> {
        Ok(required_str(object(payload)?, "deviceId")?.to_string())
    }
}

/// A person as Customer.io names them: exactly one of `id`, `email` or `cio_id` (an envelope's
/// `identifiers`, one side of a merge, a send's recipient), or, for the events of someone not
/// identified yet, their `anonymous_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersonRef {
    pub kind: &'static str,
    pub value: String,
}

impl PersonRef {
    /// The default: the person whose id is the envelope's `userId`.
    pub fn id(user: &UserId) -> Self {
        Self {
            kind: "id",
            value: user.as_str().to_string(),
        }
    }

    /// Someone not identified yet, named by the anonymous id their events carry.
    pub fn anonymous(anonymous_id: &UserId) -> Self {
        Self {
            kind: Self::ANONYMOUS,
            value: anonymous_id.as_str().to_string(),
        }
    }

    pub const ANONYMOUS: &'static str = "anonymous_id";

    pub fn is_anonymous(&self) -> bool {
        self.kind == Self::ANONYMOUS
    }

    /// How Track v1 names the person in a path: an id or an email as it is, a `cio_id` with
    /// the `cio_` prefix (Track API: "use the `cio_` prefix to reference a person by cio_id").
    pub fn v1_path_identifier(&self) -> String {
        match self.kind {
            "cio_id" => format!("cio_{}", self.value),
            _ => self.value.clone(),
        }
    }

    pub fn parse(value: &Value) -> Result<Self, ParseError> {
        // A bare string is the common case: the person's id.
        if let Value::String(s) = value {
            return Self::new("id", s);
        }
        let obj = object(value)?;
        let mut found = ["id", "email", "cio_id"]
            .into_iter()
            .filter_map(|k| obj.get(k).map(|v| (k, v)));
        match (found.next(), found.next()) {
            (Some((k, Value::String(s))), None) => Self::new(k, s),
            (Some((k, Value::Number(n))), None) => Self::new(k, &n.to_string()),
            (Some((k, _)), None) => Err(ParseError::new(k, "must be a string")),
            _ => Err(ParseError::new(
                "",
                "must name exactly one of id, email or cio_id",
            )),
        }
    }

    fn new(kind: &'static str, value: &str) -> Result<Self, ParseError> {
        if value.is_empty() || value.len() > limits::MAX_IDENTIFIER_BYTES {
            return Err(ParseError::new(
                kind,
                format!("must be 1..={} bytes", limits::MAX_IDENTIFIER_BYTES),
            ));
        }
        Ok(Self {
            kind,
            value: value.to_string(),
        })
    }
}

pub(crate) fn object(value: &Value) -> Result<&Map<String, Value>, ParseError> {
    value
        .as_object()
        .ok_or_else(|| ParseError::new("", format!("must be an object, got {}", kind(value))))
}

pub(crate) fn required_str<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
) -> Result<&'a str, ParseError> {
    match obj.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        Some(Value::String(_)) => Err(ParseError::new(key, "must not be empty")),
        Some(other) => Err(ParseError::new(
            key,
            format!("must be a string, got {}", kind(other)),
        )),
        None => Err(ParseError::new(key, "is required")),
    }
}

fn optional_data(obj: &Map<String, Value>) -> Result<Attributes, ParseError> {
    match obj.get("data") {
        None | Some(Value::Null) => Ok(Attributes::default()),
        Some(v) => Attributes::parse_event_data(v).map_err(|e| e.within("data")),
    }
}
