//! Mixed clusters of upstream Patroni 4.1 nodes and ours (same scope, same etcd v3):
//! the node-by-node migration from 3 upstream nodes to 3 of ours and back with a writer
//! counting acknowledged writes, and kill -9 leader races across kinds.
//! Run under the machine's cluster lock: `PATRONI_TEST_LOCK=/tmp/patroni-tests.lock cargo test --test mixed_cluster`.
mod support;

use std::time::{Duration, Instant};
use support::cluster::{FAST, http, http_get_json, psql, psql_within};
use support::ctl::theirs;
use support::eventually;
use support::mixed::{Kind, MixedCluster};

use Kind::{Ours, Upstream};

fn figure(what: &str, pause: Duration) {
    println!("FIGURE write pause during switchover {what}: {pause:?}");
}

#[test]
fn migration_walk_upstream_to_ours_and_back() {
    let _s = support::serial();
    let mut m = MixedCluster::new(&[Upstream, Upstream, Upstream], |_, _| {});
    m.bootstrap();

    // Upstream leader pg0; replace replica pg1 with ours, then hand it the leadership.
    let gap = m.with_writer(|m| {
        m.replace(1, Ours);
        m.check("pg1 replaced by ours");
    });
    println!("write pause while replacing replica pg1: {gap:?}");
    let gap = m.with_writer(|m| {
        m.switchover(1, "upstream -> ours");
        m.check("switchover to ours pg1");
    });
    figure("upstream pg0 -> ours pg1", gap);

    // The remaining two, both replicas now (pg0 is the former leader).
    let gap = m.with_writer(|m| {
        m.replace(2, Ours);
        m.check("pg2 replaced by ours");
        m.replace(0, Ours);
        m.check("pg0 replaced by ours");
    });
    println!("write pause while replacing replicas pg2, pg0: {gap:?}");
    let gap = m.with_writer(|m| {
        m.switchover(2, "ours -> ours");
        m.check("switchover to ours pg2");
    });
    figure("ours pg1 -> ours pg2", gap);

    // And back to upstream the same way.
    let gap = m.with_writer(|m| {
        m.replace(0, Upstream);
        m.check("pg0 back to upstream");
    });
    println!("write pause while replacing replica pg0: {gap:?}");
    let gap = m.with_writer(|m| {
        m.switchover(0, "ours -> upstream");
        m.check("switchover to upstream pg0");
    });
    figure("ours pg2 -> upstream pg0", gap);
    let gap = m.with_writer(|m| {
        m.replace(1, Upstream);
        m.check("pg1 back to upstream");
        m.replace(2, Upstream);
        m.check("pg2 back to upstream");
    });
    println!("write pause while replacing replicas pg1, pg2: {gap:?}");
    assert_eq!(m.kinds, vec![Upstream; 3]);
    println!("acknowledged writes checked: {}", m.acked.len());
}

/// failover_priority tags make the race deterministic on an idle cluster (equal WAL
/// positions): pg0 leads first, then pg2 (2) beats pg1 (1); after pg2 dies pg0 (3) beats pg1.
fn priorities(i: usize, v: &mut serde_yaml_ng::Value) {
    let prio = [3, 1, 2][i];
    v["tags"] = serde_yaml_ng::from_str(&format!("{{failover_priority: {prio}}}")).unwrap();
}

