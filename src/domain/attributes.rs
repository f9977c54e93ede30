//! A JSON object of person attributes or event properties, within Customer.io's limits.

use super::{ParseError, limits};
use serde_json::{Map, Value};

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
#[serde(transparent)]
pub struct Attributes(Map<String, Value>);

impl Attributes {
    /// Parses person attributes: an object, names and values within the documented limits.
    pub fn parse_person(value: &Value) -> Result<Self, ParseError> {
        let map = as_object(value)?;
        // The gateway adds its own attributes to every identify; leave room for them.
        let allowed = limits::MAX_ATTRIBUTES_PER_CALL - limits::GATEWAY_ATTRIBUTES;
        if map.len() > allowed {
            return Err(ParseError::new(
                "",
                format!(
                    "has {} attributes, at most {allowed} allowed (Customer.io takes {} per call, the gateway adds {})",
                    map.len(),
                    limits::MAX_ATTRIBUTES_PER_CALL,
                    limits::GATEWAY_ATTRIBUTES
                ),
            ));
        }
        for (name, value) in map {
            check_name(name)?;
            if limits::STRUCTURED_ATTRIBUTES.contains(&name.as_str()) {
                continue;
            }
            let size = serialized_len(value);
            if size > limits::MAX_ATTRIBUTE_VALUE_BYTES {
                return Err(ParseError::new(
                    name.clone(),
                    format!(
                        "value is {size} bytes, Customer.io allows at most {}",
                        limits::MAX_ATTRIBUTE_VALUE_BYTES
                    ),
                ));
            }
        }
        Ok(Self(map.clone()))
    }

    /// Checks that the gateway can add `name` (an identify's `anonymous_id`) and stay within
    /// Customer.io's attributes per call, so the envelope is refused here, naming the limit,
    /// rather than by the client.
    pub fn check_room_for(&self, name: &str) -> Result<(), ParseError> {
        let allowed = limits::MAX_ATTRIBUTES_PER_CALL - limits::GATEWAY_ATTRIBUTES;
        if self.0.contains_key(name) || self.0.len() < allowed {
            return Ok(());
        }
        Err(ParseError::new(
            "",
            format!(
                "has {} attributes and {name} makes one more: at most {allowed} allowed (Customer.io takes {} per call, the gateway adds {})",
                self.0.len(),
                limits::MAX_ATTRIBUTES_PER_CALL,
                limits::GATEWAY_ATTRIBUTES
            ),
        ))
    }

    /// Parses event data: an object of at most the documented body size.
    pub fn parse_event_data(value: &Value) -> Result<Self, ParseError> {
        let map = as_object(value)?;
        let size = serialized_len(value);
        if size > limits::MAX_EVENT_DATA_BYTES {
            return Err(ParseError::new(
                "",
                format!(
                    "is {size} bytes, at most {} allowed",
                    limits::MAX_EVENT_DATA_BYTES
                ),
            ));
        }
        for name in map.keys() {
            check_name(name)?;
        }
        Ok(Self(map.clone()))
    }

    pub fn from_map(map: Map<String, Value>) -> Self {
        Self(map)
    }

    pub fn insert(&mut self, name: &str, value: impl Into<Value>) {
        self.0.insert(name.to_string(), value.into());
    }

    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn as_map(&self) -> &Map<String, Value> {
        &self.0
    }

    pub fn into_value(self) -> Value {
        Value::Object(self.0)
    }
}

fn as_object(value: &Value) -> Result<&Map<String, Value>, ParseError> {
    value
        .as_object()
        .ok_or_else(|| ParseError::new("", format!("must be an object, got {}", kind(value))))
}

fn check_name(name: &str) -> Result<(), ParseError> {
    if name.is_empty() {
        return Err(ParseError::new("", "attribute names must not be empty"));
    }
    if name.len() > limits::MAX_ATTRIBUTE_NAME_BYTES {
        return Err(ParseError::new(
            name.chars().take(32).collect::<String>(),
            format!(
                "attribute name is {} bytes, at most {} allowed",
                name.len(),
                limits::MAX_ATTRIBUTE_NAME_BYTES
            ),
        ));
    }
    Ok(())
}

fn serialized_len(value: &Value) -> usize {
    serde_json::to_vec(value).map(|v| v.len()).unwrap_or(0)
}

/// The JSON type of a value, for error messages.
pub(crate) fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn limits_are_enforced() {
        assert!(Attributes::parse_person(&json!([])).is_err());
        assert!(Attributes::parse_person(&json!({"a": "x".repeat(1001)})).is_err());
        assert!(Attributes::parse_person(&json!({"x".repeat(151): 1})).is_err());
        assert!(Attributes::parse_person(&json!({"plan": "pro"})).is_ok());
        assert!(Attributes::parse_event_data(&json!({"big": "x".repeat(2000)})).is_ok());
    }

    #[test]
    fn an_added_attribute_must_fit_the_limit_too() {
        let full: Map<String, Value> = (0..298).map(|n| (format!("a{n}"), json!(n))).collect();
        let attributes = Attributes::parse_person(&Value::Object(full)).unwrap();
        let e = attributes.check_room_for("anonymous_id").unwrap_err();
        assert!(e.reason.contains("at most 298"), "{e:?}");
        let room: Map<String, Value> = (0..297).map(|n| (format!("a{n}"), json!(n))).collect();
        assert!(
            Attributes::parse_person(&Value::Object(room))
                .unwrap()
                .check_room_for("anonymous_id")
                .is_ok()
        );
    }
}
