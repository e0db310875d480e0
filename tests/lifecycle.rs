//! Cluster lifecycle on real etcd + PostgreSQL 15: callback scripts, member tags
//! (replicatefrom, noloadbalance), the pre_promote fencing script, and pause/resume with a
//! dead primary. Set `PATRONI_TEST_LOCK=/tmp/patroni-tests.lock` to share the machine with other runs.
mod support;

use serde_json::{Value, json};
use std::time::Duration;
use support::cluster::{Cluster, FAST, http, http_status, psql};
use support::eventually;

use support::serial;

fn yaml(v: Value) -> serde_yaml_ng::Value {
    serde_yaml_ng::to_value(v).unwrap()
}

fn set_pg_key(c: &Cluster, i: usize, key: &str, v: Value) {
    c.edit_config(i, |y| y["postgresql"][key] = yaml(v));
}

fn set_tags(c: &Cluster, i: usize, tags: Value) {
    c.edit_config(i, |y| y["tags"] = yaml(tags));
}

/// Wait until node `i` streams from the node listening on `port` (pg_stat_wal_receiver).
fn streams_from(c: &Cluster, i: usize, port: u16, what: &str) {
    eventually(Duration::from_secs(120), what, || {
        let p = psql(
            c.nodes[i].pg_port,
            "SELECT sender_port FROM pg_stat_wal_receiver WHERE status = 'streaming'",
        )
        .ok()?;
        (p == port.to_string()).then_some(())
    });
}

fn other(p: usize) -> usize {
    1 - p
}

#[test]
fn callback_scripts_see_start_reload_and_role_changes() {
    let _s = serial();
    let mut c = Cluster::new(2, &FAST);
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/callbacks/log_event.sh"
    );
    let script = c.dir.join("log_event.sh");
    std::fs::copy(example, &script).unwrap();
    for i in 0..2 {
        // Each node logs to its own file through a wrapper that sets the example's variable.
        let log = c.dir.join(&format!("callbacks-pg{i}.log"));
        let wrapper = c.dir.join(&format!("cb-pg{i}.sh"));
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nPATRONI_CALLBACK_LOG={} exec {} \"$@\"\n",
                log.display(),
                script.display()
            ),
        )
        .unwrap();
        std::process::Command::new("chmod")
            .args(["755", wrapper.to_str().unwrap(), script.to_str().unwrap()])
            .status()
            .unwrap();
        let w = wrapper.to_str().unwrap();
        let cbs: serde_json::Map<String, Value> = [
            "on_start",
            "on_stop",
            "on_restart",
            "on_reload",
            "on_role_change",
        ]
        .iter()
        .map(|a| (a.to_string(), json!(w)))
        .collect();
        set_pg_key(&c, i, "callbacks", Value::Object(cbs));
    }
    c.start_all();
    let logs: Vec<_> = (0..2)
        .map(|i| c.dir.join(&format!("callbacks-pg{i}.log")))
        .collect();
    let scope = c.scope.clone();
    let events = |i: usize| std::fs::read_to_string(&logs[i]).unwrap_or_default();
    let saw = |i: usize, what: &str| {
        let line = format!("{what} {scope}");
        eventually(Duration::from_secs(90), &format!("pg{i}: {line}"), || {
            events(i).contains(&line).then_some(())
        })
    };
    let p = c.wait_primary(Duration::from_secs(90));
    let r = other(p);
    saw(p, "on_start primary");
    saw(r, "on_start replica");

    // A reloadable parameter through the dynamic config: both nodes reload.
    let (code, body) = http(
        "PATCH",
        c.nodes[p].api_port,
        "/config",
        Some(&json!({"postgresql": {"parameters": {"work_mem": "5MB"}}})),
    );
    assert_eq!(code, 200, "{body}");
    saw(p, "on_reload primary");
    saw(r, "on_reload replica");

    // A switchover: the old primary stops and comes back as a replica, the candidate is
    // promoted.
    eventually(Duration::from_secs(60), "replica streaming", || {
        c.is_streaming(r).then_some(())
    });
    let body = json!({"leader": c.nodes[p].name, "candidate": c.nodes[r].name});
    let (code, text) = http("POST", c.nodes[p].api_port, "/switchover", Some(&body));
    assert_eq!(code, 200, "{text}");
    saw(r, "on_role_change primary");
    saw(p, "on_stop primary");
    saw(p, "on_role_change replica");
}

