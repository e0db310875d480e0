//! End-to-end scenarios on real etcd + PostgreSQL 15 + HAProxy with our `patroni` daemon.
//! They run one at a time (a 3-node cluster is what 2 cores can take).
mod support;

use std::time::{Duration, Instant};
use support::cluster::{Cluster, FAST, psql};
use support::eventually;

use support::serial;

/// The harness writes `allow_short_ttl: true` exactly when a timing is below upstream's
/// floors, and the daemon's own validation accepts the generated file as it is.
#[test]
fn harness_yaml_adds_allow_short_ttl_only_below_upstream_floors() {
    use support::cluster::{QUICK, Timing, node_yaml};
    let dir = support::TestDir::new("timing-yaml");
    let below_rt = Timing {
        ttl: 20,
        loop_wait: 1,
        retry_timeout: 2,
    };
    for (t, short) in [(&FAST, false), (&QUICK, true), (&below_rt, true)] {
        let dcs = "etcd3:\n  hosts: 127.0.0.1:2379\n";
        let yml = node_yaml("pg0", "s", 5432, 8008, dcs, &dir.join("d"), &dir, t);
        assert_eq!(yml.contains("allow_short_ttl: true"), short, "{yml}");
        let cfg = patroni::config::load_str(&yml).expect("loads");
        let issues = patroni::config::validate(&cfg);
        assert!(
            issues.is_empty(),
            "{}/{}/{}: {issues:?}",
            t.ttl,
            t.loop_wait,
            t.retry_timeout
        );
    }
}

/// Bring up 3 nodes + HAProxy and wait for one primary and two streaming replicas.
fn healthy_cluster() -> Cluster {
    let mut c = Cluster::new(3, &FAST);
    c.start_all();
    c.start_haproxy();
    c.wait_primary(Duration::from_secs(90));
    eventually(Duration::from_secs(120), "two streaming replicas", || {
        ((0..3).filter(|&i| c.is_streaming(i)).count() == 2).then_some(())
    });
    c
}

fn write_through_haproxy(c: &Cluster, id: i64) -> Result<String, String> {
    psql(
        c.ha_primary_port,
        &format!("INSERT INTO t VALUES ({id}) RETURNING id"),
    )
}

fn wait_rows_on(c: &Cluster, i: usize, count: i64) {
    let port = c.nodes[i].pg_port;
    eventually(
        Duration::from_secs(60),
        &format!("{count} rows on {}", c.nodes[i].name),
        || (psql(port, "SELECT count(*) FROM t").ok()? == count.to_string()).then_some(()),
    );
}

#[test]
fn three_nodes_bootstrap_and_replicate_through_haproxy() {
    let _s = serial();
    let c = healthy_cluster();
    let p = c.primary().unwrap();
    eventually(Duration::from_secs(30), "HAProxy routes writes", || {
        psql(
            c.ha_primary_port,
            "CREATE TABLE IF NOT EXISTS t (id int primary key)",
        )
        .ok()
    });
    write_through_haproxy(&c, 1).unwrap();
    for i in (0..3).filter(|&i| i != p) {
        wait_rows_on(&c, i, 1);
        assert_eq!(
            psql(c.nodes[i].pg_port, "SELECT pg_is_in_recovery()").unwrap(),
            "t"
        );
    }
    // Reads through :5001 land on a replica.
    let r = eventually(Duration::from_secs(30), "HAProxy routes reads", || {
        psql(c.ha_replica_port, "SELECT pg_is_in_recovery()").ok()
    });
    assert_eq!(r, "t");
    // The leader key names the primary; /cluster lists three members.
    let cl = support::cluster::http_get_json(c.nodes[p].api_port, "/cluster")
        .unwrap()
        .1;
    assert_eq!(cl["members"].as_array().map(|m| m.len()), Some(3), "{cl}");
}

