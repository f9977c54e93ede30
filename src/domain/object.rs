//! Objects (accounts, companies, courses: Customer.io's non-person groupings) and their
//! relationships to people, as a producer's `object` envelope names them.

use super::attributes::kind;
use super::event::object;
use super::{Attributes, ParseError, PersonRef, limits};
use serde_json::{Map, Value};

/// What to do with an object (Track v2 `object` actions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectAction {
    Identify,
    Delete,
    AddRelationships,
    DeleteRelationships,
}

impl ObjectAction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Identify => "identify",
            Self::Delete => "delete",
            Self::AddRelationships => "add_relationships",
            Self::DeleteRelationships => "delete_relationships",
        }
    }

    fn parse(value: &str) -> Option<Self> {
        [
            Self::Identify,
            Self::Delete,
            Self::AddRelationships,
            Self::DeleteRelationships,
        ]
        .into_iter()
        .find(|a| a.as_str() == value)
    }
}

/// A person related to an object, with what describes the relationship (`relationship_attributes`).
#[derive(Debug, Clone, PartialEq)]
pub struct Relationship {
    pub person: PersonRef,
    pub attributes: Option<Map<String, Value>>,
}

/// One operation on an object: `object_type_id` is the object type's id (an integer from 1,
/// as Customer.io numbers types, sent as a string); `object_id` names the object within it.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectOp {
    pub object_type_id: String,
    pub object_id: String,
    pub action: ObjectAction,
    pub attributes: Attributes,
    pub relationships: Vec<Relationship>,
}

impl ObjectOp {
    /// The envelope's `objectTypeId`, `objectId` and `payload`.
    pub fn parse(
        type_id: Option<&Value>,
        object_id: Option<&Value>,
        payload: &Value,
    ) -> Result<Self, ParseError> {
        let object_type_id = match type_id {
            Some(Value::String(s)) if is_type_id(s) => s.clone(),
            Some(Value::Number(n)) if n.as_u64().is_some_and(|n| n >= 1) => n.to_string(),
            None | Some(Value::Null) => return Err(ParseError::new("objectTypeId", "is required")),
            Some(_) => {
                return Err(ParseError::new(
                    "objectTypeId",
                    "must be an object type id: an integer from 1 (Customer.io numbers object types)",
                ));
            }
        };
        let object_id = match object_id {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            None | Some(Value::Null) => return Err(ParseError::new("objectId", "is required")),
            Some(other) => {
                return Err(ParseError::new(
                    "objectId",
                    format!("must be a string, got {}", kind(other)),
                ));
            }
        };
        if object_id.trim().is_empty() || object_id.len() > limits::MAX_IDENTIFIER_BYTES {
            return Err(ParseError::new(
                "objectId",
                format!(
                    "must be 1..={} bytes, not blank",
                    limits::MAX_IDENTIFIER_BYTES
                ),
            ));
        }
        let (action, attributes, relationships) =
            parse_payload(payload).map_err(|e| e.within("payload"))?;
        Ok(Self {
            object_type_id,
            object_id,
            action,
            attributes,
            relationships,
        })
    }

    /// The routing and ordering key of the object's messages: `object:<type id>:<object id>`.
    pub fn routing_key(&self) -> String {
        format!("object:{}:{}", self.object_type_id, self.object_id)
    }
}

fn is_type_id(s: &str) -> bool {
    !s.is_empty() && !s.starts_with('0') && s.bytes().all(|b| b.is_ascii_digit()) && s.len() <= 19
}

