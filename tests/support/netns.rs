//! The network the fault suite runs its nodes in, and the switch that cuts a node off.
//!
//! Preferred: every node is a host in its own network namespace (`ip netns`), wired by a
//! veth pair to a bridge in the root namespace, where etcd and the test itself live. A cut
//! is `iptables -j DROP` inside the node's namespace for etcd and the peers (the test's own
//! address stays reachable so it can keep measuring what the cut-off node accepts).
//!
//! Fallback (no CAP_NET_ADMIN, no iproute2): everything on 127.0.0.1, and each node reaches
//! etcd, and its peers reach it, through TCP proxies the test controls. A cut freezes those
//! proxies: bytes stop flowing but sockets stay open, like packets dropped on the wire.
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Nodes in network namespaces on a bridge; cuts with iptables.
    Netns,
    /// Nodes on loopback behind test-controlled TCP proxies.
    Proxy,
}

/// Where one node's services listen, and where the others are told to reach them.
#[derive(Debug, Clone)]
pub struct NodeAddr {
    /// IP the node's PostgreSQL and REST API bind to (also what the test connects to).
    pub host: String,
    pub pg_port: u16,
    pub api_port: u16,
    /// What the node advertises to its peers (`connect_address`): itself, or its proxy.
    pub pg_connect: String,
    pub api_connect: String,
    /// How this node reaches etcd (`host:port`).
    pub etcd: String,
}