/// kill -9 of the leader's daemon: `winner` must take over and the other replica follow
/// it. The orphaned postmaster then takes one write that nobody else has (a diverged
/// timeline) before it is killed too, so the killed node can only rejoin, as the same kind,
/// through pg_rewind.
fn kill_leader(m: &mut MixedCluster, leader: usize, winner: usize, step: &str) {
    assert_eq!(m.c.wait_primary(Duration::from_secs(60)), leader);
    m.with_writer(|_| {});
    // Caught up and idle, so the race is decided by the priorities.
    m.check(&format!("{step}: before kill"));
    let other = (0..3).find(|&i| i != leader && i != winner).unwrap();
    let gap = m.with_writer(|m| {
        m.c.kill_daemon(leader, false);
        eventually(
            Duration::from_secs(180),
            &format!("{step}: {} to win the race", m.name(winner)),
            || (m.c.primary() == Some(winner)).then_some(()),
        );
        eventually(
            Duration::from_secs(180),
            &format!("{step}: {} to follow the new leader", m.name(other)),
            || m.c.is_streaming(other).then_some(()),
        );
    });
    println!(
        "FIGURE write pause after kill -9 of leader {} ({:?}), new leader {} ({:?}): {gap:?}",
        m.name(leader),
        m.kinds[leader],
        m.name(winner),
        m.kinds[winner]
    );
    let old = m.c.nodes[leader].pg_port;
    let diverged = -(leader as i64) - 1;
    psql(
        old,
        &format!("INSERT INTO t VALUES ({diverged}); CHECKPOINT"),
    )
    .unwrap();
    m.c.kill_daemon(leader, true);
    m.start(leader);
    let p = m.check(&format!("{step}: {} rejoined", m.name(leader)));
    assert_eq!(
        p, winner,
        "{step}: the rejoined node took the leadership back"
    );
    let rows = psql(
        old,
        &format!("SELECT count(*) FROM t WHERE id = {diverged}"),
    )
    .unwrap();
    assert_eq!(rows, "0", "{step}: the diverged write survived the rejoin");
    let log = m.c.log_of(leader).to_lowercase();
    assert!(log.contains("rewind"), "{step}: no pg_rewind in the log");
}

#[test]
fn kill_leader_race_across_kinds() {
    let _s = support::serial();
    let mut m = MixedCluster::new(&[Upstream, Upstream, Ours], priorities);
    m.bootstrap();
    // 2 upstream + 1 ours: ours (priority 2) must win over upstream pg1 (priority 1).
    kill_leader(&mut m, 0, 2, "2 upstream + 1 ours");
    // 1 upstream + 2 ours: upstream pg0 (priority 3) must win over ours pg1 (priority 1).
    m.replace(1, Ours);
    m.check("pg1 replaced by ours");
    kill_leader(&mut m, 2, 0, "1 upstream + 2 ours");
}

/// The leader's synchronous standby is `standby` everywhere: the /sync key, the leader's
/// synchronous_standby_names and pg_stat_replication, upstream patronictl's Role.
fn sync_pair(m: &MixedCluster, leader: usize, standby: usize, step: &str) {
    let (l, s) = (m.name(leader), m.name(standby));
    let long = Duration::from_secs(120);
    eventually(long, &format!("{step}: /sync names {l} and {s}"), || {
        let key = m.dcs_get("sync");
        (key["leader"] == l.as_str() && key["sync_standby"] == s.as_str()).then_some(())
    });
    let port = m.c.nodes[leader].pg_port;
    eventually(long, &format!("{step}: {s} streams synchronously"), || {
        let sql =
            format!("SELECT sync_state FROM pg_stat_replication WHERE application_name = '{s}'");
        (psql(port, &sql).ok()? == "sync").then_some(())
    });
    eventually(
        long,
        &format!("{step}: patronictl shows {s} as Sync Standby"),
        || (m.list_rows()[&s]["Role"] == "Sync Standby").then_some(()),
    );
    println!(
        "{step}: sync standby {s} ({:?}) of {l} ({:?})",
        m.kinds[standby], m.kinds[leader]
    );
}

