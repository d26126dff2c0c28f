//! Each broker user may do what `BrokerUser::permission` says and nothing else: the users are
//! made from that data (as `uidflow broker-users` makes them), never retyped here.

use std::collections::BTreeMap;

use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use uidflow::system::RunOptions;
use uidflow::topology::{self, BrokerUser};
use uuid::Uuid;

use crate::common::{DEADLINE, Person, TestApp, rabbitmqctl, rabbitmqctl_with_input, wait_until};

/// RabbitMQ's reply code for a refused permission.
const ACCESS_REFUSED: u16 = 403;

/// Users of every kind, unique to one test, on its vhost; deleted by [`Users::delete`].
struct Users {
    vhost: String,
    users: BTreeMap<BrokerUser, (String, String)>,
}

impl Users {
    async fn create(vhost: &str) -> Self {
        let suffix = Uuid::new_v4().simple().to_string();
        let users: BTreeMap<_, _> = BrokerUser::ALL
            .into_iter()
            .map(|user| {
                let name = format!("test-{}-{suffix}", user.name());
                (user, (name, Uuid::new_v4().simple().to_string()))
            })
            .collect();
        let entries: Vec<_> = users
            .iter()
            .map(|(user, (name, password))| (name.clone(), *user, password.clone()))
            .collect();
        let definitions = topology::users_definitions(&entries, vhost);
        rabbitmqctl_with_input(&["import_definitions"], definitions.to_string().as_bytes());
        let users = Self {
            vhost: vhost.to_owned(),
            users,
        };
        // The import is asynchronous on the broker's side: wait until every user can log in.
        for user in BrokerUser::ALL {
            wait_until(&format!("user {} to exist", user.name()), || async {
                Connection::connect(&users.url(user), ConnectionProperties::default())
                    .await
                    .ok()
            })
            .await;
        }
        users
    }

    fn url(&self, user: BrokerUser) -> String {
        let (name, password) = &self.users[&user];
        format!("amqp://{name}:{password}@127.0.0.1:5672/{}", self.vhost)
    }

    async fn channel(&self, user: BrokerUser) -> (Connection, Channel) {
        let connection = Connection::connect(&self.url(user), ConnectionProperties::default())
            .await
            .expect("the user logs in");
        let channel = connection.create_channel().await.expect("a channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        (connection, channel)
    }

    fn delete(self) {
        for (name, _) in self.users.values() {
            rabbitmqctl(&["delete_user", name]);
        }
    }
}

/// The reply code that closed the channel, if the operation failed with one.
fn refusal<T: std::fmt::Debug>(result: Result<T, lapin::Error>) -> Option<u16> {
    match result {
        Ok(value) => panic!("expected a refusal, got {value:?}"),
        Err(error) => match error.kind() {
            lapin::ErrorKind::ProtocolError(amqp) => Some(amqp.get_id()),
            _ => None,
        },
    }
}

/// Publishes with confirms on a fresh channel of `connection`; the broker's answer.
async fn publish(
    connection: &Connection,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
) -> Result<lapin::Confirmation, lapin::Error> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into());
    let confirm = channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            body,
            properties,
        )
        .await?
        .await?;
    // A refused publish closes the channel asynchronously: a round trip on the same channel
    // surfaces the close if the confirm raced ahead of it.
    channel
        .queue_declare(
            "uid.intake.application".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok(confirm)
}

async fn publish_json(
    connection: &Connection,
    routing_key: &str,
    body: &serde_json::Value,
) -> lapin::Confirmation {
    publish(
        connection,
        topology::INTAKE_EXCHANGE,
        routing_key,
        &serde_json::to_vec(body).unwrap(),
    )
    .await
    .expect("the intake user may publish to uid.intake")
}

