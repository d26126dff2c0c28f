//! Which resource a run used: CPU time of uidflow, of RabbitMQ and of PostgreSQL (from
//! `/proc`), the machine's idle and I/O-wait share, and PostgreSQL's WAL writes and syncs.
//! Sampled before and after a measured phase; the report names the busiest resource.

use serde_json::{Value, json};
use sqlx::PgPool;

/// Clock ticks per second of `/proc` CPU times (Linux's USER_HZ).
const TICKS: f64 = 100.0;

/// One sample.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// uidflow's process: this one, or the `uidflow run` child when there is one.
    uidflow: f64,
    /// This process when uidflow is a child (the bench's publisher, clerk and simulators).
    driver: Option<f64>,
    rabbitmq: f64,
    postgresql: f64,
    machine_busy: f64,
    machine_idle: f64,
    machine_iowait: f64,
    wal_syncs: i64,
    wal_writes: i64,
    wal_bytes: f64,
}

/// User + system CPU seconds of process `pid` (`self` for this one).
fn process_cpu(pid: &str) -> Option<(String, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (head, tail) = stat.rsplit_once(')')?;
    let name = head.split_once('(')?.1.to_owned();
    let fields: Vec<&str> = tail.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some((name, ticks / TICKS))
}

/// CPU seconds of this process.
pub fn own_cpu_seconds() -> f64 {
    process_cpu("self").map(|(_, s)| s).unwrap_or(0.0)
}

impl Sample {
    /// Reads `/proc` and `pg_stat_wal` now. uidflow is process `child` if given, else this one.
    pub async fn take(pool: &PgPool, child: Option<u32>) -> Self {
        let mut sample = match child {
            None => Sample {
                uidflow: own_cpu_seconds(),
                ..Sample::default()
            },
            Some(pid) => Sample {
                uidflow: process_cpu(&pid.to_string()).map_or(0.0, |(_, s)| s),
                driver: Some(own_cpu_seconds()),
                ..Sample::default()
            },
        };
        let own = std::process::id().to_string();
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for entry in entries.flatten() {
                let pid = entry.file_name().to_string_lossy().into_owned();
                if pid == own || !pid.bytes().all(|b| b.is_ascii_digit()) {
                    continue;
                }
                match process_cpu(&pid) {
                    Some((name, seconds)) if name == "beam.smp" => sample.rabbitmq += seconds,
                    Some((name, seconds)) if name == "postgres" => sample.postgresql += seconds,
                    _ => {}
                }
            }
        }
        if let Some(cpu) = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| s.lines().next().map(str::to_owned))
        {
            let t: Vec<f64> = cpu
                .split_whitespace()
                .skip(1)
                .filter_map(|v| v.parse().ok())
                .collect();
            if t.len() >= 5 {
                sample.machine_idle = t[3] / TICKS;
                sample.machine_iowait = t[4] / TICKS;
                sample.machine_busy =
                    t.iter().sum::<f64>() / TICKS - sample.machine_idle - sample.machine_iowait;
            }
        }
        if let Ok((syncs, writes, bytes)) = sqlx::query_as::<_, (i64, i64, f64)>(
            "SELECT wal_sync, wal_write, wal_bytes::float8 FROM pg_stat_wal",
        )
        .fetch_one(pool)
        .await
        {
            sample.wal_syncs = syncs;
            sample.wal_writes = writes;
            sample.wal_bytes = bytes;
        }
        sample
    }

    /// What was used between `self` and `later`, over `seconds` of wall time, for `n`
    /// applications: CPU in cores for each component, the machine's idle and I/O-wait share,
    /// WAL syncs per application, and the busiest resource.
    pub fn usage(&self, later: &Sample, seconds: f64, n: u32) -> Value {
        let cores = |a: f64, b: f64| ((b - a) / seconds.max(1e-9) * 100.0).round() / 100.0;
        let total = (later.machine_busy + later.machine_idle + later.machine_iowait)
            - (self.machine_busy + self.machine_idle + self.machine_iowait);
        let share = |a: f64, b: f64| {
            if total > 0.0 {
                ((b - a) / total * 100.0).round()
            } else {
                0.0
            }
        };
        let parts = [
            ("uidflow", cores(self.uidflow, later.uidflow)),
            ("rabbitmq", cores(self.rabbitmq, later.rabbitmq)),
            ("postgresql", cores(self.postgresql, later.postgresql)),
        ];
        let idle = share(self.machine_idle, later.machine_idle);
        let iowait = share(self.machine_iowait, later.machine_iowait);
        let busiest = parts
            .iter()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|p| p.0)
            .unwrap_or("uidflow");
        let saturated = if iowait >= 20.0 {
            "fsync (the machine waits on I/O)".to_owned()
        } else if idle <= 10.0 {
            format!("CPU (the machine is {idle} % idle); the busiest is {busiest}")
        } else {
            format!(
                "nothing is saturated (the machine is {idle} % idle, {iowait} % in I/O wait): the run is latency-bound"
            )
        };
        let per_app = |a: i64, b: i64| (b - a) as f64 / f64::from(n.max(1));
        let mut cpu_cores =
            json!({"uidflow": parts[0].1, "rabbitmq": parts[1].1, "postgresql": parts[2].1});
        if let (Some(a), Some(b)) = (self.driver, later.driver) {
            cpu_cores["bench_driver"] = json!(cores(a, b));
        }
        json!({
            "cpu_cores": cpu_cores,
            "machine_idle_percent": idle,
            "machine_iowait_percent": iowait,
            "wal_syncs_per_application": per_app(self.wal_syncs, later.wal_syncs),
            "wal_writes_per_application": per_app(self.wal_writes, later.wal_writes),
            "wal_kib_per_application": (later.wal_bytes - self.wal_bytes) / 1024.0 / f64::from(n.max(1)),
            "saturated": saturated,
        })
    }
}
