//! Creating, starting, stopping and promoting the local PostgreSQL.

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::conf;
use super::error::{PgError, Result, io_err};
use super::files;
use super::process::{self, command, log_tail, run};
use super::settings::{PgSettings, dir_empty};
use super::types::{ConfigRole, StopMode, UpstreamConn};
use super::{Postgres, controldata, sql};

/// initdb options we set ourselves or that would break the cluster.
const INITDB_FORBIDDEN: &[&str] = &["pgdata", "nosync", "pwfile", "sync-only", "version"];
/// Long jobs (initdb, basebackup, post_bootstrap) are bounded only by the caller
/// dropping the future (which kills the child).
pub(super) const LONG_JOB: Duration = Duration::from_secs(30 * 24 * 3600);

impl Postgres {
    /// Write postgresql.conf / pg_hba.conf / pgpass / standby.signal for `role`.
    pub fn write_config(&self, role: &ConfigRole) -> Result<()> {
        files::write_config_with(&self.settings(), role, self.boot().as_ref())?;
        self.remember_role(role);
        Ok(())
    }

    /// No cluster (missing or empty data directory).
    pub fn data_dir_empty(&self) -> bool {
        dir_empty(&self.settings().data_dir())
    }

    /// Empty the data directory (refused while postgres runs).
    pub async fn remove_data_dir(&self) -> Result<()> {
        let s = self.settings();
        if let Some(pid) = process::live_postmaster(&s.data_dir()) {
            return Err(PgError::StillRunning { pid });
        }
        tracing::warn!("removing data directory {}", s.data_dir().display());
        files::clear_data_dir(&s)
    }

    /// Run initdb with the `bootstrap.initdb` options, the superuser name and password.
    pub async fn initdb(&self, options: &[Value]) -> Result<()> {
        let s = self.settings();
        let dd = s.data_dir();
        if !dir_empty(&dd) {
            return Err(PgError::DataDirNotEmpty(dd));
        }
        let mut args =
            conf::user_options("initdb", &Value::Array(options.to_vec()), INITDB_FORBIDDEN)
                .map_err(PgError::BadOption)?;
        files::clear_data_dir(&s)?;
        let su = s.superuser();
        args.push(format!("--username={}", su.username));
        let pwfile = match &su.password {
            Some(pw) => {
                let p = std::env::temp_dir().join(format!(
                    "patroni-initdb-pw-{}-{}",
                    std::process::id(),
                    s.port()
                ));
                files::write_atomic(&p, pw, 0o600, s.run_as)?;
                args.push(format!("--pwfile={}", p.display()));
                Some(p)
            }
            None => None,
        };
        let mut cmd = command(&s, "initdb");
        cmd.arg("-D").arg(&dd).args(&args);
        tracing::info!("running initdb {}", args.join(" "));
        let res = run(cmd, "initdb", LONG_JOB).await;
        if let Some(p) = pwfile {
            let _ = std::fs::remove_file(p);
        }
        res.map(|_| ())
    }

