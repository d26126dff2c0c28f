//! The HTTP API (CONTRACT §3) against the running system: auth, scope, masking, pagination,
//! dead-letter replay and discard, metrics, and conformance to `schemas/openapi.yaml`.

#[path = "../common/mod.rs"]
mod common;

mod access;
mod applications;
mod console;
mod dead_letters;
mod deploy_metrics;
mod observability;
