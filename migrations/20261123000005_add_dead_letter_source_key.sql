-- What the broker dead-lettered, identified (queue, reason, time, body): the keeper parks each
-- such message once, even when it is redelivered after the keeper committed but before it acked.
ALTER TABLE dead_letters ADD COLUMN source_key text;
CREATE UNIQUE INDEX dead_letters_source_key ON dead_letters (source_key) WHERE source_key IS NOT NULL;
