//! etcd + N of our daemons (each with its PostgreSQL) as hosts of a `Net` (namespaces or
//! loopback proxies), for fault injection. Everything started is killed by PID on drop,
//! postmasters included (they run in their own session and outlive a killed daemon).
use super::netns::{Mode, Net};
use super::{ChildGuard, TestDir, chown_for_postgres, eventually};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// The suite's timing. Default: ttl 20, upstream's floor (ours too without
/// `allow_short_ttl`), with loop_wait 1 and retry_timeout 3 so the cut-off primary gives up
/// as early as the rules allow. `FAULTS_TIMING=quick`: the fast-failover profile at its
/// floors (ttl 6 / loop_wait 1 / retry_timeout 2), which this suite then validates.
pub fn timing() -> super::cluster::Timing {
    if std::env::var("FAULTS_TIMING").is_ok_and(|v| v == "quick") {
        super::cluster::QUICK
    } else {
        super::cluster::Timing {
            ttl: 20,
            loop_wait: 1,
            retry_timeout: 3,
        }
    }
}

pub struct FaultNode {
    pub name: String,
    pub config: PathBuf,
    pub data_dir: PathBuf,
    pub daemon: Option<ChildGuard>,
    log_n: u32,
}

pub struct FaultCluster {
    // Field order is drop order: daemons and etcd go before the network they live in.
    pub nodes: Vec<FaultNode>,
    pub etcd: Option<ChildGuard>,
    etcd_peer_port: u16,
    etcd_runs: u32,
    pub net: Net,
    pub dir: TestDir,
    pub synchronous: bool,
}

impl FaultCluster {
    /// Network, etcd and configs for `n` nodes (daemons start with `start_all`).
    pub fn new(n: usize, synchronous: bool) -> FaultCluster {
        let net = Net::new(n);
        let dir = TestDir::new("faults-");
        std::fs::create_dir_all(dir.join("data")).unwrap();
        chown_for_postgres(&dir.join("data"));
        let scope = format!("faults{}", std::process::id());
        let nodes = (0..n)
            .map(|i| {
                let name = format!("pg{i}");
                let data_dir = dir.join(&format!("data/{name}"));
                let config = dir.join(&format!("{name}.yml"));
                std::fs::write(&config, node_yaml(&net, i, &scope, &dir, synchronous)).unwrap();
                FaultNode {
                    name,
                    config,
                    data_dir,
                    daemon: None,
                    log_n: 0,
                }
            })
            .collect();
        let mut c = FaultCluster {
            nodes,
            etcd: None,
            etcd_peer_port: super::free_port(),
            etcd_runs: 0,
            net,
            dir,
            synchronous,
        };
        c.start_etcd();
        c
    }

    pub fn mode(&self) -> Mode {
        self.net.mode
    }

    pub fn start_etcd(&mut self) {
        let client = format!("http://{}:{}", self.net.etcd_host, self.net.etcd_port);
        // Same peer URL on every restart: the data dir remembers it.
        let peer = format!("http://127.0.0.1:{}", self.etcd_peer_port);
        let mut cmd = Command::new("etcd");
        cmd.args(["--name", "faults", "--data-dir"])
            .arg(self.dir.join("etcd"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("faults={peer}")]);
        self.etcd_runs += 1;
        let log = self.dir.join(&format!("etcd-{}.log", self.etcd_runs));
        self.etcd = Some(ChildGuard::spawn("etcd", cmd, false, &log));
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect((self.net.etcd_host.as_str(), self.net.etcd_port))
            .is_err()
        {
            assert!(Instant::now() < deadline, "etcd did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn stop_etcd(&mut self) {
        if let Some(mut g) = self.etcd.take() {
            g.kill9();
        }
    }

    pub fn start_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.start(i);
        }
    }

    pub fn start(&mut self, i: usize) {
        let mut cmd = self.net.command(i, env!("CARGO_BIN_EXE_patroni"));
        cmd.arg(&self.nodes[i].config).env("RUST_LOG", "info");
        let node = &mut self.nodes[i];
        node.log_n += 1;
        let log = self.dir.join(&format!("{}-{}.log", node.name, node.log_n));
        // `ip netns exec` execs the program, so the guard's PID is the daemon's.
        node.daemon = Some(ChildGuard::spawn(&node.name, cmd, false, &log));
    }

    /// Signal the daemon only (not its postmaster, which runs in another session).
    pub fn signal_daemon(&self, i: usize, sig: Signal) {
        if let Some(g) = &self.nodes[i].daemon {
            let _ = kill(Pid::from_raw(g.pid() as i32), sig);
        }
    }

    pub fn postmaster_pid(&self, i: usize) -> Option<i32> {
        let s = std::fs::read_to_string(self.nodes[i].data_dir.join("postmaster.pid")).ok()?;
        let pid: i32 = s.lines().next()?.trim().parse().ok()?;
        super::pid_running(pid).then_some(pid)
    }

