//! The 3-node failover scenario on the other stores: etcd through its v2 API and a real
//! ZooKeeper, with our `patroni` daemon, PostgreSQL 15 and HAProxy. Run under the
//! machine-wide cluster lock (`PATRONI_TEST_LOCK=/tmp/patroni-tests.lock cargo test --test dcs_failover`).
mod support;

use std::time::{Duration, Instant};
use support::cluster::{Cluster, DcsKind, FAST, psql};
use support::eventually;

use support::serial;

fn write(c: &Cluster, id: i64) -> Result<String, String> {
    psql(
        c.ha_primary_port,
        &format!("INSERT INTO t VALUES ({id}) RETURNING id"),
    )
}

fn rows_on(c: &Cluster, i: usize) -> Option<String> {
    psql(c.nodes[i].pg_port, "SELECT count(*) FROM t").ok()
}

/// Bootstrap 3 nodes, kill -9 the primary (daemon and postmaster), expect writes through
/// HAProxy on a new primary within ttl + 2*loop_wait, then the old primary to rejoin.
fn kill9_failover_and_rejoin(dcs: DcsKind) {
    let mut c = Cluster::with_dcs(3, &FAST, dcs);
    c.start_all();
    c.start_haproxy();
    c.wait_primary(Duration::from_secs(90));
    eventually(Duration::from_secs(120), "two streaming replicas", || {
        ((0..3).filter(|&i| c.is_streaming(i)).count() == 2).then_some(())
    });
    eventually(Duration::from_secs(30), "table", || {
        psql(c.ha_primary_port, "CREATE TABLE t (id int primary key)").ok()
    });
    write(&c, 1).unwrap();
    let old = c.primary().unwrap();
    let cl = support::cluster::http_get_json(c.nodes[old].api_port, "/cluster")
        .unwrap()
        .1;
    assert_eq!(cl["members"].as_array().map(|m| m.len()), Some(3), "{cl}");

    let killed_at = Instant::now();
    c.kill_daemon(old, true);
    let budget = Duration::from_secs(FAST.ttl + 2 * FAST.loop_wait);
    eventually(budget, "writes through HAProxy after failover", || {
        write(&c, 2).ok()
    });
    eprintln!(
        "FIGURE failover_kill9_write_pause_s[{dcs:?}]={:.1}",
        killed_at.elapsed().as_secs_f64()
    );
    let new = c.wait_primary(Duration::from_secs(10));
    assert_ne!(new, old);
    write(&c, 3).unwrap();

    c.start(old);
    eventually(
        Duration::from_secs(120),
        "old primary streams again",
        || c.is_streaming(old).then_some(()),
    );
    eventually(Duration::from_secs(60), "3 rows on the old primary", || {
        (rows_on(&c, old)? == "3").then_some(())
    });
    if dcs == DcsKind::Etcd2 {
        upstream_patronictl_lists(&c, new);
    }
}

/// Upstream patronictl (its venv has the etcd v2 client) reads our keys: three
/// members, `leader` the new primary, two streaming replicas.
fn upstream_patronictl_lists(c: &Cluster, leader: usize) {
    let venv = std::process::Command::new("scripts/upstream-venv.sh")
        .output()
        .expect("upstream venv script");
    assert!(
        venv.status.success(),
        "creating the upstream venv failed: {}",
        String::from_utf8_lossy(&venv.stderr)
    );
    let ctl = String::from_utf8_lossy(&venv.stdout).trim().to_string();
    let cfg = c.nodes[leader].config.to_str().unwrap().to_string();
    eventually(Duration::from_secs(60), "upstream patronictl list", || {
        let out = std::process::Command::new(&ctl)
            .args(["-c", &cfg, "list", "-f", "json"])
            .output()
            .ok()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let rows = v.as_array()?;
        let leader_ok = rows
            .iter()
            .any(|r| r["Role"] == "Leader" && r["Member"] == c.nodes[leader].name.as_str());
        let streaming = rows
            .iter()
            .filter(|r| r["Role"] == "Replica" && r["State"] == "streaming")
            .count();
        (rows.len() == 3 && leader_ok && streaming == 2).then_some(())
    });
}

#[test]
fn etcd2_kill9_of_primary_fails_over_and_old_primary_rejoins() {
    let _s = serial();
    kill9_failover_and_rejoin(DcsKind::Etcd2);
}

#[test]
fn zookeeper_kill9_of_primary_fails_over_and_old_primary_rejoins() {
    let _s = serial();
    kill9_failover_and_rejoin(DcsKind::ZooKeeper);
}
