//! Standby clusters and replication slots on real etcd + PostgreSQL 15:
//! - a standby cluster follows a primary cluster through a permanent physical slot, keeps
//!   following after a failover inside the standby cluster, and becomes a normal cluster
//!   when `standby_cluster` is removed, and a standby cluster again (rewound from the
//!   primary cluster) when it is added back;
//! - a permanent logical slot survives a failover (copied to replicas, moved forward);
//! - a permanent physical slot exists on every node;
//! - a departed member's slot is kept for member_slots_ttl, then dropped.
mod support;

use serde_json::json;
use serde_yaml_ng::Value as Yaml;
use std::time::Duration;
use support::cluster::{Cluster, FAST, http, http_status, psql};
use support::eventually;

use support::serial;

const LONG: Duration = Duration::from_secs(120);

/// Set `bootstrap.dcs.<key>` in a node's YAML.
fn set_bootstrap_dcs(v: &mut Yaml, key: &str, value: serde_json::Value) {
    let dcs = &mut v["bootstrap"]["dcs"];
    dcs[key] = serde_yaml_ng::to_value(value).unwrap();
}

fn set_pg_param(v: &mut Yaml, key: &str, value: &str) {
    v["bootstrap"]["dcs"]["postgresql"]["parameters"][key] = Yaml::String(value.into());
}

fn slot_names(port: u16) -> Vec<String> {
    psql(
        port,
        "SELECT string_agg(slot_name, ',' ORDER BY slot_name) FROM pg_replication_slots",
    )
    .map(|s| {
        s.split(',')
            .filter(|n| !n.is_empty())
            .map(str::to_string)
            .collect()
    })
    .unwrap_or_default()
}

fn has_slot(port: u16, name: &str) -> bool {
    slot_names(port).iter().any(|n| n == name)
}

/// Index of the running node whose /standby-leader answers 200.
fn standby_leader(c: &Cluster) -> Option<usize> {
    let v: Vec<usize> = (0..c.nodes.len())
        .filter(|&i| {
            c.nodes[i].daemon.is_some()
                && http_status(c.nodes[i].api_port, "/standby-leader") == Some(200)
        })
        .collect();
    (v.len() == 1).then(|| v[0])
}

fn wait_row(port: u16, id: i64, what: &str) {
    eventually(LONG, what, || {
        (psql(port, &format!("SELECT count(*) FROM t WHERE id = {id}")).ok()? == "1").then_some(())
    });
}

#[test]
fn standby_cluster_follows_the_primary_cluster_through_a_failover() {
    let _g = serial();
    let began = std::time::Instant::now();
    let mut p = Cluster::new(2, &FAST);
    p.edit_all_configs(|v| {
        set_bootstrap_dcs(v, "slots", json!({"standby_slot": {"type": "physical"}}));
    });
    p.start_all();
    let pi = p.wait_primary(LONG);
    let pport = p.nodes[pi].pg_port;
    // The permanent physical slot is on every node of the primary cluster.
    for i in 0..2 {
        eventually(LONG, "permanent slot on every node", || {
            has_slot(p.nodes[i].pg_port, "standby_slot").then_some(())
        });
    }
    psql(pport, "CREATE TABLE t (id int primary key)").unwrap();
    psql(pport, "INSERT INTO t VALUES (1)").unwrap();

    let mut s = Cluster::sharing_etcd(&p, 2, &FAST, "standby");
    s.edit_all_configs(|v| {
        set_bootstrap_dcs(
            v,
            "standby_cluster",
            json!({"host": "127.0.0.1", "port": pport, "primary_slot_name": "standby_slot"}),
        );
    });
    s.start_all();
    let sl = eventually(LONG, "a standby leader", || standby_leader(&s));
    let other = 1 - sl;
    assert_eq!(s.role(sl).as_deref(), Some("standby_leader"));
    assert_eq!(http_status(s.nodes[sl].api_port, "/primary"), Some(503));
    // The standby leader streams through the permanent slot on the remote primary.
    eventually(LONG, "standby_slot active on the primary", || {
        (psql(
            pport,
            "SELECT active FROM pg_replication_slots WHERE slot_name = 'standby_slot'",
        )
        .ok()?
            == "t")
            .then_some(())
    });
    for i in 0..2 {
        wait_row(s.nodes[i].pg_port, 1, "row 1 in the standby cluster");
    }
    psql(pport, "INSERT INTO t VALUES (2)").unwrap();
    wait_row(
        s.nodes[other].pg_port,
        2,
        "row 2 cascaded to the standby replica",
    );

    // Failover inside the standby cluster: the survivor becomes the standby leader and
    // follows the remote primary (still a standby).
    s.kill_daemon(sl, true);
    eventually(LONG, "the other node takes over as standby leader", || {
        (standby_leader(&s) == Some(other)).then_some(())
    });
    assert_eq!(
        psql(s.nodes[other].pg_port, "SELECT pg_is_in_recovery()").unwrap(),
        "t"
    );
    psql(pport, "INSERT INTO t VALUES (3)").unwrap();
    wait_row(s.nodes[other].pg_port, 3, "row 3 on the new standby leader");

    // Removing the section promotes the standby leader: a normal cluster.
    let (code, body) = http(
        "PATCH",
        s.nodes[other].api_port,
        "/config",
        Some(&json!({"standby_cluster": null})),
    );
    assert_eq!(code, 200, "{body}");
    eventually(LONG, "promoted after removing standby_cluster", || {
        (s.primary() == Some(other)).then_some(())
    });
    psql(s.nodes[other].pg_port, "INSERT INTO t VALUES (100)").unwrap();

    // demote-cluster: adding the section back turns the leader into a standby leader of
    // the primary cluster again. It wrote on its own timeline meanwhile, so it is
    // rewound from the remote primary before it can follow it.
    let t0 = std::time::Instant::now();
    let (code, body) = http(
        "PATCH",
        s.nodes[other].api_port,
        "/config",
        Some(&json!({"standby_cluster":
            {"host": "127.0.0.1", "port": pport, "primary_slot_name": "standby_slot"}})),
    );
    assert_eq!(code, 200, "{body}");
    psql(pport, "INSERT INTO t VALUES (4)").unwrap();
    wait_row(
        s.nodes[other].pg_port,
        4,
        "row 4 from the remote primary after demotion",
    );
    eprintln!(
        "demoted and following the primary cluster after {:?}",
        t0.elapsed()
    );
    assert_eq!(standby_leader(&s), Some(other));
    assert_eq!(http_status(s.nodes[other].api_port, "/primary"), Some(503));
    assert_eq!(s.role(other).as_deref(), Some("standby_leader"));
    assert_eq!(
        psql(
            s.nodes[other].pg_port,
            "SELECT count(*) FROM t WHERE id = 100"
        )
        .unwrap(),
        "0",
        "the row written on the standby cluster's own timeline is rewound away"
    );
    assert!(
        s.log_of(other)
            .contains("running pg_rewind from the remote primary"),
        "{}",
        s.log_of(other)
    );
    eprintln!("scenario took {:?}", began.elapsed());
}

