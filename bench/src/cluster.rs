//! One benchmark cluster: etcd + N daemons (ours or upstream, same YAML) + HAProxy, on free
//! loopback ports in a fresh temp dir, torn down by PID on drop.
use crate::http;
use crate::opts::{Impl, Opts, Profile};
use crate::procs::{self, Proc};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub struct Node {
    pub name: String,
    pub pg_port: u16,
    pub api_port: u16,
    pub config: PathBuf,
    pub data_dir: PathBuf,
    pub daemon: Option<Proc>,
}

pub struct Cluster {
    bin: PathBuf,
    pub dir: PathBuf,
    pub nodes: Vec<Node>,
    pub ha_port: u16,
    etcd: Option<Proc>,
    haproxy: Option<Proc>,
    /// Zero of every timestamp the scenarios record.
    pub epoch: Instant,
    _lock: Option<std::fs::File>,
}

impl Cluster {
    /// Lock (if asked), make the dir, start etcd and HAProxy, write the node configs.
    pub async fn create(opts: &Opts, imp: Impl, p: &Profile, n: usize) -> Result<Cluster, String> {
        let lock = match &opts.lock {
            Some(path) => Some(take_lock(path.clone()).await?),
            None => None,
        };
        let dir = std::env::temp_dir().join(format!(
            "bench-{}-{}-{}",
            imp.name(),
            std::process::id(),
            unique()
        ));
        std::fs::create_dir_all(dir.join("data")).map_err(|e| e.to_string())?;
        procs::chown_pg(&dir)?;
        procs::chown_pg(&dir.join("data"))?;
        procs::register_dir(&dir);
        let mut c = Cluster {
            bin: std::fs::canonicalize(opts.bin(imp))
                .map_err(|e| format!("{}: {e}", opts.bin(imp).display()))?,
            dir,
            nodes: vec![],
            ha_port: 0,
            etcd: None,
            haproxy: None,
            epoch: Instant::now(),
            _lock: lock,
        };
        let etcd_port = c.start_etcd().await?;
        for i in 0..n {
            c.add_node(i, etcd_port, p)?;
        }
        c.start_haproxy(&opts.check).await?;
        Ok(c)
    }

    async fn start_etcd(&mut self) -> Result<u16, String> {
        let (client, peer) = (procs::free_port(), procs::free_port());
        let cu = format!("http://127.0.0.1:{client}");
        let pu = format!("http://127.0.0.1:{peer}");
        let mut cmd = Command::new("etcd");
        cmd.args(["--name", "bench", "--data-dir"])
            .arg(self.dir.join("etcd"))
            .args(["--listen-client-urls", &cu, "--advertise-client-urls", &cu])
            .args([
                "--listen-peer-urls",
                &pu,
                "--initial-advertise-peer-urls",
                &pu,
            ])
            .arg(format!("--initial-cluster=bench={pu}"));
        self.etcd = Some(Proc::spawn("etcd", cmd, false, &self.dir.join("etcd.log"))?);
        wait_port(client, Duration::from_secs(30)).await?;
        Ok(client)
    }

    fn add_node(&mut self, i: usize, etcd_port: u16, p: &Profile) -> Result<(), String> {
        let name = format!("pg{i}");
        let node = Node {
            pg_port: procs::free_port(),
            api_port: procs::free_port(),
            config: self.dir.join(format!("{name}.yml")),
            data_dir: self.dir.join("data").join(&name),
            daemon: None,
            name,
        };
        let yml = node_yaml(&node, &self.dir, etcd_port, p);
        std::fs::write(&node.config, yml).map_err(|e| e.to_string())?;
        procs::chown_pg(&node.config)?;
        self.nodes.push(node);
        Ok(())
    }

    async fn start_haproxy(&mut self, check: &str) -> Result<(), String> {
        self.ha_port = procs::free_port();
        let mut cfg = format!(
            "global\n    maxconn 200\ndefaults\n    mode tcp\n    timeout client 30m\n    \
             timeout connect 4s\n    timeout server 30m\n    timeout check 2s\n\
             listen primary\n    bind 127.0.0.1:{}\n    option httpchk OPTIONS /primary\n    \
             http-check expect status 200\n    \
             default-server {check} on-marked-down shutdown-sessions\n",
            self.ha_port
        );
        for n in &self.nodes {
            cfg += &format!(
                "    server {} 127.0.0.1:{} maxconn 100 check port {}\n",
                n.name, n.pg_port, n.api_port
            );
        }
        let path = self.dir.join("haproxy.cfg");
        std::fs::write(&path, cfg).map_err(|e| e.to_string())?;
        let mut cmd = Command::new("haproxy");
        cmd.arg("-f").arg(&path).arg("-db");
        self.haproxy = Some(Proc::spawn(
            "haproxy",
            cmd,
            false,
            &self.dir.join("haproxy.log"),
        )?);
        wait_port(self.ha_port, Duration::from_secs(10)).await
    }

    pub fn start_node(&mut self, i: usize) -> Result<(), String> {
        let node = &mut self.nodes[i];
        let log = self.dir.join(format!("{}.log", node.name));
        let mut cmd = Command::new(&self.bin);
        cmd.arg(&node.config)
            .current_dir(&self.dir)
            .env("RUST_LOG", "info");
        let p = Proc::spawn(&node.name, cmd, true, &log)?;
        node.daemon = Some(p);
        Ok(())
    }

