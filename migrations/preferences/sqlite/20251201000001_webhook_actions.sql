-- The webhook action ledger (src/preferences/actions.rs), kept for webhooks.tolerance_secs.
-- done: reporting events acted on (their envelope confirmed by RabbitMQ), so a retried or
-- replayed event is not acted on twice; acted_at is this gateway's clock, seconds.
CREATE TABLE IF NOT EXISTS webhook_actions_done (
    event_id TEXT   PRIMARY KEY NOT NULL,
    acted_at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS webhook_actions_done_acted_at ON webhook_actions_done (acted_at);

-- latest: per person and kind of state (suppression, subscription), the event time (Customer.io's
-- `timestamp`, seconds) of the newest action applied; an older action of that kind is dropped.
CREATE TABLE IF NOT EXISTS webhook_actions_latest (
    person   TEXT   NOT NULL,
    kind     TEXT   NOT NULL,
    event_at BIGINT NOT NULL,
    event_id TEXT   NOT NULL,
    PRIMARY KEY (person, kind)
);
CREATE INDEX IF NOT EXISTS webhook_actions_latest_event_at ON webhook_actions_latest (event_at);