#[test]
fn kill9_of_primary_fails_over_and_old_primary_rejoins() {
    let _s = serial();
    let mut c = healthy_cluster();
    eventually(Duration::from_secs(30), "table", || {
        psql(c.ha_primary_port, "CREATE TABLE t (id int primary key)").ok()
    });
    write_through_haproxy(&c, 1).unwrap();
    let old = c.primary().unwrap();
    let killed_at = Instant::now();
    c.kill_daemon(old, true);
    // The issue's bound: writes succeed again within ttl + 2*loop_wait.
    let budget = Duration::from_secs(FAST.ttl + 2 * FAST.loop_wait);
    eventually(budget, "writes through HAProxy after failover", || {
        write_through_haproxy(&c, 2).ok()
    });
    let pause = killed_at.elapsed();
    eprintln!(
        "FIGURE failover_kill9_write_pause_s={:.1}",
        pause.as_secs_f64()
    );
    let new = c.wait_primary(Duration::from_secs(10));
    assert_ne!(new, old);
    write_through_haproxy(&c, 3).unwrap();
    // The old primary comes back as a replica of the new one (pg_rewind if needed).
    c.start(old);
    eventually(
        Duration::from_secs(120),
        "old primary streams again",
        || c.is_streaming(old).then_some(()),
    );
    wait_rows_on(&c, old, 3);
    // The new leader records the timeline switch in `history` (its next cycle).
    eventually(Duration::from_secs(10), "one history entry", || {
        let h = support::cluster::http_get_json(c.nodes[new].api_port, "/history")?.1;
        (h.as_array()?.len() == 1).then_some(())
    });
}

#[test]
fn etcd_outage_demotes_primary_and_cluster_recovers() {
    let _s = serial();
    let mut c = healthy_cluster();
    let p = c.primary().unwrap();
    c.etcd.stop();
    let stopped = Instant::now();
    // After ttl nobody may accept writes.
    std::thread::sleep(Duration::from_secs(FAST.ttl));
    for i in 0..3 {
        let port = c.nodes[i].pg_port;
        let r = psql(port, "CREATE TABLE IF NOT EXISTS outage (id int)");
        assert!(
            r.is_err(),
            "node {i} accepted a write {:?} after the DCS was gone",
            stopped.elapsed()
        );
    }
    assert_ne!(
        support::cluster::http_status(c.nodes[p].api_port, "/primary"),
        Some(200)
    );
    c.etcd.restart();
    let leader = c.wait_primary(Duration::from_secs(90));
    eventually(
        Duration::from_secs(120),
        "two streaming replicas after the outage",
        || ((0..3).filter(|&i| i != leader && c.is_streaming(i)).count() == 2).then_some(()),
    );
}

#[test]
fn postmaster_crash_restarts_in_place_without_failover() {
    let _s = serial();
    let c = healthy_cluster();
    let p = c.primary().unwrap();
    let hist_before = support::cluster::http_get_json(c.nodes[p].api_port, "/history")
        .unwrap()
        .1;
    let pid = c.postmaster_pid(p).unwrap();
    let t0 = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    eventually(
        Duration::from_secs(30),
        "primary accepts writes again",
        || {
            psql(
                c.nodes[p].pg_port,
                "CREATE TABLE IF NOT EXISTS crash (id int)",
            )
            .ok()
        },
    );
    eprintln!(
        "FIGURE postmaster_crash_recovery_s={:.1}",
        t0.elapsed().as_secs_f64()
    );
    assert_ne!(c.postmaster_pid(p), Some(pid));
    assert_eq!(c.primary(), Some(p), "no failover expected");
    let hist_after = support::cluster::http_get_json(c.nodes[p].api_port, "/history")
        .unwrap()
        .1;
    assert_eq!(hist_before, hist_after);
}

#[test]
fn sigterm_of_primary_hands_over_quickly() {
    let _s = serial();
    let mut c = healthy_cluster();
    let old = c.primary().unwrap();
    let t0 = Instant::now();
    c.sigterm_daemon(old);
    let new = eventually(
        Duration::from_secs(FAST.loop_wait + 15),
        "a new primary after SIGTERM",
        || {
            (0..3).find(|&i| {
                i != old
                    && support::cluster::http_status(c.nodes[i].api_port, "/primary") == Some(200)
            })
        },
    );
    eprintln!(
        "FIGURE sigterm_handover_s={:.1}",
        t0.elapsed().as_secs_f64()
    );
    assert_ne!(new, old);
    // The daemon exits by itself and its PostgreSQL is stopped.
    eventually(Duration::from_secs(30), "old daemon exits", || {
        (!c.nodes[old].daemon.as_mut().unwrap().alive()).then_some(())
    });
    assert!(c.postmaster_pid(old).is_none());
}

