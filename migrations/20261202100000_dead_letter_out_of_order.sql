-- Work items that are not their application's turn are parked with a kind of their own
-- (`out_of_order`, see src/route.rs): nothing ran for them, and they cannot be replayed.
ALTER TABLE dead_letters DROP CONSTRAINT dead_letters_error_kind_check;
ALTER TABLE dead_letters ADD CONSTRAINT dead_letters_error_kind_check
    CHECK (error_kind IN ('malformed', 'invalid', 'conflict', 'permanent', 'exhausted', 'out_of_order'));
