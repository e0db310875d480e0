//! Write commands of patronictl against a cluster of OUR daemon (etcd + PostgreSQL 15 +
//! HAProxy): upstream Patroni 4.1's patronictl in one test, our patronictl in the other, the
//! same scenario for both. Every command's effect is checked on the cluster itself (GET
//! /patroni, SHOW, postmaster PIDs, HAProxy :5000), not only in the tool's output.
mod support;

use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};
use support::cluster::{Cluster, FAST, http_get_json, psql};
use support::ctl::{Run, ours, theirs, write_ctl_config};
use support::eventually;

/// `restapi.authentication` on the nodes and the matching `ctl.authentication`, as an
/// operator would have them: the write commands must authenticate.
const AUTH: &str = "ctl:\n  authentication:\n    username: admin\n    password: s3cret\n";

type Ctl = fn(&Path, &[&str], &str) -> Run;

use support::serial;

fn healthy_cluster() -> Cluster {
    let mut c = Cluster::new(3, &FAST);
    for i in 0..3 {
        c.edit_config(i, |v| {
            v["restapi"]["authentication"] =
                serde_yaml_ng::from_str("{username: admin, password: s3cret}").unwrap();
        });
    }
    c.start_all();
    c.start_haproxy();
    c.wait_primary(Duration::from_secs(90));
    all_streaming(&c);
    c
}

fn all_streaming(c: &Cluster) -> usize {
    let p = c.wait_primary(Duration::from_secs(90));
    eventually(Duration::from_secs(120), "two streaming replicas", || {
        ((0..3).filter(|&i| i != p && c.is_streaming(i)).count() == 2).then_some(())
    });
    p
}

/// HAProxy's :5000 reaches node `i`.
fn haproxy_routes_to(c: &Cluster, i: usize) {
    let port = c.nodes[i].pg_port.to_string();
    eventually(
        Duration::from_secs(30),
        "HAProxy :5000 on the primary",
        || (psql(c.ha_primary_port, "SHOW port").ok()? == port).then_some(()),
    );
}

fn expect_out(r: &Run, needle: &str) {
    assert!(
        r.stdout.contains(needle),
        "missing {needle:?} in:\n{}\nstderr: {}",
        r.stdout,
        r.stderr
    );
}

/// The leader per `list -f json`, checked against the cluster's own view.
fn list_leader(ctl: Ctl, cfg: &Path) -> Option<String> {
    let rows = ctl(cfg, &["list", "-f", "json"], "").ok().json();
    let rows = rows.as_array()?;
    let leaders: Vec<&Value> = rows.iter().filter(|r| r["Role"] == "Leader").collect();
    (rows.len() == 3 && leaders.len() == 1)
        .then(|| leaders[0]["Member"].as_str().map(str::to_string))
        .flatten()
}

/// Runs one command, printing its wall time as a figure.
fn timed(ctl: Ctl, cfg: &Path, args: &[&str], figures: &mut Vec<(String, f64)>) -> Run {
    let r = ctl(cfg, args, "");
    figures.push((args[..2.min(args.len())].join(" "), r.elapsed.as_secs_f64()));
    r
}

fn scenario(ctl: Ctl, tool: &str) {
    let _s = serial();
    let c = healthy_cluster();
    let cfg = write_ctl_config(&c, AUTH);
    let mut figs = vec![];

    // list -f json: the same leader as the cluster's own /primary.
    let p = c.primary().unwrap();
    eventually(Duration::from_secs(20), "list shows the leader", || {
        (list_leader(ctl, &cfg)? == c.nodes[p].name).then_some(())
    });
    config_and_restart(ctl, &c, &cfg, &mut figs);
    pause_resume(ctl, &c, &cfg, &mut figs);
    let p = switchover_failover(ctl, &c, &cfg, &mut figs);
    history(ctl, &c, &cfg, p);
    reinit(ctl, &c, &cfg, p, &mut figs);
    let figs: Vec<String> = figs.iter().map(|(k, v)| format!("{k}={v:.2}s")).collect();
    eprintln!(
        "FIGURE {tool} patronictl on our cluster: {}",
        figs.join(" ")
    );
}

