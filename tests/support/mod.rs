//! Process harness for integration tests: free loopback ports, temp dirs owned by the
//! unprivileged user, children killed by PID (process group) on drop, `eventually`.
#![allow(dead_code)]

pub mod cluster;
pub mod consul;
pub mod ctl;
pub mod etcd;
pub mod fault_cluster;
pub mod fault_writers;
pub mod kube;
pub mod mixed;
pub mod netns;
pub mod postgres;
pub mod standalone;
pub mod zookeeper;

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// A loopback port nobody listens on right now. Ports are handed out from a per-process
/// counter offset by PID so parallel test binaries do not collide.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 20000 + (std::process::id() % 400) as u16 * 100;
    loop {
        let p = base + NEXT.fetch_add(1, Ordering::SeqCst) % 100;
        if TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
}

/// The uid/gid PostgreSQL and our daemon run as: `postgres` when we are root, else ourselves.
pub fn run_as() -> Option<(u32, u32)> {
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let u = nix::unistd::User::from_name("postgres")
        .ok()
        .flatten()
        .expect("user postgres exists");
    Some((u.uid.as_raw(), u.gid.as_raw()))
}

/// A temp dir that the unprivileged user owns (so initdb can write into it).
pub struct TestDir {
    pub dir: tempfile::TempDir,
}

impl TestDir {
    pub fn new(prefix: &str) -> TestDir {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .expect("tempdir");
        chown_for_postgres(dir.path());
        TestDir { dir }
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    pub fn join(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }
    /// Keep the directory after the test (for debugging a failure).
    pub fn keep(self) -> PathBuf {
        self.dir.keep()
    }
}

pub fn chown_for_postgres(p: &Path) {
    if let Some((uid, gid)) = run_as() {
        std::os::unix::fs::chown(p, Some(uid), Some(gid)).expect("chown");
    }
}

/// A child process killed (SIGKILL to its whole process group) when dropped.
pub struct ChildGuard {
    pub child: Child,
    pub name: String,
}

impl ChildGuard {
    /// Spawn in its own process group; as root, drop to the postgres user when `unprivileged`.
    pub fn spawn(name: &str, mut cmd: Command, unprivileged: bool, log: &Path) -> ChildGuard {
        let out = std::fs::File::create(log).expect("log file");
        chown_for_postgres(log);
        cmd.stdout(out.try_clone().unwrap())
            .stderr(out)
            .stdin(Stdio::null());
        cmd.process_group(0);
        if unprivileged && let Some((uid, gid)) = run_as() {
            cmd.uid(uid).gid(gid);
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        ChildGuard {
            child,
            name: name.to_string(),
        }
    }
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), sig);
    }
    pub fn kill9(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
    /// SIGKILL to this process alone (as systemd's `KillMode=process` or an OOM kill would):
    /// the rest of its group (the fencing process) lives on and ends by itself.
    pub fn kill9_alone(mut self) {
        self.signal(nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
        std::mem::forget(self);
    }
    /// Still running?
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // Whole group: the daemon and any postmaster it started share it unless they setsid.
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.pid() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Is process `pid` running? A process that exited but was not reaped yet (a zombie, state
/// `Z` in /proc/PID/stat) still answers `kill(pid, 0)`; it is not running. A postmaster
/// whose daemon was killed belongs to PID 1 afterwards, which may never reap it.
pub fn pid_running(pid: i32) -> bool {
    if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err() {
        return false;
    }
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "pid (comm) S ...": the state follows the last ')' (comm may contain one).
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    !matches!(state, Some("Z") | Some("X") | None)
}

/// Poll `probe` until it returns `Some`, or panic with `what` after `timeout`.
pub fn eventually<T>(timeout: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Wait until something accepts TCP connections on 127.0.0.1:`port`.
pub fn wait_port(port: u16, timeout: Duration) {
    eventually(
        timeout,
        &format!("port {port} to accept connections"),
        || {
            std::net::TcpStream::connect(("127.0.0.1", port))
                .ok()
                .map(|_| ())
        },
    );
}

/// Cluster scenarios run one at a time: within a test binary through a mutex, and across
/// processes on the machine through the file named by `PATRONI_TEST_LOCK` (flock), when set.
pub struct Serial {
    _guard: std::sync::MutexGuard<'static, ()>,
    _file: Option<std::fs::File>,
}

pub fn serial() -> Serial {
    static M: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let guard = M.lock().unwrap_or_else(|e| e.into_inner());
    let file = std::env::var_os("PATRONI_TEST_LOCK").map(|p| {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .expect("PATRONI_TEST_LOCK file");
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a descriptor we own; released when the file is dropped.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
        assert_eq!(rc, 0, "flock {p:?}");
        f
    });
    Serial {
        _guard: guard,
        _file: file,
    }
}
