//! Self-fencing without a kernel watchdog (beyond upstream).
//!
//! A frozen daemon (SIGSTOP, swapped out, stuck) cannot demote its PostgreSQL, which then
//! keeps acknowledging writes after the leader key expired and another node promoted. The
//! fencer is a small separate process (`patroni --fence DATA_DIR`, spawned by the daemon)
//! that keeps running while the daemon is frozen. After every successful leader refresh the
//! daemon sends it, over a pipe, the moment by which PostgreSQL must stop accepting writes
//! (refresh start + ttl - safety margin, on CLOCK_BOOTTIME which all processes share and
//! which keeps counting through a suspend). If that moment passes without a newer one, the
//! fencer stops PostgreSQL at once (SIGQUIT to the postmaster = immediate shutdown).
//!
//! Lines on the pipe: `ARM <boottime ms>`, `DISARM`, `EXIT`. End of input (the daemon died)
//! keeps the last deadline: a dead daemon refreshes nothing either.
//!
//! A daemon restarted after a crash (systemd `Restart=`) starts a fencer of its own. Once
//! that one is armed (the new daemon refreshed the lease), it records its pid in a token
//! file for the data directory, and an orphaned fencer waiting on the old deadline stands
//! down instead of stopping a primary the new daemon now keeps leading.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use tracing::{info, warn};

/// Milliseconds on CLOCK_BOOTTIME (same clock in every process of this machine).
pub fn boottime_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own; CLOCK_BOOTTIME exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_BOOTTIME)");
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// The daemon's side: the fencer child and the pipe to it.
pub struct Fence {
    data_dir: PathBuf,
    child: Option<(Child, ChildStdin)>,
    armed_at: Option<u64>,
}

impl Fence {
    /// Start `patroni --fence DATA_DIR` (this same executable).
    pub fn spawn(data_dir: &Path) -> std::io::Result<Fence> {
        let mut f = Fence {
            data_dir: data_dir.to_path_buf(),
            child: None,
            armed_at: None,
        };
        f.start_child()?;
        Ok(f)
    }

    fn start_child(&mut self) -> std::io::Result<()> {
        let exe = std::env::current_exe()?;
        let mut child = Command::new(exe)
            .arg("--fence")
            .arg(&self.data_dir)
            .stdin(Stdio::piped())
            .spawn()?;
        let stdin = child.stdin.take().expect("piped stdin");
        info!("started the fencing process (pid {})", child.id());
        self.child = Some((child, stdin));
        Ok(())
    }

    fn send(&mut self, line: &str) {
        if self.child.is_none()
            && let Err(e) = self.start_child()
        {
            warn!("cannot restart the fencing process: {e}");
            return;
        }
        let Some((child, stdin)) = self.child.as_mut() else {
            return;
        };
        if let Err(e) = writeln!(stdin, "{line}") {
            warn!(
                "the fencing process (pid {}) is gone ({e}); starting a new one",
                child.id()
            );
            let _ = child.wait();
            self.child = None;
            if self.start_child().is_ok()
                && let Some((_, stdin)) = self.child.as_mut()
            {
                let _ = writeln!(stdin, "{line}");
            }
        }
    }

    /// PostgreSQL must stop accepting writes at `fire_at_ms` (boottime) unless re-armed.
    pub fn arm(&mut self, fire_at_ms: u64) {
        self.armed_at = Some(fire_at_ms);
        self.send(&format!("ARM {fire_at_ms}"));
    }

    /// We are no longer a primary: nothing to fence.
    pub fn disarm(&mut self) {
        if self.armed_at.take().is_some() {
            self.send("DISARM");
        }
    }

    pub fn is_armed(&self) -> bool {
        self.armed_at.is_some()
    }

    /// Clean daemon exit: the fencer exits too.
    pub fn exit(mut self) {
        self.send("EXIT");
        if let Some((mut child, stdin)) = self.child.take() {
            drop(stdin);
            let _ = child.wait();
        }
    }
}

/// What the fencer was told last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FenceMsg {
    Arm(u64),
    Disarm,
    Exit,
}

pub fn parse_line(line: &str) -> Option<FenceMsg> {
    let mut w = line.split_whitespace();
    match w.next()? {
        "ARM" => w.next()?.parse().ok().map(FenceMsg::Arm),
        "DISARM" => Some(FenceMsg::Disarm),
        "EXIT" => Some(FenceMsg::Exit),
        _ => None,
    }
}

