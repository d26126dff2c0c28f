//! The fault schedule and its execution. Kills fall at random moments over the whole window;
//! the longer faults (MVD answering 429, SIGTERM, SMS gateway down, RabbitMQ and PostgreSQL
//! restarts) follow one another with random gaps, so each one's effect can be told apart.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rand::Rng;
use rand::rngs::StdRng;
use serde::Serialize;
use uidflow::config::Settings;
use uidflow::sim::{Faults, Simulators, Switchable};

use super::services::{self, Services};
use super::workers::Workers;

/// One fault to inject.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    /// `kill -9` of a random running worker.
    Kill9,
    /// SIGTERM of a random running worker (it must exit 0 within its grace).
    Sigterm,
    /// `rabbitmqctl stop_app`, this pause, `start_app`.
    Rabbitmq(Duration),
    /// `pg_ctlcluster stop`, this pause, `start`.
    Postgres(Duration),
    /// The SMS gateway's listener closed (connections refused) for this long.
    SmsDown(Duration),
    /// The MVD answers every request 429 with `Retry-After` for this long.
    Mvd429(Duration),
    /// The broker loses messages: the MVD answers 503 for this long (retries pile up in the
    /// wait queues), then every step and wait queue is purged and one step queue deleted; the
    /// reconciler must revive what was lost.
    LoseMessages(Duration),
    /// The MVD answers every request 503 for this long (an outage).
    MvdDown(Duration),
}

impl Fault {
    /// The name in the report.
    pub fn kind(self) -> &'static str {
        match self {
            Fault::Kill9 => "kill_9",
            Fault::Sigterm => "sigterm",
            Fault::Rabbitmq(_) => "rabbitmq_restart",
            Fault::Postgres(_) => "postgres_restart",
            Fault::SmsDown(_) => "sms_down",
            Fault::Mvd429(_) => "mvd_429",
            Fault::LoseMessages(_) => "lose_messages",
            Fault::MvdDown(_) => "mvd_down",
        }
    }

    pub(crate) fn length(self) -> Duration {
        match self {
            Fault::Kill9 => Duration::ZERO,
            // Its exit and restart take a few seconds.
            Fault::Sigterm => Duration::from_secs(5),
            Fault::Rabbitmq(d)
            | Fault::Postgres(d)
            | Fault::SmsDown(d)
            | Fault::Mvd429(d)
            | Fault::LoseMessages(d) => d,
            Fault::MvdDown(d) => d,
        }
    }
}

/// A fault at a moment (from the start of the run).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Planned {
    /// When.
    pub at: Duration,
    /// What.
    pub fault: Fault,
}

/// The schedule: the long faults of `sequence` one after the other from `lead_in`, each after
/// a random gap of `gap` to `2 × gap`; then `kills` kills at random moments between `lead_in`
/// and the end of the last long fault plus `tail`. Returns the schedule (by time) and the
/// window's length.
pub fn schedule(
    sequence: &[Fault],
    kills: u32,
    lead_in: Duration,
    gap: Duration,
    tail: Duration,
    rng: &mut StdRng,
) -> (Vec<Planned>, Duration) {
    let mut planned = Vec::new();
    let mut t = lead_in;
    for fault in sequence {
        let at = t + gap.mul_f64(rng.random_range(0.0..1.0));
        planned.push(Planned { at, fault: *fault });
        t = at + fault.length() + gap;
    }
    let window = t + tail;
    for _ in 0..kills {
        let at =
            Duration::from_secs_f64(rng.random_range(lead_in.as_secs_f64()..window.as_secs_f64()));
        planned.push(Planned {
            at,
            fault: Fault::Kill9,
        });
    }
    planned.sort_by_key(|p| p.at);
    (planned, window)
}

/// One fault as it happened.
#[derive(Debug, Clone, Serialize)]
pub struct Injected {
    /// `kill_9`, `sigterm`, `rabbitmq_restart`, `postgres_restart`, `sms_down`, `mvd_429`,
    /// `lose_messages`, `mvd_down`.
    pub kind: &'static str,
    /// Seconds since the run started.
    pub at: f64,
    /// How long the fault lasted: from the stop to the moment the service answered again
    /// (restarts), the window (SMS, MVD), the time to exit (SIGTERM); 0 for a kill.
    pub seconds: f64,
    /// The worker it hit (kill, SIGTERM).
    pub worker: Option<usize>,
    /// When it started (wall clock), to match SMS against it.
    #[serde(skip)]
    pub started: DateTime<Utc>,
    /// When it ended.
    #[serde(skip)]
    pub ended: DateTime<Utc>,
    /// Requests it hit (MVD 429s answered), or messages it lost (`lose_messages`), when known.
    pub requests: Option<u64>,
    /// For SIGTERM: exited 0 within the grace.
    pub clean: Option<bool>,
    /// For a broker restart: the node stopped.
    pub node: Option<String>,
    /// The longest time, from the fault's start to 10 s after its end, in which no
    /// application moved (no history row written): how long the pipeline paused.
    pub paused_seconds: Option<f64>,
}

