//! The RabbitMQ topology: every exchange, queue and binding uidflow uses, as data.
//!
//! The same [`Topology`] value is declared on the broker at start-up ([`crate::amqp::declare`])
//! and rendered as `deploy/rabbitmq/definitions.json` ([`Topology::definitions`]); a test checks
//! that the shipped file and the code agree. Names under CONTRACT §2 (`uid.intake`,
//! `uid.events`, `uid.dead-letter`) are external; the rest are ours.
//!
//! Every queue is a quorum queue with its arguments spelled out (no broker defaults):
//! - work queues (`uid.intake.*`, `uid.step.*`) dead-letter to `uid.parking` after
//!   [`DELIVERY_LIMIT`] deliveries, where the dead-letter keeper records them;
//! - retry wait queues (`uid.retry.<step>.<delay>`) hold a message for `<delay>` and then
//!   dead-letter it back to `uid.work` with the step as routing key;
//! - `uid.parking` dead-letters to `uid.dead-letter` if the keeper itself keeps failing;
//! - `uid.dead-letter` is terminal: no delivery limit, so the broker never drops a parked message.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use crate::config::format_duration;

/// Intake exchange (CONTRACT §2).
pub const INTAKE_EXCHANGE: &str = "uid.intake";
/// Status events exchange (CONTRACT §2).
pub const EVENTS_EXCHANGE: &str = "uid.events";
/// Exchange in front of the dead-letter queue.
pub const DEAD_LETTER_EXCHANGE: &str = "uid.dead-letter";
/// Queue of every message the system could not process (CONTRACT §2).
pub const DEAD_LETTER_QUEUE: &str = "uid.dead-letter";
/// Exchange of the step queues; routing key = step name.
pub const WORK_EXCHANGE: &str = "uid.work";
/// Exchange of the retry wait queues; routing key = `<step>.<delay>`.
pub const RETRY_EXCHANGE: &str = "uid.retry";
/// Direct exchange of the steps' timer queues (`<step>.<ttl>` → `uid.timer.<step>.<ttl>`).
pub const TIMER_EXCHANGE: &str = "uid.timer";
/// Exchange where the broker dead-letters work queues' messages.
pub const PARKING_EXCHANGE: &str = "uid.parking";
/// Queue the dead-letter keeper consumes.
pub const PARKING_QUEUE: &str = "uid.parking";
/// Queue of new applications (routing key `application`).
pub const APPLICATION_QUEUE: &str = "uid.intake.application";
/// Queue of phone confirmations (routing key `phone-confirmation`).
pub const PHONE_CONFIRMATION_QUEUE: &str = "uid.intake.phone-confirmation";
/// Routing key of applications on `uid.intake`.
pub const APPLICATION_ROUTING_KEY: &str = "application";
/// Routing key of phone confirmations on `uid.intake`.
pub const PHONE_CONFIRMATION_ROUTING_KEY: &str = "phone-confirmation";

/// The pipeline steps that have a queue of their own (CONTRACT §4).
pub const STEPS: [&str; 4] = [
    crate::route::VERIFY_IDENTITY,
    crate::route::CONFIRM_PHONE,
    crate::route::REGISTER,
    crate::route::SEND_SMS,
];

/// Deliveries of one message before the broker dead-letters it. Our retries go through the
/// wait queues (the delivery is acked), so this only catches a message that crashes or stalls
/// its consumer again and again.
pub const DELIVERY_LIMIT: i64 = 20;
/// Messages a queue holds before publishes are refused (the outbox then waits and retries).
pub const MAX_LENGTH: i64 = 2_000_000;

/// Name of a step's work queue.
pub fn step_queue(step: &str) -> String {
    format!("uid.step.{step}")
}

/// Routing key on `uid.retry` for a step's wait of `delay`.
pub fn retry_routing_key(step: &str, delay: Duration) -> String {
    format!("{step}.{}", format_duration(delay))
}

/// Name of a step's retry wait queue for `delay`.
pub fn retry_queue(step: &str, delay: Duration) -> String {
    format!("uid.retry.{}", retry_routing_key(step, delay))
}

/// Name of a step's timer queue for `ttl` (a phone code's expiry): timers never share a queue
/// with retries, so neither waits behind the other. Routing key on `uid.timer`: `<step>.<ttl>`.
pub fn timer_queue(step: &str, ttl: Duration) -> String {
    format!("uid.timer.{}", retry_routing_key(step, ttl))
}

