//! Our patronictl driving a cluster of UPSTREAM Patroni 4.1 nodes through their REST API:
//! reload, restart (now, scheduled, flush), pause/resume, switchover (prompted, forced,
//! scheduled + flush), failover, reinit, demote/promote-cluster, version; and the same
//! `list` rows as upstream's patronictl.
mod support;

use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;
use support::cluster::Cluster;
use support::ctl::{Run, ours, theirs, upstream_cluster_edit, wait_healthy, write_ctl_config};
use support::eventually;

const AUTH: &str = "ctl:\n  authentication:\n    username: admin\n    password: s3cret\n";

fn member_rows(r: &Run) -> Vec<Value> {
    let mut rows: Vec<Value> = r
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|r| json!([r["Member"], r["Host"], r["Role"], r["TL"], r.get("Tags")]))
        .collect();
    rows.sort_by_key(|r| r[0].as_str().unwrap_or("").to_string());
    rows
}

fn leader_of(cfg: &Path) -> String {
    let rows = ours(cfg, &["list", "-f", "json"], "").ok().json();
    rows.as_array()
        .unwrap()
        .iter()
        .find(|r| r["Role"] == "Leader")
        .and_then(|r| r["Member"].as_str())
        .unwrap_or("")
        .to_string()
}

fn wait_leader(c: &Cluster, cfg: &Path, name: &str) {
    eventually(Duration::from_secs(120), &format!("{name} to lead"), || {
        (leader_of(cfg) == name).then_some(())
    });
    wait_healthy(c);
}

fn expect_out(r: &Run, needle: &str) {
    assert!(
        r.stdout.contains(needle),
        "missing {needle:?} in:\n{}\nstderr: {}",
        r.stdout,
        r.stderr
    );
}

#[test]
fn ctl_drives_upstream_cluster() {
    // REST API credentials for unsafe methods, as an operator would set them.
    let c = upstream_cluster_edit(3, |v| {
        v["restapi"]["authentication"] =
            serde_yaml_ng::from_str("{username: admin, password: s3cret}").unwrap();
    });
    let p = wait_healthy(&c);
    let cfg = write_ctl_config(&c, AUTH);
    let scope = c.scope.clone();
    let noauth = c.dir.join("noauth.yaml");
    std::fs::write(
        &noauth,
        format!(
            "scope: {scope}\netcd3:\n  hosts: 127.0.0.1:{}\n",
            c.etcd.client_port
        ),
    )
    .unwrap();

    // Same rows as upstream's own patronictl.
    eventually(Duration::from_secs(30), "same list rows", || {
        let a = member_rows(ours(&cfg, &["list", "-f", "json"], "").ok());
        (a == member_rows(theirs(&cfg, &["list", "-f", "json"], "").ok())).then_some(())
    });
    println!("ours:\n{}", ours(&cfg, &["list", "-e"], "").ok().stdout);
    println!(
        "upstream:\n{}",
        theirs(&cfg, &["list", "-e"], "").ok().stdout
    );
    let t = |f: &dyn Fn() -> Run| {
        let mut v: Vec<Duration> = (0..5).map(|_| f().ok().elapsed).collect();
        v.sort();
        v[2]
    };
    let (a, b) = (
        t(&|| ours(&cfg, &["list"], "")),
        t(&|| theirs(&cfg, &["list"], "")),
    );
    println!(
        "FIGURE patronictl list wall time vs upstream Patroni nodes (median of 5): ours {a:?}, upstream {b:?}"
    );

    let v = ours(&cfg, &["version", &scope], "").ok().stdout.clone();
    assert!(
        v.contains("Patroni 4.1") && v.contains("PostgreSQL 15."),
        "{v}"
    );

    // 401 without credentials: upstream's Failed line, non-zero exit.
    let r = ours(&noauth, &["reload", &scope, "--force"], "");
    assert_ne!(r.code, 0);
    expect_out(&r, "status code=401");
    let r = ours(&cfg, &["reload", &scope, "--force"], "");
    r.ok();
    for n in &c.nodes {
        assert!(
            r.stdout.contains(&format!("member {}", n.name)),
            "{}",
            r.stdout
        );
    }

    let replicas: Vec<String> = (0..3)
        .filter(|&i| i != p)
        .map(|i| c.nodes[i].name.clone())
        .collect();
    restarts(&cfg, &scope, &replicas[0]);
    pause_resume(&cfg, &scope);
    switchovers(&c, &cfg, &scope, &replicas);
    reinit(&c, &cfg, &scope);
    demote_promote(&c, &cfg, &scope);
}

