//! A PostgreSQL node for integration tests: settings in a TestDir, and a guard that takes
//! down whatever postmaster owns the data directory when the test ends (also on panic).

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use patroni::config::{Authentication, Credentials, PostgresqlConfig};
use patroni::postgres::{PgSettings, Postgres, UpstreamConn};

use super::{PG_BIN, TestDir, free_port, run_as};

pub const SUPERUSER: (&str, &str) = ("postgres", "su-pass");
pub const REPLICATION: (&str, &str) = ("replicator", "repl-pass");
pub const REWIND: (&str, &str) = ("rewinder", "rw-pass");

fn creds((user, pw): (&str, &str)) -> Credentials {
    Credentials {
        username: user.into(),
        password: Some(pw.into()),
        ..Default::default()
    }
}

pub fn test_auth() -> Authentication {
    Authentication {
        superuser: creds(SUPERUSER),
        replication: creds(REPLICATION),
        rewind: Some(creds(REWIND)),
    }
}

/// Settings for member `name` listening on 127.0.0.1:`port` with its data under `dir`.
pub fn node_settings(name: &str, dir: &TestDir, port: u16) -> PgSettings {
    let local = PostgresqlConfig {
        listen: format!("127.0.0.1:{port}"),
        connect_address: format!("127.0.0.1:{port}"),
        data_dir: dir.join("data"),
        bin_dir: Some(PathBuf::from(PG_BIN)),
        pgpass: Some(dir.join("pgpass")),
        authentication: test_auth(),
        ..Default::default()
    };
    let mut parameters = BTreeMap::new();
    for (k, v) in [
        ("wal_level", "replica"),
        ("hot_standby", "on"),
        ("max_connections", "30"),
        ("max_wal_senders", "10"),
        ("max_replication_slots", "10"),
        ("wal_log_hints", "on"),
        ("wal_keep_size", "128MB"),
        ("shared_buffers", "16MB"),
        ("fsync", "off"),
        (
            "unix_socket_directories",
            dir.path().to_str().expect("utf8 path"),
        ),
    ] {
        parameters.insert(k.to_string(), v.to_string());
    }
    PgSettings {
        name: name.into(),
        scope: "pgtest".into(),
        local,
        parameters,
        pg_hba: vec![
            "local all all trust".into(),
            "host replication replicator 127.0.0.1/32 scram-sha-256".into(),
            "host all all 127.0.0.1/32 scram-sha-256".into(),
        ],
        use_slots: true,
        run_as: run_as(),
        ..Default::default()
    }
}

/// One member's PostgreSQL. Dropping it kills its postmaster (by the PID in
/// postmaster.pid, then its process group) before the directory is removed.
pub struct PgNode {
    pub name: String,
    pub port: u16,
    pub pg: Postgres,
    pub dir: TestDir,
}

impl PgNode {
    pub fn new(name: &str) -> PgNode {
        let dir = TestDir::new(&format!("pg-{name}-"));
        let port = free_port();
        let pg = Postgres::new(node_settings(name, &dir, port));
        PgNode {
            name: name.into(),
            port,
            pg,
            dir,
        }
    }

    pub fn upstream(&self) -> UpstreamConn {
        UpstreamConn {
            host: "127.0.0.1".into(),
            port: self.port,
            member: self.name.clone(),
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// SIGKILL the postmaster (a crash, not a shutdown); returns its pid.
    pub fn kill9(&self) -> u32 {
        let pid = self.pg.postmaster_pid().expect("postmaster running");
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        pid
    }

    /// Single-value query helper.
    pub async fn value(&self, sql: &str) -> Option<String> {
        self.pg
            .query(sql)
            .await
            .ok()?
            .into_iter()
            .next()?
            .into_iter()
            .next()?
    }
}

impl Drop for PgNode {
    fn drop(&mut self) {
        let Some(pid) = self.pg.postmaster_pid() else {
            return;
        };
        let p = nix::unistd::Pid::from_raw(pid as i32);
        // Immediate shutdown first so backends go too; then the whole group by force.
        let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGQUIT);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline
            && nix::sys::signal::kill(p, None).is_ok()
            && self.pg.postmaster_pid().is_some()
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = nix::sys::signal::killpg(p, nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGKILL);
    }
}

/// Async `eventually`: poll `probe` until it yields `Some`, panic after `timeout`.
pub async fn eventually_async<T, F, Fut>(timeout: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
