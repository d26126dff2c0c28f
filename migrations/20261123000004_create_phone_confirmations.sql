-- The phone-confirmation code of an application waiting for one (CONTRACT §2.2). Only the
-- argon2id hash of the code is stored; `generation` counts codes sent (each resend replaces the
-- hash, so only the code in the last SMS works).
CREATE TABLE phone_confirmations (
    application_id uuid PRIMARY KEY REFERENCES applications (application_id),
    code_hash      text NOT NULL CHECK (code_hash LIKE '$argon2id$%'),
    generation     integer NOT NULL,
    wrong_attempts integer NOT NULL DEFAULT 0,
    sent_at        timestamptz NOT NULL,
    expires_at     timestamptz NOT NULL
);

-- Per-message TTL of outbox messages (retry waits), in milliseconds.
ALTER TABLE outbox ADD COLUMN expiration_ms bigint;