fn restarts(cfg: &Path, scope: &str, replica: &str) {
    let r = ours(cfg, &["restart", scope, replica, "--force"], "");
    expect_out(r.ok(), &format!("Success: restart on member {replica}"));
    let at = (chrono::Local::now() + chrono::Duration::hours(2))
        .format("%Y-%m-%dT%H:%M")
        .to_string();
    let r = ours(
        cfg,
        &["restart", scope, replica, "--scheduled", &at, "--force"],
        "",
    );
    expect_out(
        r.ok(),
        &format!("Success: restart scheduled on member {replica}"),
    );
    eventually(Duration::from_secs(30), "scheduled restart listed", || {
        let rows = ours(cfg, &["list", "-f", "json"], "").ok().json();
        rows.as_array()
            .unwrap()
            .iter()
            .any(|r| r["Member"] == replica && r.get("Scheduled restart").is_some())
            .then_some(())
    });
    let r = ours(cfg, &["flush", scope, replica, "restart", "--force"], "");
    expect_out(
        r.ok(),
        &format!("Success: flush scheduled restart for member {replica}"),
    );
    let r = ours(
        cfg,
        &["restart", scope, replica, "--pg-version", "9.6", "--force"],
        "",
    );
    assert!(
        r.code != 0 && r.stderr.contains("Invalid PostgreSQL version format"),
        "{}",
        r.stderr
    );
}

fn pause_resume(cfg: &Path, scope: &str) {
    expect_out(
        ours(cfg, &["pause", "--wait"], "").ok(),
        "Success: cluster management is paused",
    );
    expect_out(ours(cfg, &["list"], "").ok(), "Maintenance mode: on");
    let r = ours(cfg, &["pause"], "");
    assert!(
        r.code != 0 && r.stderr.trim() == "Error: Cluster is already paused",
        "{}",
        r.stderr
    );
    let r = ours(
        cfg,
        &[
            "restart",
            scope,
            "--scheduled",
            "2099-01-01T00:00",
            "--force",
        ],
        "",
    );
    assert!(
        r.stderr
            .contains("Can't schedule restart in the paused state"),
        "{}",
        r.stderr
    );
    // Upstream's patronictl sees the pause we set.
    expect_out(theirs(cfg, &["list"], "").ok(), "Maintenance mode: on");
    expect_out(
        ours(cfg, &["resume", "--wait"], "").ok(),
        "Success: cluster management is resumed",
    );
    assert!(
        !ours(cfg, &["list"], "")
            .ok()
            .stdout
            .contains("Maintenance mode")
    );
}

fn switchovers(c: &Cluster, cfg: &Path, scope: &str, replicas: &[String]) {
    // Prompts: take the defaults, then answer "n".
    let r = ours(cfg, &["switchover", scope], "\n\n\nn\n");
    assert!(
        r.code != 0 && r.stderr.contains("Aborting switchover"),
        "{}\n{}",
        r.stdout,
        r.stderr
    );
    expect_out(&r, "Are you sure you want to switchover cluster");
    let r = ours(
        cfg,
        &["switchover", scope, "--candidate", &replicas[0], "--force"],
        "",
    );
    expect_out(r.ok(), "Current cluster topology");
    wait_leader(c, cfg, &replicas[0]);
    let h = ours(cfg, &["history", "-f", "json"], "").ok().json();
    assert!(!h.as_array().unwrap().is_empty(), "{h}");
    assert_eq!(h, theirs(cfg, &["history", "-f", "json"], "").ok().json());

    let at = (chrono::Local::now() + chrono::Duration::hours(1)).to_rfc3339();
    ours(
        cfg,
        &["switchover", scope, "--scheduled", &at, "--force"],
        "",
    )
    .ok();
    eventually(
        Duration::from_secs(20),
        "scheduled switchover shown",
        || {
            ours(cfg, &["list"], "")
                .ok()
                .stdout
                .contains("Switchover scheduled at:")
                .then_some(())
        },
    );
    expect_out(
        ours(cfg, &["flush", scope, "switchover"], "").ok(),
        "Success: ",
    );
    expect_out(
        ours(cfg, &["flush", scope, "switchover"], "").ok(),
        "No pending scheduled switchover",
    );

    let r = ours(
        cfg,
        &["failover", scope, "--candidate", &replicas[1], "--force"],
        "",
    );
    r.ok();
    wait_leader(c, cfg, &replicas[1]);
}

fn reinit(c: &Cluster, cfg: &Path, scope: &str) {
    let leader = leader_of(cfg);
    let target = c
        .nodes
        .iter()
        .map(|n| n.name.clone())
        .find(|n| *n != leader)
        .unwrap();
    let r = ours(cfg, &["reinit", scope, &target, "--force", "--wait"], "");
    expect_out(
        r.ok(),
        &format!("Success: reinitialize for member {target}"),
    );
    expect_out(&r, &format!("Reinitialize is completed on: {target}"));
    let r = ours(cfg, &["reinit", scope, &leader, "--force"], "");
    assert!(
        r.code != 0 && r.stderr.contains("No replica among provided members"),
        "{}",
        r.stderr
    );
    wait_healthy(c);
}

fn demote_promote(c: &Cluster, cfg: &Path, scope: &str) {
    let r = ours(
        cfg,
        &[
            "demote-cluster",
            scope,
            "--restore-command",
            "false",
            "--force",
        ],
        "",
    );
    expect_out(r.ok(), "cluster is successfully demoted");
    expect_out(ours(cfg, &["list"], "").ok(), "Standby Leader");
    let r = ours(cfg, &["promote-cluster", scope, "--force"], "");
    expect_out(r.ok(), "cluster is successfully promoted");
    c.wait_primary(Duration::from_secs(60));
}