pub struct Net {
    pub mode: Mode,
    /// IP and port etcd listens on (reachable from the test in both modes).
    pub etcd_host: String,
    pub etcd_port: u16,
    pub nodes: Vec<NodeAddr>,
    /// `/24` prefix of the bridge network, e.g. "100.70.12" (netns mode).
    subnet: String,
    tag: String,
    namespaces: Vec<String>,
    bridge: Option<String>,
    /// Proxy mode: per node, the proxies a cut freezes (its etcd link, its inbound pg/api).
    proxies: Vec<Vec<Proxy>>,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Net {
    /// Namespaces when we may create them (and `FAULTS_MODE=proxy` does not say otherwise),
    /// else loopback proxies. `etcd_port` is chosen here so both modes agree on it.
    pub fn new(n: usize) -> Net {
        let forced_proxy = std::env::var("FAULTS_MODE").is_ok_and(|m| m == "proxy");
        if !forced_proxy {
            match Net::try_netns(n) {
                Ok(net) => return net,
                Err(e) => eprintln!("faults: network namespaces unavailable ({e}); using proxies"),
            }
        }
        Net::proxied(n)
    }

    fn try_netns(n: usize) -> Result<Net, String> {
        remove_stale();
        let pid = std::process::id();
        let subnet = format!("100.{}.{}", 64 + (pid >> 8) % 64, pid % 256);
        let tag = format!("f{pid}");
        let mut net = Net {
            mode: Mode::Netns,
            etcd_host: format!("{subnet}.2"),
            etcd_port: 2379,
            nodes: vec![],
            subnet: subnet.clone(),
            tag: tag.clone(),
            namespaces: vec![],
            bridge: None,
            proxies: vec![],
        };
        // Anything failing below is undone by Drop (net owns what was created so far).
        let br = format!("br{tag}");
        ip(&["link", "add", &br, "type", "bridge"])?;
        net.bridge = Some(br.clone());
        ip(&["addr", "add", &format!("{subnet}.1/24"), "dev", &br])?;
        ip(&["addr", "add", &format!("{subnet}.2/24"), "dev", &br])?;
        ip(&["link", "set", &br, "up"])?;
        for i in 0..n {
            let ns = format!("{tag}n{i}");
            ip(&["netns", "add", &ns])?;
            net.namespaces.push(ns.clone());
            let (outer, inner) = (format!("v{tag}h{i}"), format!("v{tag}n{i}"));
            ip(&[
                "link", "add", &outer, "type", "veth", "peer", "name", &inner,
            ])?;
            ip(&["link", "set", &inner, "netns", &ns])?;
            ip(&["link", "set", &outer, "master", &br, "up"])?;
            let host = format!("{subnet}.{}", 11 + i);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{host}/24"),
                "dev",
                &inner,
            ])?;
            ip(&["-n", &ns, "link", "set", &inner, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            net.nodes.push(NodeAddr {
                host: host.clone(),
                pg_port: 5432,
                api_port: 8008,
                pg_connect: format!("{host}:5432"),
                api_connect: format!("{host}:8008"),
                etcd: format!("{subnet}.2:2379"),
            });
        }
        // iptables must work inside a namespace, or a cut would silently do nothing.
        net.iptables(0, &["-L", "OUTPUT", "-n"])?;
        Ok(net)
    }

    fn proxied(n: usize) -> Net {
        let etcd_port = super::free_port();
        let mut nodes = vec![];
        let mut proxies = vec![];
        for _ in 0..n {
            let (pg_port, api_port) = (super::free_port(), super::free_port());
            let to_etcd = Proxy::start(etcd_port);
            let to_pg = Proxy::start(pg_port);
            let to_api = Proxy::start(api_port);
            nodes.push(NodeAddr {
                host: "127.0.0.1".into(),
                pg_port,
                api_port,
                pg_connect: format!("127.0.0.1:{}", to_pg.port),
                api_connect: format!("127.0.0.1:{}", to_api.port),
                etcd: format!("127.0.0.1:{}", to_etcd.port),
            });
            proxies.push(vec![to_etcd, to_pg, to_api]);
        }
        Net {
            mode: Mode::Proxy,
            etcd_host: "127.0.0.1".into(),
            etcd_port,
            nodes,
            subnet: "127.0.0".into(),
            tag: String::new(),
            namespaces: vec![],
            bridge: None,
            proxies,
        }
    }

    /// The network pg_hba must admit (replication and the test's clients).
    pub fn hba_cidr(&self) -> String {
        match self.mode {
            Mode::Netns => format!("{}.0/24", self.subnet),
            Mode::Proxy => "127.0.0.1/32".into(),
        }
    }

    /// `cmd` wrapped to run as a host of node `i`'s network.
    pub fn command(&self, i: usize, program: &str) -> Command {
        match self.mode {
            Mode::Netns => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &self.namespaces[i], program]);
                c
            }
            Mode::Proxy => Command::new(program),
        }
    }

    fn iptables(&self, i: usize, args: &[&str]) -> Result<(), String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.namespaces[i], "iptables", "-w"])
            .args(args)
            .output()
            .map_err(|e| format!("iptables: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "iptables {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// Cut node `i` off from etcd and from every peer (both directions). The test's own
    /// address (`.1` of the bridge) stays reachable.
    pub fn isolate(&self, i: usize) {
        match self.mode {
            Mode::Netns => {
                let mut others: Vec<String> = vec![self.etcd_host.clone()];
                others.extend(
                    (0..self.nodes.len())
                        .filter(|&j| j != i)
                        .map(|j| self.nodes[j].host.clone()),
                );
                for o in &others {
                    self.iptables(i, &["-A", "OUTPUT", "-d", o, "-j", "DROP"])
                        .expect("iptables cut (out)");
                    self.iptables(i, &["-A", "INPUT", "-s", o, "-j", "DROP"])
                        .expect("iptables cut (in)");
                }
            }
            Mode::Proxy => self.proxies[i].iter().for_each(|p| p.set_cut(true)),
        }
    }

    pub fn heal(&self, i: usize) {
        match self.mode {
            Mode::Netns => {
                self.iptables(i, &["-F", "OUTPUT"]).expect("iptables heal");
                self.iptables(i, &["-F", "INPUT"]).expect("iptables heal");
            }
            Mode::Proxy => self.proxies[i].iter().for_each(|p| p.set_cut(false)),
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Deleting a namespace deletes its veth end, which deletes the bridge-side peer.
        for ns in &self.namespaces {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("faults cleanup: {e}");
            }
        }
        if let Some(br) = &self.bridge
            && let Err(e) = ip(&["link", "del", br])
        {
            eprintln!("faults cleanup: {e}");
        }
        for p in self.proxies.iter().flatten() {
            p.stop.store(true, Ordering::Relaxed);
        }
    }
}

/// Namespaces `f<PID>n<i>` (and bridge `brf<PID>`) of an earlier run whose test process is
/// gone (killed, so its Drop guards never ran): kill the processes inside them (ours: only
/// our daemons and postmasters live there) and delete them.
fn remove_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let ns = line.split_whitespace().next().unwrap_or("");
        let Some((pid, _)) = ns.strip_prefix('f').and_then(|r| r.split_once('n')) else {
            continue;
        };
        let Ok(pid) = pid.parse::<i32>() else {
            continue;
        };
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        if let Ok(pids) = Command::new("ip").args(["netns", "pids", ns]).output() {
            for p in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
                if let Ok(p) = p.parse::<i32>() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(p),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        eprintln!("faults: removing namespace {ns} left by a killed run");
        let _ = ip(&["netns", "del", ns]);
        let _ = ip(&["link", "del", &format!("brf{pid}")]);
    }
}

/// A loopback TCP forwarder to `127.0.0.1:target` that can be frozen.
pub struct Proxy {
    pub port: u16,
    cut: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    pub fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind(("127.0.0.1", 0)).expect("proxy bind");
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (cut.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let (c, s) = (c.clone(), s.clone());
                        std::thread::spawn(move || forward(client, target, c, s));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Proxy { port, cut, stop }
    }

    pub fn set_cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Wait out a cut (a connection attempt during a cut hangs, like a dropped SYN would),
/// then pump both directions until either side closes.
fn forward(client: TcpStream, target: u16, cut: Arc<AtomicBool>, stop: Arc<AtomicBool>) {
    while cut.load(Ordering::Relaxed) && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
        return;
    };
    let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    let (cut2, stop2) = (cut.clone(), stop.clone());
    let t = std::thread::spawn(move || pump(s2, c2, cut2, stop2));
    pump(client, server, cut, stop);
    let _ = t.join();
}

/// Copy `from` -> `to`; while cut, leave bytes in the kernel buffers (nothing is lost,
/// nothing arrives), as a network partition does until it heals.
fn pump(mut from: TcpStream, mut to: TcpStream, cut: Arc<AtomicBool>, stop: Arc<AtomicBool>) {
    from.set_read_timeout(Some(Duration::from_millis(50))).ok();
    let mut buf = [0u8; 16384];
    while !stop.load(Ordering::Relaxed) {
        if cut.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Both);
    let _ = from.shutdown(std::net::Shutdown::Both);
}
