//! Safety nets on real etcd + PostgreSQL 15: failsafe mode, the watchdog device (a test
//! double: a regular file we read back; softdog is not loaded on this shared machine because
//! a missed keepalive would reboot it), and the self-fencing process of a frozen daemon.
//! Run under the shared lock: `PATRONI_TEST_LOCK=/tmp/patroni-tests.lock cargo test --test safety`.
mod support;

use std::time::{Duration, Instant};
use support::cluster::{Cluster, FAST, http, psql, psql_within};
use support::eventually;

use support::serial;

fn healthy(n: usize) -> Cluster {
    let mut c = Cluster::new(n, &FAST);
    c.start_all();
    let p = c.wait_primary(Duration::from_secs(120));
    eventually(Duration::from_secs(120), "replicas streaming", || {
        ((0..n).filter(|&i| c.is_streaming(i)).count() == n - 1).then_some(())
    });
    eventually(Duration::from_secs(30), "table t", || {
        psql(
            c.nodes[p].pg_port,
            "CREATE TABLE IF NOT EXISTS t (id bigint primary key, node text)",
        )
        .ok()
    });
    c
}

/// One INSERT with a fresh id (ids are never reused, so a failure is never a duplicate key).
fn write(c: &Cluster, i: usize, id: &mut i64) -> Result<(), String> {
    *id += 1;
    psql_within(
        c.nodes[i].pg_port,
        &format!("INSERT INTO t VALUES ({id}, 'x')"),
        Duration::from_secs(3),
    )
    .map(|_| ())
}

/// The ways a demoted (or demoting) primary refuses a write; anything else is a test bug.
fn is_refusal(err: &str) -> bool {
    [
        "read-only transaction",
        "Connection refused",
        "shutting down",
        "starting up",
        "server closed the connection",
        "terminating connection",
        "no answer within",
        "recovery",
    ]
    .iter()
    .any(|w| err.contains(w))
}