    /// GET `path` on node i's REST API: (status, JSON body).
    pub fn api(&self, i: usize, path: &str) -> Option<(u16, Value)> {
        let a = &self.net.nodes[i];
        http_get(&a.host, a.api_port, path)
    }

    pub fn role(&self, i: usize) -> Option<String> {
        let (_, v) = self.api(i, "/patroni")?;
        v.get("role")?.as_str().map(str::to_string)
    }

    /// The single node answering 200 on GET /primary, if exactly one does.
    pub fn primary(&self) -> Option<usize> {
        let p: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.api(i, "/primary").map(|(s, _)| s) == Some(200))
            .collect();
        (p.len() == 1).then(|| p[0])
    }

    pub fn wait_primary(&self, timeout: Duration) -> usize {
        eventually(timeout, "exactly one primary", || self.primary())
    }

    pub fn is_streaming(&self, i: usize) -> bool {
        self.api(i, "/patroni").is_some_and(|(_, v)| {
            v.get("role").and_then(Value::as_str) == Some("replica")
                && v.get("replication_state").and_then(Value::as_str) == Some("streaming")
        })
    }

    /// One primary and every other node streaming from it.
    pub fn wait_healthy(&self, timeout: Duration) -> usize {
        eventually(timeout, "one primary, all others streaming", || {
            let p = self.primary()?;
            (0..self.nodes.len())
                .all(|i| i == p || self.is_streaming(i))
                .then_some(p)
        })
    }

    pub fn psql(&self, i: usize, sql: &str) -> Result<String, String> {
        let a = &self.net.nodes[i];
        psql_at(&a.host, a.pg_port, sql)
    }

    pub fn log_of(&self, i: usize) -> String {
        let n = &self.nodes[i];
        std::fs::read_to_string(self.dir.join(&format!("{}-{}.log", n.name, n.log_n)))
            .unwrap_or_default()
    }

    pub fn dump_logs(&self) {
        for i in 0..self.nodes.len() {
            let log = self.log_of(i);
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "===== log of {} =====\n{}",
                self.nodes[i].name,
                lines[lines.len().saturating_sub(80)..].join("\n")
            );
        }
    }
}

impl Drop for FaultCluster {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("PATRONI_TEST_LOGS").is_some() {
            self.dump_logs();
        }
        for i in 0..self.nodes.len() {
            // SIGKILL also ends a SIGSTOPped daemon.
            if let Some(mut g) = self.nodes[i].daemon.take() {
                g.kill9();
            }
            if let Some(pid) = self.postmaster_pid(i) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        self.stop_etcd();
    }
}

/// Run one statement with psql as the superuser; stdout trimmed.
pub fn psql_at(host: &str, port: u16, sql: &str) -> Result<String, String> {
    let out = Command::new(format!("{}/psql", super::PG_BIN))
        .args(["-h", host, "-p", &port.to_string(), "-U", "postgres"])
        .args(["-d", "postgres", "-XAtq", "-c", sql])
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

/// Minimal blocking HTTP GET with short timeouts (a cut-off or stopped node must not
/// stall the test).
pub fn http_get(host: &str, port: u16, path: &str) -> Option<(u16, Value)> {
    use std::io::{Read, Write};
    let addr = std::net::SocketAddr::new(host.parse().ok()?, port);
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status: u16 = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Some((status, serde_json::from_str(body).unwrap_or(Value::Null)))
}

fn node_yaml(net: &Net, i: usize, scope: &str, dir: &TestDir, synchronous: bool) -> String {
    let a = &net.nodes[i];
    let name = format!("pg{i}");
    let cidr = net.hba_cidr();
    format!(
        r#"scope: {scope}
namespace: /service/
name: {name}
restapi:
  listen: {host}:{api}
  connect_address: {api_connect}
etcd3:
  hosts: {etcd}
bootstrap:
  dcs:
{timing}    maximum_lag_on_failover: 1048576
    synchronous_mode: {synchronous}
    postgresql:
      use_pg_rewind: true
      use_slots: true
      pg_hba:
      - host replication replicator {cidr} md5
      - host all all {cidr} md5
      parameters:
        wal_log_hints: "on"
        max_connections: 50
  initdb:
  - encoding: UTF8
  - data-checksums
postgresql:
  listen: {host}:{pg}
  connect_address: {pg_connect}
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
        timing = timing().dcs_yaml("    "),
        host = a.host,
        api = a.api_port,
        api_connect = a.api_connect,
        etcd = a.etcd,
        pg = a.pg_port,
        pg_connect = a.pg_connect,
        data = dir.join(&format!("data/{name}")).display(),
        pgpass = dir.join(&format!("pgpass-{name}")).display(),
        // One socket dir per node: in namespaces all nodes use port 5432.
        sock = {
            let d = dir.join(&format!("sock-{name}"));
            std::fs::create_dir_all(&d).unwrap();
            chown_for_postgres(&d);
            d.display().to_string()
        },
    )
}
