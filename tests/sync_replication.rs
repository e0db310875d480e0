//! Synchronous replication under faults on a real cluster: a writer records every
//! acknowledged id through HAProxy while the primary is killed (-9) or frozen (SIGSTOP of
//! its daemon longer than ttl), round after round. In synchronous mode the final primary
//! must hold every acknowledged id; the asynchronous figure is printed beside it. The fault
//! rounds run at the fast-failover profile (ttl 6 / loop_wait 1 / retry_timeout 2), which
//! they also validate.
mod support;

use nix::sys::signal::Signal;
use serde_json::{Value, json};
use std::time::Duration;
use support::cluster::{Cluster, FAST, QUICK, Timing, Writer, http_get_json, psql, psql_within};
use support::eventually;

use support::serial;

fn cluster_with(n: usize, t: &Timing, dcs: Value) -> Cluster {
    let mut c = Cluster::new(n, t);
    for i in 0..n {
        c.edit_config(i, |v| {
            for (k, val) in dcs.as_object().unwrap() {
                v["bootstrap"]["dcs"][k.as_str()] = serde_yaml_ng::to_value(val).unwrap();
            }
        });
    }
    c.start_all();
    c.start_haproxy();
    c.wait_primary(Duration::from_secs(90));
    eventually(Duration::from_secs(120), "all replicas streaming", || {
        ((0..n).filter(|&i| c.is_streaming(i)).count() == n - 1).then_some(())
    });
    eventually(Duration::from_secs(30), "table", || {
        psql(
            c.ha_primary_port,
            "CREATE TABLE IF NOT EXISTS t (id int primary key)",
        )
        .ok()
    });
    c
}

/// Members /cluster lists as synchronous (or quorum) standbys.
fn sync_standbys(c: &Cluster) -> usize {
    (0..c.nodes.len())
        .filter_map(|i| http_get_json(c.nodes[i].api_port, "/cluster"))
        .map(|(_, v)| {
            v["members"]
                .as_array()
                .map(|m| {
                    m.iter()
                        .filter(|m| {
                            matches!(m["role"].as_str(), Some("sync_standby" | "quorum_standby"))
                        })
                        .count()
                })
                .unwrap_or(0)
        })
        .max()
        .unwrap_or(0)
}

fn ids_on(c: &Cluster, i: usize) -> Vec<i64> {
    psql(c.nodes[i].pg_port, "SELECT id FROM t ORDER BY id")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect()
}

/// Runs `rounds` faults and returns (lost acknowledged writes, acknowledged writes).
fn fault_rounds(c: &mut Cluster, t: &Timing, rounds: usize, wait_sync: bool) -> (usize, usize) {
    let n = c.nodes.len();
    let ready = |c: &Cluster| {
        eventually(Duration::from_secs(120), "replicas streaming", || {
            ((0..n).filter(|&i| c.is_streaming(i)).count() == n - 1).then_some(())
        });
        if wait_sync {
            eventually(Duration::from_secs(60), "a synchronous standby", || {
                (sync_standbys(c) >= 1).then_some(())
            });
        }
    };
    ready(c);
    let writer = Writer::start(c.ha_primary_port, 1);
    for round in 0..rounds {
        std::thread::sleep(Duration::from_secs(2));
        let p = c.wait_primary(Duration::from_secs(60));
        if round % 2 == 0 {
            c.kill_daemon(p, true);
            eventually(Duration::from_secs(t.ttl + 40), "a new primary", || {
                c.primary().filter(|&q| q != p)
            });
            c.start(p);
        } else {
            c.signal_daemon(p, Signal::SIGSTOP);
            std::thread::sleep(Duration::from_secs(t.ttl + 5));
            eventually(Duration::from_secs(40), "a new primary", || {
                c.primary().filter(|&q| q != p)
            });
            c.signal_daemon(p, Signal::SIGCONT);
        }
        ready(c);
    }
    std::thread::sleep(Duration::from_secs(2));
    let acks = writer.finish();
    let p = c.wait_primary(Duration::from_secs(60));
    let on_primary = ids_on(c, p);
    // Replicas converge to the primary's content.
    for i in (0..n).filter(|&i| i != p) {
        eventually(
            Duration::from_secs(60),
            "replica has the primary's rows",
            || (ids_on(c, i) == on_primary).then_some(()),
        );
    }
    let present: std::collections::HashSet<i64> = on_primary.into_iter().collect();
    let lost = acks.iter().filter(|a| !present.contains(&a.0)).count();
    (lost, acks.len())
}