#[test]
fn failsafe_keeps_primary_while_all_members_answer_and_demotes_when_one_is_gone() {
    let _s = serial();
    let mut c = healthy(3);
    let p = c.primary().unwrap();
    let (code, body) = http(
        "PATCH",
        c.nodes[p].api_port,
        "/config",
        Some(&serde_json::json!({"failsafe_mode": true})),
    );
    assert_eq!(code, 200, "{body}");
    eventually(
        Duration::from_secs(30),
        "failsafe key with 3 members",
        || {
            let (s, v) = support::cluster::http_get_json(c.nodes[p].api_port, "/failsafe")?;
            (s == 200 && v.as_object()?.len() == 3).then_some(())
        },
    );

    // Phase 1: etcd down, every member reachable: the primary keeps accepting writes for
    // longer than ttl (without failsafe it demotes within loop_wait + retry_timeout).
    c.etcd.stop();
    let t0 = Instant::now();
    let mut id = 0;
    let (mut acked, mut failures) = (0, vec![]);
    while t0.elapsed() < Duration::from_secs(FAST.ttl + 10) {
        match write(&c, p, &mut id) {
            Ok(()) => acked += 1,
            Err(e) => failures.push((t0.elapsed(), e)),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "FIGURE failsafe_all_members_reachable: writes accepted {acked}/{} over {:.1} s of etcd outage (ttl {})",
        acked + failures.len(),
        t0.elapsed().as_secs_f64(),
        FAST.ttl
    );
    assert!(
        failures.is_empty(),
        "writes failed during the outage: {failures:?}"
    );
    assert!(
        c.log_of(p)
            .contains("continue to run as a leader because failsafe mode is enabled"),
        "no failsafe message in the primary's log"
    );
    for r in (0..3).filter(|&i| i != p) {
        assert_eq!(
            psql(c.nodes[r].pg_port, "SELECT pg_is_in_recovery()").unwrap(),
            "t",
            "replica {r} must not promote without the DCS"
        );
    }

    // Phase 2: one replica's daemon gone (its PostgreSQL keeps running): the primary can no
    // longer hear from every member and demotes within ttl.
    let r = (0..3).find(|&i| i != p).unwrap();
    c.kill_daemon(r, false);
    let t1 = Instant::now();
    let refusal = eventually(
        Duration::from_secs(FAST.ttl + 10),
        "primary demoted",
        || write(&c, p, &mut id).err(),
    );
    let took = t1.elapsed();
    eprintln!(
        "FIGURE failsafe_member_daemon_killed: primary stopped accepting writes {:.2} s after the daemon died (ttl {}, loop_wait {}, retry_timeout {}): {refusal}",
        took.as_secs_f64(),
        FAST.ttl,
        FAST.loop_wait,
        FAST.retry_timeout
    );
    assert!(is_refusal(&refusal), "unexpected write error: {refusal}");
    assert!(
        took < Duration::from_secs(FAST.ttl),
        "demotion took {took:?}"
    );
    // The cycle logs its sentence after it stopped PostgreSQL: wait for it.
    eventually(Duration::from_secs(10), "the reason in the log", || {
        c.log_of(p)
            .contains("failsafe mode cannot keep me primary: not every member acknowledged")
            .then_some(())
    });
    // Nobody may promote without the DCS.
    for i in (0..3).filter(|&i| i != p && i != r) {
        assert_eq!(
            psql(c.nodes[i].pg_port, "SELECT pg_is_in_recovery()").unwrap(),
            "t",
            "replica {i} promoted without the DCS"
        );
    }
}

#[test]
fn watchdog_test_double_gets_keepalives_and_magic_close() {
    let _s = serial();
    let mut c = Cluster::new(1, &FAST);
    let dev = c.dir.join("watchdog");
    std::fs::write(&dev, "").unwrap();
    support::chown_for_postgres(&dev);
    let devs = dev.display().to_string();
    c.edit_config(0, |v| {
        v["watchdog"] = serde_yaml_ng::from_str(&format!(
            "{{mode: required, device: '{devs}', safety_margin: 5}}"
        ))
        .unwrap();
    });
    c.start_all();
    c.wait_primary(Duration::from_secs(120));
    let first = eventually(Duration::from_secs(30), "keepalives", || {
        let n = std::fs::read_to_string(&dev).ok()?.matches('1').count();
        (n >= 2).then_some(n)
    });
    eventually(Duration::from_secs(30), "more keepalives", || {
        let n = std::fs::read_to_string(&dev).ok()?.matches('1').count();
        (n > first).then_some(())
    });
    // Upstream leaves `watchdog_failed` out of /patroni unless it is true.
    let st = support::cluster::http_get_json(c.nodes[0].api_port, "/patroni")
        .unwrap()
        .1;
    assert!(st.get("watchdog_failed").is_none(), "{st}");
    c.sigterm_daemon(0);
    eventually(Duration::from_secs(60), "magic close", || {
        std::fs::read_to_string(&dev)
            .ok()?
            .ends_with('V')
            .then_some(())
    });
}

/// A writer on its own persistent connection to one node, recording acknowledged commits.
struct NodeWriter {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<Vec<Instant>>,
}

impl NodeWriter {
    fn start(port: u16, node: usize) -> NodeWriter {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(write_loop(port, node, s))
        });
        NodeWriter { stop, handle }
    }

    fn finish(self) -> Vec<Instant> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle.join().unwrap()
    }
}

