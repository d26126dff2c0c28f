//! The real services the suite restarts: one RabbitMQ node (`rabbitmqctl -n`) and one
//! PostgreSQL cluster (`pg_ctlcluster`), each checked first to be the one that serves
//! `AMQP_URL` / `DATABASE_URL`, so the suite never restarts a service it is not testing. Also
//! the scratch vhost and database of one run.
//!
//! Whatever happens, a stopped service is started again: [`Services::restore`] runs at the end
//! of every run, and [`Restore`] does it from `Drop` should the run end early (an error, a
//! panic).

use std::collections::HashMap;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use secrecy::ExposeSecret;
use serde_json::Value;
use uidflow::config::Settings;
use uuid::Uuid;

/// How long a restarted service may take to answer again before the run fails.
pub const BACK_DEADLINE: Duration = Duration::from_secs(120);

/// The RabbitMQ node(s) and PostgreSQL cluster under test.
#[derive(Debug, Clone)]
pub struct Services {
    /// `rabbitmqctl -n <node>` of each node (a cluster's: several); empty: rabbitmqctl's
    /// default node.
    pub nodes: Vec<String>,
    /// PostgreSQL major version, e.g. `15`.
    pub pg_version: String,
    /// PostgreSQL cluster name, e.g. `main`.
    pub pg_cluster: String,
    /// The nodes whose application is stopped by us (`""`: the default node).
    broker_down: Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>,
    /// Set while the database cluster is stopped by us.
    database_down: Arc<AtomicBool>,
}

impl Services {
    /// Parses `--pg-cluster VERSION/NAME` and checks that each node serves a port of
    /// `AMQP_URL` (and each port of `AMQP_URL` is served by a node), and the cluster the port
    /// of `DATABASE_URL`.
    pub fn check(
        nodes: Vec<String>,
        pg_cluster: &str,
        settings: &Settings,
    ) -> anyhow::Result<Self> {
        let Some((version, cluster)) = pg_cluster.split_once('/') else {
            bail!("--pg-cluster {pg_cluster:?} is not VERSION/NAME, e.g. 15/main");
        };
        let services = Self {
            nodes,
            pg_version: version.to_owned(),
            pg_cluster: cluster.to_owned(),
            broker_down: Arc::default(),
            database_down: Arc::new(AtomicBool::new(false)),
        };
        let mut wanted = std::collections::BTreeSet::new();
        for node in settings.amqp_nodes() {
            wanted.insert(u64::from(url::Url::parse(&node)?.port().unwrap_or(5672)));
        }
        let mut served = std::collections::BTreeSet::new();
        for node in services.node_names() {
            let status = services.rabbitmqctl_on(&node, &["status", "--formatter", "json"])?;
            let status: Value = serde_json::from_str(&status)
                .context("rabbitmqctl status --formatter json did not print JSON")?;
            let ports: Vec<u64> = status["listeners"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|l| l["protocol"] == "amqp")
                .filter_map(|l| l["port"].as_u64())
                .collect();
            ensure!(
                ports.iter().any(|p| wanted.contains(p)),
                "the RabbitMQ node {} listens for AMQP on {ports:?}, but AMQP_URL uses ports {wanted:?}; \
                 point --rabbitmq-node and AMQP_URL at the same broker",
                display(&node)
            );
            served.extend(ports);
        }
        ensure!(
            wanted.is_subset(&served),
            "AMQP_URL uses ports {wanted:?}, but the nodes under test serve {served:?}; name every node with --rabbitmq-node"
        );
        let database = url::Url::parse(settings.database_url.expose_secret())?;
        let db_port = database.port().unwrap_or(5432);
        let listing = run("pg_lsclusters", &["--no-header"])?;
        let port = listing
            .lines()
            .map(|line| line.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.len() >= 3 && f[0] == version && f[1] == cluster)
            .map(|f| f[2].to_owned())
            .with_context(|| format!("pg_lsclusters lists no cluster {pg_cluster}"))?;
        ensure!(
            port == db_port.to_string(),
            "the PostgreSQL cluster {pg_cluster} listens on port {port}, but DATABASE_URL uses port {db_port}; \
             point --pg-cluster and DATABASE_URL at the same server"
        );
        Ok(services)
    }

