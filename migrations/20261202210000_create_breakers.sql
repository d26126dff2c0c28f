-- One circuit breaker per external system, shared by every process (src/breaker.rs).
-- `closed`: calls go through, `failures` counts the consecutive transient failures of all
-- processes; `open`: nobody calls, the work waits in its queue; `half_open`: `prober` (a
-- process) makes one call, until `next_probe_at` (then another process may take over).
-- `saved_attempts` counts the work items put back with their attempt untouched because the
-- breaker was open (operators, the chaos report, the tests).
CREATE TABLE breakers (
    system           text PRIMARY KEY CHECK (system IN ('mvd', 'sms')),
    state            text NOT NULL DEFAULT 'closed' CHECK (state IN ('closed', 'open', 'half_open')),
    failures         integer NOT NULL DEFAULT 0 CHECK (failures >= 0),
    opened_at        timestamptz,
    next_probe_at    timestamptz,
    prober           text,
    opened_total     bigint NOT NULL DEFAULT 0,
    saved_attempts   bigint NOT NULL DEFAULT 0,
    updated_at       timestamptz NOT NULL DEFAULT now()
);

INSERT INTO breakers (system) VALUES ('mvd'), ('sms');

-- Every change of a breaker (opened, probing, reopened, closed), for operators and for counting
-- the attempts spent while a breaker was open (`breaker::spent_while_open`).
CREATE TABLE breaker_events (
    id     bigserial PRIMARY KEY,
    system text NOT NULL REFERENCES breakers (system),
    change text NOT NULL CHECK (change IN ('opened', 'probing', 'reopened', 'closed')),
    at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    by     text
);
CREATE INDEX breaker_events_system_at ON breaker_events (system, at);
