//! Raw delivery bodies through the intake's pure path and the operator's view of a dead letter:
//! `intake::decode` → `validation::validate` (as of 2026-11-23) → `intake::content_hash`,
//! the trace derivation and `db::pg_safe_json`; `dead_letters::show_body`. Invariants in
//! `src/lib.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    uidflow_fuzz::check_body(data);
});
