-- What makes the pipeline exactly-once in effect.

-- A step's "done" row: written in the same transaction as the step's effects, so a redelivered,
-- duplicated or replayed message finds it and does not run the step again.
CREATE TABLE step_ledger (
    application_id uuid NOT NULL REFERENCES applications (application_id),
    step           text NOT NULL,
    outcome        jsonb NOT NULL,
    completed_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (application_id, step)
);

-- Messages to publish after a commit (the transactional outbox). The relay publishes rows in id
-- order with publisher confirms and deletes a row only once the broker confirmed it.
CREATE TABLE outbox (
    id           bigserial PRIMARY KEY,
    exchange     text NOT NULL,
    routing_key  text NOT NULL,
    message_id   text,
    content_type text,
    headers      jsonb NOT NULL DEFAULT '{}'::jsonb,
    body         bytea NOT NULL,
    mandatory    boolean NOT NULL DEFAULT true,
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    not_before   timestamptz NOT NULL DEFAULT '-infinity',
    attempts     integer NOT NULL DEFAULT 0,
    last_error   text
);
CREATE INDEX outbox_due ON outbox (not_before, id);

-- Dead letters parked for operators (CONTRACT §2 headers). `body` is the message byte for byte.
CREATE TABLE dead_letters (
    id               bigserial PRIMARY KEY,
    application_id   uuid,
    step             text NOT NULL,
    error_kind       text NOT NULL CHECK (error_kind IN ('malformed', 'invalid', 'conflict', 'permanent', 'exhausted')),
    error            text NOT NULL,
    reason_code      text,
    body             bytea NOT NULL,
    headers          jsonb NOT NULL,
    routing_key      text NOT NULL,
    attempts         integer NOT NULL,
    first_failed_at  timestamptz NOT NULL,
    last_failed_at   timestamptz NOT NULL,
    parked_at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    state            text NOT NULL DEFAULT 'parked' CHECK (state IN ('parked', 'replayed', 'discarded')),
    state_changed_at timestamptz,
    state_changed_by text,
    state_reason     text
);
CREATE INDEX dead_letters_newest ON dead_letters (id DESC) WHERE state = 'parked';
CREATE INDEX dead_letters_by_application ON dead_letters (application_id);
