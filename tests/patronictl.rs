//! Our patronictl against our daemon's cluster (read-only commands, edit-config, history,
//! version, remove), interop with upstream's patronictl on the same cluster, and error
//! handling (unreachable DCS, unknown cluster/member, refused REST calls).
mod support;

use serde_json::{Value, json};
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;
use support::cluster::{Cluster, FAST};
use support::ctl::{ours, ours_env, theirs, wait_healthy, write_ctl_config};
use support::etcd::Etcd;

fn rows_by_member(v: &Value) -> Vec<Value> {
    let mut rows: Vec<Value> = v
        .as_array()
        .expect("list of rows")
        .iter()
        .map(|r| {
            json!({"Cluster": r["Cluster"], "Member": r["Member"], "Host": r["Host"],
                   "Role": r["Role"], "TL": r["TL"]})
        })
        .collect();
    rows.sort_by_key(|r| r["Member"].as_str().unwrap_or("").to_string());
    rows
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Error output is one line, starts with "Error: ", and never a panic/backtrace.
fn assert_one_line_error(r: &support::ctl::Run, needle: &str) {
    assert_ne!(r.code, 0, "expected failure, got: {}", r.stdout);
    let err = r.stderr.trim();
    assert_eq!(err.lines().count(), 1, "one line expected: {err}");
    assert!(err.starts_with("Error: ") && err.contains(needle), "{err}");
    assert!(
        !err.contains("panicked") && !r.stderr.contains("backtrace"),
        "{err}"
    );
}

#[test]
fn read_commands_on_our_cluster() {
    let mut c = Cluster::new(3, &FAST);
    c.start_all();
    let p = wait_healthy(&c);
    let cfg = write_ctl_config(&c, "");
    let scope = c.scope.clone();

    // list: json rows, structurally equal to upstream's patronictl on the same cluster.
    let mine = ours(&cfg, &["list", "-f", "json"], "").ok().json();
    let rows = rows_by_member(&mine);
    assert_eq!(rows.len(), 3);
    let leader_row = rows
        .iter()
        .find(|r| r["Role"] == "Leader")
        .expect("a leader row");
    assert_eq!(leader_row["Member"], json!(c.nodes[p].name));
    assert_eq!(
        leader_row["Host"],
        json!(format!("127.0.0.1:{}", c.nodes[p].pg_port))
    );
    support::eventually(Duration::from_secs(30), "upstream list equals ours", || {
        let a = rows_by_member(&ours(&cfg, &["list", "-f", "json"], "").ok().json());
        let b = rows_by_member(&theirs(&cfg, &["list", "-f", "json"], "").ok().json());
        (a == b).then_some(())
    });
    let y = ours(&cfg, &["list", &scope, "-f", "yaml", "-e"], "")
        .ok()
        .yaml();
    assert_eq!(y.as_array().map(Vec::len), Some(3));
    let pretty = ours(&cfg, &["list", "-t"], "").ok().stdout.clone();
    assert!(
        pretty.contains(&format!("+ Cluster: {scope} (")),
        "{pretty}"
    );
    assert!(
        pretty.contains("| Member |") && pretty.contains("| Leader "),
        "{pretty}"
    );
    let tsv = ours(&cfg, &["list", "-f", "tsv"], "").ok().stdout.clone();
    assert!(tsv.starts_with("Cluster\tMember\tHost\tRole\tState\tTL\tReceive LSN\tReceive Lag\tReplay LSN\tReplay Lag"), "{tsv}");

    // Wall time of `list` for the closing note, ours vs upstream, same cluster.
    let t_ours = median(
        (0..5)
            .map(|_| ours(&cfg, &["list"], "").ok().elapsed)
            .collect(),
    );
    let t_theirs = median(
        (0..5)
            .map(|_| theirs(&cfg, &["list"], "").ok().elapsed)
            .collect(),
    );
    println!(
        "FIGURE patronictl list wall time (3 nodes, median of 5): ours {t_ours:?}, upstream {t_theirs:?}"
    );

    let topo = ours(&cfg, &["topology"], "").ok().stdout.clone();
    assert!(topo.contains("| + pg"), "{topo}");

    // dsn
    let dsn = ours(&cfg, &["dsn"], "").ok().stdout.clone();
    assert_eq!(
        dsn.trim(),
        format!("host=127.0.0.1 port={}", c.nodes[p].pg_port)
    );
    let r = (p + 1) % 3;
    let dsn = ours(&cfg, &["dsn", "-m", &c.nodes[r].name], "")
        .ok()
        .stdout
        .clone();
    assert_eq!(
        dsn.trim(),
        format!("host=127.0.0.1 port={}", c.nodes[r].pg_port)
    );
    assert_one_line_error(
        &ours(&cfg, &["dsn", "-m", "nosuch"], ""),
        "Can not find a suitable member",
    );

    check_query(&cfg, &scope);
    check_edit_config(&c, &cfg);

    // history (empty right after bootstrap) is the same for both tools.
    let h = ours(&cfg, &["history", "-f", "json"], "").ok().json();
    assert_eq!(h, theirs(&cfg, &["history", "-f", "json"], "").ok().json());

    let v = ours(&cfg, &["version", &scope], "").ok().stdout.clone();
    assert!(v.starts_with("patronictl version "), "{v}");
    for n in &c.nodes {
        assert!(
            v.contains(&format!("{}: Patroni ", n.name)) && v.contains("PostgreSQL 15."),
            "{v}"
        );
    }

    assert_one_line_error(
        &ours(&cfg, &["show-config", "nosuchcluster"], ""),
        "Cluster nosuchcluster not found",
    );
    assert_one_line_error(
        &ours(&cfg, &["restart", &scope, "nosuch", "--force"], ""),
        "nosuch is not a member of cluster",
    );

    check_remove(&mut c, &cfg);
}

fn check_query(cfg: &Path, scope: &str) {
    let env_cfg = cfg.to_str().unwrap();
    let q = ours_env(
        &[
            "-c",
            env_cfg,
            "query",
            scope,
            "-U",
            "postgres",
            "-c",
            "select 1 as one, 'x' as two, null as three",
            "--format",
            "json",
        ],
        &[("PGPASSWORD", "patroni")],
        "",
    );
    assert_eq!(
        q.ok().json(),
        json!([{"one": 1, "two": "x", "three": null}])
    );
    let q = ours_env(
        &[
            "-c",
            env_cfg,
            "query",
            "-r",
            "replica",
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-c",
            "select pg_is_in_recovery() as r",
        ],
        &[("PGPASSWORD", "patroni")],
        "",
    );
    assert_eq!(q.ok().stdout.trim(), "r\nTrue");
    // Wrong password: upstream's error row, not a crash.
    let q = ours_env(
        &["-c", env_cfg, "query", "-U", "postgres", "-c", "select 1"],
        &[("PGPASSWORD", "wrong")],
        "",
    );
    assert!(
        q.ok().stdout.contains("ERROR, SQLSTATE: 28P01"),
        "{}",
        q.stdout
    );
}

fn show_config(cfg: &Path) -> Value {
    ours(cfg, &["show-config"], "").ok().yaml()
}

fn check_edit_config(c: &Cluster, cfg: &Path) {
    assert_eq!(show_config(cfg)["ttl"], json!(20));
    // -s / -p with --force: diff shown, CAS write done.
    let r = ours(
        cfg,
        &[
            "edit-config",
            "-s",
            "ttl=25",
            "-p",
            "max_connections=60",
            "--force",
        ],
        "",
    );
    assert!(r.ok().stdout.contains("-ttl: 20\n+ttl: 25"), "{}", r.stdout);
    assert!(r.stdout.trim_end().ends_with("Configuration changed"));
    let sc = show_config(cfg);
    assert_eq!(
        (
            sc["ttl"].clone(),
            sc["postgresql"]["parameters"]["max_connections"].clone()
        ),
        (json!(25), json!(60))
    );
    // Editor script; answer "n" first (nothing written), then "y".
    let editor = c.dir.join("editor.sh");
    std::fs::write(
        &editor,
        "#!/bin/sh\nsed -i 's/^loop_wait: 2$/loop_wait: 3/' \"$1\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&editor, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let run = |answer: &str| {
        ours_env(
            &["-c", cfg.to_str().unwrap(), "edit-config"],
            &[("EDITOR", editor.to_str().unwrap())],
            answer,
        )
    };
    let r = run("n\n");
    assert!(
        r.stdout.contains("Apply these changes? [y/N]"),
        "{}",
        r.stdout
    );
    assert_eq!(show_config(cfg)["loop_wait"], json!(2));
    run("y\n").ok();
    assert_eq!(show_config(cfg)["loop_wait"], json!(3));
    assert!(run("").ok().stdout.contains("Not changed"));
    // --apply FILE, then upstream's patronictl edits our cluster and we read it back.
    let patch = c.dir.join("patch.yaml");
    std::fs::write(
        &patch,
        "retry_timeout: 6\npostgresql:\n  parameters:\n    max_connections: null\n",
    )
    .unwrap();
    ours(
        cfg,
        &[
            "edit-config",
            "--apply",
            patch.to_str().unwrap(),
            "--force",
            "-q",
        ],
        "",
    )
    .ok();
    let sc = show_config(cfg);
    assert_eq!(sc["retry_timeout"], json!(6));
    assert!(
        sc["postgresql"]["parameters"]
            .get("max_connections")
            .is_none(),
        "{sc}"
    );
    theirs(cfg, &["edit-config", "-s", "ttl=30", "--force"], "").ok();
    assert_eq!(show_config(cfg)["ttl"], json!(30));
    assert_eq!(
        show_config(cfg),
        theirs(cfg, &["show-config"], "").ok().yaml()
    );
}

fn check_remove(c: &mut Cluster, cfg: &Path) {
    let scope = c.scope.clone();
    let r = ours(cfg, &["remove", &scope], "wrong\n");
    assert_one_line_error(&r, "Cluster names specified do not match");
    let r = ours(cfg, &["remove", &scope], &format!("{scope}\nyes\n"));
    assert_one_line_error(&r, "You did not exactly type \"Yes I am aware\"");
    assert!(
        r.stdout.contains("please type: \"Yes I am aware\": "),
        "{}",
        r.stdout
    );
    // Stop the daemons so nothing re-creates keys, then remove for real.
    let leader = ours(cfg, &["list", "-f", "json"], "")
        .ok()
        .json()
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["Role"] == "Leader")
        .map(|r| r["Member"].as_str().unwrap().to_string())
        .unwrap();
    for i in 0..c.nodes.len() {
        c.kill_daemon(i, true);
    }
    let r = ours(
        cfg,
        &["remove", &scope],
        &format!("{scope}\nYes I am aware\n{leader}\n"),
    );
    r.ok();
    assert!(
        r.stdout.contains("This cluster currently is healthy"),
        "{}",
        r.stdout
    );
    assert_one_line_error(&ours(cfg, &["show-config"], ""), "not found");
}

