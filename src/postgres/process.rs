//! Running PostgreSQL programs (as the run_as user, with a timeout, output kept), and
//! watching the postmaster: liveness from postmaster.pid and exit via pidfd.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use super::error::{PgError, Result, tail};
use super::settings::PgSettings;

/// Output of a finished command.
#[derive(Debug)]
pub struct Finished {
    pub stdout: String,
    pub stderr: String,
}

/// A command for `program` (resolved via bin_dir) running as the run_as user.
pub fn command(s: &PgSettings, program: &str) -> Command {
    command_path(s, &s.bin(program))
}

pub fn command_path(s: &PgSettings, program: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some((uid, gid)) = s.run_as {
        cmd.uid(uid).gid(gid);
        // The unprivileged user may not be able to enter our working directory.
        cmd.current_dir("/");
        if let Some(home) = home_of(uid) {
            cmd.env("HOME", home);
        }
    }
    cmd
}

fn home_of(uid: u32) -> Option<PathBuf> {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.dir)
}

/// Run to completion within `timeout`; non-zero exit is an error carrying the output tail.
pub async fn run(mut cmd: Command, what: &str, timeout: Duration) -> Result<Finished> {
    let program = what.to_string();
    let child = cmd.spawn().map_err(|source| PgError::Spawn {
        program: program.clone(),
        source,
    })?;
    let out = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(r) => r.map_err(|source| PgError::Spawn {
            program: program.clone(),
            source,
        })?,
        // Dropping the future kills the child (kill_on_drop).
        Err(_) => {
            return Err(PgError::Timeout {
                what: program,
                secs: timeout.as_secs(),
                tail: String::new(),
            });
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        let text = if stderr.trim().is_empty() {
            &stdout
        } else {
            &stderr
        };
        return Err(PgError::CommandFailed {
            program,
            status: out.status.to_string(),
            tail: tail(text, 8),
        });
    }
    Ok(Finished { stdout, stderr })
}

/// PID from the first line of postmaster.pid, if it names a live postmaster of `data_dir`.
pub fn live_postmaster(data_dir: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    if pid <= 0 {
        return None;
    }
    is_postmaster_of(pid as u32, data_dir).then_some(pid as u32)
}

/// Is `pid` alive (not a zombie) and a postgres process working in `data_dir`? The
/// postmaster chdirs to its data directory, so /proc/<pid>/cwd identifies it even when
/// the pid was reused by an unrelated process after a crash.
pub fn is_postmaster_of(pid: u32, data_dir: &Path) -> bool {
    if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_err() {
        // EPERM would mean alive but not ours: not our postmaster either way.
        return false;
    }
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let Ok(cmdline) = std::fs::read(proc_dir.join("cmdline")) else {
        return false;
    };
    // A zombie has an empty cmdline.
    let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
    let argv0 = String::from_utf8_lossy(argv0);
    let base = argv0.rsplit('/').next().unwrap_or("");
    if !(base.starts_with("postgres") || base.starts_with("postmaster")) {
        return false;
    }
    match (
        std::fs::read_link(proc_dir.join("cwd")),
        std::fs::canonicalize(data_dir),
    ) {
        (Ok(cwd), Ok(dd)) => cwd == dd,
        // Cannot tell (no permission): trust the name check.
        _ => true,
    }
}

/// Resolves when process `pid` exits. Works for processes that are not our children
/// (a postmaster started before a daemon restart) by polling a pidfd.
pub async fn wait_for_exit(pid: u32) {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0u32) };
    if fd < 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ESRCH) {
            return;
        }
        return poll_exit(pid).await;
    }
    // SAFETY: fd is a fresh descriptor owned by nobody else.
    let owned = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
    // SAFETY: the AsyncFd owns the OwnedFd, which stays open until it is dropped.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(owned, tokio::io::Interest::READABLE)
    };
    match registered {
        Ok(afd) => {
            let _ = afd.readable().await;
        }
        Err(_) => poll_exit(pid).await,
    }
}

async fn poll_exit(pid: u32) {
    loop {
        let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok()
            && std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty());
        if !alive {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// SIGKILL a postmaster and its children, as upstream's abort of a stop that ran too
/// long: the postmaster is suspended first so it cannot fork while its children are listed.
pub fn kill_process_tree(pid: u32) {
    use nix::sys::signal::{Signal, kill};
    let p = nix::unistd::Pid::from_raw(pid as i32);
    if let Err(e) = kill(p, Signal::SIGSTOP) {
        tracing::warn!("cannot suspend postmaster {pid}: {e}");
    }
    let children = children_of(pid);
    tracing::warn!(
        "sending SIGKILL to postmaster {pid} and its {} children",
        children.len()
    );
    let _ = kill(p, Signal::SIGKILL);
    for c in children {
        let _ = kill(nix::unistd::Pid::from_raw(c as i32), Signal::SIGKILL);
    }
}

/// PIDs whose parent is `pid` (from /proc/<pid>/stat).
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|c| parent_of(*c) == Some(pid))
        .collect()
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Last lines of the postmaster log, for start failures.
pub fn log_tail(path: &Path) -> String {
    std::fs::read_to_string(path)
        .map(|t| tail(&t, 10))
        .unwrap_or_default()
}
