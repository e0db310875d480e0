//! Fault injection on a real 3-node cluster of our daemon (etcd + PostgreSQL 15), each node
//! a host in its own network namespace (or, where namespaces cannot be created, behind
//! loopback proxies the test controls). Scenarios: the primary cut off from etcd and its
//! peers, the primary's daemon SIGSTOPped for longer than ttl, etcd down for longer than
//! ttl, and seeded random rounds of these, while one writer per node records what each
//! node acknowledged. Invariants: no two nodes acknowledging writes at the same time,
//! a cut-off primary stops before its lease can expire, no acknowledged write lost in
//! synchronous mode, replicas converge.
//!
//! Run: `PATRONI_TEST_LOCK=/tmp/patroni-tests.lock cargo test --test faults -- --nocapture`
//! (`FAULTS_ROUNDS=N` random rounds, default 2; `FAULTS_SEED`; `FAULTS_TIMING=quick` for the
//! fast-failover profile ttl 6 / loop_wait 1 / retry_timeout 2; `FAULTS_BUDGET_S`, default 300,
//! stops starting rounds after that many seconds; `FAULTS_MODE=proxy`). A long run:
//! `FAULTS_ROUNDS=30 FAULTS_BUDGET_S=3600 FAULTS_SEED=7 cargo test --test faults sync_mode`.
mod support;

use nix::sys::signal::Signal;
use std::collections::HashSet;
use std::time::{Duration, Instant};
use support::eventually;
use support::fault_cluster::{FaultCluster, timing};
use support::fault_writers::{Ack, Writers, last_ack, lost, max_overlap};

use support::serial;

fn ttl_d() -> Duration {
    Duration::from_secs(timing().ttl)
}

/// A scenario's time window and what it measured, for the summary and the checks.
#[derive(Debug)]
struct Outcome {
    name: String,
    victim: usize,
    begin: Instant,
    end: Instant,
    /// When the fault started (cut, SIGSTOP, etcd killed).
    fault_at: Instant,
    /// When it ended (heal, SIGCONT, etcd restarted).
    healed_at: Instant,
    /// From the heal until one primary and every other node streaming again.
    rejoined_after: Duration,
    rewound: bool,
}

fn bring_up(synchronous: bool) -> (FaultCluster, Writers) {
    let mut c = FaultCluster::new(3, synchronous);
    eprintln!(
        "faults: mode {:?}, synchronous_mode {synchronous}",
        c.mode()
    );
    c.start_all();
    let p = c.wait_healthy(Duration::from_secs(150));
    eventually(Duration::from_secs(30), "table t on the primary", || {
        c.psql(p, "CREATE TABLE IF NOT EXISTS t (id bigint primary key)")
            .ok()
    });
    for i in 0..3 {
        eventually(Duration::from_secs(30), "table t replicated", || {
            c.psql(i, "SELECT count(*) FROM t").ok()
        });
    }
    let targets: Vec<(String, u16)> = c
        .net
        .nodes
        .iter()
        .map(|a| (a.host.clone(), a.pg_port))
        .collect();
    let w = Writers::start(&targets);
    (c, w)
}

/// A node other than `old` that answers 200 on GET /primary.
fn new_primary(c: &FaultCluster, old: usize, timeout: Duration) -> usize {
    eventually(timeout, "a new primary", || {
        (0..c.nodes.len()).find(|&i| i != old && c.api(i, "/primary").map(|(s, _)| s) == Some(200))
    })
}

/// Rejoined as a streaming replica after the fault: how long after `healed_at`, and did its
/// daemon run pg_rewind?
fn rejoin(c: &FaultCluster, old: usize, healed_at: Instant) -> (Duration, bool) {
    c.wait_healthy(Duration::from_secs(120));
    (healed_at.elapsed(), c.log_of(old).contains("pg_rewind"))
}

fn partition(c: &FaultCluster) -> Outcome {
    let begin = Instant::now();
    let p = c.wait_healthy(Duration::from_secs(120));
    std::thread::sleep(Duration::from_secs(2)); // writes flowing on the primary
    let fault_at = Instant::now();
    c.net.isolate(p);
    let q = new_primary(c, p, ttl_d() * 3);
    eprintln!(
        "faults: partition: pg{p} cut off, pg{q} primary after {:.1}s",
        fault_at.elapsed().as_secs_f64()
    );
    std::thread::sleep(Duration::from_secs(3));
    let healed_at = Instant::now();
    c.net.heal(p);
    let (rejoined_after, rewound) = rejoin(c, p, healed_at);
    Outcome {
        name: "partition".into(),
        victim: p,
        begin,
        end: Instant::now(),
        fault_at,
        healed_at,
        rejoined_after,
        rewound,
    }
}