/// The queue a publish to `exchange` with `routing_key` lands in, for uidflow's own counters.
pub fn queue_for(exchange: &str, routing_key: &str) -> Option<String> {
    match exchange {
        WORK_EXCHANGE => Some(step_queue(routing_key)),
        RETRY_EXCHANGE => Some(format!("uid.retry.{routing_key}")),
        TIMER_EXCHANGE => Some(format!("uid.timer.{routing_key}")),
        DEAD_LETTER_EXCHANGE => Some(DEAD_LETTER_QUEUE.to_owned()),
        INTAKE_EXCHANGE if routing_key == APPLICATION_ROUTING_KEY => {
            Some(APPLICATION_QUEUE.to_owned())
        }
        INTAKE_EXCHANGE if routing_key == PHONE_CONFIRMATION_ROUTING_KEY => {
            Some(PHONE_CONFIRMATION_QUEUE.to_owned())
        }
        _ => None,
    }
}

/// A broker user of a deployment: what it is for decides what it may do on uidflow's vhost.
///
/// RabbitMQ checks, per vhost, three regexes against a resource's name: `configure` to declare
/// or delete it, `write` to publish to an exchange or bind a queue (the queue side), `read` to
/// consume from a queue or bind from an exchange (the exchange side). A queue declared with
/// `x-dead-letter-exchange` also needs `read` on the queue and `write` on that exchange; the
/// default exchange is checked as `amq.default`; a passive declare needs no permission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum BrokerUser {
    /// `uidflow run` and `uidflow migrate`: declares the topology, publishes to its
    /// exchanges, consumes its queues; nothing on any other name.
    Uidflow,
    /// An intake system: publishes to `uid.intake` and nothing else.
    Intake,
    /// A system following `uid.events`: declares, binds and consumes queues of its own
    /// (`uid-events.<system>…`, or server-named `amq.gen-…`) and never publishes.
    Events,
}

/// Names an events follower's queues start with: `uid-events.<system>[.<anything>]`.
pub const FOLLOWER_QUEUE_PREFIX: &str = "uid-events.";

/// A user's configure, write and read regexes (RabbitMQ's `set_permissions`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permission {
    /// Declare and delete.
    pub configure: String,
    /// Publish to (exchange), bind to (queue).
    pub write: String,
    /// Consume from (queue), bind from (exchange).
    pub read: String,
}

impl BrokerUser {
    /// Every broker user, in the order of the docs.
    pub const ALL: [BrokerUser; 3] = [BrokerUser::Uidflow, BrokerUser::Intake, BrokerUser::Events];

    /// The user's name in a deployment (definitions.json, `uidflow broker-users`).
    pub fn name(self) -> &'static str {
        match self {
            BrokerUser::Uidflow => "uidflow",
            BrokerUser::Intake => "uid-intake",
            BrokerUser::Events => "uid-events",
        }
    }

    /// What the user may do on uidflow's vhost.
    pub fn permission(self) -> Permission {
        let nothing = "^$".to_owned();
        match self {
            BrokerUser::Uidflow => {
                // Exactly our exchanges and our queue families; the same for all three: our
                // queues dead-letter to our exchanges, are bound from them and consumed by us.
                let names = [
                    INTAKE_EXCHANGE,
                    EVENTS_EXCHANGE,
                    DEAD_LETTER_EXCHANGE,
                    WORK_EXCHANGE,
                    RETRY_EXCHANGE,
                    TIMER_EXCHANGE,
                    PARKING_EXCHANGE,
                    DEAD_LETTER_QUEUE,
                    PARKING_QUEUE,
                ];
                let mut alternatives: Vec<String> =
                    names.iter().map(|n| regex::escape(n)).collect();
                alternatives.sort();
                alternatives.dedup();
                for family in ["uid.intake.", "uid.step.", "uid.retry.", "uid.timer."] {
                    alternatives.push(format!("{}.+", regex::escape(family)));
                }
                let ours = format!("^({})$", alternatives.join("|"));
                Permission {
                    configure: ours.clone(),
                    write: ours.clone(),
                    read: ours,
                }
            }
            BrokerUser::Intake => Permission {
                configure: nothing.clone(),
                write: format!("^{}$", regex::escape(INTAKE_EXCHANGE)),
                read: nothing,
            },
            BrokerUser::Events => {
                let own = format!(r"{}.+|amq\.gen-.+", regex::escape(FOLLOWER_QUEUE_PREFIX));
                Permission {
                    configure: format!("^({own})$"),
                    write: format!("^({own})$"),
                    read: format!("^({own}|{})$", regex::escape(EVENTS_EXCHANGE)),
                }
            }
        }
    }
}

