//! primary_start_timeout (a crashed primary that holds the key), check_timeline, and the
//! backoff after a failed pre_promote script.

use super::tests::{cluster, obs, peer, primary_pg, replica_pg};
use super::*;
use crate::dcs::{Cluster, History, HistoryEntry, Status};
use crate::postgres::types::{ConfigRole, ControlData, DataDirState, PgObservation};

/// Our primary's postmaster is gone; the data directory says it ran as a primary.
fn crashed_primary() -> PgObservation {
    PgObservation {
        data_dir: DataDirState::Initialized(ControlData {
            system_identifier: "42".into(),
            cluster_state: "in production".into(),
            timeline: 1,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Postmaster up, not accepting connections (starting, crash recovery).
fn starting_primary() -> PgObservation {
    PgObservation {
        postmaster_pid: Some(100),
        sql_error: Some("the database system is starting up".into()),
        ..crashed_primary()
    }
}

fn crash_obs(timeout: u64, pg: PgObservation) -> Observation {
    let mut o = obs(cluster(Some("pg0")), pg);
    o.config.lifecycle.primary_start_timeout = timeout;
    o.peers = vec![peer("pg1", 100, false), peer("pg2", 100, false)];
    o
}

fn hands_over(d: &Decision) -> bool {
    d.actions.contains(&Action::ReleaseLock)
}

fn starts_primary_in_place(d: &Decision) -> bool {
    d.actions.iter().any(|a| match a {
        Action::UpdateLock { held, .. } => held.actions.contains(&Action::StartJob(Job::Start {
            role: ConfigRole::Primary,
        })),
        _ => false,
    })
}

fn held_message(d: &Decision) -> String {
    match d.actions.first() {
        Some(Action::UpdateLock { held, .. }) => held.message.clone(),
        other => panic!("expected a leader lock update, got {other:?}"),
    }
}

#[test]
fn timeout_zero_hands_a_crashed_primary_over_to_a_healthy_replica() {
    let o = crash_obs(0, crashed_primary());
    let mut mem = Memory::default();
    assert!(
        needs_peers(&o, &mem),
        "the handover needs the replicas' status"
    );
    let d = decide(&o, &mut mem);
    assert!(hands_over(&d), "{d:#?}");
    assert!(!starts_primary_in_place(&d), "{d:#?}");
    assert_eq!(d.message, crash::FAILED_OVER_AFTER_CRASH);
    // Afterwards it waits for the new leader instead of starting on its own.
    assert_eq!(mem.demoted_for_switchover_ms, Some(o.now_ms));
}

#[test]
fn timeout_zero_restarts_in_place_when_no_replica_can_take_over() {
    let cases: Vec<(&str, Vec<PeerStatus>)> = vec![
        (
            "no answer",
            vec![PeerStatus {
                name: "pg1".into(),
                reply: None,
            }],
        ),
        ("a primary", vec![peer("pg1", 100, true)]),
        ("lagging", vec![peer("pg1", 10, false)]),
        ("nobody", vec![]),
    ];
    for (what, peers) in cases {
        let mut c = cluster(Some("pg0"));
        c.status = Status {
            optime: Some(10 + 2 * 1_048_576),
            ..Default::default()
        };
        let mut o = obs(c, crashed_primary());
        o.config.lifecycle.primary_start_timeout = 0;
        o.peers = peers;
        let d = decide(&o, &mut Memory::default());
        assert!(!hands_over(&d), "{what}: {d:#?}");
        assert!(starts_primary_in_place(&d), "{what}: {d:#?}");
    }
}

#[test]
fn a_positive_timeout_restarts_in_place_and_counts_from_that_start() {
    let o = crash_obs(300, crashed_primary());
    let mut mem = Memory::default();
    assert!(!needs_peers(&o, &mem));
    let d = decide(&o, &mut mem);
    assert!(starts_primary_in_place(&d), "{d:#?}");
    assert_eq!(mem.primary_start_since_ms, Some(o.now_ms));
}

#[test]
fn the_leader_waits_primary_start_timeout_for_its_own_start_then_hands_over() {
    let mut o = crash_obs(
        300,
        PgObservation {
            postmaster_pid: Some(100),
            ..crashed_primary()
        },
    );
    o.job = JobState::Running(Job::Start {
        role: ConfigRole::Primary,
    });
    let mut mem = Memory {
        primary_start_since_ms: Some(o.now_ms),
        has_lock: true,
        ..Default::default()
    };
    o.now_ms += 299_500;
    assert!(!needs_peers(&o, &mem));
    let d = decide(&o, &mut mem);
    assert!(!hands_over(&d), "{d:#?}");
    assert_eq!(
        held_message(&d),
        "PostgreSQL is still starting up, 1 seconds until timeout"
    );
    o.now_ms += 500;
    assert!(needs_peers(&o, &mem));
    let d = decide(&o, &mut mem);
    assert_eq!(
        d.actions,
        vec![
            Action::CancelJob,
            Action::Stop {
                mode: StopMode::Immediate
            },
            Action::ReleaseLock
        ]
    );
    assert_eq!(d.message, crash::FAILED_OVER_AFTER_START_TIMEOUT);
    assert_eq!(mem.primary_start_since_ms, None);
}

#[test]
fn a_timed_out_start_keeps_waiting_when_nobody_can_take_over() {
    let mut o = crash_obs(10, starting_primary());
    o.peers = vec![peer("pg1", 100, true)];
    let mut mem = Memory {
        primary_start_since_ms: Some(0),
        ..Default::default()
    };
    o.now_ms = 60_000;
    let d = decide(&o, &mut mem);
    assert!(!hands_over(&d), "{d:#?}");
    assert!(
        held_message(&d).starts_with("primary start has timed out, but continuing to wait"),
        "{d:#?}"
    );
}

#[test]
fn a_start_of_ours_that_returned_but_still_refuses_connections_is_handed_over() {
    let mut o = crash_obs(10, starting_primary());
    let mut mem = Memory {
        primary_start_since_ms: Some(0),
        ..Default::default()
    };
    o.now_ms = 11_000;
    let d = decide(&o, &mut mem);
    assert!(hands_over(&d), "{d:#?}");
    assert!(d.actions.contains(&Action::Stop {
        mode: StopMode::Immediate
    }));
}

#[test]
fn a_primary_refusing_connections_that_we_did_not_start_is_not_failed_over() {
    // E.g. crash recovery after a backend crash: PostgreSQL restarts itself.
    let mut o = crash_obs(0, starting_primary());
    o.now_ms = 3_600_000;
    let mut mem = Memory::default();
    assert!(!needs_peers(&o, &mem));
    let d = decide(&o, &mut mem);
    assert!(!hands_over(&d), "{d:#?}");
}

#[test]
fn paused_a_crashed_primary_is_neither_restarted_nor_handed_over_for_the_timeout() {
    let mut o = crash_obs(0, crashed_primary());
    o.config.paused = true;
    let mut mem = Memory::default();
    assert!(!needs_peers(&o, &mem));
    let d = decide(&o, &mut mem);
    assert!(!starts_primary_in_place(&d), "{d:#?}");
    assert!(d.message.starts_with("PAUSE"), "{}", d.message);
}

#[test]
fn a_replica_never_asks_for_peers_for_the_start_timeout() {
    let mut o = crash_obs(0, crashed_primary());
    o.dcs = DcsView::Ok(std::sync::Arc::new(cluster(Some("pg1"))));
    assert!(!needs_peers(&o, &Memory::default()));
}

// ---- check_timeline ----

/// The cluster went through timelines 1 and 2: it is on timeline 3 now.
fn on_timeline_3(mut c: Cluster) -> Cluster {
    let line = |timeline| HistoryEntry {
        timeline,
        lsn: 100,
        reason: "no recovery target specified".into(),
        timestamp: None,
        new_leader: None,
    };
    c.history = Some(History {
        version: 1,
        lines: vec![line(1), line(2)],
    });
    c
}

fn acquires(d: &Decision) -> bool {
    d.actions
        .iter()
        .any(|a| matches!(a, Action::AcquireLock { .. }))
}

#[test]
fn check_timeline_keeps_a_replica_on_an_old_timeline_out_of_the_race() {
    let mut o = obs(on_timeline_3(cluster(None)), replica_pg(100, Some(5433)));
    o.config.lifecycle.check_timeline = true;
    let d = decide(&o, &mut Memory::default());
    assert!(!acquires(&d), "{d:#?}");
    assert!(
        d.message
            .contains("my timeline 1 is behind last known cluster timeline 3"),
        "{}",
        d.message
    );
    // Off (the default): the same replica may take over.
    o.config.lifecycle.check_timeline = false;
    assert!(acquires(&decide(&o, &mut Memory::default())));
}

#[test]
fn check_timeline_lets_a_replica_on_the_cluster_timeline_race() {
    let mut pg = replica_pg(100, Some(5433));
    pg.sql.as_mut().unwrap().timeline = 3;
    let mut o = obs(on_timeline_3(cluster(None)), pg);
    o.config.lifecycle.check_timeline = true;
    assert!(acquires(&decide(&o, &mut Memory::default())));
}

#[test]
fn a_running_primary_on_an_old_timeline_never_retakes_the_key() {
    // Upstream checks this whatever check_timeline says.
    let o = obs(on_timeline_3(cluster(None)), primary_pg(100));
    let d = decide(&o, &mut Memory::default());
    assert!(!acquires(&d), "{d:#?}");
    assert!(d.message.contains("behind"), "{}", d.message);
}

#[test]
fn check_timeline_does_not_hand_a_crashed_primary_over_to_a_replica_on_an_old_timeline() {
    let mut o = obs(on_timeline_3(cluster(Some("pg0"))), crashed_primary());
    o.config.lifecycle.primary_start_timeout = 0;
    o.config.lifecycle.check_timeline = true;
    o.peers = vec![peer("pg1", 100, false)]; // timeline 1
    let d = decide(&o, &mut Memory::default());
    assert!(!hands_over(&d), "{d:#?}");
    assert!(starts_primary_in_place(&d), "{d:#?}");
}

#[test]
fn check_timeline_refuses_a_switchover_to_a_candidate_on_an_old_timeline() {
    let mut c = on_timeline_3(cluster(Some("pg0")));
    c.failover = Some(crate::dcs::Failover {
        leader: Some("pg0".into()),
        member: Some("pg1".into()),
        scheduled_at: None,
        version: 7,
    });
    let mut pg = primary_pg(100);
    pg.sql.as_mut().unwrap().timeline = 3;
    let mut o = obs(c, pg);
    o.config.lifecycle.check_timeline = true;
    o.peers = vec![peer("pg1", 100, false)];
    let d = decide(&o, &mut Memory::default());
    assert!(!d.actions.contains(&Action::GracefulDemote), "{d:#?}");
    assert!(held_message(&d).contains("behind"), "{d:#?}");
}

// ---- pre_promote ----

#[test]
fn after_a_failed_pre_promote_the_node_stays_out_of_the_race_for_ttl() {
    let mut o = obs(cluster(None), replica_pg(100, Some(5433)));
    let mut mem = Memory {
        pre_promote_failed_ms: Some(o.now_ms),
        ..Default::default()
    };
    o.now_ms += o.config.ttl * 1000 - 1;
    let d = decide(&o, &mut mem);
    assert!(!acquires(&d), "{d:#?}");
    assert!(
        d.message.contains(
            "backoff: skip leader race after pre_promote script failure and releasing the lock voluntarily"
        ),
        "{}",
        d.message
    );
    o.now_ms += 1;
    assert!(acquires(&decide(&o, &mut mem)));
    assert_eq!(mem.pre_promote_failed_ms, None);
}
