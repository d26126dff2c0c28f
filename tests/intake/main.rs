//! Intake, outbox, dead letters and topology against real RabbitMQ and PostgreSQL.

#[path = "../common/mod.rs"]
mod common;

mod admission;
mod close;
mod dead_letters;
mod duplicates;
mod examples;
mod received;
mod topology;
mod vacuum;