#[test]
fn dcs_and_config_errors() {
    // Unreachable DCS: one line, non-zero, no backtrace.
    let r = ours_env(
        &["-d", "etcd3://127.0.0.1:1", "list", "x"],
        &[("PATRONI_RETRY_TIMEOUT", "3")],
        "",
    );
    assert_one_line_error(&r, "not reachable");
    let r = ours_env(&["-c", "/nonexistent/patronictl.yaml", "list"], &[], "");
    assert_one_line_error(
        &r,
        "Provided config file /nonexistent/patronictl.yaml not existing",
    );
    let r = ours_env(&["-d", "zookeeper://127.0.0.1", "list", "x"], &[], "");
    assert_one_line_error(&r, "not supported");
    // Every command documents itself.
    for cmd in [
        "list",
        "topology",
        "dsn",
        "query",
        "remove",
        "reload",
        "restart",
        "reinit",
        "failover",
        "switchover",
        "flush",
        "pause",
        "resume",
        "edit-config",
        "show-config",
        "version",
        "history",
        "demote-cluster",
        "promote-cluster",
    ] {
        let r = ours_env(&[cmd, "--help"], &[], "");
        assert!(
            r.code == 0 && r.stdout.contains("Usage: patronictl"),
            "{cmd}: {}",
            r.stderr
        );
    }
    let r = ours_env(&["switchover", "--help"], &[], "");
    for opt in [
        "--leader",
        "--primary",
        "--candidate",
        "--scheduled",
        "--force",
    ] {
        assert!(r.stdout.contains(opt), "{}", r.stdout);
    }
}