#[test]
fn logical_slot_survives_failover_and_departed_member_slot_expires() {
    let _g = serial();
    let mut c = Cluster::new(3, &FAST);
    c.edit_all_configs(|v| {
        set_bootstrap_dcs(
            v,
            "slots",
            json!({"cdc": {"type": "logical", "database": "postgres", "plugin": "test_decoding"},
                   "keep_me": {"type": "physical"}}),
        );
        set_bootstrap_dcs(v, "member_slots_ttl", json!("20s"));
        set_bootstrap_dcs(v, "ignore_slots", json!([{"name": "external"}]));
        set_pg_param(v, "wal_level", "logical");
        set_pg_param(v, "hot_standby_feedback", "on");
    });
    c.start_all();
    let pi = c.wait_primary(LONG);
    let pport = c.nodes[pi].pg_port;
    eventually(LONG, "the logical slot on the primary", || {
        has_slot(pport, "cdc").then_some(())
    });
    psql(
        pport,
        "SELECT pg_create_physical_replication_slot('external')",
    )
    .unwrap();
    psql(pport, "CREATE TABLE t (id int primary key)").unwrap();
    psql(pport, "INSERT INTO t VALUES (1)").unwrap();
    let first = psql(
        pport,
        "SELECT string_agg(data, ' ') FROM pg_logical_slot_get_changes('cdc', NULL, NULL)",
    )
    .unwrap();
    assert!(first.contains("id[integer]:1"), "{first}");
    let flushed = psql(
        pport,
        "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = 'cdc'",
    )
    .unwrap();

    // Every node: the permanent physical slot, and the logical slot copied and moved up
    // to the primary's position.
    for i in 0..3 {
        let port = c.nodes[i].pg_port;
        eventually(LONG, "keep_me on every node", || {
            has_slot(port, "keep_me").then_some(())
        });
        if i == pi {
            continue;
        }
        eventually(LONG, "cdc copied and advanced on the replica", || {
            let sql = format!(
                "SELECT confirmed_flush_lsn >= '{flushed}' FROM pg_replication_slots WHERE slot_name = 'cdc'"
            );
            (psql(port, &sql).ok()? == "t").then_some(())
        });
    }
    assert!(
        has_slot(pport, "external"),
        "an ignored slot is never dropped"
    );

    // Failover: kill the primary outright.
    let old_name = c.nodes[pi].name.clone();
    c.kill_daemon(pi, true);
    let np = eventually(LONG, "a new primary", || c.primary().filter(|&i| i != pi));
    let nport = c.nodes[np].pg_port;
    psql(nport, "INSERT INTO t VALUES (2)").unwrap();
    let after = psql(
        nport,
        "SELECT string_agg(data, ' ') FROM pg_logical_slot_get_changes('cdc', NULL, NULL)",
    )
    .unwrap();
    assert!(
        after.contains("id[integer]:2"),
        "the logical slot lost changes: {after}"
    );
    assert!(
        !after.contains("id[integer]:1"),
        "the slot went back in time: {after}"
    );

    // The departed member's slot: kept while its member key is there and for
    // member_slots_ttl after, then dropped on the new primary.
    assert!(
        has_slot(nport, &old_name),
        "slot of {old_name} on the new primary"
    );
    let key = format!("/service/{}/members/{old_name}", c.scope);
    eventually(LONG, "the old primary's member key expires", || {
        let out = std::process::Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args([
                "--endpoints",
                &c.etcd.endpoint(),
                "get",
                &key,
                "--print-value-only",
            ])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .is_empty()
            .then_some(())
    });
    assert!(
        has_slot(nport, &old_name),
        "slot kept within member_slots_ttl"
    );
    eventually(
        Duration::from_secs(90),
        "the slot expires after member_slots_ttl",
        || (!has_slot(nport, &old_name)).then_some(()),
    );
    let survivor = (0..3).find(|&i| i != pi && i != np).unwrap();
    eventually(LONG, "the copy on the replica is dropped too", || {
        (!has_slot(c.nodes[survivor].pg_port, &old_name)).then_some(())
    });
}
