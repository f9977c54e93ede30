//! Customer.io's documented limits, enforced before anything is sent.

/// Maximum bytes of a person identifier (`id`, `email`, `cio_id`).
pub const MAX_IDENTIFIER_BYTES: usize = 150;
/// Maximum bytes of an event name.
pub const MAX_EVENT_NAME_BYTES: usize = 100;
/// Maximum bytes of an attribute (or event property) name.
pub const MAX_ATTRIBUTE_NAME_BYTES: usize = 150;
/// Maximum bytes of one attribute value once serialized.
pub const MAX_ATTRIBUTE_VALUE_BYTES: usize = 1000;
/// Reserved attributes whose value is a structure Customer.io reads (a person's relationships
/// to objects, their subscription preferences), not a value: the 1000-byte limit is not theirs.
pub const STRUCTURED_ATTRIBUTES: [&str; 2] = ["cio_relationships", "cio_subscription_preferences"];
/// Maximum attributes per identify call.
pub const MAX_ATTRIBUTES_PER_CALL: usize = 300;
/// Attributes the gateway adds to every identify (`_env`, `_updated_at`).
pub const GATEWAY_ATTRIBUTES: usize = 2;
/// Maximum serialized size of an event's data (Track v1 body limit).
pub const MAX_EVENT_DATA_BYTES: usize = 100_000;
/// Maximum serialized size of one v2 operation.
pub const MAX_V2_OPERATION_BYTES: usize = 32 * 1024;
/// Maximum serialized size of one v2 batch request.
pub const MAX_V2_BATCH_BYTES: usize = 500 * 1024;
/// Maximum size of a producer envelope the gateway accepts.
pub const MAX_ENVELOPE_BYTES: usize = 512 * 1024;
/// Maximum bytes of a correlation id.
pub const MAX_CORRELATION_ID_BYTES: usize = 128;
/// "Trigger Data | 50000 bytes | Max length of the data section in the Trigger call"
/// (API-triggered broadcasts).
pub const MAX_TRIGGER_DATA_BYTES: usize = 50_000;
/// "Recipient List | 10000 recipients | Max number of ids or emails included in the Trigger call".
pub const MAX_TRIGGER_RECIPIENTS: usize = 10_000;
/// "You are limited to 1000 customer IDs per request" (add to / remove from a manual segment).
pub const MAX_SEGMENT_IDS: usize = 1000;
