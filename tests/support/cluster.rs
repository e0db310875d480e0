//! A real cluster for scenarios: etcd + N `patroni` daemons (our binary) + HAProxy, all on
//! free loopback ports in one temp dir. Everything is killed by PID on drop, including
//! postmasters (which run in their own session and survive their daemon by design).
use super::etcd::Etcd;
use super::zookeeper::ZooKeeper;
use super::{ChildGuard, TestDir, chown_for_postgres, eventually, free_port, wait_port};
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

pub struct Timing {
    pub ttl: u64,
    pub loop_wait: u64,
    pub retry_timeout: u64,
}

impl Timing {
    /// `true` when any setting is below upstream's floor (the library's constant), so the
    /// daemon accepts this timing only with `allow_short_ttl: true`.
    pub fn below_upstream_floors(&self) -> bool {
        let f = patroni::config::UPSTREAM_FLOORS;
        self.ttl < f.ttl || self.loop_wait < f.loop_wait || self.retry_timeout < f.retry_timeout
    }

    /// The `bootstrap.dcs` timing keys, each line starting with `indent`; adds
    /// `allow_short_ttl: true` when the timing is below upstream's floors. Every harness
    /// writes its timing through this one helper.
    pub fn dcs_yaml(&self, indent: &str) -> String {
        let mut out = format!(
            "{indent}ttl: {}\n{indent}loop_wait: {}\n{indent}retry_timeout: {}\n",
            self.ttl, self.loop_wait, self.retry_timeout
        );
        if self.below_upstream_floors() {
            out.push_str(&format!(
                "{indent}{}: true\n",
                patroni::config::ALLOW_SHORT_TTL
            ));
        }
        out
    }
}

pub const FAST: Timing = Timing {
    ttl: 20,
    loop_wait: 2,
    retry_timeout: 5,
};

/// The fast-failover profile at its floors (accepted only with `allow_short_ttl`).
pub const QUICK: Timing = Timing {
    ttl: patroni::config::SHORT_FLOORS.ttl,
    loop_wait: patroni::config::SHORT_FLOORS.loop_wait,
    retry_timeout: patroni::config::SHORT_FLOORS.retry_timeout,
};

pub struct Node {
    pub name: String,
    pub pg_port: u16,
    pub api_port: u16,
    pub config: PathBuf,
    pub data_dir: PathBuf,
    pub daemon: Option<ChildGuard>,
    log_n: u32,
}

/// Which store the daemons use (each has its own config section).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DcsKind {
    /// `etcd3:` (the default of `Cluster::new`).
    Etcd3,
    /// `etcd:` through the v2 keys API of the same etcd.
    Etcd2,
    /// `zookeeper:` on a real ZooKeeper started for the cluster.
    ZooKeeper,
}

pub struct Cluster {
    pub dir: TestDir,
    pub etcd: Etcd,
    /// Started only for `DcsKind::ZooKeeper`.
    pub zookeeper: Option<ZooKeeper>,
    pub dcs: DcsKind,
    pub nodes: Vec<Node>,
    pub haproxy: Option<ChildGuard>,
    pub ha_primary_port: u16,
    pub ha_replica_port: u16,
    pub scope: String,
}

impl Cluster {
    /// Write configs for `n` nodes and start etcd (daemons are started by `start_all`).
    pub fn new(n: usize, t: &Timing) -> Cluster {
        Cluster::with_dcs(n, t, DcsKind::Etcd3)
    }