/// Fault rounds per synchronous-mode scenario: 10 by default (the bar);
/// `SYNC_FAULT_ROUNDS` lowers it where time is short (CI).
fn sync_rounds() -> usize {
    std::env::var("SYNC_FAULT_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10)
        .max(1)
}

#[test]
fn synchronous_mode_loses_no_acknowledged_write_across_faults() {
    let _s = serial();
    let mut c = cluster_with(3, &QUICK, json!({"synchronous_mode": true}));
    let rounds = sync_rounds();
    let (lost, acked) = fault_rounds(&mut c, &QUICK, rounds, true);
    eprintln!(
        "FIGURE sync_mode_lost_acknowledged_writes={lost} acknowledged={acked} rounds={rounds}"
    );
    assert_eq!(lost, 0, "synchronous mode lost acknowledged writes");
    assert!(acked > 20 * rounds, "the writer made progress: {acked}");
}

#[test]
fn asynchronous_mode_figure_for_comparison() {
    let _s = serial();
    let mut c = cluster_with(3, &QUICK, json!({}));
    let (lost, acked) = fault_rounds(&mut c, &QUICK, 2, false);
    // Upstream documents that asynchronous mode may lose acknowledged commits; report it.
    eprintln!("FIGURE async_mode_lost_acknowledged_writes={lost} acknowledged={acked} rounds=2");
    assert!(acked > 30, "the writer made progress: {acked}");
}

#[test]
fn strict_mode_blocks_writes_when_the_only_standby_is_gone() {
    let _s = serial();
    let mut c = cluster_with(
        2,
        &FAST,
        json!({"synchronous_mode": true, "synchronous_mode_strict": true}),
    );
    eventually(Duration::from_secs(60), "a synchronous standby", || {
        (sync_standbys(&c) >= 1).then_some(())
    });
    let p = c.primary().unwrap();
    let r = 1 - p;
    psql(c.nodes[p].pg_port, "INSERT INTO t VALUES (1)").unwrap();
    c.kill_daemon(r, true);
    // Give the leader a few cycles to notice; it must fall back to '*', never to async.
    std::thread::sleep(Duration::from_secs(3 * FAST.loop_wait));
    let w = psql_within(
        c.nodes[p].pg_port,
        "INSERT INTO t VALUES (2)",
        Duration::from_secs(5),
    );
    assert!(
        w.is_err(),
        "a write was acknowledged with no synchronous standby: {w:?}"
    );
    assert_eq!(
        psql(c.nodes[p].pg_port, "SHOW synchronous_standby_names").unwrap(),
        "*"
    );
    c.start(r);
    eventually(Duration::from_secs(60), "writes acknowledged again", || {
        psql_within(
            c.nodes[p].pg_port,
            "INSERT INTO t VALUES (3)",
            Duration::from_secs(5),
        )
        .ok()
    });
}

#[test]
fn quorum_mode_loses_no_acknowledged_write_across_faults() {
    let _s = serial();
    let mut c = cluster_with(
        3,
        &QUICK,
        json!({"synchronous_mode": "quorum", "synchronous_node_count": 1}),
    );
    let rounds = sync_rounds();
    let (lost, acked) = fault_rounds(&mut c, &QUICK, rounds, true);
    eprintln!(
        "FIGURE quorum_mode_lost_acknowledged_writes={lost} acknowledged={acked} rounds={rounds}"
    );
    assert_eq!(lost, 0, "quorum mode lost acknowledged writes");
    assert!(acked > 20 * rounds, "the writer made progress: {acked}");
}

/// The synchronous state as HAProxy and operators see it: health endpoints per role, a
/// switchover to an asynchronous standby refused, and PATCH /config changing the node count
/// and turning the mode off without a restart.
#[test]
fn sync_state_drives_health_checks_switchover_and_follows_dynamic_config() {
    let _s = serial();
    let c = cluster_with(3, &FAST, json!({"synchronous_mode": true}));
    let api = |i: usize| c.nodes[i].api_port;
    let (p, s, a) = eventually(
        Duration::from_secs(60),
        "one sync, one async standby",
        || {
            let p = c.primary()?;
            let sync: Vec<usize> = (0..3)
                .filter(|&i| i != p)
                .filter(|&i| c.patroni(i).is_some_and(|v| v["sync_standby"] == true))
                .collect();
            (sync.len() == 1).then(|| (p, sync[0], 3 - p - sync[0]))
        },
    );
    let status = |i: usize, path: &str| support::cluster::http_status(api(i), path);
    assert_eq!(status(s, "/synchronous"), Some(200));
    assert_eq!(status(s, "/read-only-sync"), Some(200));
    assert_eq!(status(s, "/asynchronous"), Some(503));
    assert_eq!(status(a, "/asynchronous"), Some(200));
    assert_eq!(status(a, "/synchronous"), Some(503));
    assert_eq!(status(a, "/read-only-sync"), Some(503));

    let switchover = |to: usize| {
        let body = json!({"leader": c.nodes[p].name, "candidate": c.nodes[to].name});
        support::cluster::http("POST", api(p), "/switchover", Some(&body))
    };
    let (code, body) = switchover(a);
    assert_eq!(code, 412, "switchover to an async standby: {body}");
    assert_eq!(c.primary(), Some(p));

    let patch = |v: Value| {
        let (code, body) = support::cluster::http("PATCH", api(p), "/config", Some(&v));
        assert_eq!(code, 200, "PATCH /config {v}: {body}");
    };
    patch(json!({"synchronous_node_count": 2}));
    eventually(Duration::from_secs(60), "two synchronous standbys", || {
        let ssn = psql(c.nodes[p].pg_port, "SHOW synchronous_standby_names").ok()?;
        (ssn.starts_with("2 (") && sync_standbys(&c) == 2).then_some(())
    });

    patch(json!({"synchronous_mode": false, "synchronous_node_count": 1}));
    eventually(Duration::from_secs(60), "asynchronous again", || {
        let ssn = psql(c.nodes[p].pg_port, "SHOW synchronous_standby_names").ok()?;
        (ssn.is_empty() && sync_standbys(&c) == 0).then_some(())
    });
    let (code, body) = switchover(a);
    assert_eq!(code, 200, "switchover once asynchronous: {body}");
    eventually(
        Duration::from_secs(60),
        "the former async standby leads",
        || (c.primary() == Some(a)).then_some(()),
    );
}
