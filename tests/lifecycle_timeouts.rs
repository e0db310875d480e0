//! Cluster lifecycle on real etcd + PostgreSQL 15, the timing side: primary_start_timeout
//! (a crashed primary hands over instead of restarting in place), check_timeline (a
//! replica on an old timeline may not take over), and scheduled restart / switchover
//! (kept across a daemon restart, fired at their moment). Set
//! `PATRONI_TEST_LOCK=/tmp/patroni-test.lock` to share the machine with other runs.
mod support;

use chrono::{DateTime, Utc};
use serde_json::json;
use std::time::{Duration, Instant};
use support::cluster::{Cluster, FAST, http, psql};
use support::{eventually, serial};

fn in_recovery(c: &Cluster, i: usize) -> Option<bool> {
    psql(c.nodes[i].pg_port, "SELECT pg_is_in_recovery()")
        .ok()
        .map(|v| v == "t")
}

/// Start pg0 (the primary), then pg1, and wait until pg1 streams.
fn two_nodes(c: &mut Cluster) {
    c.start(0);
    assert_eq!(c.wait_primary(Duration::from_secs(90)), 0);
    c.start(1);
    eventually(Duration::from_secs(120), "pg1 streaming", || {
        c.is_streaming(1).then_some(())
    });
}

#[test]
fn primary_start_timeout_zero_fails_over_instead_of_restarting_a_crashed_primary() {
    let _s = serial();
    let mut c = Cluster::new(2, &FAST);
    c.edit_all_configs(|y| y["bootstrap"]["dcs"]["primary_start_timeout"] = 0.into());
    two_nodes(&mut c);
    psql(c.nodes[0].pg_port, "CREATE TABLE crash_t AS SELECT 1 AS v").unwrap();
    eventually(Duration::from_secs(30), "row on pg1", || {
        (psql(c.nodes[1].pg_port, "SELECT v FROM crash_t").ok()? == "1").then_some(())
    });

    // The primary's postmaster dies; its daemon keeps running and holds the key.
    let pm = c.postmaster_pid(0).expect("pg0 postmaster");
    let t0 = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pm),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    eventually(Duration::from_secs(60), "pg1 promoted", || {
        (!in_recovery(&c, 1)?).then_some(())
    });
    eprintln!("pg1 promoted {:?} after the crash", t0.elapsed());
    assert_eq!(c.wait_primary(Duration::from_secs(30)), 1);
    let log = c.log_of(0);
    assert!(
        log.contains("stopped PostgreSQL to fail over after a crash"),
        "{log}"
    );
    assert!(
        !log.contains("starting primary after failure"),
        "pg0 restarted in place: {log}"
    );
    // The crashed primary rejoins as a replica of the new leader, with the data.
    eventually(Duration::from_secs(180), "pg0 streams from pg1", || {
        c.is_streaming(0).then_some(())
    });
    assert_eq!(
        psql(c.nodes[0].pg_port, "SELECT v FROM crash_t").as_deref(),
        Ok("1")
    );
}

#[test]
fn check_timeline_keeps_a_replica_on_an_old_timeline_from_taking_over() {
    let _s = serial();
    let mut c = Cluster::new(2, &FAST);
    c.edit_all_configs(|y| y["bootstrap"]["dcs"]["check_timeline"] = true.into());
    two_nodes(&mut c);
    // The cluster's history says it has been through timelines 1 and 2 (it is on 3),
    // while pg1 is still on timeline 1.
    c.dcs_put(
        "history",
        r#"[[1,50331808,"no recovery target specified"],[2,50331900,"no recovery target specified"]]"#,
    );
    c.kill_daemon(0, true);
    eventually(Duration::from_secs(60), "pg1 refuses to lead", || {
        c.log_of(1)
            .contains("my timeline 1 is behind last known cluster timeline 3")
            .then_some(())
    });
    // A few more cycles: still a standby.
    for _ in 0..3 * FAST.loop_wait {
        assert_eq!(in_recovery(&c, 1), Some(true), "{}", c.log_of(1));
        std::thread::sleep(Duration::from_secs(1));
    }
    // With the check off the same replica takes over.
    let (code, body) = http(
        "PATCH",
        c.nodes[1].api_port,
        "/config",
        Some(&json!({"check_timeline": false})),
    );
    assert_eq!(code, 200, "{body}");
    eventually(Duration::from_secs(60), "pg1 promoted", || {
        (!in_recovery(&c, 1)?).then_some(())
    });
}