/// The fencer process: `patroni --fence DATA_DIR`. Returns the exit code.
pub fn run_fencer(data_dir: &Path) -> i32 {
    let (tx, rx) = std::sync::mpsc::channel::<Option<FenceMsg>>();
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            let Ok(line) = line else { break };
            if let Some(m) = parse_line(&line) {
                let _ = tx.send(Some(m));
            }
        }
        let _ = tx.send(None);
    });
    let me = std::process::id();
    let token = token_path(data_dir);
    let mut fire_at: Option<u64> = None;
    let mut daemon_gone = false;
    loop {
        let wait = match fire_at {
            Some(t) => std::time::Duration::from_millis(t.saturating_sub(boottime_ms())),
            None if daemon_gone => return 0,
            None => std::time::Duration::from_secs(3600),
        };
        match rx.recv_timeout(wait) {
            Ok(Some(FenceMsg::Arm(t))) => {
                if fire_at.is_none() {
                    claim(&token, me);
                }
                fire_at = Some(t);
            }
            Ok(Some(FenceMsg::Disarm)) => fire_at = None,
            Ok(Some(FenceMsg::Exit)) => return 0,
            Ok(None) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                daemon_gone = true;
                let Some(t) = fire_at else { return 0 };
                // Keep waiting for the deadline (nobody refreshes the lease any more) unless
                // a restarted daemon's armed fencer took over this data directory.
                while boottime_ms() < t {
                    if superseded(&token, me) {
                        eprintln!(
                            "fence: a restarted daemon's fencer took over {}; standing down",
                            data_dir.display()
                        );
                        return 0;
                    }
                    let left = t.saturating_sub(boottime_ms()).min(200);
                    std::thread::sleep(std::time::Duration::from_millis(left));
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
        if fire_at.is_some_and(|t| boottime_ms() >= t) {
            fence_now(data_dir);
            fire_at = None;
        }
    }
}

/// The token file naming the fencer in charge of `data_dir` (outside the data directory,
/// so pg_basebackup and pg_rewind never copy it).
fn token_path(data_dir: &Path) -> PathBuf {
    let abs = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    let name: String = abs
        .to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    std::env::temp_dir().join(format!("patroni-fence{name}.pid"))
}

/// Record that fencer `pid` is armed for the data directory (write, then rename).
fn claim(token: &Path, pid: u32) {
    let tmp = token.with_extension(format!("{pid}.tmp"));
    if let Err(e) = std::fs::write(&tmp, pid.to_string()).and_then(|_| std::fs::rename(&tmp, token))
    {
        eprintln!(
            "fence: cannot record this fencer in {}: {e}",
            token.display()
        );
    }
}

/// Another live fencer has been armed for the data directory since we were.
fn superseded(token: &Path, me: u32) -> bool {
    let Some(pid) = std::fs::read_to_string(token)
        .ok()
        .and_then(|t| t.trim().parse::<u32>().ok())
    else {
        return false;
    };
    pid != me && Path::new(&format!("/proc/{pid}")).exists()
}

/// Immediate shutdown of the postmaster owning `data_dir` (SIGQUIT).
fn fence_now(data_dir: &Path) {
    let pidfile = data_dir.join("postmaster.pid");
    let pid = std::fs::read_to_string(&pidfile)
        .ok()
        .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<i32>().ok()));
    let Some(pid) = pid.filter(|p| *p > 0) else {
        eprintln!("fence: lease deadline passed without a refresh, but PostgreSQL is not running");
        return;
    };
    let r = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGQUIT,
    );
    match r {
        Ok(()) => eprintln!(
            "fence: the daemon did not refresh the leader lease in time (frozen or dead); \
             stopped PostgreSQL immediately (SIGQUIT to postmaster {pid}) so it stops accepting \
             writes before the lease expires"
        ),
        Err(e) => eprintln!("fence: could not signal postmaster {pid}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_protocol_lines() {
        assert_eq!(parse_line("ARM 1234"), Some(FenceMsg::Arm(1234)));
        assert_eq!(parse_line("DISARM"), Some(FenceMsg::Disarm));
        assert_eq!(parse_line("EXIT"), Some(FenceMsg::Exit));
        assert_eq!(parse_line("ARM x"), None);
        assert_eq!(parse_line("bogus"), None);
    }

    #[test]
    fn an_armed_newer_fencer_supersedes_an_orphaned_one() {
        let dir = tempfile::tempdir().unwrap();
        let token = token_path(dir.path());
        let me = std::process::id();
        assert!(!superseded(&token, me), "no token yet");
        claim(&token, me);
        assert!(!superseded(&token, me), "our own token");
        // pid 1 is alive: a newer fencer claimed the data directory.
        claim(&token, 1);
        assert!(superseded(&token, me));
        // A claim by a process that is gone does not count.
        claim(&token, u32::MAX - 1);
        assert!(!superseded(&token, me));
        let _ = std::fs::remove_file(&token);
    }

    #[test]
    fn boottime_advances() {
        let a = boottime_ms();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(boottime_ms() >= a + 20);
    }
}