/// What the executor needs.
pub struct Injector {
    /// Services under test.
    pub services: Services,
    /// Scratch settings (to wait for the services).
    pub settings: Settings,
    /// The simulators.
    pub sims: Simulators,
    /// The SMS gateway's switchable listener.
    pub sms: Arc<Switchable>,
    /// The workers.
    pub workers: Arc<Workers>,
    /// `Retry-After` of the MVD's 429s.
    pub retry_after: Duration,
    /// The run's start.
    pub epoch: Instant,
    /// What happened.
    pub log: Arc<Mutex<Vec<Injected>>>,
    /// The scratch vhost (whose queue leaders a cluster restart looks at).
    pub vhost: String,
    /// Broker restarts so far (a cluster alternates: busiest leader, any node).
    pub broker_restarts: std::sync::atomic::AtomicUsize,
    /// Picks "any node" (seeded).
    pub rng: Mutex<StdRng>,
}

impl Injector {
    /// Injects `planned` at their moments (in order); the long ones one at a time, kills and
    /// SIGTERMs without waiting for a long fault to end. Returns what could not be injected or
    /// undone (the run goes on: the services are restored first, and the report says it).
    pub async fn run(self: Arc<Self>, planned: Vec<Planned>, rng: StdRng) -> Vec<String> {
        let rng = Arc::new(Mutex::new(rng));
        let (short, long): (Vec<Planned>, Vec<Planned>) = planned
            .into_iter()
            .partition(|p| matches!(p.fault, Fault::Kill9 | Fault::Sigterm));
        let quick = {
            let this = Arc::clone(&self);
            let rng = Arc::clone(&rng);
            tokio::spawn(async move {
                for p in short {
                    this.until(p.at).await;
                    let worker = {
                        let running = this.workers.running();
                        if running.is_empty() {
                            None
                        } else {
                            let mut rng = rng
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner);
                            Some(running[rng.random_range(0..running.len())])
                        }
                    };
                    let Some(worker) = worker else {
                        eprintln!(
                            "chaos: no worker running at {:?}; {} skipped",
                            p.at,
                            p.fault.kind()
                        );
                        continue;
                    };
                    match p.fault {
                        Fault::Kill9 => this.kill9(worker).await,
                        _ => {
                            // SIGTERM waits for the exit; the kills go on meanwhile.
                            let this = Arc::clone(&this);
                            tokio::spawn(async move { this.sigterm(worker).await });
                        }
                    }
                }
            })
        };
        let mut errors = Vec::new();
        for p in long {
            self.until(p.at).await;
            let outcome = match p.fault {
                Fault::Rabbitmq(pause) => self.restart_broker(pause).await,
                Fault::Postgres(pause) => self.restart_database(pause).await,
                Fault::SmsDown(length) => self.sms_down(length).await,
                Fault::Mvd429(length) => {
                    self.mvd_429(length).await;
                    Ok(())
                }
                Fault::LoseMessages(length) => self.lose_messages(length).await,
                Fault::MvdDown(length) => {
                    self.mvd_down(length).await;
                    Ok(())
                }
                Fault::Kill9 | Fault::Sigterm => Ok(()),
            };
            if let Err(error) = outcome {
                eprintln!("chaos: {} failed: {error:#}", p.fault.kind());
                errors.push(format!("{}: {error:#}", p.fault.kind()));
                self.services.restore();
                if let Err(error) = self.sms.up().await {
                    errors.push(format!("the SMS gateway does not listen again: {error}"));
                }
            }
        }
        let _ = quick.await;
        errors
    }

    async fn until(&self, at: Duration) {
        tokio::time::sleep_until((self.epoch + at).into()).await;
    }

    fn now(&self) -> f64 {
        self.epoch.elapsed().as_secs_f64()
    }

    fn record(&self, injected: Injected) {
        eprintln!(
            "chaos: [{:>6.1}s] {}{}{}",
            injected.at,
            injected.kind,
            injected
                .worker
                .map(|w| format!(" worker {w}"))
                .unwrap_or_default(),
            if injected.seconds > 0.0 {
                format!(", {:.1} s", injected.seconds)
            } else {
                String::new()
            }
        );
        self.log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(injected);
    }

    fn injected(&self, kind: &'static str, at: f64, started: DateTime<Utc>) -> Injected {
        Injected {
            kind,
            at,
            seconds: (Utc::now() - started)
                .to_std()
                .unwrap_or_default()
                .as_secs_f64(),
            worker: None,
            started,
            ended: Utc::now(),
            requests: None,
            clean: None,
            node: None,
            paused_seconds: None,
        }
    }

    async fn kill9(&self, worker: usize) {
        let (at, started) = (self.now(), Utc::now());
        if self.workers.kill9(worker).await.is_some() {
            let mut injected = self.injected("kill_9", at, started);
            injected.seconds = 0.0;
            injected.worker = Some(worker);
            self.record(injected);
        }
    }

    async fn sigterm(&self, worker: usize) {
        let (at, started) = (self.now(), Utc::now());
        if let Some(exit) = self.workers.sigterm(worker).await {
            let mut injected = self.injected("sigterm", at, started);
            injected.worker = Some(worker);
            injected.seconds = exit.exit_seconds.unwrap_or_default();
            injected.clean = exit.clean;
            self.record(injected);
        }
    }

    /// The node a broker restart stops: the only one; in a cluster, first the node that leads
    /// the most queues, then any node (by the run's seed), alternately.
    async fn pick_node(&self) -> anyhow::Result<String> {
        let nodes = self.services.node_names();
        if !self.services.is_cluster() {
            return Ok(nodes[0].clone());
        }
        let turn = self
            .broker_restarts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if turn.is_multiple_of(2) {
            let (services, vhost) = (self.services.clone(), self.vhost.clone());
            return tokio::task::spawn_blocking(move || services.busiest_leader(&vhost)).await?;
        }
        let mut rng = self
            .rng
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(nodes[rng.random_range(0..nodes.len())].clone())
    }

    async fn restart_broker(&self, pause: Duration) -> anyhow::Result<()> {
        let node = self.pick_node().await?;
        let (at, started) = (self.now(), Utc::now());
        eprintln!(
            "chaos: [{at:>6.1}s] rabbitmqctl stop_app ({})",
            services::display(&node)
        );
        let (services, stopped) = (self.services.clone(), node.clone());
        tokio::task::spawn_blocking(move || services.stop_broker(&stopped)).await??;
        // The length of the outage: a chosen window, not a wait for a condition.
        tokio::time::sleep(pause).await;
        let (services, started_again) = (self.services.clone(), node.clone());
        tokio::task::spawn_blocking(move || services.start_broker(&started_again)).await??;
        services::wait_for_broker(&self.settings).await?;
        let mut injected = self.injected("rabbitmq_restart", at, started);
        injected.node = Some(node);
        self.record(injected);
        Ok(())
    }

    async fn restart_database(&self, pause: Duration) -> anyhow::Result<()> {
        let (at, started) = (self.now(), Utc::now());
        eprintln!(
            "chaos: [{at:>6.1}s] pg_ctlcluster stop {}/{}",
            self.services.pg_version, self.services.pg_cluster
        );
        let services = self.services.clone();
        tokio::task::spawn_blocking(move || services.stop_database()).await??;
        // The length of the outage: a chosen window, not a wait for a condition.
        tokio::time::sleep(pause).await;
        let services = self.services.clone();
        tokio::task::spawn_blocking(move || services.start_database()).await??;
        services::wait_for_database(&self.settings).await?;
        self.record(self.injected("postgres_restart", at, started));
        Ok(())
    }

    async fn sms_down(&self, length: Duration) -> anyhow::Result<()> {
        let (at, started) = (self.now(), Utc::now());
        eprintln!("chaos: [{at:>6.1}s] SMS gateway down (listener closed)");
        self.sms.down().await;
        // The length of the outage: a chosen window, not a wait for a condition.
        tokio::time::sleep(length).await;
        self.sms.up().await?;
        self.record(self.injected("sms_down", at, started));
        Ok(())
    }

    async fn lose_messages(&self, length: Duration) -> anyhow::Result<()> {
        let (at, started) = (self.now(), Utc::now());
        eprintln!("chaos: [{at:>6.1}s] MVD answers 503; then the broker loses messages");
        let normal = self.sims.mvd_faults();
        self.sims.set_mvd_faults(Faults {
            error_rate: 1.0,
            ..normal.clone()
        });
        // The length of the window: chosen, not a wait for a condition.
        tokio::time::sleep(length).await;
        let lost = self.purge_and_delete().await;
        self.sims.set_mvd_faults(normal);
        let mut injected = self.injected("lose_messages", at, started);
        injected.requests = Some(lost?);
        self.record(injected);
        Ok(())
    }

    /// Purges every step and wait queue and deletes the register step's queue (with what it
    /// holds); returns how many messages went.
    async fn purge_and_delete(&self) -> anyhow::Result<u64> {
        use lapin::options::{QueueDeleteOptions, QueuePurgeOptions};
        let connection = uidflow::amqp::connect(&self.settings, "chaos").await?;
        let channel = connection.create_channel().await?;
        let topology = uidflow::topology::Topology::for_settings(&self.settings);
        let mut lost = 0;
        for queue in topology
            .queues
            .iter()
            .filter(|q| q.name.starts_with("uid.step.") || q.name.starts_with("uid.retry."))
        {
            lost += u64::from(
                channel
                    .queue_purge(queue.name.as_str().into(), QueuePurgeOptions::default())
                    .await?,
            );
        }
        let deleted = uidflow::topology::step_queue(uidflow::route::REGISTER);
        lost += u64::from(
            channel
                .queue_delete(deleted.as_str().into(), QueueDeleteOptions::default())
                .await?,
        );
        uidflow::amqp::close(&connection, 200, "messages lost").await;
        Ok(lost)
    }

    async fn mvd_429(&self, length: Duration) {
        let (at, started) = (self.now(), Utc::now());
        eprintln!(
            "chaos: [{at:>6.1}s] MVD answers 429, Retry-After {:?}",
            self.retry_after
        );
        let before = self.sims.mvd_requests();
        let normal = self.sims.mvd_faults();
        self.sims.set_mvd_faults(Faults {
            rate_limit_rate: 1.0,
            retry_after: self.retry_after,
            ..normal.clone()
        });
        // The length of the window: chosen, not a wait for a condition.
        tokio::time::sleep(length).await;
        self.sims.set_mvd_faults(normal);
        let mut injected = self.injected("mvd_429", at, started);
        injected.requests = Some(self.sims.mvd_requests() - before);
        self.record(injected);
    }

    async fn mvd_down(&self, length: Duration) {
        let (at, started) = (self.now(), Utc::now());
        eprintln!("chaos: [{at:>6.1}s] MVD down (answers 503)");
        let before = self.sims.mvd_requests();
        let normal = self.sims.mvd_faults();
        self.sims.set_mvd_faults(Faults {
            outage: true,
            ..normal.clone()
        });
        // The length of the outage: chosen, not a wait for a condition.
        tokio::time::sleep(length).await;
        self.sims.set_mvd_faults(normal);
        let mut injected = self.injected("mvd_down", at, started);
        injected.requests = Some(self.sims.mvd_requests() - before);
        self.record(injected);
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn long_faults_follow_one_another_and_kills_fall_inside_the_window() {
        let sequence = [
            Fault::Mvd429(Duration::from_secs(8)),
            Fault::Sigterm,
            Fault::SmsDown(Duration::from_secs(10)),
            Fault::Rabbitmq(Duration::from_secs(5)),
            Fault::Postgres(Duration::from_secs(3)),
        ];
        for seed in 0..50 {
            let mut rng = StdRng::seed_from_u64(seed);
            let (planned, window) = schedule(
                &sequence,
                4,
                Duration::from_secs(3),
                Duration::from_secs(2),
                Duration::from_secs(3),
                &mut rng,
            );
            assert_eq!(planned.len(), 9);
            assert!(planned.windows(2).all(|w| w[0].at <= w[1].at));
            let long: Vec<&Planned> = planned.iter().filter(|p| p.fault != Fault::Kill9).collect();
            assert_eq!(long.iter().map(|p| p.fault).collect::<Vec<_>>(), sequence);
            for pair in long.windows(2) {
                assert!(pair[0].at + pair[0].fault.length() + Duration::from_secs(2) <= pair[1].at);
            }
            let kills = planned.iter().filter(|p| p.fault == Fault::Kill9);
            assert!(kills.clone().count() == 4);
            assert!(
                kills
                    .clone()
                    .all(|p| p.at >= Duration::from_secs(3) && p.at < window)
            );
            let last = long.last().unwrap();
            assert_eq!(
                window,
                last.at + last.fault.length() + Duration::from_secs(5)
            );
        }
    }
}
