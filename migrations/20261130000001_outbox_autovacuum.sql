-- The outbox is a queue: each row is inserted, published within about a second and deleted.
-- At PostgreSQL's defaults autovacuum waits until a fifth of the table is dead and then works
-- with cost-based pauses, so under sustained load deleted rows pile up faster than they are
-- reclaimed (measured: 6 million dead rows in 54 minutes, no pass completed). Vacuum it after
-- a fixed number of dead rows, whatever its size, and without pauses: with the intake's
-- admission control (src/admission.rs) the live part stays a few thousand rows, so a pass is
-- quick. No truncation: a vacuum that frees the table's last pages tries for 5 s to take an
-- exclusive lock to give them back, which a queue table in use never grants (measured: every
-- pass took 5.1 s instead of milliseconds), and the pages are reused a moment later anyway.
ALTER TABLE outbox SET (
    vacuum_truncate = false,
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 10000,
    autovacuum_vacuum_cost_delay = 0,
    autovacuum_vacuum_insert_scale_factor = 0,
    autovacuum_vacuum_insert_threshold = 10000,
    autovacuum_analyze_scale_factor = 0,
    autovacuum_analyze_threshold = 10000
);