/// The `permissions` list of a definitions file: every [`BrokerUser`] by its name on `vhost`.
pub fn permissions_definitions(vhost: &str) -> Value {
    BrokerUser::ALL
        .iter()
        .map(|user| permission_definition(user.name(), *user, vhost))
        .collect()
}

fn permission_definition(name: &str, user: BrokerUser, vhost: &str) -> Value {
    let permission = user.permission();
    json!({
        "user": name, "vhost": vhost, "configure": permission.configure,
        "write": permission.write, "read": permission.read
    })
}

/// Definitions that create broker users with their passwords and permissions on `vhost`, for
/// `rabbitmqctl import_definitions`. Each entry is (user name, what it is, password); the
/// passwords leave only as RabbitMQ's salted SHA-256 hashes.
pub fn users_definitions(users: &[(String, BrokerUser, String)], vhost: &str) -> Value {
    json!({
        "users": users.iter().map(|(name, _, password)| json!({
            "name": name, "password_hash": rabbitmq_password_hash(password),
            "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": []
        })).collect::<Vec<_>>(),
        "permissions": users.iter().map(|(name, user, _)| permission_definition(name, *user, vhost)).collect::<Vec<_>>(),
    })
}

/// RabbitMQ's `rabbit_password_hashing_sha256`: base64(salt ‖ SHA-256(salt ‖ password)),
/// with a random 4-byte salt.
pub fn rabbitmq_password_hash(password: &str) -> String {
    use base64::Engine;
    use sha2::{Digest, Sha256};
    let salt: [u8; 4] = rand::random();
    let digest = Sha256::new()
        .chain_update(salt)
        .chain_update(password.as_bytes())
        .finalize();
    let mut bytes = salt.to_vec();
    bytes.extend_from_slice(&digest);
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Exchange types we use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ExchangeType {
    /// Exact routing key.
    Direct,
    /// Pattern routing key.
    Topic,
    /// Every bound queue.
    Fanout,
}

impl ExchangeType {
    /// The broker's name of the type.
    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeType::Direct => "direct",
            ExchangeType::Topic => "topic",
            ExchangeType::Fanout => "fanout",
        }
    }
}

/// A queue argument value.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Arg {
    /// A string argument.
    Str(String),
    /// An integer argument.
    Int(i64),
}

/// A durable exchange.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Exchange {
    /// Name.
    pub name: String,
    /// Type.
    pub kind: ExchangeType,
}

/// A durable quorum queue and its arguments.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Queue {
    /// Name.
    pub name: String,
    /// `x-…` arguments, including `x-queue-type`.
    pub arguments: BTreeMap<String, Arg>,
}

/// A binding of a queue to an exchange.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Binding {
    /// Source exchange.
    pub exchange: String,
    /// Destination queue.
    pub queue: String,
    /// Routing key (empty for fanout).
    pub routing_key: String,
}

/// The whole topology, sorted so two values compare regardless of construction order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Exchanges, sorted by name.
    pub exchanges: Vec<Exchange>,
    /// Queues, sorted by name.
    pub queues: Vec<Queue>,
    /// Bindings, sorted.
    pub bindings: Vec<Binding>,
}

fn base_arguments() -> BTreeMap<String, Arg> {
    BTreeMap::from([
        ("x-queue-type".into(), Arg::Str("quorum".into())),
        ("x-overflow".into(), Arg::Str("reject-publish".into())),
        ("x-max-length".into(), Arg::Int(MAX_LENGTH)),
    ])
}

fn dead_lettering(exchange: &str) -> BTreeMap<String, Arg> {
    BTreeMap::from([
        ("x-delivery-limit".into(), Arg::Int(DELIVERY_LIMIT)),
        ("x-dead-letter-exchange".into(), Arg::Str(exchange.into())),
        (
            "x-dead-letter-strategy".into(),
            Arg::Str("at-least-once".into()),
        ),
    ])
}

fn work_queue(name: String) -> Queue {
    let mut arguments = base_arguments();
    arguments.extend(dead_lettering(PARKING_EXCHANGE));
    Queue { name, arguments }
}