    /// Like `new`, with the daemons on the given store (etcd is started in any case, as
    /// `Cluster::etcd` is always there).
    pub fn with_dcs(n: usize, t: &Timing, dcs: DcsKind) -> Cluster {
        let dir = TestDir::new("cluster-");
        let etcd = Etcd::start();
        let zookeeper = (dcs == DcsKind::ZooKeeper).then(ZooKeeper::start);
        let dcs_section = match (dcs, &zookeeper) {
            (DcsKind::ZooKeeper, Some(zk)) => format!("zookeeper:\n  hosts: ['{}']\n", zk.hosts()),
            (DcsKind::Etcd2, _) => format!("etcd:\n  hosts: 127.0.0.1:{}\n", etcd.client_port),
            _ => format!("etcd3:\n  hosts: 127.0.0.1:{}\n", etcd.client_port),
        };
        let scope = format!("test{}", std::process::id());
        let nodes = make_nodes(&dir, n, &scope, &dcs_section, t);
        std::fs::create_dir_all(dir.join("data")).unwrap();
        chown_for_postgres(&dir.join("data"));
        Cluster {
            dir,
            etcd,
            zookeeper,
            dcs,
            nodes,
            haproxy: None,
            ha_primary_port: 0,
            ha_replica_port: 0,
            scope,
        }
    }

    /// A second cluster with another scope on the same etcd as `other` (for a standby
    /// cluster); `other` owns the etcd process and must outlive this one.
    pub fn sharing_etcd(other: &Cluster, n: usize, t: &Timing, scope_suffix: &str) -> Cluster {
        let dir = TestDir::new("cluster-");
        let etcd = Etcd {
            client_port: other.etcd.client_port,
            peer_port: other.etcd.peer_port,
            dir: TestDir::new("etcd-ref-"),
            guard: None,
        };
        let dcs_section = format!("etcd3:\n  hosts: 127.0.0.1:{}\n", etcd.client_port);
        let scope = format!("{}-{scope_suffix}", other.scope);
        let nodes = make_nodes(&dir, n, &scope, &dcs_section, t);
        std::fs::create_dir_all(dir.join("data")).unwrap();
        chown_for_postgres(&dir.join("data"));
        Cluster {
            dir,
            etcd,
            zookeeper: None,
            dcs: DcsKind::Etcd3,
            nodes,
            haproxy: None,
            ha_primary_port: 0,
            ha_replica_port: 0,
            scope,
        }
    }

    /// Edit every node's YAML configuration.
    pub fn edit_all_configs(&self, edit: impl Fn(&mut serde_yaml_ng::Value)) {
        for i in 0..self.nodes.len() {
            self.edit_config(i, &edit);
        }
    }

