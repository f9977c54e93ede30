//! What the gateway does about a reporting event (`webhooks.rules`), and the envelope it
//! publishes into the ordered pipeline for it.
//!
//! A rule's pattern is matched against `<object_type>.<metric>`; `*` stands for any run of
//! characters. When several patterns match, the most specific one (most literal characters)
//! wins, so `email.bounced = "none"` overrides `*.bounced = "mark_bounced"`.
//!
//! What each action costs the person, as Customer.io documents it:
//! - `mark_bounced`, `unsubscribe`: an identify (an attribute set); nothing is lost.
//! - `unsuppress`: lifts a suppression.
//! - `suppress`: "permanently deletes people… You cannot recover a profile after you suppress
//!   it" (Track API reference). Never a default; `check-config` and `serve` warn when a rule
//!   uses it.

use super::{EventId, ReportingEvent};
use crate::domain::{CorrelationId, ParseError};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Suppress the person in Customer.io (a `suppress` envelope): this deletes the profile.
    Suppress,
    /// Mark the person unsubscribed (an `identify` with `unsubscribed: true`).
    Unsubscribe,
    /// Lift a suppression (an `unsuppress` envelope), e.g. on `customer.subscribed`.
    Unsuppress,
    /// Record the bounce on the person (an `identify` with `email_bounced_at`, the event's
    /// time in unix seconds), so segments can exclude them; the profile stays.
    MarkBounced,
    None,
}

/// What the gateway does about reporting events unless `webhooks.rules` says otherwise:
/// nothing that destroys data, and nothing for `*.subscribed` / `*.unsubscribed`, which
/// Customer.io has already applied (echoing them back could undo a later change).
pub const DEFAULT_RULES: [(&str, &str); 2] = [
    ("email.bounced", "mark_bounced"),
    ("email.spammed", "unsubscribe"),
];

/// The attribute [`Action::MarkBounced`] sets.
pub const BOUNCED_AT_ATTRIBUTE: &str = "email_bounced_at";

impl Action {
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "suppress" => Some(Action::Suppress),
            "unsubscribe" => Some(Action::Unsubscribe),
            "unsuppress" => Some(Action::Unsuppress),
            "mark_bounced" => Some(Action::MarkBounced),
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
            Action::MarkBounced => Some(ActionKind::Bounce),
            Action::None => None,
        }
    }

    /// Every action's name, for error messages.
    pub const NAMES: &'static str = "mark_bounced, unsubscribe, unsuppress, suppress or none";

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Suppress => "suppress",
            Action::Unsubscribe => "unsubscribe",
            Action::Unsuppress => "unsuppress",
            Action::MarkBounced => "mark_bounced",
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
    /// When the person's email last bounced: `mark_bounced`.
    Bounce,
}

impl ActionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::Suppression => "suppression",
            ActionKind::Subscription => "subscription",
            ActionKind::Bounce => "bounce",
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
                            format!("action {action:?} must be one of {}", Action::NAMES),
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        // Stable: equally specific patterns keep their (sorted) configuration order.
        rules.sort_by_key(|(pattern, _)| std::cmp::Reverse(specificity(pattern)));
        Ok(Self { rules })
    }

    /// The patterns whose action is `suppress`, which deletes the person's profile.
    pub fn destructive(&self) -> impl Iterator<Item = &str> {
        self.rules
            .iter()
            .filter(|(_, action)| *action == Action::Suppress)
            .map(|(pattern, _)| pattern.as_str())
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
///
/// `userId`, the ordering key, is the person as [`ReportingEvent::person`] spells them;
/// `identifiers` names them in Customer.io by the key they came with (`id`, `email` or
/// `cio_id`), so an email-only person is never addressed as if the email were an id.
pub fn action_envelope(event: &ReportingEvent, action: Action) -> Option<Value> {
    let user = event.person()?;
    let (key, value) = event.person_identifier()?;
    let correlation_id = action_correlation_id(&event.event_id, action);
    let (kind, payload) = match action {
        Action::None => return None,
        Action::Suppress => ("suppress", json!({})),
        Action::Unsuppress => ("unsuppress", json!({})),
        Action::Unsubscribe => ("identify", json!({"unsubscribed": true})),
        Action::MarkBounced => (
            "identify",
            json!({ BOUNCED_AT_ATTRIBUTE: event.timestamp.timestamp() }),
        ),
    };
    Some(json!({
        "type": kind,
        "userId": user,
        "identifiers": { key: value },
        "correlationId": correlation_id,
        "payload": payload,
    }))
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
    fn the_defaults_destroy_nothing_and_echo_nothing() {
        let r = rules(&DEFAULT_RULES);
        assert_eq!(r.action_for("email.bounced"), Action::MarkBounced);
        assert_eq!(r.action_for("email.spammed"), Action::Unsubscribe);
        for key in [
            "email.unsubscribed",
            "customer.unsubscribed",
            "customer.subscribed",
            "customer.cio_subscription_preferences_changed",
            "push.bounced",
            "email.opened",
        ] {
            assert_eq!(r.action_for(key), Action::None, "{key}");
        }
        assert_eq!(r.destructive().count(), 0);
        let opted = rules(&[
            ("email.bounced", "suppress"),
            ("email.spammed", "unsubscribe"),
        ]);
        assert_eq!(opted.destructive().collect::<Vec<_>>(), ["email.bounced"]);
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
        assert_eq!(a["identifiers"], json!({"id": "42"}));
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
        assert_eq!(u["payload"], json!({"unsubscribed": true}));
        assert_ne!(u["correlationId"], a["correlationId"]);
        let b = action_envelope(&event, Action::MarkBounced).unwrap();
        assert_eq!(b["type"], "identify");
        assert_eq!(b["payload"], json!({"email_bounced_at": 1_700_000_000}));
        assert_eq!(action_envelope(&event, Action::None), None);
        let mut anonymous = event.clone();
        anonymous.customer_id = None;
        assert_eq!(action_envelope(&anonymous, Action::Suppress), None);
    }

    #[test]
    fn an_action_names_its_person_by_the_key_customer_io_gave() {
        let with = |identifiers: Value| {
            let event = ReportingEvent::from_value(json!({"event_id": "ev2",
                "object_type": "email", "metric": "spammed", "timestamp": 1_700_000_000,
                "data": {"customer_id": "", "identifiers": identifiers}}))
            .unwrap();
            let envelope = action_envelope(&event, Action::Unsubscribe).unwrap();
            (envelope["userId"].clone(), envelope["identifiers"].clone())
        };
        assert_eq!(
            with(json!({"id": "7", "email": "a@example.com", "cio_id": "c7"})),
            (json!("7"), json!({"id": "7"}))
        );
        // A merged or email-only person: never addressed as if the email were an id.
        assert_eq!(
            with(json!({"email": "only@example.com", "cio_id": "c1"})),
            (
                json!("only@example.com"),
                json!({"email": "only@example.com"})
            )
        );
        assert_eq!(
            with(json!({"cio_id": "c1"})),
            (json!("cio_c1"), json!({"cio_id": "c1"}))
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