impl Topology {
    /// The part of this topology that `queue` needs: the queue, its bindings and their
    /// exchanges (a consumer declares it before consuming, so a deleted queue comes back).
    pub fn only_queue(&self, queue: &str) -> Self {
        let bindings: Vec<Binding> = self
            .bindings
            .iter()
            .filter(|b| b.queue == queue)
            .cloned()
            .collect();
        Self {
            exchanges: self
                .exchanges
                .iter()
                .filter(|e| bindings.iter().any(|b| b.exchange == e.name))
                .cloned()
                .collect(),
            queues: self
                .queues
                .iter()
                .filter(|q| q.name == queue)
                .cloned()
                .collect(),
            bindings,
        }
    }

    /// The topology a process with `settings` needs: retry waits of `RETRY_DELAYS` for every
    /// step, and for confirm-phone a timer queue of `PHONE_CODE_TTL` (the code's expiry).
    pub fn for_settings(settings: &crate::config::Settings) -> Self {
        Self::with_code_ttl(&settings.retry_delays, Some(settings.phone_code_ttl))
    }

    /// The topology for the given retry delays (`RETRY_DELAYS`), without a separate code timer.
    pub fn new(retry_delays: &[Duration]) -> Self {
        Self::with_code_ttl(retry_delays, None)
    }

    fn with_code_ttl(retry_delays: &[Duration], code_ttl: Option<Duration>) -> Self {
        let exchange = |name: &str, kind| Exchange {
            name: name.into(),
            kind,
        };
        let bind = |exchange: &str, queue: &str, routing_key: &str| Binding {
            exchange: exchange.into(),
            queue: queue.into(),
            routing_key: routing_key.into(),
        };
        let mut exchanges = vec![
            exchange(INTAKE_EXCHANGE, ExchangeType::Direct),
            exchange(EVENTS_EXCHANGE, ExchangeType::Topic),
            exchange(DEAD_LETTER_EXCHANGE, ExchangeType::Fanout),
            exchange(WORK_EXCHANGE, ExchangeType::Direct),
            exchange(RETRY_EXCHANGE, ExchangeType::Direct),
            exchange(TIMER_EXCHANGE, ExchangeType::Direct),
            exchange(PARKING_EXCHANGE, ExchangeType::Fanout),
        ];
        let mut queues = vec![
            work_queue(APPLICATION_QUEUE.into()),
            work_queue(PHONE_CONFIRMATION_QUEUE.into()),
        ];
        let mut bindings = vec![
            bind(INTAKE_EXCHANGE, APPLICATION_QUEUE, APPLICATION_ROUTING_KEY),
            bind(
                INTAKE_EXCHANGE,
                PHONE_CONFIRMATION_QUEUE,
                PHONE_CONFIRMATION_ROUTING_KEY,
            ),
        ];
        for step in STEPS {
            queues.push(work_queue(step_queue(step)));
            bindings.push(bind(WORK_EXCHANGE, &step_queue(step), step));
            let mut delays = retry_delays.to_vec();
            delays.sort();
            delays.dedup();
            let wait_queue = |name: String, ttl: Duration| {
                let mut arguments = base_arguments();
                arguments.extend(dead_lettering(WORK_EXCHANGE));
                arguments.insert("x-dead-letter-routing-key".into(), Arg::Str(step.into()));
                let ttl = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
                arguments.insert("x-message-ttl".into(), Arg::Int(ttl));
                Queue { name, arguments }
            };
            for delay in delays {
                let name = retry_queue(step, delay);
                bindings.push(bind(RETRY_EXCHANGE, &name, &retry_routing_key(step, delay)));
                queues.push(wait_queue(name, delay));
            }
            if step == crate::route::CONFIRM_PHONE
                && let Some(ttl) = code_ttl
            {
                let name = timer_queue(step, ttl);
                bindings.push(bind(TIMER_EXCHANGE, &name, &retry_routing_key(step, ttl)));
                queues.push(wait_queue(name, ttl));
            }
        }
        let mut parking = base_arguments();
        parking.extend(dead_lettering(DEAD_LETTER_EXCHANGE));
        queues.push(Queue {
            name: PARKING_QUEUE.into(),
            arguments: parking,
        });
        bindings.push(bind(PARKING_EXCHANGE, PARKING_QUEUE, ""));
        queues.push(Queue {
            name: DEAD_LETTER_QUEUE.into(),
            arguments: base_arguments(),
        });
        bindings.push(bind(DEAD_LETTER_EXCHANGE, DEAD_LETTER_QUEUE, ""));
        exchanges.sort();
        queues.sort();
        bindings.sort();
        Self {
            exchanges,
            queues,
            bindings,
        }
    }