    pub fn start_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.start(i);
        }
    }

    pub fn start(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        node.log_n += 1;
        let log = self.dir.join(&format!("{}-{}.log", node.name, node.log_n));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_patroni"));
        cmd.arg(&node.config).env(
            "RUST_LOG",
            std::env::var("PATRONI_TEST_RUST_LOG").unwrap_or_else(|_| "info".into()),
        );
        // As root the daemon drops to the postgres user itself.
        node.daemon = Some(ChildGuard::spawn(&node.name, cmd, false, &log));
    }

    /// Start node `i` with another daemon command (e.g. upstream Patroni), logging like `start`.
    pub fn start_with(&mut self, i: usize, cmd: Command, unprivileged: bool) {
        let node = &mut self.nodes[i];
        node.log_n += 1;
        let log = self.dir.join(&format!("{}-{}.log", node.name, node.log_n));
        node.daemon = Some(ChildGuard::spawn(&node.name, cmd, unprivileged, &log));
    }

    /// kill -9 the daemon (and optionally its postmaster).
    pub fn kill_daemon(&mut self, i: usize, with_postmaster: bool) {
        if let Some(mut g) = self.nodes[i].daemon.take() {
            g.kill9();
        }
        if with_postmaster && let Some(pid) = self.postmaster_pid(i) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }

    /// kill -9 of the daemon process only; its fencing process and PostgreSQL live on.
    pub fn kill_daemon_alone(&mut self, i: usize) {
        if let Some(g) = self.nodes[i].daemon.take() {
            g.kill9_alone();
        }
    }

    pub fn sigterm_daemon(&mut self, i: usize) {
        if let Some(g) = &self.nodes[i].daemon {
            g.signal(nix::sys::signal::Signal::SIGTERM);
        }
    }

    pub fn signal_daemon(&self, i: usize, sig: nix::sys::signal::Signal) {
        if let Some(g) = &self.nodes[i].daemon {
            g.signal(sig);
        }
    }

    /// Put `value` at `/service/<scope>/<key>` with etcdctl (what an operator or another
    /// tool would do).
    pub fn dcs_put(&self, key: &str, value: &str) {
        let ok = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args([
                "--endpoints",
                &self.etcd.endpoint(),
                "put",
                &format!("/service/{}/{key}", self.scope),
                value,
            ])
            .stdout(std::process::Stdio::null())
            .status()
            .expect("etcdctl");
        assert!(ok.success(), "etcdctl put {key} failed");
    }

    /// Edit node `i`'s YAML file in place.
    pub fn edit_config(&self, i: usize, edit: impl FnOnce(&mut serde_yaml_ng::Value)) {
        let path = &self.nodes[i].config;
        let mut v: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        edit(&mut v);
        std::fs::write(path, serde_yaml_ng::to_string(&v).unwrap()).unwrap();
    }

    pub fn postmaster_pid(&self, i: usize) -> Option<i32> {
        let s = std::fs::read_to_string(self.nodes[i].data_dir.join("postmaster.pid")).ok()?;
        let pid: i32 = s.lines().next()?.trim().parse().ok()?;
        super::pid_running(pid).then_some(pid)
    }

    pub fn start_haproxy(&mut self) {
        self.ha_primary_port = free_port();
        self.ha_replica_port = free_port();
        let servers = |check: &str| {
            let mut s = format!(
                "    option httpchk OPTIONS /{check}\n    http-check expect status 200\n    default-server inter 500ms fall 2 rise 1 on-marked-down shutdown-sessions\n"
            );
            for n in &self.nodes {
                s += &format!(
                    "    server {} 127.0.0.1:{} check port {}\n",
                    n.name, n.pg_port, n.api_port
                );
            }
            s
        };
        let cfg = format!(
            "global\n    maxconn 100\ndefaults\n    mode tcp\n    timeout client 30m\n    timeout connect 4s\n    timeout server 30m\n    timeout check 2s\n\
             listen primary\n    bind 127.0.0.1:{}\n{}listen replicas\n    bind 127.0.0.1:{}\n    balance roundrobin\n{}",
            self.ha_primary_port,
            servers("primary"),
            self.ha_replica_port,
            servers("replica")
        );
        let path = self.dir.join("haproxy.cfg");
        std::fs::write(&path, cfg).unwrap();
        let mut cmd = Command::new("haproxy");
        cmd.arg("-f").arg(&path).arg("-db");
        self.haproxy = Some(ChildGuard::spawn(
            "haproxy",
            cmd,
            false,
            &self.dir.join("haproxy.log"),
        ));
        wait_port(self.ha_primary_port, Duration::from_secs(10));
    }

    /// GET /patroni of node i.
    pub fn patroni(&self, i: usize) -> Option<Value> {
        http_get_json(self.nodes[i].api_port, "/patroni").map(|(_, v)| v)
    }

    pub fn role(&self, i: usize) -> Option<String> {
        self.patroni(i)?.get("role")?.as_str().map(str::to_string)
    }

    /// Index of the node that says it is primary and has the lock (GET /primary = 200).
    pub fn primary(&self) -> Option<usize> {
        let p: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| {
                self.nodes[i].daemon.is_some()
                    && http_status(self.nodes[i].api_port, "/primary") == Some(200)
            })
            .collect();
        (p.len() == 1).then(|| p[0])
    }

    pub fn wait_primary(&self, timeout: Duration) -> usize {
        eventually(timeout, "exactly one primary", || self.primary())
    }

    /// Node i streams from the primary (per its /patroni).
    pub fn is_streaming(&self, i: usize) -> bool {
        self.patroni(i).is_some_and(|v| {
            v.get("role").and_then(Value::as_str) == Some("replica")
                && v.get("replication_state").and_then(Value::as_str) == Some("streaming")
        })
    }

    pub fn psql(&self, port: u16, sql: &str) -> Result<String, String> {
        psql(port, sql)
    }

    pub fn log_of(&self, i: usize) -> String {
        let n = &self.nodes[i];
        // Lossy: a child's output may hold bytes that are not UTF-8.
        std::fs::read(self.dir.join(&format!("{}-{}.log", n.name, n.log_n)))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    pub fn dump_logs(&self) {
        for i in 0..self.nodes.len() {
            eprintln!(
                "===== log of {} =====\n{}",
                self.nodes[i].name,
                tail(&self.log_of(i), 60)
            );
        }
    }
}