/// pg_postmaster_start_time() of node `i`.
fn postmaster_start(c: &Cluster, i: usize) -> Option<DateTime<Utc>> {
    let s = psql(
        c.nodes[i].pg_port,
        "SELECT to_char(pg_postmaster_start_time() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    )
    .ok()?;
    DateTime::parse_from_rfc3339(&s).ok().map(|t| t.to_utc())
}

/// The moment node `i` stops answering queries (two failed probes in a row).
fn stopped_answering(c: &Cluster, i: usize, within: Duration) -> DateTime<Utc> {
    let deadline = Instant::now() + within;
    let mut first_failure: Option<DateTime<Utc>> = None;
    while Instant::now() < deadline {
        let result = psql(c.nodes[i].pg_port, "SELECT 1");
        // Taken after the probe: a probe that began just before the stop and failed during
        // it must not date the stop before it happened.
        let t = Utc::now();
        match result {
            Ok(_) => first_failure = None,
            Err(_) => match first_failure {
                Some(f) => return f,
                None => first_failure = Some(t),
            },
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("pg{i} kept answering for {within:?}");
}

#[test]
fn a_scheduled_restart_and_a_scheduled_switchover_survive_a_daemon_restart() {
    let _s = serial();
    let mut c = Cluster::new(2, &FAST);
    two_nodes(&mut c);
    let now = Utc::now();
    let restart_at = now + chrono::Duration::seconds(20);
    let switchover_at = restart_at + chrono::Duration::seconds(12);
    let (code, body) = http(
        "POST",
        c.nodes[1].api_port,
        "/restart",
        Some(&json!({"schedule": restart_at.to_rfc3339()})),
    );
    assert_eq!(code, 202, "{body}");
    let (code, body) = http(
        "POST",
        c.nodes[0].api_port,
        "/switchover",
        Some(
            &json!({"leader": "pg0", "candidate": "pg1", "scheduled_at": switchover_at.to_rfc3339()}),
        ),
    );
    assert_eq!(code, 202, "{body}");
    let started_before = postmaster_start(&c, 1).expect("pg1 start time");

    // pg1's daemon dies and comes back (its PostgreSQL keeps running): the restart
    // schedule is read back from its member key.
    c.kill_daemon(1, false);
    c.start(1);
    eventually(Duration::from_secs(30), "pg1 shows the schedule", || {
        let s = c.patroni(1)?;
        let at = s
            .get("scheduled_restart")?
            .get("schedule")?
            .as_str()?
            .to_string();
        let at = DateTime::parse_from_rfc3339(&at).ok()?;
        (at.timestamp() == restart_at.timestamp()).then_some(())
    });
    assert!(Utc::now() < restart_at, "the setup took too long");

    // The restart happens at its moment, not a loop_wait early.
    let restarted = eventually(Duration::from_secs(60), "pg1 restarted", || {
        postmaster_start(&c, 1).filter(|t| *t > started_before)
    });
    eprintln!("restart scheduled at {restart_at}, postmaster started at {restarted}");
    assert!(restarted >= restart_at, "restart fired early: {restarted}");
    assert!(
        restarted < restart_at + chrono::Duration::seconds(FAST.loop_wait as i64 + 5),
        "restart late: {restarted}"
    );
    eventually(Duration::from_secs(60), "pg1 streaming again", || {
        c.is_streaming(1).then_some(())
    });

    // The switchover too: pg0 stops answering no earlier than scheduled.
    let stopped = stopped_answering(&c, 0, Duration::from_secs(60));
    eprintln!("switchover scheduled at {switchover_at}, pg0 stopped answering at {stopped}");
    assert!(
        stopped >= switchover_at,
        "switchover fired early: {stopped}"
    );
    assert_eq!(c.wait_primary(Duration::from_secs(60)), 1);
    eventually(Duration::from_secs(120), "pg0 streams from pg1", || {
        c.is_streaming(0).then_some(())
    });
}

/// SIGCONT on drop, so a process this test suspended never stays stopped.
struct Resume(i32);

impl Drop for Resume {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0),
            nix::sys::signal::Signal::SIGCONT,
        );
    }
}