    /// Renders the topology in RabbitMQ's definitions format, for vhost `/`, with the
    /// [`BrokerUser`] permissions (no `users`: passwords come from the operator, see
    /// [`users_definitions`]; import the permissions after the users exist).
    pub fn definitions(&self) -> Value {
        let arg = |value: &Arg| match value {
            Arg::Str(text) => json!(text),
            Arg::Int(number) => json!(number),
        };
        json!({
            "exchanges": self.exchanges.iter().map(|e| json!({
                "name": e.name, "vhost": "/", "type": e.kind.as_str(),
                "durable": true, "auto_delete": false, "internal": false, "arguments": {}
            })).collect::<Vec<_>>(),
            "queues": self.queues.iter().map(|q| json!({
                "name": q.name, "vhost": "/", "durable": true, "auto_delete": false,
                "arguments": q.arguments.iter().map(|(k, v)| (k.clone(), arg(v))).collect::<serde_json::Map<_, _>>()
            })).collect::<Vec<_>>(),
            "bindings": self.bindings.iter().map(|b| json!({
                "source": b.exchange, "vhost": "/", "destination": b.queue,
                "destination_type": "queue", "routing_key": b.routing_key, "arguments": {}
            })).collect::<Vec<_>>(),
            "permissions": permissions_definitions("/"),
        })
    }

