//! What the gateway does about a reporting event (`webhooks.rules`), and the envelope it
//! publishes into the ordered pipeline for it.
//!
//! A rule's pattern is matched against `<object_type>.<metric>`; `*` stands for any run of
//! characters. When several patterns match, the most specific one (most literal characters)
//! wins, so `email.bounced = "none"` overrides `*.bounced = "suppress"`.

use super::{EventId, ReportingEvent};
use crate::domain::{CorrelationId, ParseError};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Suppress the person in Customer.io (a `suppress` envelope).
    Suppress,
    /// Mark the person unsubscribed (an `identify` with `unsubscribed: true`).
    Unsubscribe,
    /// Lift a suppression (an `unsuppress` envelope), e.g. on `customer.subscribed`.
    Unsuppress,
    None,
}

impl Action {
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "suppress" => Some(Action::Suppress),
            "unsubscribe" => Some(Action::Unsubscribe),
            "unsuppress" => Some(Action::Unsuppress),
            "none" => Some(Action::None),
            _ => None,
        }
    }

    /// The state this action sets: actions of one kind overwrite each other, so of two, the
    /// one about the later event must win. `None` for [`Action::None`].
    pub fn kind(self) -> Option<ActionKind> {
        match self {
            Action::Suppress | Action::Unsuppress => Some(ActionKind::Suppression),
            Action::Unsubscribe => Some(ActionKind::Subscription),
            Action::None => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Suppress => "suppress",
            Action::Unsubscribe => "unsubscribe",
            Action::Unsuppress => "unsuppress",
            Action::None => "none",
        }
    }
}

/// What a person's state an action controls (see [`Action::kind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ActionKind {
    /// Suppressed or not: `suppress`, `unsuppress`.
    Suppression,
    /// Subscribed or not: `unsubscribe` (no rule resubscribes yet).
    Subscription,
}

impl ActionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::Suppression => "suppression",
            ActionKind::Subscription => "subscription",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rules {
    /// Most specific first.
    rules: Vec<(String, Action)>,
}