/// Configuration files and ports for `n` nodes named pg0.. of `scope`.
fn make_nodes(dir: &TestDir, n: usize, scope: &str, dcs_section: &str, t: &Timing) -> Vec<Node> {
    (0..n)
        .map(|i| {
            let (pg_port, api_port) = (free_port(), free_port());
            let name = format!("pg{i}");
            let data_dir = dir.join(&format!("data/{name}"));
            let config = dir.join(&format!("{name}.yml"));
            let yml = node_yaml(
                &name,
                scope,
                pg_port,
                api_port,
                dcs_section,
                &data_dir,
                dir,
                t,
            );
            std::fs::write(&config, yml).unwrap();
            Node {
                name,
                pg_port,
                api_port,
                config,
                data_dir,
                daemon: None,
                log_n: 0,
            }
        })
        .collect()
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // PATRONI_TEST_LOGS=1 shows the daemon logs of passing scenarios too.
        if std::thread::panicking() || std::env::var_os("PATRONI_TEST_LOGS").is_some() {
            self.dump_logs();
        }
        for i in 0..self.nodes.len() {
            self.kill_daemon(i, true);
        }
    }
}

/// Run one statement with psql as the superuser; stdout trimmed.
pub fn psql(port: u16, sql: &str) -> Result<String, String> {
    let out = Command::new(format!("{}/psql", super::PG_BIN))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-XAtq",
            "-c",
            sql,
        ])
        .env("PGPASSWORD", "patroni")
        .env("PGCONNECT_TIMEOUT", "3")
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

pub fn http_status(port: u16, path: &str) -> Option<u16> {
    http_get_json(port, path).map(|(s, _)| s)
}

/// Minimal blocking HTTP GET (tests stay synchronous).
pub fn http_get_json(port: u16, path: &str) -> Option<(u16, Value)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status: u16 = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Some((status, serde_json::from_str(body).unwrap_or(Value::Null)))
}

#[allow(clippy::too_many_arguments)]
pub fn node_yaml(
    name: &str,
    scope: &str,
    pg_port: u16,
    api_port: u16,
    dcs_section: &str,
    data_dir: &std::path::Path,
    dir: &TestDir,
    t: &Timing,
) -> String {
    format!(
        r#"scope: {scope}
namespace: /service/
name: {name}
restapi:
  listen: 127.0.0.1:{api_port}
  connect_address: 127.0.0.1:{api_port}
{dcs_section}bootstrap:
  dcs:
{timing}    maximum_lag_on_failover: 1048576
    postgresql:
      use_pg_rewind: true
      use_slots: true
      pg_hba:
      - host replication replicator 127.0.0.1/32 md5
      - host all all 127.0.0.1/32 md5
      parameters:
        wal_log_hints: "on"
        max_connections: 50
  initdb:
  - encoding: UTF8
  - data-checksums
postgresql:
  listen: 127.0.0.1:{pg_port}
  connect_address: 127.0.0.1:{pg_port}
  data_dir: {data}
  bin_dir: /usr/lib/postgresql/15/bin
  pgpass: {pgpass}
  authentication:
    replication:
      username: replicator
      password: rep-pass
    superuser:
      username: postgres
      password: patroni
    rewind:
      username: rewind_user
      password: rewind_password
  parameters:
    unix_socket_directories: '{sock}'
    shared_buffers: 16MB
"#,
        timing = t.dcs_yaml("    "),
        data = data_dir.display(),
        pgpass = dir.join(&format!("pgpass-{name}")).display(),
        sock = dir.path().display(),
    )
}