async fn write_loop(
    port: u16,
    node: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<Instant> {
    let conn = format!(
        "host=127.0.0.1 port={port} user=postgres password=patroni dbname=postgres connect_timeout=2"
    );
    let mut acks = vec![];
    let mut id = (node as i64 + 1) * 1_000_000_000;
    let mut client = None;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        if client.is_none() {
            if let Ok(Ok((cl, connection))) = tokio::time::timeout(
                Duration::from_secs(3),
                tokio_postgres::connect(&conn, tokio_postgres::NoTls),
            )
            .await
            {
                tokio::spawn(connection);
                client = Some(cl);
            } else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        }
        let cl = client.as_ref().unwrap();
        id += 1;
        let sql = format!("INSERT INTO t VALUES ({id}, 'pg{node}')");
        match tokio::time::timeout(Duration::from_secs(5), cl.simple_query(&sql)).await {
            Ok(Ok(_)) => acks.push(Instant::now()),
            Ok(Err(e)) if e.is_closed() => client = None,
            Ok(Err(_)) => {}
            Err(_) => client = None,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    acks
}

#[test]
fn frozen_primary_daemon_is_fenced_before_another_node_acknowledges_writes() {
    let _s = serial();
    let c = healthy(3);
    let p = c.primary().unwrap();
    let writers: Vec<NodeWriter> = (0..3)
        .map(|i| NodeWriter::start(c.nodes[i].pg_port, i))
        .collect();
    std::thread::sleep(Duration::from_secs(3));
    c.signal_daemon(p, nix::sys::signal::Signal::SIGSTOP);
    let frozen_at = Instant::now();
    std::thread::sleep(Duration::from_secs(2 * FAST.ttl));
    let new_primary = eventually(Duration::from_secs(60), "a new primary", || {
        (0..3)
            .filter(|&i| i != p)
            .find(|&i| psql(c.nodes[i].pg_port, "SELECT pg_is_in_recovery()").as_deref() == Ok("f"))
    });
    c.signal_daemon(p, nix::sys::signal::Signal::SIGCONT);
    std::thread::sleep(Duration::from_secs(2));
    let acks: Vec<Vec<Instant>> = writers.into_iter().map(NodeWriter::finish).collect();
    let old_last = *acks[p].last().expect("the old primary acknowledged writes");
    let new_first = *acks[new_primary]
        .iter()
        .find(|t| **t > frozen_at)
        .expect("the new primary acknowledged writes");
    let overlap = old_last.saturating_duration_since(new_first);
    let gap = new_first.saturating_duration_since(old_last);
    eprintln!(
        "old primary pg{p}: last ack {:?} after the freeze; new primary pg{new_primary}: first ack {:?} after; overlap {overlap:?}, write gap {gap:?}",
        old_last.saturating_duration_since(frozen_at),
        new_first.saturating_duration_since(frozen_at),
    );
    assert!(
        old_last < new_first,
        "two primaries acknowledged writes for {overlap:?}"
    );
    assert!(
        old_last.duration_since(frozen_at) < Duration::from_secs(FAST.ttl),
        "the frozen primary kept acknowledging until its lease expired"
    );
    assert!(c.log_of(p).contains("fence:"), "no fencing in the log");
    // Thawed, the former primary rejoins as a replica.
    eventually(Duration::from_secs(120), "old primary rejoins", || {
        c.is_streaming(p).then_some(())
    });
}

/// A leader daemon killed -9 and restarted at once (as systemd would) keeps its primary: the
/// new daemon's fencer takes over, and the orphaned one stands down instead of stopping a
/// PostgreSQL the new daemon keeps leading.
#[test]
fn restarted_leader_daemon_is_not_fenced_by_the_orphaned_fencer() {
    let _s = serial();
    let mut c = healthy(2);
    let p = c.wait_primary(Duration::from_secs(60));
    let pm = c.postmaster_pid(p).expect("postmaster pid");
    c.kill_daemon_alone(p);
    c.start(p);
    // Past the orphaned fencer's deadline (ttl - margin after the last refresh) and the ttl.
    std::thread::sleep(Duration::from_secs(FAST.ttl + 3));
    let mut id = 1_000;
    write(&c, p, &mut id).expect("the primary still accepts writes");
    assert_eq!(
        c.postmaster_pid(p),
        Some(pm),
        "the postmaster was stopped:\n{}",
        c.log_of(p)
    );
    assert_eq!(c.primary(), Some(p));
}
