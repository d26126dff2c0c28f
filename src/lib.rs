//! uidflow: issues and manages the unique identifier (UID) of the Unified Portal of Electronic
//! Services. This library is the shared runtime and domain; the `uidflow` binary lives in
//! `workers/uidflow-cli` (see ARCHITECTURE.md for why, and for the map of the code).

pub mod admission;
pub mod amqp;
pub mod api;
pub mod applications;
pub mod audit;
pub mod breaker;
pub mod config;
pub mod consumer;
pub mod db;
pub mod dead_letters;
pub mod domain;
pub mod http;
pub mod intake;
pub mod messages;
pub mod outbox;
pub mod reconcile;
pub mod retention;
pub mod retry;
pub mod rotation;
pub mod route;
pub mod runtime;
pub mod secrets;
pub mod sim;
pub mod sms;
pub mod subject;
pub mod system;
pub mod telemetry;
pub mod topology;
pub mod trace;
pub mod vacuum;
pub mod validation;
pub mod vault;