#[tokio::test]
async fn the_intake_user_may_publish_to_uid_intake_only() {
    let app = TestApp::prepare().await;
    let users = Users::create(&app.vhost).await;
    let (intake, _) = users.channel(BrokerUser::Intake).await;
    let body = br#"{"not": "read by anyone"}"#;
    let mut refused = Vec::new();
    for (exchange, routing_key) in [
        (topology::WORK_EXCHANGE, "register"),
        ("", "uid.step.register"),
        ("", "uid.intake.application"),
        ("amq.direct", "uid.step.register"),
        (topology::RETRY_EXCHANGE, "register.200ms"),
        (topology::EVENTS_EXCHANGE, "application.completed"),
        (topology::DEAD_LETTER_EXCHANGE, ""),
        (topology::PARKING_EXCHANGE, ""),
    ] {
        let answer = publish(&intake, exchange, routing_key, body).await;
        refused.push(((exchange, routing_key), refusal(answer)));
    }
    assert!(
        refused
            .iter()
            .all(|(_, code)| *code == Some(ACCESS_REFUSED)),
        "every publish outside uid.intake is refused with ACCESS_REFUSED: {refused:?}"
    );
    // Nor may it read a queue or declare one.
    let channel = intake.create_channel().await.unwrap();
    let consume = channel
        .basic_consume(
            "uid.step.register".into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await;
    assert_eq!(refusal(consume), Some(ACCESS_REFUSED));
    let channel = intake.create_channel().await.unwrap();
    let declare = channel
        .queue_declare(
            "uid.step.mine".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await;
    assert_eq!(refusal(declare), Some(ACCESS_REFUSED));
    // A passive declare needs no permission (what /v1/queues relies on is not a right).
    let channel = intake.create_channel().await.unwrap();
    channel
        .queue_declare(
            "uid.step.register".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("a passive declare is allowed without configure rights");
    // The allowed publish, for contrast: acked (the application's processing is the next test).
    let confirm = publish(&intake, topology::INTAKE_EXCHANGE, "application", body)
        .await
        .expect("uid.intake is writable");
    assert!(confirm.is_ack(), "{confirm:?}");
    let _ = intake.close(200, "done".into()).await;
    users.delete();
    app.stop().await;
}

#[tokio::test]
async fn the_events_user_follows_uid_events_through_its_own_queues_and_never_publishes() {
    let app = TestApp::prepare().await;
    let users = Users::create(&app.vhost).await;
    let (events, channel) = users.channel(BrokerUser::Events).await;
    let own = format!("{}test-crm", topology::FOLLOWER_QUEUE_PREFIX);
    channel
        .queue_declare(
            own.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("its own queue");
    channel
        .queue_bind(
            own.as_str().into(),
            topology::EVENTS_EXCHANGE.into(),
            "application.*".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bound to uid.events");
    let server_named = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("a server-named exclusive queue");
    channel
        .queue_bind(
            server_named.name().clone(),
            topology::EVENTS_EXCHANGE.into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bound to uid.events");
    // An event published by uidflow (here: guest on its behalf) reaches both queues.
    let event = br#"{"application_id": "00000000-0000-4000-8000-000000000001"}"#;
    let confirm = app
        .channel
        .basic_publish(
            topology::EVENTS_EXCHANGE.into(),
            "application.completed".into(),
            BasicPublishOptions::default(),
            event,
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirm.is_ack());
    for queue in [own.as_str(), server_named.name().as_str()] {
        let mut consumer = channel
            .basic_consume(
                queue.into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("it consumes its own queue");
        let delivery = tokio::time::timeout(DEADLINE, consumer.next())
            .await
            .expect("the event arrives")
            .expect("a delivery")
            .expect("no error");
        assert_eq!(delivery.data, event);
        delivery.ack(BasicAckOptions::default()).await.unwrap();
    }
    let mut refused = Vec::new();
    for (exchange, routing_key) in [
        (topology::EVENTS_EXCHANGE, "application.completed"),
        (topology::INTAKE_EXCHANGE, "application"),
        ("", own.as_str()),
    ] {
        refused.push((
            exchange,
            refusal(publish(&events, exchange, routing_key, event).await),
        ));
    }
    assert!(
        refused
            .iter()
            .all(|(_, code)| *code == Some(ACCESS_REFUSED)),
        "the events user publishes nowhere uidflow reads: {refused:?}"
    );
    // It may not take uidflow's queues either, by name or by binding.
    for queue in ["uid.step.register", "uid.dead-letter"] {
        let channel = events.create_channel().await.unwrap();
        let consume = channel
            .basic_consume(
                queue.into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await;
        assert_eq!(refusal(consume), Some(ACCESS_REFUSED), "{queue}");
    }
    let channel = events.create_channel().await.unwrap();
    let bind = channel
        .queue_bind(
            own.as_str().into(),
            topology::WORK_EXCHANGE.into(),
            "register".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await;
    assert_eq!(refusal(bind), Some(ACCESS_REFUSED));
    let _ = events.close(200, "done".into()).await;
    users.delete();
    app.stop().await;
}

#[tokio::test]
async fn the_system_runs_as_the_uidflow_user_fed_by_the_intake_user() {
    let app = TestApp::prepare_pipeline("30s").await;
    let users = Users::create(&app.vhost).await;
    let mut settings = app.settings.clone();
    settings.amqp_url = users.url(BrokerUser::Uidflow).into();
    // Every part, the API included, as `uidflow run` under the uidflow user.
    let app = app
        .start_pipeline_as(&settings, RunOptions::default())
        .await;
    let (intake, _) = users.channel(BrokerUser::Intake).await;
    let person = Person::new(4811);
    let application = person.application("issue");
    let id = application["application_id"].as_str().unwrap().to_owned();
    let confirm = publish_json(&intake, "application", &application).await;
    assert!(confirm.is_ack(), "{confirm:?}");
    app.wait_for_status(&id, "awaiting_phone_confirmation")
        .await;
    let code = app.last_code(&person.phone);
    let confirmation = serde_json::json!({"application_id": id, "code": code});
    let confirm = publish_json(&intake, "phone-confirmation", &confirmation).await;
    assert!(confirm.is_ack(), "{confirm:?}");
    app.wait_for_status(&id, "completed").await;
    // The operator's queue view (passive declares as the uidflow user) sees its queues.
    let queues = app.call("GET", "/v1/queues", Some("operator"), None).await;
    assert_eq!(queues.status, 200, "{}", queues.text);
    let _ = intake.close(200, "done".into()).await;
    let app = {
        let mut app = app;
        app.shutdown_system().await;
        app
    };
    users.delete();
    app.stop().await;
}