/// show-config, edit-config (-s and -p, --force) reaching every node, then restart of a
/// replica applying the pending max_connections.
fn config_and_restart(ctl: Ctl, c: &Cluster, cfg: &Path, figs: &mut Vec<(String, f64)>) {
    let shown = ctl(cfg, &["show-config"], "").ok().yaml();
    assert_eq!(shown["ttl"], 20, "{shown:?}");
    assert_eq!(shown["loop_wait"], 2, "{shown:?}");
    let r = timed(
        ctl,
        cfg,
        &[
            "edit-config",
            "-s",
            "postgresql.parameters.work_mem=7MB",
            "-p",
            "max_connections=61",
            "--force",
        ],
        figs,
    );
    r.ok();
    let shown = ctl(cfg, &["show-config"], "").ok().yaml();
    assert_eq!(
        shown["postgresql"]["parameters"]["work_mem"], "7MB",
        "{shown:?}"
    );
    for i in 0..3 {
        eventually(Duration::from_secs(30), "work_mem reloaded", || {
            (psql(c.nodes[i].pg_port, "SHOW work_mem").ok()? == "7MB").then_some(())
        });
        eventually(Duration::from_secs(30), "pending_restart", || {
            c.patroni(i).filter(|v| v["pending_restart"] == true)
        });
    }
    eventually(
        Duration::from_secs(20),
        "list shows pending restarts",
        || {
            let rows = ctl(cfg, &["list", "-f", "json"], "").ok().json();
            let pending = rows
                .as_array()?
                .iter()
                .filter(|r| r.get("Pending restart").is_some());
            (pending.count() == 3).then_some(())
        },
    );
    scheduled_restart(ctl, c, cfg);
    // Replicas first, as an operator would (a standby with fewer max_connections than its
    // primary pauses replay).
    let p = c.primary().unwrap();
    let reps: Vec<usize> = (0..3).filter(|&i| i != p).collect();
    let names: Vec<String> = reps.iter().map(|&i| c.nodes[i].name.clone()).collect();
    let before: Vec<Option<i32>> = reps.iter().map(|&i| c.postmaster_pid(i)).collect();
    let out = timed(
        ctl,
        cfg,
        &["restart", &c.scope, &names[0], &names[1], "--force"],
        figs,
    );
    out.ok();
    for (k, &r) in reps.iter().enumerate() {
        expect_out(&out, &format!("Success: restart on member {}", names[k]));
        eventually(Duration::from_secs(60), "max_connections applied", || {
            (psql(c.nodes[r].pg_port, "SHOW max_connections").ok()? == "61").then_some(())
        });
        assert_ne!(c.postmaster_pid(r), before[k], "postmaster restarted");
        eventually(Duration::from_secs(30), "pending_restart cleared", || {
            c.patroni(r).filter(|v| v.get("pending_restart").is_none())
        });
    }
    assert_eq!(c.primary(), Some(p), "a restart is not a failover");
}

/// restart --scheduled shows up in `list` (from the member key) and flush removes it.
fn scheduled_restart(ctl: Ctl, c: &Cluster, cfg: &Path) {
    let name = c.nodes[0].name.clone();
    let at = (chrono::Local::now() + chrono::Duration::hours(2))
        .format("%Y-%m-%dT%H:%M")
        .to_string();
    let args = ["restart", &c.scope, &name, "--scheduled", &at, "--force"];
    let r = ctl(cfg, &args, "");
    expect_out(
        r.ok(),
        &format!("Success: restart scheduled on member {name}"),
    );
    let listed = |want: bool| {
        let rows = ctl(cfg, &["list", "-f", "json"], "").ok().json();
        let has = rows
            .as_array()?
            .iter()
            .any(|r| r["Member"] == name.as_str() && r.get("Scheduled restart").is_some());
        (has == want).then_some(())
    };
    eventually(Duration::from_secs(20), "scheduled restart listed", || {
        listed(true)
    });
    let r = ctl(cfg, &["flush", &c.scope, &name, "restart", "--force"], "");
    expect_out(
        r.ok(),
        &format!("Success: flush scheduled restart for member {name}"),
    );
    eventually(Duration::from_secs(20), "scheduled restart gone", || {
        listed(false)
    });
}

/// pause --wait: every node's /patroni says pause, `list` shows maintenance mode; resume.
fn pause_resume(ctl: Ctl, c: &Cluster, cfg: &Path, figs: &mut Vec<(String, f64)>) {
    let r = timed(ctl, cfg, &["pause", "--wait"], figs);
    expect_out(r.ok(), "Success: cluster management is paused");
    for i in 0..3 {
        let v = c.patroni(i).unwrap();
        assert_eq!(v["pause"], true, "{}: {v}", c.nodes[i].name);
    }
    expect_out(ctl(cfg, &["list"], "").ok(), "Maintenance mode: on");
    let r = timed(ctl, cfg, &["resume", "--wait"], figs);
    expect_out(r.ok(), "Success: cluster management is resumed");
    for i in 0..3 {
        let v = c.patroni(i).unwrap();
        assert!(v.get("pause").is_none(), "{}: {v}", c.nodes[i].name);
    }
    assert!(
        !ctl(cfg, &["list"], "")
            .ok()
            .stdout
            .contains("Maintenance mode")
    );
}

