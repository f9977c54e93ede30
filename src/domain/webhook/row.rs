//! The warehouse row of docs/reference.md §7: one per reporting event, the same columns in
//! every sink. Times are UTC and serialize as RFC 3339 (`2021-02-11T17:04:49Z`); `identifiers`
//! and `raw` are JSON; identifiers Customer.io sends as numbers (campaign ids) are kept as text.

use super::ReportingEvent;
use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Row {
    pub event_id: String,
    pub object_type: String,
    pub metric: String,
    #[serde(with = "rfc3339")]
    pub timestamp: DateTime<Utc>,
    pub customer_id: Option<String>,
    pub recipient: Option<String>,
    pub delivery_id: Option<String>,
    pub campaign_id: Option<String>,
    pub action_id: Option<String>,
    pub broadcast_id: Option<String>,
    pub newsletter_id: Option<String>,
    pub transactional_message_id: Option<String>,
    pub identifiers: Option<Value>,
    pub raw: Value,
    #[serde(with = "rfc3339")]
    pub received_at: DateTime<Utc>,
    // Added later: rows written before them read back as null.
    #[serde(default)]
    pub journey_id: Option<String>,
    #[serde(default)]
    pub trigger_event_id: Option<String>,
    #[serde(default)]
    pub failure_message: Option<String>,
    #[serde(default)]
    pub href: Option<String>,
    #[serde(default)]
    pub link_id: Option<String>,
    #[serde(default)]
    pub machine: Option<bool>,
    #[serde(default)]
    pub prefetched: Option<bool>,
}

impl Row {
    /// The column names, in table order.
    pub const COLUMNS: [&'static str; 22] = [
        "event_id",
        "object_type",
        "metric",
        "timestamp",
        "customer_id",
        "recipient",
        "delivery_id",
        "campaign_id",
        "action_id",
        "broadcast_id",
        "newsletter_id",
        "transactional_message_id",
        "identifiers",
        "raw",
        "received_at",
        "journey_id",
        "trigger_event_id",
        "failure_message",
        "href",
        "link_id",
        "machine",
        "prefetched",
    ];

    pub fn new(event: &ReportingEvent, received_at: DateTime<Utc>) -> Self {
        Self {
            event_id: event.event_id.as_str().to_string(),
            object_type: event.object_type.as_str().to_string(),
            metric: event.metric.as_str().to_string(),
            timestamp: event.timestamp,
            customer_id: event.customer_id.clone(),
            recipient: event.recipient.clone(),
            delivery_id: event.delivery_id.clone(),
            campaign_id: event.campaign_id.clone(),
            action_id: event.action_id.clone(),
            broadcast_id: event.broadcast_id.clone(),
            newsletter_id: event.newsletter_id.clone(),
            transactional_message_id: event.transactional_message_id.clone(),
            identifiers: event.identifiers.clone(),
            raw: event.raw.clone(),
            // Stored at millisecond precision, like it is written.
            received_at: DateTime::from_timestamp_millis(received_at.timestamp_millis())
                .unwrap_or(received_at),
            journey_id: event.details.journey_id.clone(),
            trigger_event_id: event.details.trigger_event_id.clone(),
            failure_message: event.details.failure_message.clone(),
            href: event.details.href.clone(),
            link_id: event.details.link_id.clone(),
            machine: event.details.machine,
            prefetched: event.details.prefetched,
        }
    }

    /// The UTC day of the event: its partition in every sink.
    pub fn day(&self) -> NaiveDate {
        self.timestamp.date_naive()
    }
}

/// RFC 3339 in UTC with a `Z`, milliseconds only when there are any.
pub(crate) mod rfc3339 {
    use super::*;

    pub fn format(t: &DateTime<Utc>) -> String {
        t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
    }

    pub fn serialize<S: serde::Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(t))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let text = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&text)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_row_has_exactly_the_contract_columns() {
        let event = ReportingEvent::from_value(json!({"event_id": "e", "object_type": "sms",
            "metric": "delivered", "timestamp": 1_700_000_000,
            "data": {"customer_id": "9", "recipient": "+15550100", "broadcast_id": 3,
                "journey_id": "j1", "link_id": 12, "machine": true, "prefetched": "yes"}}))
        .unwrap();
        let received = DateTime::parse_from_rfc3339("2023-11-14T22:13:21.123456Z")
            .unwrap()
            .with_timezone(&Utc);
        let row = Row::new(&event, received);
        let value = serde_json::to_value(&row).unwrap();
        let keys: Vec<&str> = value
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut expected = Row::COLUMNS.to_vec();
        expected.sort();
        let mut keys_sorted = keys.clone();
        keys_sorted.sort();
        assert_eq!(keys_sorted, expected);
        assert_eq!(value["timestamp"], "2023-11-14T22:13:20Z");
        assert_eq!(value["received_at"], "2023-11-14T22:13:21.123Z");
        assert_eq!(value["broadcast_id"], "3");
        assert_eq!(value["identifiers"], Value::Null);
        assert_eq!(row.day().to_string(), "2023-11-14");
        assert_eq!(value["journey_id"], "j1");
        assert_eq!(value["link_id"], "12");
        assert_eq!(value["machine"], true);
        assert_eq!(
            value["prefetched"],
            Value::Null,
            "not a boolean: only in raw"
        );
        assert_eq!(value["href"], Value::Null);
        let back: Row = serde_json::from_value(value.clone()).unwrap();
        assert_eq!(back, row);
        // A row written before the later columns existed still reads.
        let mut old = value;
        for column in [
            "journey_id",
            "trigger_event_id",
            "failure_message",
            "href",
            "link_id",
            "machine",
            "prefetched",
        ] {
            old.as_object_mut().unwrap().remove(column);
        }
        let old: Row = serde_json::from_value(old).unwrap();
        assert_eq!(old.journey_id, None);
    }
}
