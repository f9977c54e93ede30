//! Changes Customer.io reports about a person's subscriptions, as changes to the local store.
//!
//! Customer.io's subscription state and the local opt-ins are two views of one choice, and
//! either side may change it. Its reporting webhooks say when it changed there:
//! - `customer.unsubscribed` / `email.unsubscribed` (the person's global `unsubscribed`) and
//!   `customer.subscribed`: the `email` opt-in;
//! - `customer.cio_subscription_preferences_changed`: the topics of its subscription center,
//!   applied to the channels `preferences.subscription_topics` maps to topic ids.
//!
//! Newest wins, on either side: the store applies a remote change only when its event is later
//! than the row's last change (`updated_at`), so a webhook Customer.io retries days later
//! cannot undo what the person chose since. A remote change is not sent back (Customer.io
//! already has it). Only people named by `data.identifiers.id` are followed: the local store
//! is keyed by the producers' user id.

use super::PreferencesChange;
use crate::domain::webhook::Metric;
use crate::domain::{ReportingEvent, UserId};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// The reporting events whose routing keys carry subscription changes; bound to the actions
/// queue whatever the rules say.
pub const SUBSCRIPTION_PATTERNS: [&str; 3] = [
    "*.subscribed",
    "*.unsubscribed",
    "*.cio_subscription_preferences_changed",
];

/// The four channels and their Customer.io subscription topic ids (`preferences.subscription_topics`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicMap {
    topics: BTreeMap<Channel, u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Channel {
    Email,
    Push,
    Sms,
    InApp,
}

impl Channel {
    pub const ALL: [Channel; 4] = [Channel::Email, Channel::Push, Channel::Sms, Channel::InApp];

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Email => "email",
            Channel::Push => "push",
            Channel::Sms => "sms",
            Channel::InApp => "in_app",
        }
    }

    fn set(self, change: &mut PreferencesChange, value: bool) {
        let slot = match self {
            Channel::Email => &mut change.email,
            Channel::Push => &mut change.push,
            Channel::Sms => &mut change.sms,
            Channel::InApp => &mut change.in_app,
        };
        *slot = Some(value);
    }
}

impl TopicMap {
    /// From `preferences.subscription_topics` (channel name -> topic id); the error names the
    /// offending channel.
    pub fn parse(config: &BTreeMap<String, u32>) -> Result<Self, String> {
        let mut topics = BTreeMap::new();
        for (name, id) in config {
            let channel = Channel::parse(name)
                .ok_or_else(|| format!("{name:?} is not a channel (email, push, sms, in_app)"))?;
            topics.insert(channel, *id);
        }
        Ok(Self { topics })
    }

    pub fn is_empty(&self) -> bool {
        self.topics.is_empty()
    }

    /// The `cio_subscription_preferences` attribute for these opt-ins, when topics are mapped:
    /// `{"topics": {"topic_<id>": bool}}`, Customer.io's documented shape.
    pub fn attribute(&self, preferences: &super::Preferences) -> Option<Value> {
        if self.topics.is_empty() {
            return None;
        }
        let value = |channel| match channel {
            Channel::Email => preferences.email,
            Channel::Push => preferences.push,
            Channel::Sms => preferences.sms,
            Channel::InApp => preferences.in_app,
        };
        let topics: Map<String, Value> = self
            .topics
            .iter()
            .map(|(channel, id)| (format!("topic_{id}"), Value::Bool(value(*channel))))
            .collect();
        Some(serde_json::json!({ "topics": topics }))
    }
}

/// A change Customer.io reported, to apply if it is newer than the row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteChange {
    pub user: UserId,
    pub change: PreferencesChange,
    /// When it happened in Customer.io (the event's `timestamp`), ms since the epoch.
    pub at_ms: i64,
}