/// switchover --candidate --force, then failover --candidate --force; returns the primary.
fn switchover_failover(ctl: Ctl, c: &Cluster, cfg: &Path, figs: &mut Vec<(String, f64)>) -> usize {
    let old = all_streaming(c);
    let cand = (0..3).find(|&i| i != old).unwrap();
    let t0 = Instant::now();
    let r = timed(
        ctl,
        cfg,
        &[
            "switchover",
            &c.scope,
            "--candidate",
            &c.nodes[cand].name,
            "--force",
        ],
        figs,
    );
    expect_out(r.ok(), "Successfully switched over to");
    assert_eq!(c.role(cand).as_deref(), Some("primary"));
    haproxy_routes_to(c, cand);
    figs.push(("switchover->haproxy".into(), t0.elapsed().as_secs_f64()));
    eventually(Duration::from_secs(30), "list shows the new leader", || {
        (list_leader(ctl, cfg)? == c.nodes[cand].name).then_some(())
    });
    eventually(Duration::from_secs(20), "old primary is a replica", || {
        (c.role(old).as_deref() == Some("replica")).then_some(())
    });

    let old = all_streaming(c);
    let cand = (0..3).find(|&i| i != old).unwrap();
    let t0 = Instant::now();
    let r = timed(
        ctl,
        cfg,
        &[
            "failover",
            &c.scope,
            "--candidate",
            &c.nodes[cand].name,
            "--force",
        ],
        figs,
    );
    expect_out(r.ok(), "Successfully failed over to");
    eventually(Duration::from_secs(30), "candidate is primary", || {
        (c.role(cand).as_deref() == Some("primary")).then_some(())
    });
    haproxy_routes_to(c, cand);
    figs.push(("failover->haproxy".into(), t0.elapsed().as_secs_f64()));
    all_streaming(c)
}

/// history lists the two timeline switches, like GET /history of the primary.
fn history(ctl: Ctl, c: &Cluster, cfg: &Path, p: usize) {
    let h = ctl(cfg, &["history", "-f", "json"], "").ok().json();
    let rows = h.as_array().unwrap();
    assert!(rows.len() >= 2, "two timeline switches: {h}");
    // GET /history answers from the node's last cycle: it catches up within loop_wait.
    eventually(
        Duration::from_secs(20),
        "same history in GET /history",
        || {
            let api = http_get_json(c.nodes[p].api_port, "/history")?.1;
            (api.as_array()?.len() == rows.len()).then_some(())
        },
    );
    let tl: i64 = psql(
        c.nodes[p].pg_port,
        "SELECT timeline_id FROM pg_control_checkpoint()",
    )
    .unwrap()
    .parse()
    .unwrap();
    assert!(
        rows.iter().all(|r| r["TL"].as_i64().unwrap() < tl),
        "every history row precedes timeline {tl}: {h}"
    );
    let text = ctl(cfg, &["history"], "").ok().stdout.clone();
    assert!(text.contains("| TL |"), "{text}");
}

/// reinit --force --wait rebuilds a replica (new postmaster, streaming, has the data).
fn reinit(ctl: Ctl, c: &Cluster, cfg: &Path, p: usize, figs: &mut Vec<(String, f64)>) {
    psql(c.ha_primary_port, "CREATE TABLE IF NOT EXISTS t (id int)").unwrap();
    psql(c.ha_primary_port, "INSERT INTO t VALUES (42)").unwrap();
    let r = (0..3).find(|&i| i != p).unwrap();
    let name = c.nodes[r].name.clone();
    let before = c.postmaster_pid(r);
    let out = timed(
        ctl,
        cfg,
        &["reinit", &c.scope, &name, "--force", "--wait"],
        figs,
    );
    expect_out(
        out.ok(),
        &format!("Success: reinitialize for member {name}"),
    );
    expect_out(&out, &format!("Reinitialize is completed on: {name}"));
    assert_ne!(c.postmaster_pid(r), before, "a new postmaster");
    eventually(
        Duration::from_secs(60),
        "reinitialized replica streams",
        || c.is_streaming(r).then_some(()),
    );
    eventually(Duration::from_secs(30), "row replicated", || {
        (psql(c.nodes[r].pg_port, "SELECT count(*) FROM t WHERE id = 42").ok()? == "1")
            .then_some(())
    });
    assert!(c.log_of(r).contains("reinitialize"));
    let leader = c.nodes[p].name.clone();
    let out = ctl(cfg, &["reinit", &c.scope, &leader, "--force"], "");
    assert!(
        out.code != 0 && out.stderr.contains("No replica among provided members"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
}

#[test]
fn upstream_patronictl_drives_our_cluster() {
    scenario(theirs, "upstream");
}

#[test]
fn our_patronictl_drives_our_cluster() {
    scenario(ours, "ours");
}
