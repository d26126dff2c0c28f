use std::collections::BTreeMap;

use lapin::options::{ExchangeDeclareOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use serde_json::Value;
use uidflow::topology::{Arg, Topology};

use crate::common::TestApp;

const DEFINITIONS: &str = "deploy/rabbitmq/definitions.json";

fn shipped() -> Value {
    let path = format!("{}/{DEFINITIONS}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).expect("definitions.json is shipped"))
        .unwrap()
}

fn default_topology() -> Topology {
    let settings = uidflow::config::Settings::from_map(&Default::default()).unwrap();
    Topology::for_settings(&settings)
}

#[test]
fn definitions_json_describes_the_same_topology_as_the_code() {
    let file = Topology::from_definitions(&shipped()).expect("definitions.json parses");
    assert_eq!(
        file,
        default_topology(),
        "regenerate with: cargo run -p uidflow-cli -- migrate --print-definitions > {DEFINITIONS}"
    );
}

#[test]
fn definitions_json_carries_the_broker_users_permissions_of_the_code() {
    assert_eq!(
        shipped()["permissions"],
        uidflow::topology::permissions_definitions("/"),
        "regenerate with: cargo run -p uidflow-cli -- migrate --print-definitions > {DEFINITIONS}"
    );
}

fn table(arguments: &BTreeMap<String, Arg>) -> FieldTable {
    let mut table = FieldTable::default();
    for (key, value) in arguments {
        let value = match value {
            Arg::Str(s) => AMQPValue::LongString(s.as_str().into()),
            Arg::Int(n) => AMQPValue::LongLongInt(*n),
        };
        table.insert(key.as_str().into(), value);
    }
    table
}

/// The broker itself confirms the agreement: re-declaring every queue of definitions.json with
/// the file's arguments on a vhost the code declared succeeds only if the arguments are equal
/// (RabbitMQ answers PRECONDITION_FAILED otherwise, as the last check shows).
#[tokio::test]
async fn the_broker_accepts_definitions_json_on_top_of_the_declared_topology() {
    let app = TestApp::prepare().await;
    let file = Topology::from_definitions(&shipped()).unwrap();
    for exchange in &file.exchanges {
        let channel = app.connection.create_channel().await.unwrap();
        channel
            .exchange_declare(
                exchange.name.as_str().into(),
                lapin::ExchangeKind::Custom(exchange.kind.as_str().into()),
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("exchange {}: {e}", exchange.name));
    }
    for queue in &file.queues {
        let channel = app.connection.create_channel().await.unwrap();
        channel
            .queue_declare(
                queue.name.as_str().into(),
                QueueDeclareOptions::durable(),
                table(&queue.arguments),
            )
            .await
            .unwrap_or_else(|e| panic!("queue {} differs from the code: {e}", queue.name));
    }
    let mut changed = file.queues[0].arguments.clone();
    changed.insert(
        "x-delivery-limit".into(),
        Arg::Int(uidflow::topology::DELIVERY_LIMIT + 1),
    );
    let channel = app.connection.create_channel().await.unwrap();
    let refused = channel
        .queue_declare(
            file.queues[0].name.as_str().into(),
            QueueDeclareOptions::durable(),
            table(&changed),
        )
        .await;
    assert!(
        refused.is_err(),
        "a different argument is refused, so the check above can fail"
    );
    app.stop().await;
}
