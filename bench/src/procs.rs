//! Processes: spawning in own process groups as the `postgres` user, killing by PID only,
//! an emergency registry for Ctrl-C, and /proc accounting (RSS, CPU ticks).
use std::collections::{BTreeSet, HashMap};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What an interrupted run must still clean up: process groups and data dirs (postmasters).
static LIVE: Mutex<(BTreeSet<i32>, BTreeSet<PathBuf>)> =
    Mutex::new((BTreeSet::new(), BTreeSet::new()));

pub fn register_dir(d: &Path) {
    LIVE.lock().unwrap().1.insert(d.to_path_buf());
}

pub fn unregister_dir(d: &Path) {
    LIVE.lock().unwrap().1.remove(d);
}

/// Called on SIGINT/SIGTERM: kill everything this process started.
pub fn emergency_cleanup() {
    let (groups, dirs) = LIVE.lock().unwrap().clone();
    for g in groups {
        signal_group(g, libc::SIGKILL);
    }
    for d in dirs {
        stop_postmasters_under(&d);
    }
}

/// uid/gid of the Debian `postgres` user (PostgreSQL refuses root).
pub fn pg_user() -> Result<(u32, u32), String> {
    let name = std::ffi::CString::new("postgres").unwrap();
    // SAFETY: getpwnam returns a pointer to static storage or null; read at once.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        return Err("there is no 'postgres' user to run PostgreSQL as".into());
    }
    unsafe { Ok(((*pw).pw_uid, (*pw).pw_gid)) }
}

pub fn chown_pg(p: &Path) -> Result<(), String> {
    let (u, g) = pg_user()?;
    std::os::unix::fs::chown(p, Some(u), Some(g)).map_err(|e| format!("chown {}: {e}", p.display()))
}

/// A loopback port nobody listens on now. A private range (15000-19999, offset by PID)
/// keeps clear of the test suites' ports and of the kernel's ephemeral range.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let start = (std::process::id() % 50) as u16 * 100;
    loop {
        let p = 15000 + (start + NEXT.fetch_add(1, Ordering::SeqCst)) % 5000;
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
}

/// A child in its own process group, SIGKILLed (whole group) on drop.
pub struct Proc {
    child: Child,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command, as_pg: bool, log: &Path) -> Result<Proc, String> {
        let out = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        if as_pg {
            let (u, g) = pg_user()?;
            cmd.uid(u).gid(g).env("HOME", "/var/lib/postgresql");
        }
        let child = cmd.spawn().map_err(|e| format!("starting {name}: {e}"))?;
        LIVE.lock().unwrap().0.insert(child.id() as i32);
        Ok(Proc { child })
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The process is gone (or a zombie nobody reaped yet).
    pub fn exited(&self) -> bool {
        read_stat(self.pid()).is_none_or(|s| s.state == 'Z')
    }

    /// SIGKILL the process group (the daemon and any helper it forked; a postmaster that
    /// runs in its own group is untouched).
    pub fn kill(&mut self) {
        signal_group(self.pid(), libc::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
        LIVE.lock().unwrap().0.remove(&self.pid());
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn signal(pid: i32, sig: i32) -> bool {
    // SAFETY: plain syscall on a PID we started (or read from a postmaster.pid we created).
    unsafe { libc::kill(pid, sig) == 0 }
}

fn signal_group(pgid: i32, sig: i32) {
    if pgid > 1 {
        // SAFETY: as above, for a process group we created with process_group(0).
        unsafe { libc::killpg(pgid, sig) };
    }
}

/// PID in `data_dir/postmaster.pid`, if that process exists.
pub fn postmaster_pid(data_dir: &Path) -> Option<i32> {
    let s = std::fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    let pid: i32 = s.lines().next()?.trim().parse().ok()?;
    (pid > 1 && signal(pid, 0)).then_some(pid)
}

/// Immediate shutdown (SIGQUIT), then SIGKILL if it lingers.
pub fn stop_postmaster(data_dir: &Path) {
    let Some(pid) = postmaster_pid(data_dir) else {
        return;
    };
    signal(pid, libc::SIGQUIT);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && signal(pid, 0) && !is_zombie(pid) {
        std::thread::sleep(Duration::from_millis(50));
    }
    signal(pid, libc::SIGKILL);
}

fn stop_postmasters_under(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir.join("data")) {
        for e in rd.flatten() {
            stop_postmaster(&e.path());
        }
    }
}

fn is_zombie(pid: i32) -> bool {
    read_stat(pid).is_some_and(|s| s.state == 'Z')
}

#[derive(Clone, Debug)]
pub struct Stat {
    pub pid: i32,
    pub ppid: i32,
    pub state: char,
    pub comm: String,
    /// utime + stime + cutime + cstime (children the process waited for count too).
    pub ticks: u64,
}

pub fn read_stat(pid: i32) -> Option<Stat> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (open, close) = (s.find('(')?, s.rfind(')')?);
    let comm = s[open + 1..close].to_string();
    let f: Vec<&str> = s[close + 2..].split_whitespace().collect();
    // After "(comm) ": state=0 ppid=1 ... utime=11 stime=12 cutime=13 cstime=14.
    let num = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok());
    Some(Stat {
        pid,
        ppid: f.get(1)?.parse().ok()?,
        state: f.first()?.chars().next()?,
        comm,
        ticks: num(11)? + num(12)? + num(13)? + num(14)?,
    })
}

fn all_stats() -> Vec<Stat> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(read_stat)
        .collect()
}

/// The daemon and its descendants that are not PostgreSQL processes.
pub fn daemon_tree(root: i32) -> Vec<Stat> {
    let stats = all_stats();
    let mut children: HashMap<i32, Vec<&Stat>> = HashMap::new();
    for s in &stats {
        children.entry(s.ppid).or_default().push(s);
    }
    let mut out: Vec<Stat> = stats.iter().filter(|s| s.pid == root).cloned().collect();
    let mut i = 0;
    while i < out.len() {
        let pid = out[i].pid;
        for c in children.get(&pid).into_iter().flatten() {
            if c.comm != "postgres" {
                out.push((*c).clone());
            }
        }
        i += 1;
    }
    out
}

pub fn rss_kib(pid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// (resident KiB, CPU ticks) of a daemon without its PostgreSQL processes.
pub fn footprint(root: i32) -> (u64, u64) {
    let tree = daemon_tree(root);
    let rss = tree.iter().map(|s| rss_kib(s.pid)).sum();
    let ticks = tree.iter().map(|s| s.ticks).sum();
    (rss, ticks)
}

pub fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).max(1) as f64
}