fn parse_payload(
    payload: &Value,
) -> Result<(ObjectAction, Attributes, Vec<Relationship>), ParseError> {
    let obj = object(payload)?;
    let action = match obj.get("action") {
        Some(Value::String(s)) => ObjectAction::parse(s).ok_or_else(|| {
            ParseError::new(
                "action",
                format!(
                    "unknown object action {s:?}: identify, delete, add_relationships or delete_relationships"
                ),
            )
        })?,
        None => return Err(ParseError::new("action", "is required")),
        Some(other) => {
            return Err(ParseError::new(
                "action",
                format!("must be a string, got {}", kind(other)),
            ));
        }
    };
    let attributes = match obj.get("attributes") {
        None | Some(Value::Null) => Attributes::default(),
        Some(v) if action == ObjectAction::Identify => {
            Attributes::parse_person(v).map_err(|e| e.within("attributes"))?
        }
        Some(_) => {
            return Err(ParseError::new(
                "attributes",
                format!("only an identify sets attributes, not {}", action.as_str()),
            ));
        }
    };
    let relationships = match obj.get("relationships") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) if action != ObjectAction::Delete => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                parse_relationship(item).map_err(|e| e.within(&format!("relationships.{i}")))
            })
            .collect::<Result<_, _>>()?,
        Some(Value::Array(_)) => {
            return Err(ParseError::new(
                "relationships",
                "a delete removes the object and all its relationships: give none",
            ));
        }
        Some(other) => {
            return Err(ParseError::new(
                "relationships",
                format!("must be an array, got {}", kind(other)),
            ));
        }
    };
    let changes_relationships = matches!(
        action,
        ObjectAction::AddRelationships | ObjectAction::DeleteRelationships
    );
    if changes_relationships && relationships.is_empty() {
        return Err(ParseError::new(
            "relationships",
            format!("{} needs at least one relationship", action.as_str()),
        ));
    }
    Ok((action, attributes, relationships))
}

fn parse_relationship(item: &Value) -> Result<Relationship, ParseError> {
    let obj = object(item)?;
    let person = match obj.get("identifiers") {
        Some(v @ Value::Object(_)) => PersonRef::parse(v).map_err(|e| e.within("identifiers"))?,
        Some(other) => {
            return Err(ParseError::new(
                "identifiers",
                format!("must be an object, got {}", kind(other)),
            ));
        }
        None => return Err(ParseError::new("identifiers", "is required")),
    };
    let attributes = match obj.get("relationship_attributes") {
        None | Some(Value::Null) => None,
        Some(Value::Object(map)) => Some(map.clone()),
        Some(other) => {
            return Err(ParseError::new(
                "relationship_attributes",
                format!("must be an object, got {}", kind(other)),
            ));
        }
    };
    Ok(Relationship { person, attributes })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(type_id: Value, id: Value, payload: Value) -> Result<ObjectOp, ParseError> {
        ObjectOp::parse(Some(&type_id), Some(&id), &payload)
    }

    #[test]
    fn the_issue_example_parses() {
        let op = parse(
            json!("1"),
            json!("acme"),
            json!({"action": "identify", "attributes": {"name": "Acme"},
                "relationships": [{"identifiers": {"id": "42"}}]}),
        )
        .unwrap();
        assert_eq!(op.routing_key(), "object:1:acme");
        assert_eq!(op.action, ObjectAction::Identify);
        assert_eq!(op.relationships[0].person.value, "42");
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                json!("0"),
                json!("a"),
                json!({"action": "delete"}),
                "objectTypeId",
            ),
            (
                json!("x"),
                json!("a"),
                json!({"action": "delete"}),
                "objectTypeId",
            ),
            (json!(1), json!(""), json!({"action": "delete"}), "objectId"),
            (
                json!(1),
                json!("a"),
                json!({"action": "fly"}),
                "payload.action",
            ),
            (json!(1), json!("a"), json!({}), "payload.action"),
            (
                json!(1),
                json!("a"),
                json!({"action": "add_relationships"}),
                "payload.relationships",
            ),
            (
                json!(1),
                json!("a"),
                json!({"action": "add_relationships", "relationships": [{"identifiers": {"phone": "1"}}]}),
                "payload.relationships.0.identifiers",
            ),
            (
                json!(1),
                json!("a"),
                json!({"action": "delete", "attributes": {"n": 1}}),
                "payload.attributes",
            ),
        ];
        for (type_id, id, payload, field) in cases {
            let e = parse(type_id, id, payload).unwrap_err();
            assert!(e.field.starts_with(field), "{field}: {e:?}");
        }
    }
}