/// How long a writer waits for one commit. A commit still waiting (for a synchronous
/// standby) is abandoned by killing the client: never counted as acknowledged. Cancelling
/// instead would make PostgreSQL report success for a commit that was not replicated.
const WRITE_BUDGET: Duration = Duration::from_secs(5);

/// Like `psql`, but the client is killed after `budget` (the statement then counts as failed).
pub fn psql_within(port: u16, sql: &str, budget: Duration) -> Result<String, String> {
    use std::io::Read;
    let mut child = Command::new(format!("{}/psql", super::PG_BIN))
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
        .args(["-d", "postgres", "-XAtq", "-c", sql])
        .env("PGPASSWORD", "patroni")
        .env("PGCONNECT_TIMEOUT", "3")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let deadline = std::time::Instant::now() + budget;
    loop {
        match child.try_wait().map_err(|e| e.to_string())? {
            Some(status) => {
                let mut out = String::new();
                let mut err = String::new();
                child.stdout.take().unwrap().read_to_string(&mut out).ok();
                child.stderr.take().unwrap().read_to_string(&mut err).ok();
                return if status.success() {
                    Ok(out.trim().to_string())
                } else {
                    Err(err.trim().to_string())
                };
            }
            None if std::time::Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("no answer within {budget:?} (client killed)"));
            }
            None => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// A client writing one row every 50 ms through `port` (HAProxy), recording what was
/// acknowledged and when, to measure write unavailability and lost writes.
pub struct Writer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<Vec<(i64, std::time::Instant)>>>,
}

impl Writer {
    /// Writes into table `t (id int primary key)` (created by the caller).
    pub fn start(port: u16, first_id: i64) -> Writer {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut acks = vec![];
            let mut id = first_id;
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                let t0 = std::time::Instant::now();
                match psql_within(port, &format!("INSERT INTO t VALUES ({id})"), WRITE_BUDGET) {
                    Ok(_) => acks.push((id, std::time::Instant::now())),
                    Err(e) if std::env::var_os("PATRONI_TEST_LOGS").is_some() => eprintln!(
                        "writer {}: id {id} failed after {:?}: {e}",
                        chrono::Utc::now().format("%H:%M:%S%.3f"),
                        t0.elapsed()
                    ),
                    Err(_) => {}
                }
                id += 1;
                std::thread::sleep(Duration::from_millis(50).saturating_sub(t0.elapsed()));
            }
            acks
        });
        Writer {
            stop,
            handle: Some(handle),
        }
    }

    /// Stop and return the acknowledged (id, time) pairs in order.
    pub fn finish(mut self) -> Vec<(i64, std::time::Instant)> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle.take().unwrap().join().unwrap()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The longest gap between consecutive acknowledgements.
pub fn longest_gap(acks: &[(i64, std::time::Instant)]) -> Duration {
    acks.windows(2)
        .map(|w| w[1].1.duration_since(w[0].1))
        .max()
        .unwrap_or_default()
}

/// An HTTP request with curl (the way an operator would): (status, body).
pub fn http(method: &str, port: u16, path: &str, body: Option<&Value>) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-s",
        "-m",
        "120",
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
        "-X",
        method,
    ]);
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "-d", &b.to_string()]);
    }
    cmd.arg(format!("http://127.0.0.1:{port}{path}"));
    let out = cmd.output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}
