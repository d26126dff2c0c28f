-- Applications and their history (CONTRACT §3, §4).
-- `payload` keeps the application as received (after normalisation of the identification
-- number and phone when they were valid); it holds personal data and is only ever shown masked.
CREATE TABLE applications (
    application_id  uuid PRIMARY KEY,
    kind            text CHECK (kind IN ('issue', 'block', 'unblock', 'change_phone')),
    status          text NOT NULL CHECK (status IN ('received', 'verifying_identity',
                        'awaiting_phone_confirmation', 'registering', 'sending_password',
                        'completed', 'rejected', 'failed')),
    reason          jsonb,
    issuing_service text,
    content_sha256  bytea NOT NULL,
    payload         jsonb NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at      timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Newest first, per issuing service and overall (the clerk's and the operator's lists).
CREATE INDEX applications_by_service ON applications (issuing_service, created_at DESC, application_id DESC);
CREATE INDEX applications_by_time ON applications (created_at DESC, application_id DESC);
CREATE INDEX applications_by_status ON applications (status, created_at DESC);

-- One row per status change (and per note an operator or the system adds), in order.
CREATE TABLE application_history (
    id             bigserial PRIMARY KEY,
    application_id uuid NOT NULL REFERENCES applications (application_id),
    at             timestamptz NOT NULL DEFAULT clock_timestamp(),
    status         text NOT NULL,
    step           text NOT NULL,
    detail         text
);
CREATE INDEX application_history_by_application ON application_history (application_id, id);