#[test]
fn garbage_in_dcs_keys_is_tolerated_and_upstream_patronictl_lists_us() {
    let _s = serial();
    let c = healthy_cluster();
    let p = c.primary().unwrap();
    // Upstream patronictl (pip package in a venv made by scripts/upstream-venv.sh) sees our members.
    let ctl = std::process::Command::new("scripts/upstream-venv.sh")
        .output()
        .expect("upstream venv script");
    assert!(
        ctl.status.success(),
        "creating the upstream venv failed: {}",
        String::from_utf8_lossy(&ctl.stderr)
    );
    let ctl = String::from_utf8_lossy(&ctl.stdout).trim().to_string();
    let list = eventually(
        Duration::from_secs(60),
        "upstream patronictl list with 2 streaming replicas",
        || {
            let out = std::process::Command::new(&ctl)
                .args([
                    "-c",
                    c.nodes[0].config.to_str().unwrap(),
                    "list",
                    "-f",
                    "json",
                ])
                .output()
                .ok()?;
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            let rows = v.as_array()?.clone();
            let streaming = rows
                .iter()
                .filter(|r| r["Role"] == "Replica" && r["State"] == "streaming")
                .count();
            (rows.len() == 3 && streaming == 2).then_some(rows)
        },
    );
    let leader: Vec<_> = list.iter().filter(|r| r["Role"] == "Leader").collect();
    assert_eq!(leader.len(), 1, "{list:?}");
    assert_eq!(leader[0]["Member"], c.nodes[p].name.as_str());
    assert_eq!(leader[0]["State"], "running");
    assert!(list.iter().all(|r| r["TL"] == 1), "{list:?}");
    // Garbage in every key we read: the daemons keep running and keep the primary.
    let prefix = format!("/service/{}/", c.scope);
    for (k, v) in [
        ("config", "not json"),
        ("history", "{"),
        ("status", "[]"),
        ("failover", "???"),
        ("sync", "42"),
        ("members/ghost", "<xml/>"),
    ] {
        let ok = std::process::Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args([
                "--endpoints",
                &c.etcd.endpoint(),
                "put",
                &format!("{prefix}{k}"),
                v,
            ])
            .status()
            .expect("etcdctl");
        assert!(ok.success());
    }
    std::thread::sleep(Duration::from_secs(3 * FAST.loop_wait));
    for i in 0..3 {
        assert!(
            c.patroni(i).is_some(),
            "node {i} stopped answering after garbage in the DCS"
        );
    }
    assert_eq!(c.primary(), Some(p));
    psql(c.nodes[p].pg_port, "SELECT 1").unwrap();
}