impl RemoteChange {
    /// The change `event` reports; `None` for events about anything else, people without a
    /// valid `id`, or topics no channel maps to.
    pub fn of(event: &ReportingEvent, topics: &TopicMap) -> Option<Self> {
        let mut change = PreferencesChange::default();
        match &event.metric {
            Metric::Unsubscribed => Channel::Email.set(&mut change, false),
            Metric::Subscribed => Channel::Email.set(&mut change, true),
            Metric::CioSubscriptionPreferencesChanged | Metric::SubscriptionPreferencesChanged => {
                let chosen = chosen_topics(&event.raw)?;
                for (channel, id) in &topics.topics {
                    if let Some(value) = chosen.get(&format!("topic_{id}")).and_then(Value::as_bool)
                    {
                        channel.set(&mut change, value);
                    }
                }
            }
            _ => return None,
        }
        if change == PreferencesChange::default() {
            return None;
        }
        let user = event
            .identifiers
            .as_ref()
            .and_then(|i| i.get("id"))
            .and_then(|v| match v {
                Value::String(s) => Some(s.trim().to_string()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
            .and_then(|s| UserId::parse(&s).ok())?;
        Some(Self {
            user,
            change,
            at_ms: event.timestamp.timestamp_millis(),
        })
    }
}

/// `data.content`'s `topics` (Customer.io sends `content` as JSON text; an object is accepted).
fn chosen_topics(raw: &Value) -> Option<Map<String, Value>> {
    let content = raw.pointer("/data/content")?;
    let parsed;
    let content = match content {
        Value::String(text) => {
            parsed = serde_json::from_str::<Value>(text).ok()?;
            &parsed
        }
        other => other,
    };
    content.get("topics")?.as_object().cloned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(metric: &str, data: Value) -> ReportingEvent {
        ReportingEvent::from_value(json!({"event_id": "e1", "object_type": "customer",
            "metric": metric, "timestamp": 1_700_000_000, "data": data}))
        .unwrap()
    }

    #[test]
    fn global_subscription_follows_the_email_opt_in() {
        let none = TopicMap::default();
        let off = RemoteChange::of(
            &event("unsubscribed", json!({"identifiers": {"id": "42"}})),
            &none,
        )
        .unwrap();
        assert_eq!(off.user.as_str(), "42");
        assert_eq!(off.change.email, Some(false));
        assert_eq!((off.change.push, off.change.sms), (None, None));
        assert_eq!(off.at_ms, 1_700_000_000_000);
        let on = RemoteChange::of(
            &event("subscribed", json!({"identifiers": {"id": 42}})),
            &none,
        )
        .unwrap();
        assert_eq!(on.change.email, Some(true));
        // No local user to follow: a person known only by email.
        assert_eq!(
            RemoteChange::of(
                &event(
                    "unsubscribed",
                    json!({"identifiers": {"email": "a@example.com"}})
                ),
                &none
            ),
            None
        );
        assert_eq!(
            RemoteChange::of(
                &event("opened", json!({"identifiers": {"id": "42"}})),
                &none
            ),
            None
        );
    }

    #[test]
    fn topics_map_to_channels_both_ways() {
        let topics = TopicMap::parse(&[("sms".into(), 3), ("email".into(), 1)].into()).unwrap();
        assert!(TopicMap::parse(&[("fax".into(), 1)].into()).is_err());
        let content = r#"{"topics": {"topic_1": false, "topic_3": true, "topic_9": true}}"#;
        let changed = RemoteChange::of(
            &event(
                "cio_subscription_preferences_changed",
                json!({"identifiers": {"id": "7"}, "content": content}),
            ),
            &topics,
        )
        .unwrap();
        assert_eq!(changed.change.email, Some(false));
        assert_eq!(changed.change.sms, Some(true));
        assert_eq!(changed.change.push, None);
        // Unmapped topics only: nothing to apply.
        assert_eq!(
            RemoteChange::of(
                &event(
                    "cio_subscription_preferences_changed",
                    json!({"identifiers": {"id": "7"}, "content": {"topics": {"topic_9": true}}}),
                ),
                &topics
            ),
            None
        );
        let preferences = super::super::Preferences::default();
        assert_eq!(
            topics.attribute(&preferences),
            Some(json!({"topics": {"topic_1": true, "topic_3": false}}))
        );
        assert_eq!(TopicMap::default().attribute(&preferences), None);
    }
}
