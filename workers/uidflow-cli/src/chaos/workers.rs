//! The supervisor: N `uidflow run` processes, each restarted whenever it exits (like systemd's
//! `Restart=always`), every exit logged with its cause and exit code. The fault schedule asks
//! it to `kill -9` or SIGTERM a running process.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};

/// What a process gets after SIGTERM before it counts as hung (and is killed): the consumers'
/// grace for deliveries in flight, plus the bounds on their `basic.cancel` and on closing the
/// connection.
pub const TERM_GRACE: Duration = Duration::from_secs(
    uidflow::consumer::SHUTDOWN_GRACE.as_secs() + 2 * uidflow::amqp::CLOSE_TIMEOUT.as_secs(),
);

/// The pause before a process that exited is started again (systemd's `RestartSec`).
const RESTART_DELAY: Duration = Duration::from_millis(500);

/// Why a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// We sent SIGKILL.
    Kill9,
    /// We sent SIGTERM during the run.
    Sigterm,
    /// We sent SIGTERM at the end of the run.
    FinalStop,
    /// Nobody asked it to.
    Itself,
}

/// One exit of one process.
#[derive(Debug, Clone, Serialize)]
pub struct Exit {
    /// Which worker (0-based).
    pub worker: usize,
    /// Its process id.
    pub pid: u32,
    /// Seconds since the run started.
    pub at: f64,
    /// How long this process had run.
    pub uptime: f64,
    /// Why.
    pub cause: Cause,
    /// The exit code, when it exited by itself.
    pub code: Option<i32>,
    /// The signal that ended it, when one did.
    pub signal: Option<i32>,
    /// For SIGTERM: seconds from the signal to the exit.
    pub exit_seconds: Option<f64>,
    /// For SIGTERM: exited 0 within [`TERM_GRACE`].
    pub clean: Option<bool>,
}

enum Order {
    Kill9(oneshot::Sender<Option<u32>>),
    Term(oneshot::Sender<Option<Exit>>),
    Stop(oneshot::Sender<Option<Exit>>),
}

/// How to start one worker.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The `uidflow` binary.
    pub program: PathBuf,
    /// `--only` parts.
    pub parts: String,
    /// `--concurrency`.
    pub concurrency: u16,
    /// The environment on top of the driver's.
    pub env: HashMap<String, String>,
    /// Where its stderr goes (appended).
    pub log: PathBuf,
}

/// The supervised workers.
pub struct Workers {
    orders: Vec<mpsc::Sender<Order>>,
    pids: Vec<Arc<Mutex<Option<u32>>>>,
    /// Every exit, in order.
    pub exits: Arc<Mutex<Vec<Exit>>>,
    /// Process starts per worker.
    pub starts: Arc<Mutex<Vec<u32>>>,
    /// The `--only` parts of each worker.
    pub parts: Vec<String>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Workers {
    /// Starts one supervisor per launch; `epoch` is the run's start.
    pub fn start(launches: Vec<Launch>, epoch: Instant) -> Self {
        let exits = Arc::new(Mutex::new(Vec::new()));
        let starts = Arc::new(Mutex::new(vec![0; launches.len()]));
        let mut orders = Vec::new();
        let mut pids = Vec::new();
        let mut tasks = Vec::new();
        let parts = launches.iter().map(|l| l.parts.clone()).collect();
        for (worker, launch) in launches.into_iter().enumerate() {
            let (tx, rx) = mpsc::channel(4);
            let pid = Arc::new(Mutex::new(None));
            let supervisor = Supervisor {
                worker,
                launch,
                epoch,
                pid: Arc::clone(&pid),
                exits: Arc::clone(&exits),
                starts: Arc::clone(&starts),
            };
            tasks.push(tokio::spawn(supervisor.run(rx)));
            orders.push(tx);
            pids.push(pid);
        }
        Self {
            orders,
            pids,
            exits,
            starts,
            parts,
            tasks: Mutex::new(tasks),
        }
    }

    /// The workers whose process is running now.
    pub fn running(&self) -> Vec<usize> {
        (0..self.pids.len())
            .filter(|w| lock(&self.pids[*w]).is_some())
            .collect()
    }

    /// `kill -9` of worker `worker`'s process; its pid, or `None` if it was not running.
    pub async fn kill9(&self, worker: usize) -> Option<u32> {
        let (tx, rx) = oneshot::channel();
        self.orders[worker].send(Order::Kill9(tx)).await.ok()?;
        rx.await.ok().flatten()
    }

    /// SIGTERM to worker `worker`'s process, then waits for its exit (at most [`TERM_GRACE`],
    /// then SIGKILL); the exit, or `None` if it was not running. It is restarted after.
    pub async fn sigterm(&self, worker: usize) -> Option<Exit> {
        let (tx, rx) = oneshot::channel();
        self.orders[worker].send(Order::Term(tx)).await.ok()?;
        rx.await.ok().flatten()
    }

    /// Stops every worker with SIGTERM (no restart) and returns their exits.
    pub async fn stop_all(&self) -> Vec<Exit> {
        let mut stopped = Vec::new();
        for order in &self.orders {
            let (tx, rx) = oneshot::channel();
            if order.send(Order::Stop(tx)).await.is_ok()
                && let Ok(Some(exit)) = rx.await
            {
                stopped.push(exit);
            }
        }
        let tasks = std::mem::take(&mut *lock(&self.tasks));
        for task in tasks {
            let _ = task.await;
        }
        stopped
    }
}

struct Supervisor {
    worker: usize,
    launch: Launch,
    epoch: Instant,
    pid: Arc<Mutex<Option<u32>>>,
    exits: Arc<Mutex<Vec<Exit>>>,
    starts: Arc<Mutex<Vec<u32>>>,
}

impl Supervisor {
    async fn run(self, mut orders: mpsc::Receiver<Order>) {
        loop {
            let mut child = match self.spawn() {
                Ok(child) => child,
                Err(error) => {
                    eprintln!("chaos: worker {} does not start: {error}", self.worker);
                    if !self.idle(&mut orders, RESTART_DELAY * 4).await {
                        return;
                    }
                    continue;
                }
            };
            let pid = child.id().unwrap_or_default();
            *lock(&self.pid) = Some(pid);
            lock(&self.starts)[self.worker] += 1;
            let started = Instant::now();
            let stop = tokio::select! {
                status = child.wait() => {
                    self.record(pid, started, Cause::Itself, status.ok(), None);
                    false
                }
                order = orders.recv() => match order {
                    Some(Order::Kill9(reply)) => {
                        let _ = child.start_kill();
                        let status = child.wait().await.ok();
                        self.record(pid, started, Cause::Kill9, status, None);
                        let _ = reply.send(Some(pid));
                        false
                    }
                    Some(Order::Term(reply)) => {
                        let exit = self.terminate(&mut child, pid, started, Cause::Sigterm).await;
                        let _ = reply.send(Some(exit));
                        false
                    }
                    Some(Order::Stop(reply)) => {
                        let exit = self.terminate(&mut child, pid, started, Cause::FinalStop).await;
                        let _ = reply.send(Some(exit));
                        true
                    }
                    None => {
                        let _ = child.start_kill();
                        let _ = child.wait().await;
                        true
                    }
                },
            };
            *lock(&self.pid) = None;
            if stop || !self.idle(&mut orders, RESTART_DELAY).await {
                return;
            }
        }
    }

