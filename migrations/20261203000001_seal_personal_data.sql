-- Personal data at rest (docs/PRIVACY.md, src/vault.rs).
--
-- An application's payload moves out of its status row into `application_payloads`, sealed
-- (XChaCha20-Poly1305) under the data key `key_id`; `subject_index` is the blind index
-- (HMAC-SHA-256) of the applicant's identification number, for a person's data request. The
-- status row, rewritten at every hop, keeps only what every answer shows: the masked
-- identification number and phone. Retention deletes the payload row and stamps
-- `personal_data_erased_at`.
CREATE TABLE application_payloads (
    application_id uuid PRIMARY KEY REFERENCES applications (application_id),
    key_id         text NOT NULL,
    sealed         bytea NOT NULL,
    subject_index  bytea
);
CREATE INDEX application_payloads_by_subject ON application_payloads (subject_index)
    WHERE subject_index IS NOT NULL;
CREATE INDEX application_payloads_by_key ON application_payloads (key_id);

-- `payload` stays only for rows written before this migration, until `uidflow keys rotate`
-- seals them (it also seals what it finds in the clear).
ALTER TABLE applications
    ALTER COLUMN payload DROP NOT NULL,
    ADD COLUMN masked_identification_number text,
    ADD COLUMN masked_phone text,
    ADD COLUMN personal_data_erased_at timestamptz;
-- Duplicate detection compares a keyed hash (HMAC-SHA-256 under the index key), so the stored
-- value cannot confirm a guess at the content. Rows from before keep their plain SHA-256,
-- which the intake still accepts as "the same content".
ALTER TABLE applications RENAME COLUMN content_sha256 TO content_hmac;

-- The masks of src/domain/mask.rs, for the rows written before.
UPDATE applications SET
    masked_identification_number = CASE
        WHEN payload->'applicant'->>'identification_number' IS NULL THEN NULL
        WHEN payload->'applicant'->>'identification_number' ~ '^[A-Z0-9]{14}$'
            THEN left(payload->'applicant'->>'identification_number', 8) || '***'
                 || right(payload->'applicant'->>'identification_number', 3)
        ELSE '***' END,
    masked_phone = CASE
        WHEN payload->>'phone' IS NULL THEN NULL
        WHEN payload->>'phone' ~ '^\+375[0-9]{9}$'
            THEN left(payload->>'phone', 6) || '***' || right(payload->>'phone', 4)
        ELSE '***' END
WHERE payload IS NOT NULL;

-- A dead letter's body is sealed under `body_key_id` (NULL: a body from before, in the clear,
-- or an erased one); `subject_index` as above when the body names a person; retention empties
-- the body of a settled dead letter and stamps `body_erased_at`.
ALTER TABLE dead_letters
    ADD COLUMN body_key_id text,
    ADD COLUMN subject_index bytea,
    ADD COLUMN body_erased_at timestamptz;
CREATE INDEX dead_letters_by_subject ON dead_letters (subject_index) WHERE subject_index IS NOT NULL;