/// A member whose REST API refuses everything with `status` and a message.
fn fake_api(status: u16, message: &'static str) -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let mut s = s;
            let mut buf = [0u8; 4096];
            let _ = s.set_read_timeout(Some(Duration::from_millis(300)));
            let _ = s.read(&mut buf);
            let _ = write!(
                s,
                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{message}",
                message.len()
            );
        }
    });
    port
}

#[test]
fn refused_rest_calls_read_well() {
    let etcd = Etcd::start();
    let put = |key: &str, value: &str| {
        let ok = std::process::Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args([
                "--endpoints",
                &etcd.endpoint(),
                "put",
                &format!("/service/fake/{key}"),
                value,
            ])
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(ok.success());
    };
    let p412 = fake_api(412, "candidate name does not match with sync_standby");
    let p503 = fake_api(503, "Switchover failed");
    let p401 = fake_api(401, "no auth header received");
    let member = |port: u16, role: &str| {
        json!({"api_url": format!("http://127.0.0.1:{port}/patroni"), "conn_url": "postgres://127.0.0.1:5432/postgres",
               "state": "running", "role": role, "timeline": 1}).to_string()
    };
    put("initialize", "123");
    put("config", "{\"ttl\":30}");
    put("leader", "f0");
    put("members/f0", &member(p412, "primary"));
    put("members/f1", &member(p503, "replica"));
    put("members/f2", &member(p401, "replica"));
    let d = format!("etcd3://127.0.0.1:{}", etcd.client_port);
    let run = |args: &[&str]| {
        let mut all = vec!["-d", d.as_str()];
        all.extend_from_slice(args);
        ours_env(&all, &[], "")
    };
    let r = run(&["switchover", "fake", "--candidate", "f1", "--force"]);
    assert_ne!(r.code, 0);
    assert!(
        r.stdout.contains(
            "Switchover failed, details: 412, candidate name does not match with sync_standby"
        ),
        "{}",
        r.stdout
    );
    let r = run(&["restart", "fake", "f1", "--force"]);
    assert_ne!(r.code, 0);
    assert!(
        r.stdout
            .contains("Failed: restart for member f1, status code=503, (Switchover failed)"),
        "{}",
        r.stdout
    );
    let r = run(&["reinit", "fake", "f2", "--force"]);
    assert_ne!(r.code, 0);
    assert!(
        r.stdout.contains(
            "Failed: reinitialize for member f2, status code=401, (no auth header received)"
        ),
        "{}",
        r.stdout
    );
    assert_one_line_error(
        &run(&["switchover", "fake", "--candidate", "f0", "--force"]),
        "Member f0 is already the leader of cluster fake",
    );
    assert_one_line_error(
        &run(&["switchover", "fake", "--candidate", "nosuch", "--force"]),
        "Member nosuch does not exist in cluster fake",
    );
    assert_one_line_error(
        &run(&["switchover", "fake", "--leader", "f1", "--force"]),
        "Member f1 is not the leader of cluster fake",
    );
    assert_one_line_error(
        &run(&["failover", "fake", "--force"]),
        "Failover could be performed only to a specific candidate",
    );
    // A member whose API is down: one line naming member and URL.
    put("members/f3", &member(1, "replica"));
    assert_one_line_error(
        &run(&["reload", "fake", "f3", "--force"]),
        "cannot reach the REST API of member f3",
    );
}
