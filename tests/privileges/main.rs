//! Least privilege: the broker users of `uidflow::topology::BrokerUser` and the database's
//! runtime role (`uidflow::db::RUNTIME_ROLE`), against real RabbitMQ and PostgreSQL.

#[path = "../common/mod.rs"]
mod common;

mod broker;
mod database;