    /// The nodes' names for messages.
    pub fn node_name(&self) -> String {
        self.node_names()
            .iter()
            .map(|n| display(n).to_owned())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The nodes under test (`""`: rabbitmqctl's default node).
    pub fn node_names(&self) -> Vec<String> {
        if self.nodes.is_empty() {
            vec![String::new()]
        } else {
            self.nodes.clone()
        }
    }

    /// True with more than one node (a cluster).
    pub fn is_cluster(&self) -> bool {
        self.nodes.len() > 1
    }

    /// Runs `rabbitmqctl args…` on a node that is not stopped by us, and returns its standard
    /// output.
    pub fn rabbitmqctl(&self, args: &[&str]) -> anyhow::Result<String> {
        let down = self.nodes_down();
        let node = self
            .node_names()
            .into_iter()
            .find(|n| !down.contains(n))
            .unwrap_or_default();
        self.rabbitmqctl_on(&node, args)
    }

    /// Runs `rabbitmqctl [-n node] args…` and returns its standard output.
    pub fn rabbitmqctl_on(&self, node: &str, args: &[&str]) -> anyhow::Result<String> {
        let mut all: Vec<&str> = Vec::new();
        if !node.is_empty() {
            all.extend(["-n", node]);
        }
        all.extend(args);
        run("rabbitmqctl", &all)
    }

    fn nodes_down(&self) -> std::collections::BTreeSet<String> {
        self.broker_down
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The node that leads the most quorum queues of `vhost` (a cluster's busiest).
    pub fn busiest_leader(&self, vhost: &str) -> anyhow::Result<String> {
        let output = self.rabbitmqctl(&[
            "list_queues",
            "-p",
            vhost,
            "name",
            "leader",
            "--formatter",
            "json",
        ])?;
        let rows: Vec<Value> = serde_json::from_str(output.trim()).with_context(|| {
            format!("rabbitmqctl list_queues printed no JSON array: {output:?}")
        })?;
        let mut led: HashMap<String, usize> = HashMap::new();
        for row in &rows {
            if let Some(leader) = row["leader"].as_str() {
                *led.entry(leader.to_owned()).or_default() += 1;
            }
        }
        led.into_iter()
            .max_by_key(|(node, n)| (*n, node.clone()))
            .map(|(node, _)| node)
            .context("no queue has a leader")
    }

    fn pg_ctlcluster(&self, action: &str) -> anyhow::Result<()> {
        let mut args = vec![
            "--skip-systemctl-redirect",
            self.pg_version.as_str(),
            self.pg_cluster.as_str(),
            action,
        ];
        if action == "stop" {
            args.extend(["-m", "fast"]);
        }
        run("pg_ctlcluster", &args).map(drop)
    }

    /// `rabbitmqctl -n node stop_app`: the node stays up, its broker stops (every connection
    /// to it closed).
    pub fn stop_broker(&self, node: &str) -> anyhow::Result<()> {
        self.broker_down
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(node.to_owned());
        self.rabbitmqctl_on(node, &["stop_app"]).map(drop)
    }

    /// `rabbitmqctl -n node start_app`, then `await_startup`.
    pub fn start_broker(&self, node: &str) -> anyhow::Result<()> {
        self.rabbitmqctl_on(node, &["start_app"])?;
        self.rabbitmqctl_on(node, &["await_startup"])?;
        self.broker_down
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(node);
        Ok(())
    }

    /// `pg_ctlcluster … stop -m fast` (sessions are terminated).
    pub fn stop_database(&self) -> anyhow::Result<()> {
        self.database_down.store(true, Ordering::SeqCst);
        self.pg_ctlcluster("stop")
    }

    /// `pg_ctlcluster … start` (it returns once the server accepts connections).
    pub fn start_database(&self) -> anyhow::Result<()> {
        self.pg_ctlcluster("start")?;
        self.database_down.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Starts whatever we stopped and did not start again (idempotent; errors are printed).
    pub fn restore(&self) {
        for node in self.nodes_down() {
            match self.start_broker(&node) {
                Ok(()) => eprintln!("chaos: restored RabbitMQ ({})", display(&node)),
                Err(error) => eprintln!("chaos: could not restart RabbitMQ: {error:#}"),
            }
        }
        if self.database_down.load(Ordering::SeqCst) {
            match self.start_database() {
                Ok(()) => eprintln!(
                    "chaos: restored PostgreSQL {}/{}",
                    self.pg_version, self.pg_cluster
                ),
                Err(error) => eprintln!("chaos: could not restart PostgreSQL: {error:#}"),
            }
        }
    }

    /// A guard that restores both services when dropped.
    pub fn restore_on_drop(&self) -> Restore {
        Restore(self.clone())
    }

    /// Messages ready and unacknowledged per queue of `vhost`.
    pub fn queue_depths(&self, vhost: &str) -> anyhow::Result<HashMap<String, (u64, u64)>> {
        let output = self.rabbitmqctl(&[
            "list_queues",
            "-p",
            vhost,
            "name",
            "messages_ready",
            "messages_unacknowledged",
            "--formatter",
            "json",
        ])?;
        parse_queue_depths(&output)
    }
}

/// A node's name for messages (`""`: the default node).
pub fn display(node: &str) -> &str {
    if node.is_empty() {
        "(rabbitmqctl's default node)"
    } else {
        node
    }
}

/// Starts what the run stopped, when dropped.
pub struct Restore(Services);

impl Drop for Restore {
    fn drop(&mut self) {
        self.0.restore();
    }
}

/// Reads `rabbitmqctl list_queues name messages_ready messages_unacknowledged --formatter json`.
pub fn parse_queue_depths(output: &str) -> anyhow::Result<HashMap<String, (u64, u64)>> {
    let rows: Vec<Value> = serde_json::from_str(output.trim())
        .with_context(|| format!("rabbitmqctl list_queues printed no JSON array: {output:?}"))?;
    rows.iter()
        .map(|row| {
            let name = row["name"].as_str().context("a queue without a name")?;
            let ready = row["messages_ready"]
                .as_u64()
                .context("no messages_ready")?;
            let unacked = row["messages_unacknowledged"]
                .as_u64()
                .context("no messages_unacknowledged")?;
            Ok((name.to_owned(), (ready, unacked)))
        })
        .collect()
}

/// How long one `rabbitmqctl` or `pg_ctlcluster` may take before it is killed.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(90);

/// Runs `program args…` in a process group of its own and returns its standard output; kills
/// the whole group after [`COMMAND_TIMEOUT`]. (`rabbitmqctl` is a shell script that starts an
/// Erlang VM through `su`: killing only the script would leave that VM behind, holding one of
/// the few distribution ports every rabbitmqctl on the machine needs.)
pub(crate) fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    run_within(program, args, COMMAND_TIMEOUT)
}

fn run_within(program: &str, args: &[&str], timeout: Duration) -> anyhow::Result<String> {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    let mut child = Command::new(program)
        .args(args)
        .process_group(0)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| {
            format!("{program} must be on the PATH (uidflow chaos runs on the services' machine)")
        })?;
    // Read both pipes while waiting, so a chatty command cannot block on a full pipe.
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > timeout {
            let group = format!("-{}", child.id());
            let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
            let _ = child.wait();
            bail!(
                "{program} {} did not finish within {COMMAND_TIMEOUT:?}; killed it",
                args.join(" ")
            );
        }
        // Polling interval of a wait for the command's exit.
        std::thread::sleep(Duration::from_millis(50));
    };
    let (stdout, stderr) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    ensure!(
        status.success(),
        "{program} {}: {}",
        args.join(" "),
        stderr.trim()
    );
    Ok(stdout)
}

/// Sends SIGTERM to process `pid`, with `kill` rather than a signal call: the workspace
/// forbids unsafe code. Whether it arrived shows in the process's exit.
pub fn sigterm(pid: u32) {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
}

/// A vhost and a database made for one run (of `uidflow chaos` or `uidflow bench`), removed
/// afterwards (unless kept).
pub struct Scratch {
    /// Settings pointing at them.
    pub settings: Settings,
    /// The vhost's name.
    pub vhost: String,
    /// The database's name.
    pub database: String,
    /// `AMQP_URL` of the vhost.
    pub amqp_url: String,
    /// `DATABASE_URL` of the database.
    pub database_url: String,
}

impl Scratch {
    /// Creates the vhost on the node under test (with permissions for the URL's user) and
    /// settings naming a fresh database on the same server (created by `prepare`).
    pub fn create(
        base: &Settings,
        purpose: &str,
        rabbitmqctl: &dyn Fn(&[&str]) -> anyhow::Result<String>,
        extra: &[(&str, String)],
    ) -> anyhow::Result<Self> {
        let suffix = Uuid::new_v4().simple().to_string();
        let vhost = format!("uidflow-{purpose}-{suffix}");
        let database = format!("uidflow_{purpose}_{suffix}");
        // Every node of AMQP_URL, now naming the scratch vhost.
        let mut nodes = Vec::new();
        for node in base.amqp_nodes() {
            let mut url = url::Url::parse(&node)?;
            url.set_path(&format!("/{vhost}"));
            nodes.push(url);
        }
        let user = match nodes.first().map(url::Url::username) {
            None | Some("") => "guest".to_owned(),
            Some(user) => user.to_owned(),
        };
        rabbitmqctl(&["add_vhost", &vhost])?;
        rabbitmqctl(&["set_permissions", "-p", &vhost, &user, ".*", ".*", ".*"])?;
        let amqp = nodes
            .iter()
            .map(url::Url::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let mut db = url::Url::parse(base.database_url.expose_secret())?;
        db.set_path(&format!("/{database}"));
        let vars: HashMap<String, String> = std::env::vars()
            .chain([
                ("AMQP_URL".to_owned(), amqp.clone()),
                ("DATABASE_URL".to_owned(), db.to_string()),
                ("API_ADDR".to_owned(), "127.0.0.1:0".to_owned()),
            ])
            .chain(extra.iter().map(|(k, v)| ((*k).to_owned(), v.clone())))
            .collect();
        let settings = Settings::from_map(&vars).map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(Self {
            settings,
            vhost,
            database,
            amqp_url: amqp,
            database_url: db.to_string(),
        })
    }

    /// Deletes the vhost and the database.
    pub async fn drop_all(&self, rabbitmqctl: &dyn Fn(&[&str]) -> anyhow::Result<String>) {
        let _ = rabbitmqctl(&["delete_vhost", &self.vhost]);
        let mut maintenance = self.settings.clone();
        let mut url =
            url::Url::parse(self.settings.database_url.expose_secret()).expect("checked at start");
        url.set_path("/postgres");
        maintenance.database_url = url.to_string().into();
        if let Ok(admin) = uidflow::db::connect(&maintenance, 1).await {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.database
            )))
            .execute(&admin)
            .await;
            admin.close().await;
        }
    }
}