#[test]
fn primary_stop_timeout_kills_a_primary_whose_shutdown_hangs() {
    let _s = serial();
    let began = Instant::now();
    let mut c = Cluster::new(2, &FAST);
    c.edit_all_configs(|y| {
        y["bootstrap"]["dcs"]["synchronous_mode"] = true.into();
        y["bootstrap"]["dcs"]["primary_stop_timeout"] = 3.into();
    });
    two_nodes(&mut c);
    eventually(Duration::from_secs(60), "pg1 is the sync standby", || {
        let v = c.patroni(0)?;
        let rep = v.get("replication")?.as_array()?.clone();
        rep.iter()
            .any(|r| r.get("sync_state").and_then(|s| s.as_str()) == Some("sync"))
            .then_some(())
    });
    psql(c.nodes[0].pg_port, "CREATE TABLE stop_t AS SELECT 1 AS v").unwrap();

    // A suspended checkpointer never writes the shutdown checkpoint: a fast shutdown of
    // pg0 would hang for pg_ctl_timeout (60 s) before the immediate stop.
    let ckpt: i32 = psql(
        c.nodes[0].pg_port,
        "SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'",
    )
    .unwrap()
    .parse()
    .unwrap();
    let pm = c.postmaster_pid(0).expect("pg0 postmaster");
    let _resume = Resume(ckpt);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(ckpt),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .unwrap();

    let t0 = Instant::now();
    let (code, body) = http(
        "POST",
        c.nodes[0].api_port,
        "/switchover",
        Some(&json!({"leader": "pg0", "candidate": "pg1"})),
    );
    assert_eq!(code, 200, "{body}");
    eventually(Duration::from_secs(60), "pg0's postmaster gone", || {
        (!support::pid_running(pm)).then_some(())
    });
    let stopped = t0.elapsed();
    eprintln!("pg0 stopped {stopped:?} after the switchover request (primary_stop_timeout 3 s)");
    assert!(
        stopped < Duration::from_secs(15),
        "the stop was not cut short: {stopped:?}"
    );
    assert!(
        c.log_of(0)
            .contains("took longer than primary_stop_timeout (3s)"),
        "{}",
        c.log_of(0)
    );
    // The cluster recovers: pg1 leads with the data, pg0 rejoins as its replica.
    assert_eq!(c.wait_primary(Duration::from_secs(60)), 1);
    assert_eq!(
        psql(c.nodes[1].pg_port, "SELECT v FROM stop_t").unwrap(),
        "1"
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while !c.is_streaming(0) {
        if Instant::now() > deadline {
            let log = c.nodes[0].data_dir.join("log/postmaster.log");
            eprintln!(
                "pg0 postgres log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
            let daemon = c.log_of(0);
            let events: Vec<&str> = daemon
                .lines()
                .filter(|l| !l.contains("no action"))
                .collect();
            panic!(
                "pg0 does not stream from pg1; daemon events:\n{}",
                events.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!("pg0 streaming again {:?} after the request", t0.elapsed());
    eprintln!("scenario took {:?}", began.elapsed());
}