    /// Reads a definitions file back into a topology (the inverse of [`Topology::definitions`]).
    pub fn from_definitions(definitions: &Value) -> Result<Self, String> {
        let list = |key: &str| {
            definitions[key]
                .as_array()
                .ok_or_else(|| format!("definitions have no {key:?} list"))
        };
        let text = |item: &Value, key: &str| {
            item[key]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| format!("{key:?} missing in {item}"))
        };
        let mut exchanges = Vec::new();
        for item in list("exchanges")? {
            let kind = match item["type"].as_str() {
                Some("direct") => ExchangeType::Direct,
                Some("topic") => ExchangeType::Topic,
                Some("fanout") => ExchangeType::Fanout,
                other => return Err(format!("unknown exchange type {other:?}")),
            };
            if item["durable"] != json!(true) {
                return Err(format!("exchange {item} is not durable"));
            }
            exchanges.push(Exchange {
                name: text(item, "name")?,
                kind,
            });
        }
        let mut queues = Vec::new();
        for item in list("queues")? {
            if item["durable"] != json!(true) {
                return Err(format!("queue {item} is not durable"));
            }
            let mut arguments = BTreeMap::new();
            for (key, value) in item["arguments"].as_object().into_iter().flatten() {
                let value = match value {
                    Value::String(s) => Arg::Str(s.clone()),
                    Value::Number(n) => Arg::Int(n.as_i64().ok_or("argument is not an integer")?),
                    other => {
                        return Err(format!(
                            "argument {key} = {other} is neither text nor integer"
                        ));
                    }
                };
                arguments.insert(key.clone(), value);
            }
            queues.push(Queue {
                name: text(item, "name")?,
                arguments,
            });
        }
        let mut bindings = Vec::new();
        for item in list("bindings")? {
            bindings.push(Binding {
                exchange: text(item, "source")?,
                queue: text(item, "destination")?,
                routing_key: text(item, "routing_key")?,
            });
        }
        exchanges.sort();
        queues.sort();
        bindings.sort();
        Ok(Self {
            exchanges,
            queues,
            bindings,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn default_topology() -> Topology {
        Topology::new(
            &crate::config::Settings::from_map(&Default::default())
                .unwrap()
                .retry_delays,
        )
    }

    #[test]
    fn every_queue_is_quorum_with_explicit_overflow_and_length() {
        for queue in default_topology().queues {
            assert_eq!(
                queue.arguments["x-queue-type"],
                Arg::Str("quorum".into()),
                "{}",
                queue.name
            );
            assert_eq!(
                queue.arguments["x-overflow"],
                Arg::Str("reject-publish".into()),
                "{}",
                queue.name
            );
            assert!(
                queue.arguments.contains_key("x-max-length"),
                "{}",
                queue.name
            );
        }
    }

    #[test]
    fn every_work_queue_has_delivery_limit_and_at_least_once_dead_lettering() {
        let topology = default_topology();
        let work: Vec<_> = topology
            .queues
            .iter()
            .filter(|q| {
                q.name.starts_with("uid.intake.")
                    || q.name.starts_with("uid.step.")
                    || q.name.starts_with("uid.retry.")
            })
            .collect();
        assert_eq!(work.len(), 2 + 4 + 4 * 5);
        for queue in work {
            assert_eq!(
                queue.arguments["x-delivery-limit"],
                Arg::Int(DELIVERY_LIMIT),
                "{}",
                queue.name
            );
            assert_eq!(
                queue.arguments["x-dead-letter-strategy"],
                Arg::Str("at-least-once".into())
            );
            assert!(
                queue.arguments.contains_key("x-dead-letter-exchange"),
                "{}",
                queue.name
            );
        }
    }

    #[test]
    fn retry_queues_wait_their_delay_then_return_to_their_step() {
        let topology = default_topology();
        let queue = topology
            .queues
            .iter()
            .find(|q| q.name == "uid.retry.register.30s")
            .expect("the 30s wait queue of register exists");
        assert_eq!(queue.arguments["x-message-ttl"], Arg::Int(30_000));
        assert_eq!(
            queue.arguments["x-dead-letter-exchange"],
            Arg::Str(WORK_EXCHANGE.into())
        );
        assert_eq!(
            queue.arguments["x-dead-letter-routing-key"],
            Arg::Str("register".into())
        );
    }

    #[test]
    fn definitions_round_trip() {
        let topology = default_topology();
        assert_eq!(
            Topology::from_definitions(&topology.definitions()),
            Ok(topology)
        );
    }

    #[test]
    fn the_uidflow_user_may_touch_every_name_of_the_topology_and_nothing_else() {
        let ours = regex::Regex::new(&BrokerUser::Uidflow.permission().configure).unwrap();
        let topology = Topology::with_code_ttl(
            &[Duration::from_millis(200), Duration::from_secs(600)],
            Some(Duration::from_secs(300)),
        );
        let names = topology
            .exchanges
            .iter()
            .map(|e| e.name.clone())
            .chain(topology.queues.iter().map(|q| q.name.clone()));
        for name in names {
            assert!(ours.is_match(&name), "{name}");
        }
        for other in [
            "",
            "amq.default",
            "uid.intake2",
            "uid-events.crm",
            "amq.gen-x",
            "uid.",
            "uid.step.",
        ] {
            assert!(!ours.is_match(other), "{other:?}");
        }
    }

    #[test]
    fn intake_writes_only_uid_intake_and_events_reads_but_never_writes_uid_events() {
        let intake = BrokerUser::Intake.permission();
        let write = regex::Regex::new(&intake.write).unwrap();
        assert!(write.is_match(INTAKE_EXCHANGE));
        for other in [
            "amq.default",
            WORK_EXCHANGE,
            RETRY_EXCHANGE,
            "uid.intake.application",
            "uid.intakes",
        ] {
            assert!(!write.is_match(other), "{other}");
        }
        assert_eq!(
            (intake.configure.as_str(), intake.read.as_str()),
            ("^$", "^$")
        );
        let events = BrokerUser::Events.permission();
        let (configure, write, read) = (
            regex::Regex::new(&events.configure).unwrap(),
            regex::Regex::new(&events.write).unwrap(),
            regex::Regex::new(&events.read).unwrap(),
        );
        for own in ["uid-events.crm", "uid-events.crm.audit", "amq.gen-Xyz"] {
            assert!(
                configure.is_match(own) && write.is_match(own) && read.is_match(own),
                "{own}"
            );
        }
        assert!(read.is_match(EVENTS_EXCHANGE));
        for never in [
            EVENTS_EXCHANGE,
            INTAKE_EXCHANGE,
            "amq.default",
            "uid.step.register",
        ] {
            assert!(
                !write.is_match(never) && !configure.is_match(never),
                "{never}"
            );
        }
    }

    #[test]
    fn password_hashes_are_rabbitmq_salted_sha256() {
        use base64::Engine;
        use sha2::{Digest, Sha256};
        let hash = rabbitmq_password_hash("secret");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&hash)
            .unwrap();
        assert_eq!(bytes.len(), 4 + 32);
        let expected = Sha256::new()
            .chain_update(&bytes[..4])
            .chain_update(b"secret")
            .finalize();
        assert_eq!(bytes[4..], expected[..]);
        assert_ne!(
            hash,
            rabbitmq_password_hash("secret"),
            "a fresh salt each time"
        );
    }
}