#[test]
fn replicatefrom_cascades_and_falls_back_to_the_leader_and_noloadbalance_hides_a_replica() {
    let _s = serial();
    let mut c = Cluster::new(3, &FAST);
    c.start(0);
    c.start(1);
    let p = c.wait_primary(Duration::from_secs(90));
    let mid = other(p);
    eventually(Duration::from_secs(120), "first replica streaming", || {
        c.is_streaming(mid).then_some(())
    });
    let mid_name = c.nodes[mid].name.clone();
    set_tags(
        &c,
        2,
        json!({"replicatefrom": mid_name, "noloadbalance": true}),
    );
    c.start(2);
    streams_from(
        &c,
        2,
        c.nodes[mid].pg_port,
        "pg2 streams from the intermediate replica",
    );
    // noloadbalance: a healthy replica that load balancers must skip.
    assert_eq!(http_status(c.nodes[2].api_port, "/replica"), Some(503));
    assert_eq!(http_status(c.nodes[mid].api_port, "/replica"), Some(200));
    assert_eq!(http_status(c.nodes[2].api_port, "/health"), Some(200));

    // Data written on the primary reaches the end of the chain.
    psql(
        c.nodes[p].pg_port,
        "CREATE TABLE cascade_t AS SELECT 7 AS v",
    )
    .unwrap();
    eventually(Duration::from_secs(60), "row on pg2", || {
        (psql(c.nodes[2].pg_port, "SELECT v FROM cascade_t").ok()? == "7").then_some(())
    });

    // The intermediate goes away (its member key expires): pg2 follows the leader.
    c.kill_daemon(mid, true);
    streams_from(
        &c,
        2,
        c.nodes[p].pg_port,
        "pg2 streams from the leader after the intermediate is gone",
    );
    assert_eq!(c.primary(), Some(p), "no failover happened");
}

#[test]
fn a_failing_pre_promote_script_stops_the_failover_until_it_succeeds() {
    let _s = serial();
    let mut c = Cluster::new(2, &FAST);
    c.start(0);
    assert_eq!(c.wait_primary(Duration::from_secs(90)), 0);
    set_pg_key(&c, 1, "pre_promote", json!("/bin/false"));
    c.start(1);
    eventually(Duration::from_secs(120), "pg1 streaming", || {
        c.is_streaming(1).then_some(())
    });
    c.kill_daemon(0, true);
    eventually(
        Duration::from_secs(90),
        "pre_promote refusal in the log",
        || {
            let log = c.log_of(1);
            (log.contains("Promotion cancelled because the pre-promote script failed")
                && log.contains("backoff: skip leader race after pre_promote script failure"))
            .then_some(())
        },
    );
    // Fencing failed: pg1 stays a standby.
    assert_eq!(
        psql(c.nodes[1].pg_port, "SELECT pg_is_in_recovery()").unwrap(),
        "t"
    );
    // The operator fixes the fencing and reloads: the failover goes ahead.
    set_pg_key(&c, 1, "pre_promote", json!("/bin/true"));
    c.signal_daemon(1, nix::sys::signal::Signal::SIGHUP);
    eventually(Duration::from_secs(90), "pg1 promoted", || {
        (psql(c.nodes[1].pg_port, "SELECT pg_is_in_recovery()").ok()? == "f").then_some(())
    });
    assert_eq!(c.wait_primary(Duration::from_secs(30)), 1);
}

#[test]
fn paused_cluster_does_not_fail_over_keeps_postgres_on_daemon_stop_and_resumes_cleanly() {
    let _s = serial();
    let mut c = Cluster::new(2, &FAST);
    c.start_all();
    let p = c.wait_primary(Duration::from_secs(90));
    let r = other(p);
    eventually(Duration::from_secs(120), "replica streaming", || {
        c.is_streaming(r).then_some(())
    });
    let (code, body) = http(
        "PATCH",
        c.nodes[p].api_port,
        "/config",
        Some(&json!({"pause": true})),
    );
    assert_eq!(code, 200, "{body}");
    eventually(Duration::from_secs(30), "both nodes paused", || {
        (0..2)
            .all(|i| c.patroni(i).and_then(|v| v.get("pause")?.as_bool()) == Some(true))
            .then_some(())
    });
    assert_eq!(http_status(c.nodes[p].api_port, "/liveness"), Some(200));

    // Stopping the replica's daemon leaves its PostgreSQL running.
    let replica_pm = c.postmaster_pid(r).expect("replica postmaster");
    c.sigterm_daemon(r);
    eventually(Duration::from_secs(30), "replica daemon gone", || {
        (http_status(c.nodes[r].api_port, "/liveness").is_none()).then_some(())
    });
    assert_eq!(
        c.postmaster_pid(r),
        Some(replica_pm),
        "postgres kept running"
    );
    c.start(r);

    // Kill the primary's PostgreSQL: no failover, no restart by the daemon.
    c.kill_daemon(p, false);
    let pm = c.postmaster_pid(p).expect("primary postmaster");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pm),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    c.start(p);
    let quiet_until = std::time::Instant::now() + Duration::from_secs(FAST.ttl * 2);
    while std::time::Instant::now() < quiet_until {
        assert_eq!(
            psql(c.nodes[r].pg_port, "SELECT pg_is_in_recovery()").as_deref(),
            Ok("t"),
            "the replica must not be promoted while paused"
        );
        assert!(
            c.postmaster_pid(p).is_none(),
            "postgres started while paused"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(c.log_of(p).contains("PAUSE"), "{}", c.log_of(p));

    // Resume: one primary, the other node rejoins as its replica.
    let (code, body) = http(
        "PATCH",
        c.nodes[r].api_port,
        "/config",
        Some(&json!({"pause": false})),
    );
    assert_eq!(code, 200, "{body}");
    let np = c.wait_primary(Duration::from_secs(120));
    eventually(
        Duration::from_secs(180),
        "the other node streams again",
        || c.is_streaming(other(np)).then_some(()),
    );
}