fn sigstop(c: &FaultCluster) -> Outcome {
    let begin = Instant::now();
    let p = c.wait_healthy(Duration::from_secs(120));
    std::thread::sleep(Duration::from_secs(2));
    let fault_at = Instant::now();
    c.signal_daemon(p, Signal::SIGSTOP);
    let q = new_primary(c, p, ttl_d() * 3);
    // Longer than ttl in any case, and long enough to see what the stale primary does.
    while fault_at.elapsed() < ttl_d() + Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "faults: sigstop: pg{p} stopped {:.1}s, pg{q} primary",
        fault_at.elapsed().as_secs_f64()
    );
    let healed_at = Instant::now();
    c.signal_daemon(p, Signal::SIGCONT);
    let (rejoined_after, rewound) = rejoin(c, p, healed_at);
    Outcome {
        name: "sigstop".into(),
        victim: p,
        begin,
        end: Instant::now(),
        fault_at,
        healed_at,
        rejoined_after,
        rewound,
    }
}

fn etcd_down(c: &mut FaultCluster) -> Outcome {
    let begin = Instant::now();
    let p = c.wait_healthy(Duration::from_secs(120));
    std::thread::sleep(Duration::from_secs(2));
    let fault_at = Instant::now();
    c.stop_etcd();
    std::thread::sleep(ttl_d() + Duration::from_secs(5));
    let healed_at = Instant::now();
    c.start_etcd();
    let (rejoined_after, rewound) = rejoin(c, p, healed_at);
    Outcome {
        name: "etcd-down".into(),
        victim: p,
        begin,
        end: Instant::now(),
        fault_at,
        healed_at,
        rejoined_after,
        rewound,
    }
}

/// Print what a scenario measured; return its overlap window in seconds (0 = none).
fn report(acks: &[Ack], o: &Outcome, mode: &str) -> f64 {
    let overlap = max_overlap(acks, o.begin, o.end);
    let secs = |t: Instant, since: Instant| {
        (t.duration_since(since).as_secs_f64() * 1000.0).round() / 1000.0
    };
    let shown = |x: Option<f64>| x.map_or("none".to_string(), |s| format!("{s:.3} s"));
    let after_fault =
        shown(last_ack(acks, o.victim, o.fault_at, o.healed_at).map(|t| secs(t, o.fault_at)));
    let after_heal =
        shown(last_ack(acks, o.victim, o.healed_at, o.end).map(|t| secs(t, o.healed_at)));
    eprintln!(
        "FIGURE faults[{}] {:<10} victim pg{} | overlap of two acking primaries {} | victim's last ack: {} after the fault, {} after the heal | all streaming {:.1} s after the heal | pg_rewind {}",
        mode,
        o.name,
        o.victim,
        overlap.map_or("none (0 s)".into(), |x| format!(
            "{:.3}s (pg{} & pg{})",
            x.window.as_secs_f64(),
            x.nodes.0,
            x.nodes.1
        )),
        after_fault,
        after_heal,
        o.rejoined_after.as_secs_f64(),
        o.rewound
    );
    overlap.map_or(0.0, |x| x.window.as_secs_f64())
}

/// The cut-off (DCS-less, or frozen and fenced) primary must stop acknowledging before its lease could have
/// expired: the lease was renewed at the latest at the fault, at the earliest a loop
/// before it, so it cannot expire before fault + ttl - loop_wait.
fn assert_within_lease(acks: &[Ack], o: &Outcome) {
    if let Some(t) = last_ack(acks, o.victim, o.fault_at, o.healed_at) {
        let bound = Duration::from_secs(timing().ttl - timing().loop_wait);
        let took = t - o.fault_at;
        assert!(
            took < bound,
            "{}: pg{} acknowledged writes {took:?} after the fault, beyond the lease bound {bound:?}",
            o.name,
            o.victim
        );
    }
}

/// After a SIGSTOP the resumed daemon must demote at once: its node may acknowledge writes
/// only briefly after SIGCONT (one HA cycle plus a demote).
fn assert_prompt_demote(acks: &[Ack], o: &Outcome) {
    if let Some(t) = last_ack(acks, o.victim, o.healed_at, o.end) {
        let took = t - o.healed_at;
        let bound = Duration::from_secs(timing().loop_wait + 4);
        assert!(
            took < bound,
            "sigstop: pg{} still acknowledged writes {took:?} after SIGCONT",
            o.victim
        );
    }
}

