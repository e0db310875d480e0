//! A PostgreSQL server the test starts by hand with initdb and pg_ctl (no daemon): the
//! source of a backup, or a standalone server a daemon adopts. Stopped (immediate) on drop
//! unless the test handed it over.
use super::{PG_BIN, chown_for_postgres, free_port, run_as};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Standalone {
    pub data_dir: PathBuf,
    pub port: u16,
    pub log: PathBuf,
    /// `-o` options of `pg_ctl start` (command-line settings, not written to the data dir).
    pub options: String,
    /// Stop it on drop (false once a daemon manages it).
    pub owned: bool,
}

/// A command for a PostgreSQL program, as the postgres user when we are root.
pub fn pg_command(program: &str) -> Command {
    let mut cmd = Command::new(format!("{PG_BIN}/{program}"));
    if let Some((uid, gid)) = run_as() {
        cmd.uid(uid).gid(gid).current_dir("/");
    }
    cmd
}

pub fn run_ok(mut cmd: Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Standalone {
    /// initdb into `dir/name` (trust for local and loopback, superuser `postgres`).
    pub fn init(dir: &Path, name: &str) -> Standalone {
        let data_dir = dir.join(name);
        let mut initdb = pg_command("initdb");
        initdb
            .arg("-D")
            .arg(&data_dir)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8"]);
        run_ok(initdb, "initdb");
        let log = dir.join(format!("{name}.log"));
        std::fs::write(&log, "").unwrap();
        chown_for_postgres(&log);
        Standalone {
            port: free_port(),
            options: format!("-c unix_socket_directories={}", dir.display()),
            data_dir,
            log,
            owned: true,
        }
    }

    /// Append lines to its postgresql.conf.
    pub fn configure(&self, lines: &str) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(self.data_dir.join("postgresql.conf"))
            .unwrap();
        writeln!(f, "{lines}").unwrap();
    }

    pub fn start(&self) {
        let mut cmd = pg_command("pg_ctl");
        cmd.arg("-D")
            .arg(&self.data_dir)
            .arg("-l")
            .arg(&self.log)
            .arg("-o")
            .arg(format!(
                "-p {} -c listen_addresses=127.0.0.1 {}",
                self.port, self.options
            ))
            .args(["-w", "-t", "60", "start"]);
        run_ok(cmd, "pg_ctl start");
    }

    pub fn stop(&self) {
        let mut cmd = pg_command("pg_ctl");
        cmd.arg("-D")
            .arg(&self.data_dir)
            .args(["-m", "fast", "-w", "stop"]);
        run_ok(cmd, "pg_ctl stop");
    }

    /// PID of its running postmaster.
    pub fn postmaster_pid(&self) -> Option<u32> {
        let t = std::fs::read_to_string(self.data_dir.join("postmaster.pid")).ok()?;
        t.lines().next()?.trim().parse().ok()
    }

    /// pg_controldata's system identifier.
    pub fn system_identifier(&self) -> String {
        let mut cmd = pg_command("pg_controldata");
        cmd.arg("-D").arg(&self.data_dir).env("LC_ALL", "C");
        let out = run_ok(cmd, "pg_controldata");
        out.lines()
            .find_map(|l| l.strip_prefix("Database system identifier:"))
            .map(|v| v.trim().to_string())
            .expect("system identifier")
    }
}

impl Drop for Standalone {
    fn drop(&mut self) {
        if self.owned && self.postmaster_pid().is_some() {
            let mut cmd = pg_command("pg_ctl");
            cmd.arg("-D")
                .arg(&self.data_dir)
                .args(["-m", "immediate", "-w", "stop"]);
            let _ = cmd.output();
        }
    }
}