/// Synchronous replication with the sync standby of the other kind, both ways round, and a
/// dynamic configuration change (a reloadable and a restart-only parameter) made with
/// upstream's patronictl and applied by both kinds.
#[test]
fn sync_standby_and_dynamic_config_across_kinds() {
    let _s = support::serial();
    let mut m = MixedCluster::new(&[Upstream, Ours], |_, _| {});
    m.bootstrap();
    let set = |args: &[&str]| {
        let mut all = vec!["edit-config", "--force"];
        all.extend_from_slice(args);
        theirs(&m.ctl, &all, "").ok();
    };
    set(&["-s", "synchronous_mode=true"]);
    sync_pair(&m, 0, 1, "upstream leader");
    let gap = m.with_writer(|m| {
        m.switchover(1, "sync upstream -> ours");
        m.check("sync switchover to ours pg1");
    });
    figure("(synchronous_mode) upstream pg0 -> ours pg1", gap);
    sync_pair(&m, 1, 0, "ours leader");

    let set = |args: &[&str]| {
        let mut all = vec!["edit-config", "--force"];
        all.extend_from_slice(args);
        theirs(&m.ctl, &all, "").ok();
    };
    set(&["-p", "work_mem=7MB", "-p", "max_connections=60"]);
    for i in 0..2 {
        let (name, port) = (m.name(i), m.c.nodes[i].pg_port);
        eventually(
            Duration::from_secs(60),
            &format!("{name} applies work_mem"),
            || (psql(port, "SHOW work_mem").ok()? == "7MB").then_some(()),
        );
        eventually(
            Duration::from_secs(60),
            &format!("{name} pending restart"),
            || m.status(i)["pending_restart"].as_bool()?.then_some(()),
        );
        // /patroni answers at once; the member key patronictl reads follows on the node's
        // next loop (an upstream node writes it up to loop_wait later).
        eventually(
            Duration::from_secs(60),
            &format!("patronictl shows a pending restart for {name}"),
            || {
                let row = m.list_rows()[&name].clone();
                let pending = &row["Pending restart"];
                (!matches!(pending, serde_json::Value::Null) && *pending != "").then_some(())
            },
        );
    }
    m.check("after the dynamic config change");
}