    /// Waits `delay` before a restart, answering orders meanwhile (nothing runs); false when
    /// told to stop.
    async fn idle(&self, orders: &mut mpsc::Receiver<Order>, delay: Duration) -> bool {
        let until = tokio::time::Instant::now() + delay;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return true,
                order = orders.recv() => match order {
                    Some(Order::Kill9(reply)) => { let _ = reply.send(None); }
                    Some(Order::Term(reply)) => { let _ = reply.send(None); }
                    Some(Order::Stop(reply)) => { let _ = reply.send(None); return false; }
                    None => return false,
                },
            }
        }
    }

    async fn terminate(&self, child: &mut Child, pid: u32, started: Instant, cause: Cause) -> Exit {
        let signalled = Instant::now();
        super::services::sigterm(pid);
        let status = match tokio::time::timeout(TERM_GRACE, child.wait()).await {
            Ok(status) => status.ok(),
            Err(_) => {
                eprintln!(
                    "chaos: worker {} (pid {pid}) still running {TERM_GRACE:?} after SIGTERM; killing it",
                    self.worker
                );
                let _ = child.start_kill();
                child.wait().await.ok()
            }
        };
        let seconds = signalled.elapsed().as_secs_f64();
        self.record(pid, started, cause, status, Some(seconds))
    }

    fn record(
        &self,
        pid: u32,
        started: Instant,
        cause: Cause,
        status: Option<ExitStatus>,
        exit_seconds: Option<f64>,
    ) -> Exit {
        use std::os::unix::process::ExitStatusExt;
        let code = status.and_then(|s| s.code());
        let signal = status.and_then(|s| s.signal());
        let clean = exit_seconds.map(|s| code == Some(0) && s <= TERM_GRACE.as_secs_f64());
        let exit = Exit {
            worker: self.worker,
            pid,
            at: self.epoch.elapsed().as_secs_f64(),
            uptime: started.elapsed().as_secs_f64(),
            cause,
            code,
            signal,
            exit_seconds,
            clean,
        };
        let how = match (code, signal) {
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(signal)) => format!("signal {signal}"),
            _ => "unknown status".to_owned(),
        };
        let after = exit_seconds
            .map(|s| format!(", {s:.1} s after SIGTERM"))
            .unwrap_or_default();
        let restart = if cause == Cause::FinalStop {
            ""
        } else {
            "; restarting"
        };
        eprintln!(
            "chaos: [{:>6.1}s] worker {} (pid {pid}, up {:.1} s) ended: {cause:?}, {how}{after}{restart}",
            exit.at, self.worker, exit.uptime
        );
        lock(&self.exits).push(exit.clone());
        exit
    }

    fn spawn(&self) -> std::io::Result<Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.launch.log)?;
        Command::new(&self.launch.program)
            .args([
                "run",
                "--only",
                &self.launch.parts,
                "--concurrency",
                &self.launch.concurrency.to_string(),
            ])
            .envs(&self.launch.env)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
