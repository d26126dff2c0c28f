-- What an unfinished application waits for, beyond what its status says (the reconciler's
-- deadline, src/reconcile.rs): a step's retry is due at `due_at`, as attempt `due_attempt` of
-- `due_step`. NULL when nothing waits but the hand-off of the last status change
-- (`updated_at`) or a code's expiry (`phone_confirmations.expires_at`). Only the retry path
-- and the reconciler write these; no index: the reconciler reads the few unfinished
-- applications through `applications_by_status`.
ALTER TABLE applications
    ADD COLUMN due_at timestamptz,
    ADD COLUMN due_step text,
    ADD COLUMN due_attempt integer;