/// Polls until a new AMQP connection to `settings`' vhost opens, or the deadline passes.
pub async fn wait_for_broker(settings: &Settings) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        if let Ok(connection) = uidflow::amqp::connect_once(settings, "chaos-probe").await {
            let _ = connection.close(200, "probe".into()).await;
            return Ok(started.elapsed());
        }
        ensure!(
            started.elapsed() < BACK_DEADLINE,
            "RabbitMQ did not accept connections within {BACK_DEADLINE:?} of start_app"
        );
        // Polling interval of a condition wait.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Polls until a new PostgreSQL connection answers `SELECT 1`, or the deadline passes.
pub async fn wait_for_database(settings: &Settings) -> anyhow::Result<Duration> {
    use sqlx::Connection;
    let started = Instant::now();
    loop {
        if let Ok(mut connection) =
            sqlx::PgConnection::connect(settings.database_url.expose_secret()).await
            && sqlx::query("SELECT 1")
                .execute(&mut connection)
                .await
                .is_ok()
        {
            let _ = connection.close().await;
            return Ok(started.elapsed());
        }
        ensure!(
            started.elapsed() < BACK_DEADLINE,
            "PostgreSQL did not answer within {BACK_DEADLINE:?} of its start"
        );
        // Polling interval of a condition wait.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_report_their_output_and_failures() {
        assert_eq!(
            run("sh", &["-c", "echo out; echo err >&2"]).unwrap(),
            "out\n"
        );
        let failed = run("sh", &["-c", "echo why >&2; exit 3"]).unwrap_err();
        assert!(failed.to_string().ends_with(": why"), "{failed}");
        assert!(run("no-such-program-here", &[]).is_err());
    }

    #[test]
    fn a_command_that_hangs_is_killed_with_everything_it_started() {
        let file = std::env::temp_dir().join(format!("chaos-{}", Uuid::new_v4().simple()));
        let script = format!("sleep 30 & echo $! > {}; wait", file.display());
        let started = Instant::now();
        let error = run_within("sh", &["-c", &script], Duration::from_millis(500)).unwrap_err();
        assert!(error.to_string().contains("killed it"), "{error}");
        assert!(started.elapsed() < Duration::from_secs(10));
        let grandchild = std::fs::read_to_string(&file).unwrap();
        let _ = std::fs::remove_file(&file);
        let alive = || {
            Command::new("kill")
                .args(["-0", grandchild.trim()])
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive() {
            assert!(
                Instant::now() < deadline,
                "the command's own child was killed too"
            );
            // Polling interval of a condition wait.
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    #[test]
    fn queue_depths_are_read_from_rabbitmqctl_json() {
        let output = r#"[
{"name":"uid.step.register","messages_ready":0,"messages_unacknowledged":2}
,{"name":"uid.retry.confirm-phone.10m","messages_ready":7,"messages_unacknowledged":0}
]
"#;
        let depths = parse_queue_depths(output).unwrap();
        assert_eq!(depths["uid.step.register"], (0, 2));
        assert_eq!(depths["uid.retry.confirm-phone.10m"], (7, 0));
        assert_eq!(depths.len(), 2);
        assert!(parse_queue_depths("[\n]\n").unwrap().is_empty());
        assert!(parse_queue_depths("Listing queues").is_err());
        assert!(parse_queue_depths(r#"[{"name":"q"}]"#).is_err());
    }
}
