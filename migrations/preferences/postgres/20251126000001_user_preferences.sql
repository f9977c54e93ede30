-- Messaging preferences (src/preferences): one row per user who ever chose.
-- sync_pending: Customer.io has not yet confirmed this version; version: bumped by every change.
CREATE TABLE IF NOT EXISTS user_preferences (
    user_id      TEXT    PRIMARY KEY,
    email        BOOLEAN NOT NULL,
    push         BOOLEAN NOT NULL,
    sms          BOOLEAN NOT NULL,
    in_app       BOOLEAN NOT NULL,
    sync_pending BOOLEAN NOT NULL DEFAULT TRUE,
    version      BIGINT  NOT NULL DEFAULT 1,
    updated_at   BIGINT  NOT NULL -- milliseconds since the epoch
);

-- The re-sync task's outbox: the pending rows, oldest first.
CREATE INDEX IF NOT EXISTS user_preferences_pending
    ON user_preferences (updated_at) WHERE sync_pending;
