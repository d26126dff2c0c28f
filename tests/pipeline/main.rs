//! The whole pipeline against real RabbitMQ and PostgreSQL, with the simulators over real HTTP.

#[path = "../common/mod.rs"]
mod common;

mod audit;
mod breaker;
mod duplicates;
mod forged;
mod kinds;
mod nodes;
mod phone;
mod privacy;
mod reconcile;
mod rejections;
mod retries;
mod tracing;
mod waits;
