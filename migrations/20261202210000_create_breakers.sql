-- One circuit breaker per external system, shared by every process (src/breaker.rs).
-- `closed`: calls go through, `failures` counts the consecutive transient failures of all
-- processes; `open`: nobody calls, the work waits in its queue; `half_open`: `prober` (a
-- process) makes one call, until `next_probe_at` (then another process may take over).
-- The counters are for operators, the chaos report and the tests: `saved_attempts` (work
-- items put back with their attempt untouched because the breaker was open) and
-- `spent_while_open` (attempts spent while it was not closed: 0 unless two processes race).
CREATE TABLE breakers (
    system           text PRIMARY KEY CHECK (system IN ('mvd', 'sms')),
    state            text NOT NULL DEFAULT 'closed' CHECK (state IN ('closed', 'open', 'half_open')),
    failures         integer NOT NULL DEFAULT 0 CHECK (failures >= 0),
    opened_at        timestamptz,
    next_probe_at    timestamptz,
    prober           text,
    opened_total     bigint NOT NULL DEFAULT 0,
    saved_attempts   bigint NOT NULL DEFAULT 0,
    spent_while_open bigint NOT NULL DEFAULT 0,
    updated_at       timestamptz NOT NULL DEFAULT now()
);

INSERT INTO breakers (system) VALUES ('mvd'), ('sms');