#[test]
fn sighup_and_dynamic_config_reach_postgres() {
    let _s = serial();
    let mut c = Cluster::new(2, &FAST);
    c.start_all();
    let p = c.wait_primary(Duration::from_secs(90));
    let r = 1 - p;
    eventually(Duration::from_secs(90), "a streaming replica", || {
        c.is_streaming(r).then_some(())
    });
    let show = |i: usize, guc: &str| psql(c.nodes[i].pg_port, &format!("SHOW {guc}")).ok();

    // SIGHUP: a parameter added to the replica's local file reaches its PostgreSQL.
    c.edit_config(r, |v| {
        v["postgresql"]["parameters"]["work_mem"] = "7MB".into();
    });
    c.signal_daemon(r, nix::sys::signal::Signal::SIGHUP);
    eventually(
        Duration::from_secs(20),
        "work_mem from the re-read file",
        || (show(r, "work_mem")? == "7MB").then_some(()),
    );
    // The replica still follows the primary after the rewrite.
    assert!(c.is_streaming(r));

    // A broken file on SIGHUP changes nothing and the daemon keeps serving.
    std::fs::write(&c.nodes[r].config, "postgresql: [unclosed\n").unwrap();
    c.signal_daemon(r, nix::sys::signal::Signal::SIGHUP);
    std::thread::sleep(Duration::from_secs(FAST.loop_wait + 1));
    assert!(c.patroni(r).is_some(), "daemon stopped answering");
    assert_eq!(show(r, "work_mem").as_deref(), Some("7MB"));
    assert!(c.log_of(r).contains("configuration not reloaded"));

    // Dynamic config: a reloadable GUC reaches every node; a restart-only one is reported
    // as pending_restart with upstream's reason shape.
    c.dcs_put(
        "config",
        &serde_json::json!({
            "ttl": FAST.ttl, "loop_wait": FAST.loop_wait, "retry_timeout": FAST.retry_timeout,
            "postgresql": {"use_pg_rewind": true, "use_slots": true,
                "pg_hba": ["host replication replicator 127.0.0.1/32 md5",
                           "host all all 127.0.0.1/32 md5"],
                "parameters": {
                "log_min_duration_statement": "1234", "max_connections": 123,
                "wal_log_hints": "on"}}
        })
        .to_string(),
    );
    for i in 0..2 {
        eventually(Duration::from_secs(20), "DCS parameter applied", || {
            (show(i, "log_min_duration_statement")? == "1234ms").then_some(())
        });
        let st = eventually(Duration::from_secs(20), "pending_restart reported", || {
            c.patroni(i).filter(|v| v["pending_restart"] == true)
        });
        assert_eq!(
            st["pending_restart_reason"]["max_connections"]["new_value"], "123",
            "{st}"
        );
        assert_eq!(show(i, "max_connections").as_deref(), Some("50"));
    }
}

#[test]
fn switchover_via_failover_key_loses_no_write_and_needs_no_rewind() {
    let _s = serial();
    let c = healthy_cluster();
    eventually(Duration::from_secs(30), "table", || {
        psql(c.ha_primary_port, "CREATE TABLE t (id int primary key)").ok()
    });
    let old = c.primary().unwrap();
    let cand = (0..3).find(|&i| i != old).unwrap();
    let writer = support::cluster::Writer::start(c.ha_primary_port, 1);
    std::thread::sleep(Duration::from_secs(2));
    // What POST /switchover writes (upstream's JSON).
    c.dcs_put(
        "failover",
        &serde_json::json!({"leader": c.nodes[old].name, "member": c.nodes[cand].name}).to_string(),
    );
    eventually(Duration::from_secs(30), "candidate is primary", || {
        (c.primary() == Some(cand)).then_some(())
    });
    eventually(
        Duration::from_secs(30),
        "writes through HAProxy again",
        || write_through_haproxy(&c, 1_000_000).ok(),
    );
    std::thread::sleep(Duration::from_secs(1));
    let acks = writer.finish();
    let pause = support::cluster::longest_gap(&acks);
    eprintln!(
        "FIGURE switchover_write_pause_s={:.2} acked={}",
        pause.as_secs_f64(),
        acks.len()
    );
    // Every acknowledged write is on the new primary.
    let present: std::collections::HashSet<i64> = psql(c.nodes[cand].pg_port, "SELECT id FROM t")
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    let lost: Vec<i64> = acks
        .iter()
        .map(|a| a.0)
        .filter(|id| !present.contains(id))
        .collect();
    assert!(lost.is_empty(), "lost acknowledged writes: {lost:?}");
    // The former primary follows the new one without pg_rewind; the key is cleared.
    eventually(Duration::from_secs(60), "former primary streams", || {
        c.is_streaming(old).then_some(())
    });
    assert!(
        !c.log_of(old).contains("running pg_rewind"),
        "a clean switchover must not need pg_rewind"
    );
    let cl = support::cluster::http_get_json(c.nodes[cand].api_port, "/cluster")
        .unwrap()
        .1;
    assert!(cl.get("scheduled_switchover").is_none(), "{cl}");
    eventually(Duration::from_secs(10), "one history entry", || {
        let h = support::cluster::http_get_json(c.nodes[cand].api_port, "/history")?.1;
        (h.as_array()?.len() == 1).then_some(())
    });
}