impl Rules {
    pub fn parse(config: &BTreeMap<String, String>) -> Result<Self, ParseError> {
        let mut rules = config
            .iter()
            .map(|(pattern, action)| {
                Action::parse(action)
                    .map(|a| (pattern.clone(), a))
                    .ok_or_else(|| {
                        ParseError::new(
                            pattern.clone(),
                            format!("action {action:?} must be suppress, unsuppress, unsubscribe or none"),
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        // Stable: equally specific patterns keep their (sorted) configuration order.
        rules.sort_by_key(|(pattern, _)| std::cmp::Reverse(specificity(pattern)));
        Ok(Self { rules })
    }

    /// The action for a routing key `<object_type>.<metric>`; `None` when no rule matches.
    pub fn action_for(&self, routing_key: &str) -> Action {
        self.rules
            .iter()
            .find(|(pattern, _)| glob(pattern.as_bytes(), routing_key.as_bytes()))
            .map_or(Action::None, |(_, action)| *action)
    }
}

fn specificity(pattern: &str) -> usize {
    pattern.bytes().filter(|b| *b != b'*').count()
}

/// `*` matches any run of bytes (including none); everything else matches itself.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            backtrack = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((star, from)) = backtrack {
            p = star + 1;
            t = from + 1;
            backtrack = Some((star, from + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|b| *b == b'*')
}

/// A correlation id that depends only on the event and the action, so a webhook Customer.io
/// retries (or a redelivered action) yields the same id and the pipeline de-duplicates it.
/// It is a ULID (the first 128 bits of a SHA-256), like the ids the gateway generates.
pub fn action_correlation_id(event_id: &EventId, action: Action) -> CorrelationId {
    let digest = Sha256::digest(format!(
        "cio-gateway/webhook/{}/{event_id}",
        action.as_str()
    ));
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    CorrelationId::parse(&ulid::Ulid::from_bytes(bytes).to_string())
        .expect("a ULID is a valid correlation id")
}

/// The envelope that carries out `action` for `event`; `None` when there is nothing to do
/// (no action, or the event names no person: see [`ReportingEvent::person`]).
pub fn action_envelope(event: &ReportingEvent, action: Action) -> Option<Value> {
    let user = event.person()?;
    let correlation_id = action_correlation_id(&event.event_id, action);
    match action {
        Action::None => None,
        Action::Suppress => Some(json!({
            "type": "suppress",
            "userId": user,
            "correlationId": correlation_id,
        })),
        Action::Unsuppress => Some(json!({
            "type": "unsuppress",
            "userId": user,
            "correlationId": correlation_id,
        })),
        Action::Unsubscribe => Some(json!({
            "type": "identify",
            "userId": user,
            "correlationId": correlation_id,
            "payload": {"unsubscribed": true},
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rules(pairs: &[(&str, &str)]) -> Rules {
        Rules::parse(
            &pairs
                .iter()
                .map(|(p, a)| (p.to_string(), a.to_string()))
                .collect(),
        )
        .unwrap()
    }

    #[test]
    fn defaults_suppress_bounces_and_spam_and_unsubscribe() {
        let r = rules(&[
            ("email.bounced", "suppress"),
            ("email.spammed", "suppress"),
            ("*.unsubscribed", "unsubscribe"),
        ]);
        assert_eq!(r.action_for("email.bounced"), Action::Suppress);
        assert_eq!(r.action_for("email.spammed"), Action::Suppress);
        assert_eq!(r.action_for("email.unsubscribed"), Action::Unsubscribe);
        assert_eq!(r.action_for("customer.unsubscribed"), Action::Unsubscribe);
        assert_eq!(r.action_for("push.bounced"), Action::None);
        assert_eq!(r.action_for("email.opened"), Action::None);
    }

    #[test]
    fn suppress_and_unsuppress_control_one_state() {
        assert_eq!(Action::Suppress.kind(), Action::Unsuppress.kind());
        assert_eq!(Action::Unsubscribe.kind(), Some(ActionKind::Subscription));
        assert_ne!(Action::Suppress.kind(), Action::Unsubscribe.kind());
        assert_eq!(Action::None.kind(), None);
    }

    #[test]
    fn the_most_specific_pattern_wins() {
        let r = rules(&[
            ("*", "suppress"),
            ("*.bounced", "unsubscribe"),
            ("email.bounced", "none"),
        ]);
        assert_eq!(r.action_for("email.bounced"), Action::None);
        assert_eq!(r.action_for("sms.bounced"), Action::Unsubscribe);
        assert_eq!(r.action_for("sms.sent"), Action::Suppress);
        assert!(Rules::parse(&[("x".to_string(), "delete".to_string())].into()).is_err());
    }

    #[test]
    fn glob_matches_runs() {
        assert!(glob(b"*", b""));
        assert!(glob(b"e*l.*ed", b"email.bounced"));
        assert!(glob(b"*.*", b"a.b"));
        assert!(!glob(b"*.*", b"ab"));
        assert!(!glob(b"email.*", b"push.sent"));
        assert!(glob(b"**a", b"bba"));
    }

    #[test]
    fn envelopes_are_deterministic_per_event() {
        let event = ReportingEvent::from_value(json!({"event_id": "ev1", "object_type": "email",
            "metric": "bounced", "timestamp": 1_700_000_000, "data": {"customer_id": "42"}}))
        .unwrap();
        let a = action_envelope(&event, Action::Suppress).unwrap();
        assert_eq!(a, action_envelope(&event, Action::Suppress).unwrap());
        assert_eq!(a["type"], "suppress");
        assert_eq!(a["userId"], "42");
        let lifted = action_envelope(&event, Action::Unsuppress).unwrap();
        assert_eq!(lifted["type"], "unsuppress");
        assert_ne!(
            lifted["correlationId"], a["correlationId"],
            "one id per action"
        );
        let cid = CorrelationId::parse(a["correlationId"].as_str().unwrap()).unwrap();
        assert!(cid.as_ulid().is_some());
        let u = action_envelope(&event, Action::Unsubscribe).unwrap();
        assert_eq!(u["type"], "identify");
        assert_eq!(u["payload"]["unsubscribed"], true);
        assert_ne!(u["correlationId"], a["correlationId"]);
        assert_eq!(action_envelope(&event, Action::None), None);
        let mut anonymous = event.clone();
        anonymous.customer_id = None;
        assert_eq!(action_envelope(&anonymous, Action::Suppress), None);
        // A merged person: customer_id blank, identifiers still name them.
        let merged = ReportingEvent::from_value(json!({"event_id": "ev2", "object_type": "email",
            "metric": "bounced", "timestamp": 1_700_000_000,
            "data": {"customer_id": "", "identifiers": {"email": "m@example.com", "cio_id": "c1"}}}))
        .unwrap();
        assert_eq!(
            action_envelope(&merged, Action::Suppress).unwrap()["userId"],
            "m@example.com"
        );
    }

    proptest! {
        #[test]
        fn glob_never_panics_and_star_matches_all(p in "[a-c*.]{0,10}", t in "[a-c.]{0,12}") {
            let _ = glob(p.as_bytes(), t.as_bytes());
            prop_assert!(glob(b"*", t.as_bytes()));
            prop_assert!(glob(t.as_bytes(), t.as_bytes()));
        }
    }
}
