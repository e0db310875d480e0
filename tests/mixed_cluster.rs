//! Mixed clusters of upstream Patroni 4.1 nodes and ours (same scope, same etcd v3):
//! the node-by-node migration from 3 upstream nodes to 3 of ours and back with a writer
//! counting acknowledged writes, and kill -9 leader races across kinds.
//! Run under the machine's cluster lock: `PATRONI_TEST_LOCK=/tmp/patroni-tests.lock cargo test --test mixed_cluster`.
mod support;

use std::time::Duration;
use support::cluster::psql;
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
        let row = &m.list_rows()[&name];
        assert!(
            !matches!(&row["Pending restart"], serde_json::Value::Null)
                && row["Pending restart"] != "",
            "patronictl shows no pending restart for {name}: {row}"
        );
    }
    m.check("after the dynamic config change");
}
