-- The registry read by the portal (CONTRACT §7). Column names are the contract's.
CREATE TABLE uid_registry (
    uid                 text PRIMARY KEY CHECK (uid ~ '^[1-6][0-9]{6}[A-Z][0-9]{3}[A-Z]{2}[0-9]$'),
    phone               text NOT NULL UNIQUE CHECK (phone ~ '^\+375(25|29|33|44)[0-9]{7}$'),
    status              text NOT NULL CHECK (status IN ('active', 'blocked')),
    password_hash       text,
    password_temporary  boolean NOT NULL DEFAULT true,
    password_expires_at timestamptz,
    issued_at           timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL,
    blocked_at          timestamptz,
    CHECK (password_hash IS NULL OR password_hash LIKE '$argon2id$%')
);

-- Every change to a registry row: what, when, which application. Append-only.
CREATE TABLE uid_registry_history (
    id             bigserial PRIMARY KEY,
    uid            text NOT NULL REFERENCES uid_registry (uid),
    application_id uuid NOT NULL,
    change         text NOT NULL CHECK (change IN ('issued', 'blocked', 'unblocked', 'phone_changed', 'password_reset')),
    at             timestamptz NOT NULL DEFAULT clock_timestamp(),
    detail         jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX uid_registry_history_by_uid ON uid_registry_history (uid, id);