    pub fn daemon_pid(&self, i: usize) -> Option<i32> {
        self.nodes[i].daemon.as_ref().map(Proc::pid)
    }

    pub fn postmaster_pid(&self, i: usize) -> Option<i32> {
        procs::postmaster_pid(&self.nodes[i].data_dir)
    }

    /// kill -9 of the daemon's process group and of its postmaster, back to back.
    pub fn kill_node(&mut self, i: usize) {
        let pm = self.postmaster_pid(i);
        if let Some(mut d) = self.nodes[i].daemon.take() {
            d.kill();
        }
        if let Some(pm) = pm {
            procs::signal(pm, libc::SIGKILL);
        }
    }

    pub fn alive(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.nodes.len()).filter(|&i| self.nodes[i].daemon.is_some())
    }

    pub async fn is_primary(&self, i: usize) -> bool {
        http::status(self.nodes[i].api_port, "/primary").await == Some(200)
    }

    pub async fn patroni(&self, i: usize) -> Option<Value> {
        http::get_json(self.nodes[i].api_port, "/patroni")
            .await
            .map(|(_, v)| v)
    }

    /// The leader's index if exactly one live node is primary and every other live node
    /// streams from it.
    pub async fn healthy(&self) -> Option<usize> {
        let mut primary = None;
        for i in self.alive().collect::<Vec<_>>() {
            if self.is_primary(i).await {
                if primary.replace(i).is_some() {
                    return None;
                }
            } else {
                let v = self.patroni(i).await?;
                let streaming = v.get("role").and_then(Value::as_str) == Some("replica")
                    && v.get("replication_state").and_then(Value::as_str) == Some("streaming");
                if !streaming {
                    return None;
                }
            }
        }
        primary
    }

    pub async fn wait_healthy(&self, timeout: Duration) -> Result<usize, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.healthy().await {
                return Ok(l);
            }
            if let Some(n) = self
                .nodes
                .iter()
                .find(|n| n.daemon.as_ref().is_some_and(Proc::exited))
            {
                return Err(format!("the {} daemon exited (see {}.log)", n.name, n.name));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "cluster not healthy (one primary, all others streaming) within {timeout:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn now(&self) -> f64 {
        self.epoch.elapsed().as_secs_f64()
    }

    /// Copy the logs somewhere that survives teardown (after a failed scenario).
    pub fn save_logs(&self, to: &Path) {
        let _ = std::fs::create_dir_all(to);
        if let Ok(rd) = std::fs::read_dir(&self.dir) {
            for e in rd.flatten() {
                let p = e.path();
                if p.extension()
                    .is_some_and(|x| x == "log" || x == "yml" || x == "cfg")
                {
                    let _ = std::fs::copy(&p, to.join(e.file_name()));
                }
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut d) = n.daemon.take() {
                d.kill();
            }
            procs::stop_postmaster(&n.data_dir);
        }
        self.haproxy.take();
        self.etcd.take();
        procs::unregister_dir(&self.dir);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn unique() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::SeqCst)
}

async fn take_lock(path: PathBuf) -> Result<std::fs::File, String> {
    tokio::task::spawn_blocking(move || {
        use std::os::fd::AsRawFd;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        // SAFETY: flock on a descriptor we own; released when the file is closed.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(format!("flock {}", path.display()));
        }
        Ok(f)
    })
    .await
    .map_err(|e| e.to_string())?
}

pub async fn wait_port(port: u16, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if Instant::now() > deadline {
            return Err(format!(
                "nothing listens on 127.0.0.1:{port} after {timeout:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// The same YAML for both implementations (upstream's keys only; `allow_short_ttl` only when
/// `p` is ours below upstream's floors).
fn node_yaml(n: &Node, dir: &Path, etcd_port: u16, p: &Profile) -> String {
    format!(
        r#"scope: bench
namespace: /service/
name: {name}
restapi:
  listen: 127.0.0.1:{api}
  connect_address: 127.0.0.1:{api}
etcd3:
  hosts: 127.0.0.1:{etcd_port}
bootstrap:
  dcs:
    ttl: {ttl}
    loop_wait: {lw}
    retry_timeout: {rt}
{short}    maximum_lag_on_failover: 1048576
    postgresql:
      use_pg_rewind: true
      use_slots: true
      pg_hba:
      - host replication replicator 127.0.0.1/32 md5
      - host all all 127.0.0.1/32 md5
      parameters:
        wal_log_hints: "on"
        max_connections: 100
  initdb:
  - encoding: UTF8
  - data-checksums
postgresql:
  listen: 127.0.0.1:{pg}
  connect_address: 127.0.0.1:{pg}
  data_dir: {data}
  bin_dir: /usr/lib/postgresql/15/bin
  pgpass: {dir}/pgpass-{name}
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
    unix_socket_directories: '{dir}'
    shared_buffers: 16MB
"#,
        name = n.name,
        api = n.api_port,
        pg = n.pg_port,
        ttl = p.ttl,
        lw = p.loop_wait,
        rt = p.retry_timeout,
        short = if p.allow_short_ttl {
            format!("    {}: true\n", patroni::config::ALLOW_SHORT_TTL)
        } else {
            String::new()
        },
        data = n.data_dir.display(),
        dir = dir.display(),
    )
}