    /// Write the config for `role`, start the postmaster detached from us, and wait until
    /// it accepts connections. On timeout postgres keeps running (it may be recovering).
    pub async fn start(&self, role: &ConfigRole, timeout: Duration) -> Result<u32> {
        let mut s = self.settings();
        if let Some(pid) = process::live_postmaster(&s.data_dir()) {
            return Err(PgError::AlreadyRunning { pid });
        }
        let boot = self.boot();
        if matches!(role, ConfigRole::Standby { .. }) || boot.is_some() {
            s = with_pg_control_minimums(s).await;
        }
        files::write_config_with(&s, role, boot.as_ref())?;
        self.remember_role(role);
        let log = s.postmaster_log();
        let mut child = spawn_postmaster(&s, &log)?;
        let pid = child.id().unwrap_or(0);
        tracing::info!("postmaster pid={pid} started, log {}", log.display());
        let deadline = Instant::now() + timeout;
        let res = loop {
            if let Ok(Some(status)) = child.try_wait() {
                break Err(PgError::StartFailed {
                    reason: format!("postmaster exited ({status})"),
                    tail: log_tail(&log),
                });
            }
            if accepts_connections(&s).await {
                break Ok(pid);
            }
            if Instant::now() >= deadline {
                break Err(PgError::Timeout {
                    what: "postgres start".into(),
                    secs: timeout.as_secs(),
                    tail: log_tail(&log),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        // Reap the postmaster when it exits so it never lingers as a zombie of ours.
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        res
    }

    /// pg_ctl stop -m mode; when a smart/fast stop does not finish in time, immediate.
    pub async fn stop(&self, mode: StopMode, timeout: Duration) -> Result<()> {
        let s = self.settings();
        self.drop_connection().await;
        let Some(pid) = process::live_postmaster(&s.data_dir()) else {
            return Ok(());
        };
        let first = pg_ctl_stop(&s, mode, timeout).await;
        let res = match first {
            Err(e) if mode != StopMode::Immediate => {
                tracing::warn!("{} stop failed ({e}); stopping immediately", mode.as_str());
                pg_ctl_stop(&s, StopMode::Immediate, Duration::from_secs(30)).await
            }
            other => other,
        };
        // pg_ctl returns once postmaster.pid is gone; the process may need a moment more.
        let _ = tokio::time::timeout(Duration::from_secs(10), process::wait_for_exit(pid)).await;
        res
    }

    /// Stop (fast) and start again with `role`.
    pub async fn restart(&self, role: &ConfigRole, timeout: Duration) -> Result<u32> {
        self.stop(StopMode::Fast, timeout).await?;
        self.start(role, timeout).await
    }

    /// Make the postmaster re-read its config files (SIGHUP).
    pub fn reload(&self) -> Result<()> {
        let pid = self.postmaster_pid().ok_or(PgError::NotRunning)?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGHUP,
        )
        .map_err(|e| PgError::Sql(format!("cannot signal postmaster {pid}: {e}")))
    }

    /// pg_ctl promote, then wait until the server leaves recovery.
    pub async fn promote(&self, timeout: Duration) -> Result<()> {
        let s = self.settings();
        if process::live_postmaster(&s.data_dir()).is_none() {
            return Err(PgError::NotRunning);
        }
        let secs = timeout.as_secs().max(1).to_string();
        let mut cmd = command(&s, "pg_ctl");
        cmd.arg("promote")
            .arg("-D")
            .arg(s.data_dir())
            .args(["-w", "-t", &secs]);
        run(cmd, "pg_ctl promote", timeout + Duration::from_secs(5)).await?;
        // A primary's files: no primary_conninfo, no standby.signal (a crash restart of the
        // postmaster must come back as a primary).
        if let Err(e) = self.write_config(&ConfigRole::Primary) {
            tracing::warn!("rewriting the config as a primary after promote failed: {e}");
        } else if let Err(e) = self.reload() {
            tracing::warn!("reload after promote failed: {e}");
        }
        let deadline = Instant::now() + timeout;
        loop {
            match self.query("SELECT pg_catalog.pg_is_in_recovery()").await {
                Ok(rows) if rows.first().and_then(|r| r[0].as_deref()) == Some("f") => {
                    return Ok(());
                }
                _ if Instant::now() >= deadline => {
                    return Err(PgError::Timeout {
                        what: "promote".into(),
                        secs: timeout.as_secs(),
                        tail: String::new(),
                    });
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// CHECKPOINT on the local server.
    /// On its own connection, so the per-cycle observation is not queued behind it.
    pub async fn checkpoint(&self) -> Result<()> {
        let client = sql::connect(&self.settings().local_target(), "Patroni checkpoint").await?;
        match tokio::time::timeout(
            Duration::from_secs(600),
            sql::simple_rows(&client, "CHECKPOINT"),
        )
        .await
        {
            Ok(r) => r.map(|_| ()),
            Err(_) => Err(PgError::Timeout {
                what: "checkpoint".into(),
                secs: 600,
                tail: String::new(),
            }),
        }
    }

    /// pg_basebackup from `from` into the (empty) data directory as the replication
    /// user, with the configured `basebackup` options. A failed copy is removed.
    pub async fn basebackup(&self, from: &UpstreamConn) -> Result<()> {
        let s = self.settings();
        let dd = s.data_dir();
        if !dir_empty(&dd) {
            return Err(PgError::DataDirNotEmpty(dd));
        }
        let opts = s.local.basebackup.clone().unwrap_or(Value::Null);
        let mut args = conf::user_options(
            "basebackup",
            &opts,
            super::replica_methods::BASEBACKUP_NOT_ALLOWED,
        )
        .map_err(PgError::BadOption)?;
        if !args.iter().any(|a| a.starts_with("--checkpoint")) {
            args.push("--checkpoint=fast".into());
        }
        files::write_pgpass(&s)?;
        files::clear_data_dir(&s)?;
        let repl = s.replication();
        let port = from.port.to_string();
        let dsn = conf::format_conninfo(&[
            ("dbname", "postgres"),
            ("user", &repl.username),
            ("host", &from.host),
            ("port", &port),
            ("application_name", &s.name),
        ]);
        let mut cmd = command(&s, "pg_basebackup");
        cmd.arg(format!("--pgdata={}", dd.display()))
            .args(["-X", "stream"])
            .arg(format!("--dbname={dsn}"))
            .args(&args)
            .env("PGPASSFILE", s.pgpass_path());
        tracing::info!("running pg_basebackup from {} ({dsn})", from.member);
        let res = run(cmd, "pg_basebackup", LONG_JOB).await;
        if res.is_err()
            && let Err(e) = files::clear_data_dir(&s)
        {
            tracing::error!("cannot clean up after failed pg_basebackup: {e}");
        }
        res.map(|_| ())
    }
}

/// A server starting in recovery needs the hot-standby settings at least as high as the
/// primary had them (pg_control); lower configured values are raised for this start and
/// show up as pending restart, as upstream does.
async fn with_pg_control_minimums(s: std::sync::Arc<PgSettings>) -> std::sync::Arc<PgSettings> {
    let control = match controldata::read_map(&s).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("cannot read pg_controldata before the start: {e}");
            return s;
        }
    };
    let raised = controldata::hot_standby_shortfalls(&s.server_parameters(), &control);
    if raised.is_empty() {
        return s;
    }
    let mut adjusted = (*s).clone();
    for r in raised {
        tracing::info!(
            "{} value in pg_controldata: {}, in the global configuration: {}. \
             pg_controldata value will be used. Setting 'Pending restart' flag",
            r.name,
            r.control,
            r.configured
        );
        adjusted
            .parameters
            .insert(r.name.to_string(), r.control.to_string());
    }
    std::sync::Arc::new(adjusted)
}

fn spawn_postmaster(s: &PgSettings, log: &std::path::Path) -> Result<tokio::process::Child> {
    if let Some(dir) = log.parent() {
        files::ensure_dir(dir, s.run_as)?;
    }
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(io_err(log))?;
    files::chown(log, s.run_as)?;
    let err = out.try_clone().map_err(io_err(log))?;
    let mut cmd = command(s, "postgres");
    cmd.arg("-D").arg(s.data_dir()).arg(format!(
        "--config-file={}",
        s.config_file(conf::POSTGRESQL_CONF).display()
    ));
    for (k, v) in s.server_parameters() {
        if conf::is_cmdline_param(&k) {
            cmd.arg(format!("--{k}={v}"));
        }
    }
    // Own process group, no tie to our stdio: the postmaster must outlive this daemon.
    cmd.stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .kill_on_drop(false)
        .process_group(0);
    cmd.spawn().map_err(|source| PgError::Spawn {
        program: "postgres".into(),
        source,
    })
}

/// The server answers: a session opens, or the server rejects us for a reason other
/// than "starting up" (e.g. a wrong password still proves it accepts connections).
async fn accepts_connections(s: &PgSettings) -> bool {
    match sql::connect(&s.local_target(), "Patroni").await {
        Ok(_) => true,
        Err(e) => {
            matches!(&e, PgError::Connect { reason, .. } if reason.starts_with("FATAL"))
                && !sql::is_not_ready(&e)
        }
    }
}

async fn pg_ctl_stop(s: &PgSettings, mode: StopMode, timeout: Duration) -> Result<()> {
    let secs = timeout.as_secs().max(1).to_string();
    let mut cmd = command(s, "pg_ctl");
    cmd.arg("stop")
        .arg("-D")
        .arg(s.data_dir())
        .args(["-m", mode.as_str(), "-w", "-t", &secs]);
    match run(cmd, "pg_ctl stop", timeout + Duration::from_secs(5)).await {
        Ok(_) => Ok(()),
        // Stopped under our feet between the check and pg_ctl: that is success.
        Err(PgError::CommandFailed { tail: t, .. }) if t.contains("Is server running?") => Ok(()),
        Err(e) => Err(e),
    }
}