/// Every node ends with the same rows; returns the final primary's ids.
fn converge(c: &FaultCluster) -> HashSet<i64> {
    let p = c.wait_healthy(Duration::from_secs(120));
    let sig = |i: usize| c.psql(i, "SELECT count(*) || ':' || coalesce(sum(id), 0) FROM t");
    eventually(Duration::from_secs(60), "replicas converge", || {
        let want = sig(p).ok()?;
        (0..c.nodes.len())
            .all(|i| sig(i).ok().as_deref() == Some(want.as_str()))
            .then_some(())
    });
    c.psql(p, "SELECT id FROM t")
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect()
}

#[test]
fn async_mode_partition_sigstop_and_etcd_outage() {
    let _s = serial();
    let (mut c, w) = bring_up(false);
    let outcomes = [etcd_down(&mut c), partition(&c), sigstop(&c)];
    let acks = w.finish();
    let present = converge(&c);
    let lost_ids = lost(&acks, &present);
    let overlaps: Vec<f64> = outcomes.iter().map(|o| report(&acks, o, "async")).collect();
    eprintln!(
        "FIGURE faults[async] lost acknowledged writes: {1} of {0} (allowed without synchronous mode)",
        acks.len(),
        lost_ids.len()
    );
    assert_within_lease(&acks, &outcomes[0]);
    assert_eq!(overlaps[0], 0.0, "etcd outage: two nodes accepted writes");
    assert!(
        outcomes[1].rewound,
        "the cut-off primary rejoined without pg_rewind"
    );
    assert_within_lease(&acks, &outcomes[1]);
    assert_eq!(overlaps[1], 0.0, "partition: two nodes accepted writes");
    // A SIGSTOPped daemon cannot stop its PostgreSQL itself: the fencing process does,
    // before the lease can expire.
    assert_within_lease(&acks, &outcomes[2]);
    assert_prompt_demote(&acks, &outcomes[2]);
    assert_eq!(overlaps[2], 0.0, "sigstop: two nodes accepted writes");
}

/// Seeded xorshift: the same seed replays the same rounds.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn sync_mode_random_rounds_lose_nothing() {
    let _s = serial();
    let seed = env_num("FAULTS_SEED", 9).max(1);
    let rounds = env_num("FAULTS_ROUNDS", 2).min(50);
    let budget = Duration::from_secs(env_num("FAULTS_BUDGET_S", 300));
    let (mut c, w) = bring_up(true);
    let started = Instant::now();
    let mut rng = Rng(seed);
    let mut outcomes = vec![];
    for round in 0..rounds {
        // Bounded in time whatever the round count (FAULTS_BUDGET_S, default 5 minutes).
        if started.elapsed() > budget {
            eprintln!("faults: time budget reached after {round} rounds");
            break;
        }
        let o = match rng.next() % 3 {
            0 => partition(&c),
            1 => sigstop(&c),
            _ => etcd_down(&mut c),
        };
        eprintln!("faults: seed {seed} round {round}: {}", o.name);
        outcomes.push(o);
    }
    let acks = w.finish();
    let present = converge(&c);
    let lost_ids = lost(&acks, &present);
    for o in &outcomes {
        let overlap = report(&acks, o, "sync");
        assert_eq!(overlap, 0.0, "{}: two nodes accepted writes", o.name);
        assert_within_lease(&acks, o);
        if o.name == "sigstop" {
            assert_prompt_demote(&acks, o);
        }
    }
    let whole = max_overlap(&acks, started - Duration::from_secs(600), Instant::now());
    eprintln!(
        "FIGURE faults[sync] seed {seed}, {} rounds: lost acknowledged writes {} of {}, overlap {:?}",
        outcomes.len(),
        lost_ids.len(),
        acks.len(),
        whole.map(|o| o.window)
    );
    assert!(
        lost_ids.is_empty(),
        "acknowledged writes lost: {lost_ids:?}"
    );
    assert!(whole.is_none(), "two nodes accepted writes: {whole:?}");
}

/// The fallback's building block (no cluster, no lock needed): bytes flow through a proxy,
/// stop while it is cut (the connection stays open), and arrive after the heal.
#[test]
fn loopback_proxy_freezes_and_resumes() {
    use std::io::{Read, Write};
    let server = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let target = server.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let (mut s, _) = server.accept().unwrap();
        let mut buf = [0u8; 64];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 || s.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
    let proxy = support::netns::Proxy::start(target);
    let mut c = std::net::TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
    c.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 4];
    c.write_all(b"ping").unwrap();
    c.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    proxy.set_cut(true);
    std::thread::sleep(Duration::from_millis(100));
    c.write_all(b"lost").unwrap();
    assert!(c.read_exact(&mut buf).is_err(), "bytes crossed a cut proxy");
    proxy.set_cut(false);
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"lost");
}