/// Inserts into `t` on `port` every 200 ms for `dur`, each with a fresh id; returns the
/// acknowledged ids and the failures (when, why).
fn write_for(port: u16, dur: Duration, id: &mut i64) -> (Vec<i64>, Vec<(Duration, String)>) {
    let t0 = Instant::now();
    let (mut acked, mut failed) = (vec![], vec![]);
    while t0.elapsed() < dur {
        *id += 1;
        match psql_within(
            port,
            &format!("INSERT INTO t VALUES ({id})"),
            Duration::from_secs(3),
        ) {
            Ok(_) => acked.push(*id),
            Err(e) => failed.push((t0.elapsed(), e)),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    (acked, failed)
}

/// No node runs as a primary (checked on each PostgreSQL that answers).
fn no_primary(m: &MixedCluster, step: &str) {
    for i in 0..m.kinds.len() {
        let r = psql(m.c.nodes[i].pg_port, "SELECT pg_is_in_recovery()");
        assert_ne!(
            r.as_deref(),
            Ok("f"),
            "{step}: {} ({:?}) runs as a primary without the DCS",
            m.name(i),
            m.kinds[i]
        );
    }
}

/// etcd down for `OUTAGE` with leader `p` writing: every write is accepted, no replica of
/// either kind promotes.
fn outage_keeps_leader(m: &mut MixedCluster, p: usize, id: &mut i64, step: &str) {
    const OUTAGE: Duration = Duration::from_secs(30);
    m.c.etcd.stop();
    let (acked, failed) = write_for(m.c.nodes[p].pg_port, OUTAGE, id);
    println!(
        "FIGURE failsafe across kinds, {step}: {}/{} writes accepted on {} ({:?}) during {OUTAGE:?} of etcd outage (ttl {})",
        acked.len(),
        acked.len() + failed.len(),
        m.name(p),
        m.kinds[p],
        FAST.ttl
    );
    assert!(failed.is_empty(), "{step}: writes refused: {failed:?}");
    no_primary_but(m, p, step);
    m.acked.extend(acked);
}

fn no_primary_but(m: &MixedCluster, p: usize, step: &str) {
    for i in (0..m.kinds.len()).filter(|&i| i != p) {
        assert_eq!(
            psql(m.c.nodes[i].pg_port, "SELECT pg_is_in_recovery()").as_deref(),
            Ok("t"),
            "{step}: {} ({:?}) promoted without the DCS",
            m.name(i),
            m.kinds[i]
        );
    }
}

/// failsafe_mode with both kinds answering each other's POST /failsafe: an upstream leader
/// and then ours keep accepting writes through an etcd outage longer than ttl; a switchover
/// right after the outage is not held up by the old leader's outage-time pings; when an
/// upstream member's daemon dies during an outage our leader stops accepting writes, and
/// nobody promotes without the DCS.
#[test]
fn failsafe_mode_across_kinds() {
    let _s = support::serial();
    let mut m = MixedCluster::new(&[Upstream, Ours, Upstream], |_, _| {});
    m.bootstrap();
    let (code, body) = http(
        "PATCH",
        m.c.nodes[0].api_port,
        "/config",
        Some(&serde_json::json!({"failsafe_mode": true})),
    );
    assert_eq!(code, 200, "{body}");
    // Both kinds serve the same `failsafe` key (written by the upstream leader).
    let key = eventually(Duration::from_secs(60), "failsafe key, 3 members", || {
        let (s, v) = http_get_json(m.c.nodes[0].api_port, "/failsafe")?;
        (s == 200 && v.as_object()?.len() == 3).then_some(v)
    });
    eventually(Duration::from_secs(60), "ours serves the same key", || {
        let (s, v) = http_get_json(m.c.nodes[1].api_port, "/failsafe")?;
        (s == 200 && v == key).then_some(())
    });
    let mut id = 1_000_000;

    // Upstream leader, replicas of both kinds.
    outage_keeps_leader(&mut m, 0, &mut id, "upstream leader pg0");
    assert!(
        m.c.log_of(0).contains("Got response from pg1"),
        "upstream pg0 did not get our pg1's answer to POST /failsafe"
    );
    let from = m.c.log_of(1).len();
    m.c.etcd.restart();
    let etcd_back = Instant::now();
    // Once our pg1 has seen pg0's leader key again, pg0's pings from the outage (still
    // younger than ttl) must not hold back pg1 as a switchover candidate.
    let seen = eventually(
        Duration::from_secs(60),
        "ours pg1 follows pg0 again",
        || {
            let log = m.c.log_of(1);
            log[from..]
                .find("following a leader (pg0)")
                .map(|at| from + at)
        },
    );
    let body = serde_json::json!({"leader": "pg0", "candidate": "pg1"});
    // Upstream answers POST /switchover when the switchover is over.
    let (asked, took) = eventually(Duration::from_secs(60), "switchover done", || {
        let t = Instant::now();
        let (code, _) = http("POST", m.c.nodes[0].api_port, "/switchover", Some(&body));
        (code == 200).then(|| (t, t.elapsed()))
    });
    eventually(Duration::from_secs(60), "ours pg1 leads", || {
        (m.c.primary() == Some(1)).then_some(())
    });
    println!(
        "FIGURE failsafe across kinds: switchover upstream pg0 -> ours pg1, {:.1} s after etcd came back, took {took:?}",
        (asked - etcd_back).as_secs_f64()
    );
    let after = m.c.log_of(1)[seen..].to_string();
    assert!(
        !after.contains("contacted me through POST /failsafe"),
        "the candidate honoured the old leader's outage-time ping: {after}"
    );
    assert!(
        took < Duration::from_secs(FAST.ttl),
        "the switchover took {took:?}"
    );
    m.check("switched over to ours after the outage");

    // Our leader, upstream replicas.
    outage_keeps_leader(&mut m, 1, &mut id, "ours leader pg1");
    // etcd still down: an upstream replica's daemon dies (its PostgreSQL keeps running).
    m.c.kill_daemon(2, false);
    let t = Instant::now();
    let refusal = eventually(
        Duration::from_secs(FAST.ttl + 10),
        "our leader stops accepting writes",
        || {
            id += 1;
            psql_within(
                m.c.nodes[1].pg_port,
                &format!("INSERT INTO t VALUES ({id})"),
                Duration::from_secs(3),
            )
            .err()
        },
    );
    let took = t.elapsed();
    println!(
        "FIGURE failsafe across kinds: ours pg1 stopped accepting writes {took:?} after upstream pg2's daemon died (etcd down, ttl {}, retry_timeout {}): {refusal}",
        FAST.ttl, FAST.retry_timeout
    );
    assert!(
        took < Duration::from_secs(FAST.ttl),
        "our leader kept accepting writes for {took:?}"
    );
    // Past ttl since the last POST /failsafe: still nobody promotes without the DCS.
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(FAST.ttl + 2) {
        no_primary(&m, "after our leader demoted");
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(
        m.c.log_of(1).contains("pg0 accepted"),
        "ours pg1 did not get upstream pg0's answer to POST /failsafe"
    );
    eventually(Duration::from_secs(10), "the reason in our log", || {
        m.c.log_of(1).contains("pg2 did not answer").then_some(())
    });
}
