//! Table-driven tests of the HA decisions over built observations.

use super::*;
use crate::dcs::{Cluster, Failover, Leader, Member, MemberData, Status};
use crate::postgres::types::{
    ConfigRole, ControlData, DataDirState, PgObservation, SlotInfo, SqlObservation,
};
use std::sync::Arc;

pub(super) fn cfg() -> HaConfig {
    HaConfig {
        name: "pg0".into(),
        ttl: 30,
        loop_wait: 10,
        retry_timeout: 10,
        maximum_lag_on_failover: 1_048_576,
        use_pg_rewind: true,
        use_slots: true,
        remove_data_directory_on_rewind_failure: false,
        remove_data_directory_on_diverged_timelines: false,
        tags: Default::default(),
        paused: false,
        sync: Default::default(),
        standby_cluster: None,
        slots: Default::default(),
        failsafe_mode: false,
        lifecycle: Default::default(),
        clone_without_leader: false,
    }
}

pub(super) fn member(name: &str, port: u16) -> Member {
    Member {
        name: name.into(),
        version: 1,
        session: None,
        data: MemberData {
            conn_url: Some(format!("postgres://127.0.0.1:{port}/postgres")),
            api_url: Some(format!("http://127.0.0.1:{}/patroni", port + 3000)),
            ..Default::default()
        },
    }
}

/// A cluster with members pg0..pg2, initialised, with the given leader.
pub(super) fn cluster(leader: Option<&str>) -> Cluster {
    Cluster {
        initialize: Some("42".into()),
        leader: leader.map(|l| Leader {
            name: l.into(),
            version: 3,
            session: None,
        }),
        members: vec![
            member("pg0", 5432),
            member("pg1", 5433),
            member("pg2", 5434),
        ],
        ..Default::default()
    }
}

fn control(state: &str, tl: u32) -> DataDirState {
    DataDirState::Initialized(ControlData {
        system_identifier: "42".into(),
        cluster_state: state.into(),
        timeline: tl,
        ..Default::default()
    })
}

pub(super) fn primary_pg(lsn: u64) -> PgObservation {
    PgObservation {
        data_dir: control("in production", 1),
        postmaster_pid: Some(100),
        sql: Some(SqlObservation {
            in_recovery: false,
            timeline: 1,
            wal_lsn: lsn,
            system_identifier: "42".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(super) fn replica_pg(lsn: u64, following: Option<u16>) -> PgObservation {
    PgObservation {
        data_dir: control("in archive recovery", 1),
        postmaster_pid: Some(100),
        sql: Some(SqlObservation {
            in_recovery: true,
            timeline: 1,
            wal_lsn: lsn,
            system_identifier: "42".into(),
            ..Default::default()
        }),
        configured_primary: following.map(|p| ("127.0.0.1".to_string(), p)),
        standby_signal: true,
        ..Default::default()
    }
}

fn stopped_pg(state: &str) -> PgObservation {
    PgObservation {
        data_dir: control(state, 1),
        ..Default::default()
    }
}

pub(super) fn obs(c: Cluster, pg: PgObservation) -> Observation {
    Observation {
        now_ms: 1_000,
        // 2026-11-24T12:00:00Z
        wall_ms: 1_795_521_600_000,
        config: cfg(),
        dcs: DcsView::Ok(Arc::new(c)),
        pg,
        job: JobState::Idle,
        peers: vec![],
        failsafe: Default::default(),
    }
}

pub(super) fn peer(name: &str, wal: u64, primary: bool) -> PeerStatus {
    PeerStatus {
        name: name.into(),
        reply: Some(PeerReply {
            is_primary: primary,
            wal_position: wal,
            timeline: Some(1),
            nofailover: false,
            failover_priority: 1,
            watchdog_failed: false,
        }),
    }
}

pub(super) fn run(o: &Observation) -> Decision {
    decide(o, &mut Memory::default())
}

fn only(d: &Decision) -> &Action {
    assert_eq!(d.actions.len(), 1, "expected one action: {d:#?}");
    &d.actions[0]
}

#[test]
fn empty_dir_races_for_initialize_on_new_cluster() {
    let mut c = cluster(None);
    c.initialize = None;
    let d = run(&obs(c, PgObservation::default()));
    match only(&d) {
        Action::RaceInitialize { won, lost } => {
            assert_eq!(won.actions, vec![Action::StartJob(Job::Bootstrap)]);
            assert!(lost.actions.is_empty());
        }
        a => panic!("{a:?}"),
    }
    assert_eq!(d.role, Role::Uninitialized);
}

#[test]
fn empty_dir_waits_when_initialized_without_leader() {
    let d = run(&obs(cluster(None), PgObservation::default()));
    assert!(d.actions.is_empty());
    assert!(
        d.message.contains("waiting for leader to bootstrap"),
        "{}",
        d.message
    );
}

#[test]
fn empty_dir_restores_without_leader_only_with_a_no_leader_method() {
    let mut o = obs(cluster(None), PgObservation::default());
    o.config.clone_without_leader = true;
    let d = run(&o);
    assert_eq!(only(&d), &Action::StartJob(Job::CloneWithoutLeader));
    // A bootstrap under way (initialize still empty) is not raced.
    let mut c = cluster(None);
    c.initialize = Some(String::new());
    let mut o = obs(c, PgObservation::default());
    o.config.clone_without_leader = true;
    assert!(run(&o).actions.is_empty());
    // Restored: start as a standby with no upstream; failed: wipe and retry.
    let mut o = obs(cluster(None), PgObservation::default());
    o.job = JobState::Finished(Job::CloneWithoutLeader, JobOutcome::Ok);
    assert!(matches!(
        only(&run(&o)),
        Action::StartJob(Job::Start {
            role: ConfigRole::Standby { upstream: None, .. }
        })
    ));
    o.job = JobState::Finished(Job::CloneWithoutLeader, JobOutcome::Failed("x".into()));
    assert_eq!(only(&run(&o)), &Action::RemoveDataDir);
}

#[test]
fn empty_dir_clones_from_leader() {
    let d = run(&obs(cluster(Some("pg1")), PgObservation::default()));
    match only(&d) {
        Action::StartJob(Job::Basebackup { from }) => {
            assert_eq!((from.port, from.member.as_str()), (5433, "pg1"))
        }
        a => panic!("{a:?}"),
    }
}

#[test]
fn bootstrap_success_publishes_and_takes_lock() {
    let mut o = obs(cluster(None), primary_pg(100));
    o.job = JobState::Finished(Job::Bootstrap, JobOutcome::Ok);
    let d = run(&o);
    assert_eq!(d.actions[0], Action::SetInitialize { sysid: "42".into() });
    assert_eq!(d.actions[1], Action::WriteBootstrapConfig);
    assert!(matches!(d.actions[2], Action::AcquireLock { .. }));
}

#[test]
fn bootstrap_failure_cleans_up() {
    let mut o = obs(cluster(None), PgObservation::default());
    o.job = JobState::Finished(Job::Bootstrap, JobOutcome::Failed("initdb: boom".into()));
    let d = run(&o);
    assert!(
        d.actions.contains(&Action::RemoveDataDir) && d.actions.contains(&Action::CancelInitialize)
    );
    assert_eq!(d.state, PgState::InitdbFailed);
}

#[test]
fn leader_refreshes_lock_and_demotes_if_lost() {
    let d = run(&obs(cluster(Some("pg0")), primary_pg(100)));
    match only(&d) {
        Action::UpdateLock { held, lost } => {
            assert_eq!(
                held.message,
                "no action. I am (pg0), the leader with the lock"
            );
            assert!(
                held.actions
                    .contains(&Action::CreateSlots(vec!["pg1".into(), "pg2".into()]))
            );
            assert_eq!(
                lost.actions,
                vec![Action::Stop {
                    mode: StopMode::Immediate
                }]
            );
            assert_eq!(lost.role, Some(Role::Demoted));
        }
        a => panic!("{a:?}"),
    }
}

#[test]
fn leader_drops_slots_of_departed_members_only_when_inactive() {
    let mut pg = primary_pg(100);
    let slot = |n: &str, active| SlotInfo {
        name: n.into(),
        slot_type: "physical".into(),
        active,
        ..Default::default()
    };
    pg.sql.as_mut().unwrap().slots = vec![
        slot("pg1", true),
        slot("pg2", true),
        slot("gone", false),
        slot("busy", true),
    ];
    let d = run(&obs(cluster(Some("pg0")), pg));
    let Action::UpdateLock { held, .. } = only(&d) else {
        panic!()
    };
    assert_eq!(held.actions, vec![Action::DropSlots(vec!["gone".into()])]);
}

#[test]
fn leader_in_recovery_promotes() {
    let d = run(&obs(cluster(Some("pg0")), replica_pg(100, Some(5433))));
    let Action::UpdateLock { held, .. } = only(&d) else {
        panic!()
    };
    assert_eq!(held.actions, vec![Action::Promote]);
}

#[test]
fn new_leader_writes_history_after_promotion() {
    let mut pg = primary_pg(100);
    pg.sql.as_mut().unwrap().timeline = 2;
    let d = run(&obs(cluster(Some("pg0")), pg));
    let Action::UpdateLock { held, .. } = only(&d) else {
        panic!()
    };
    assert!(
        matches!(held.actions[0], Action::UpdateHistory { timeline: 2, .. }),
        "{:?}",
        held.actions
    );
}

#[test]
fn crashed_primary_with_lock_restarts_in_place() {
    let d = run(&obs(cluster(Some("pg0")), stopped_pg("in production")));
    let Action::UpdateLock { held, .. } = only(&d) else {
        panic!()
    };
    assert_eq!(
        held.actions,
        vec![Action::StartJob(Job::Start {
            role: ConfigRole::Primary
        })]
    );
    assert_eq!(held.message, "starting primary after failure");
}

#[test]
fn replica_follows_leader_and_repoints_when_leader_changes() {
    let d = run(&obs(cluster(Some("pg1")), replica_pg(100, Some(5433))));
    // Only slot upkeep (copies of the other members' slots, upstream 4.x), no re-pointing.
    assert!(
        d.actions
            .iter()
            .all(|a| matches!(a, Action::CreateSlots(_))),
        "{:?}",
        d.actions
    );
    assert_eq!(
        d.message,
        "no action. I am (pg0), a secondary, and following a leader (pg1)"
    );
    let d = run(&obs(cluster(Some("pg2")), replica_pg(100, Some(5433))));
    match only(&d) {
        Action::Follow { upstream: Some(u) } => assert_eq!(u.port, 5434),
        a => panic!("{a:?}"),
    }
}

#[test]
fn primary_without_lock_demotes() {
    let d = run(&obs(cluster(Some("pg1")), primary_pg(100)));
    assert_eq!(
        only(&d),
        &Action::Stop {
            mode: StopMode::Fast
        }
    );
    assert_eq!(d.role, Role::Demoted);
}

#[test]
fn healthiest_replica_races_and_promotes() {
    let mut o = obs(cluster(None), replica_pg(500, Some(5433)));
    o.peers = vec![peer("pg1", 0, false), peer("pg2", 400, false)];
    let d = run(&o);
    match only(&d) {
        Action::AcquireLock { won, .. } => assert_eq!(won.actions, vec![Action::Promote]),
        a => panic!("{a:?}"),
    }
}

#[test]
fn lagging_or_outranked_replica_does_not_race() {
    let cases: Vec<(&str, Observation)> = vec![
        ("peer ahead", {
            let mut o = obs(cluster(None), replica_pg(500, Some(5433)));
            o.peers = vec![peer("pg2", 600, false)];
            o
        }),
        ("old primary alive", {
            let mut o = obs(cluster(None), replica_pg(500, Some(5433)));
            o.peers = vec![peer("pg1", 100, true)];
            o
        }),
        ("beyond maximum_lag_on_failover", {
            let mut c = cluster(None);
            c.status = Status {
                optime: Some(10_000_000),
                ..Default::default()
            };
            obs(c, replica_pg(500, Some(5433)))
        }),
        ("nofailover", {
            let mut o = obs(cluster(None), replica_pg(500, Some(5433)));
            o.config.tags.insert("nofailover".into(), true.into());
            o
        }),
        ("higher priority peer at same lsn", {
            let mut o = obs(cluster(None), replica_pg(500, Some(5433)));
            let mut p = peer("pg2", 500, false);
            p.reply.as_mut().unwrap().failover_priority = 5;
            o.peers = vec![p];
            o
        }),
    ];
    for (name, o) in cases {
        let d = run(&o);
        assert!(d.actions.is_empty(), "{name}: {d:#?}");
        assert!(
            d.message.starts_with("following a different leader"),
            "{name}: {}",
            d.message
        );
    }
}

#[test]
fn unreachable_peers_do_not_block_the_race() {
    let mut o = obs(cluster(None), replica_pg(500, Some(5433)));
    o.peers = vec![PeerStatus {
        name: "pg1".into(),
        reply: None,
    }];
    assert!(matches!(only(&run(&o)), Action::AcquireLock { .. }));
}

#[test]
fn dcs_outage_demotes_primary_but_not_replica() {
    let mut o = obs(cluster(Some("pg0")), primary_pg(100));
    o.dcs = DcsView::Unreachable("connection refused".into());
    let d = run(&o);
    assert_eq!(
        only(&d),
        &Action::Stop {
            mode: StopMode::Immediate
        }
    );
    assert!(
        d.message
            .starts_with("demoting self because DCS is not accessible")
    );
    let mut o = obs(cluster(Some("pg1")), replica_pg(100, Some(5433)));
    o.dcs = DcsView::Unreachable("connection refused".into());
    assert!(run(&o).actions.is_empty());
}

#[test]
fn former_primary_checks_divergence_then_rewinds() {
    let mut mem = Memory::default();
    let o = obs(cluster(Some("pg1")), stopped_pg("in production"));
    let d = decide(&o, &mut mem);
    let Action::StartJob(Job::CheckDivergence { from }) = only(&d) else {
        panic!("{d:?}")
    };
    let from = from.clone();
    let mut o2 = o.clone();
    o2.job = JobState::Finished(
        Job::CheckDivergence { from: from.clone() },
        JobOutcome::Divergence(Divergence::Diverged("x".into())),
    );
    let d = decide(&o2, &mut mem);
    assert!(
        matches!(only(&d), Action::StartJob(Job::Rewind { .. })),
        "{d:?}"
    );
    let mut o3 = o.clone();
    o3.job = JobState::Finished(Job::Rewind { from: from.clone() }, JobOutcome::Ok);
    let d = decide(&o3, &mut mem);
    match only(&d) {
        Action::StartJob(Job::Start {
            role:
                ConfigRole::Standby {
                    upstream: Some(u),
                    slot_name,
                },
        }) => {
            assert_eq!(u.member, "pg1");
            assert_eq!(slot_name.as_deref(), Some("pg0"));
        }
        a => panic!("{a:?}"),
    }
}

#[test]
fn former_primary_waits_for_a_promoting_leader_before_the_divergence_check() {
    // pg1 holds the key but its member key still says replica (promotion running): a
    // check now would compare against the old timeline and wrongly find no divergence.
    let mut c = cluster(Some("pg1"));
    c.members[1].data.role = crate::dcs::Role::Replica;
    let d = decide(
        &obs(c.clone(), stopped_pg("in production")),
        &mut Memory::default(),
    );
    assert!(d.actions.is_empty(), "{d:?}");
    assert!(d.message.contains("finish its promotion"), "{}", d.message);
    c.members[1].data.role = crate::dcs::Role::Primary;
    let d = decide(&obs(c, stopped_pg("in production")), &mut Memory::default());
    assert!(
        matches!(only(&d), Action::StartJob(Job::CheckDivergence { .. })),
        "{d:?}"
    );
}

#[test]
fn clean_replica_starts_without_check() {
    let d = run(&obs(
        cluster(Some("pg1")),
        stopped_pg("shut down in recovery"),
    ));
    assert!(matches!(
        only(&d),
        Action::StartJob(Job::Start {
            role: ConfigRole::Standby { .. }
        })
    ));
}

#[test]
fn leaderless_stopped_node_starts_as_secondary() {
    let d = run(&obs(cluster(None), stopped_pg("shut down")));
    assert!(matches!(
        only(&d),
        Action::StartJob(Job::Start {
            role: ConfigRole::Standby { upstream: None, .. }
        })
    ));
}

#[test]
fn foreign_data_directory_is_left_alone() {
    let mut c = cluster(Some("pg1"));
    c.initialize = Some("999".into());
    let d = run(&obs(c, stopped_pg("shut down")));
    assert!(d.actions.is_empty());
    assert!(d.message.contains("different cluster"));
}

#[test]
fn leader_refreshes_lock_while_a_job_runs() {
    let mut o = obs(cluster(Some("pg0")), stopped_pg("in production"));
    o.job = JobState::Running(Job::Start {
        role: ConfigRole::Primary,
    });
    assert!(matches!(only(&run(&o)), Action::UpdateLock { .. }));
    o.dcs = DcsView::Ok(Arc::new(cluster(Some("pg1"))));
    assert!(run(&o).actions.is_empty());
}

#[test]
fn failover_key_for_me_is_cleared_after_winning() {
    let mut c = cluster(None);
    c.failover = Some(Failover {
        member: Some("pg0".into()),
        version: 9,
        ..Default::default()
    });
    let d = run(&obs(c, replica_pg(500, None)));
    let Action::AcquireLock { won, .. } = only(&d) else {
        panic!()
    };
    assert!(won.actions.contains(&Action::ClearFailover { version: 9 }));
}

// ---- switchover / failover (the `failover` key) ----

fn with_failover(
    mut c: Cluster,
    leader: Option<&str>,
    member: Option<&str>,
    at: Option<&str>,
) -> Cluster {
    c.failover = Some(Failover {
        leader: leader.map(Into::into),
        member: member.map(Into::into),
        scheduled_at: at.map(Into::into),
        version: 7,
    });
    c
}

fn held_actions(d: &Decision) -> (&Branch, &Branch) {
    match only(d) {
        Action::UpdateLock { held, lost } => (held, lost),
        a => panic!("expected UpdateLock, got {a:?}"),
    }
}

#[test]
fn leader_demotes_gracefully_for_a_healthy_candidate() {
    let c = with_failover(cluster(Some("pg0")), Some("pg0"), Some("pg1"), None);
    let mut o = obs(c, primary_pg(100));
    o.peers = vec![peer("pg1", 100, false), peer("pg2", 100, false)];
    assert!(
        needs_peers(&o, &Memory::default()),
        "the leader must check its candidate"
    );
    let mut mem = Memory::default();
    let d = decide(&o, &mut mem);
    assert_eq!(d.actions, vec![Action::GracefulDemote]);
    assert_eq!(
        d.role,
        Role::Demoted,
        "HAProxy must see 503 before the stop"
    );
    assert_eq!(mem.demoted_for_switchover_ms, Some(1_000));
}

#[test]
fn leader_clears_impossible_or_stale_requests_and_keeps_leading() {
    let cases = [
        // candidate did not answer
        (
            with_failover(cluster(Some("pg0")), Some("pg0"), Some("pg1"), None),
            vec![peer("pg2", 1, false)],
        ),
        // candidate is not a member
        (
            with_failover(cluster(Some("pg0")), Some("pg0"), Some("ghost"), None),
            vec![peer("pg1", 1, false)],
        ),
        // request names another leader
        (
            with_failover(cluster(Some("pg0")), Some("pg2"), Some("pg1"), None),
            vec![peer("pg1", 1, false)],
        ),
        // candidate is me
        (
            with_failover(cluster(Some("pg0")), None, Some("pg0"), None),
            vec![],
        ),
        // scheduled time long past
        (
            with_failover(
                cluster(Some("pg0")),
                Some("pg0"),
                Some("pg1"),
                Some("2026-11-24T11:00:00+00:00"),
            ),
            vec![peer("pg1", 1, false)],
        ),
        // unparseable time
        (
            with_failover(
                cluster(Some("pg0")),
                Some("pg0"),
                Some("pg1"),
                Some("tomorrow"),
            ),
            vec![peer("pg1", 1, false)],
        ),
    ];
    for (c, peers) in cases {
        let mut o = obs(c, primary_pg(100));
        o.peers = peers;
        let d = run(&o);
        let (held, lost) = held_actions(&d);
        assert!(
            held.actions.contains(&Action::ClearFailover { version: 7 }),
            "{d:#?}"
        );
        assert_eq!(held.role, Some(Role::Primary));
        assert!(
            lost.actions
                .iter()
                .any(|a| matches!(a, Action::Stop { .. }))
        );
    }
}

#[test]
fn scheduled_switchover_waits_then_fires() {
    let later = with_failover(
        cluster(Some("pg0")),
        Some("pg0"),
        Some("pg1"),
        Some("2026-11-24T12:05:00+00:00"),
    );
    let mut o = obs(later, primary_pg(100));
    o.peers = vec![peer("pg1", 100, false)];
    let d = run(&o);
    let (held, _) = held_actions(&d);
    assert!(
        !held
            .actions
            .iter()
            .any(|a| matches!(a, Action::ClearFailover { .. }))
    );
    assert!(
        held.message.contains("awaiting switchover"),
        "{}",
        held.message
    );
    // Within loop_wait of the time: run again exactly then, not a loop_wait early.
    o.wall_ms = 1_795_521_600_000 + 5 * 60 * 1000 - 3_000;
    let d = run(&o);
    assert!(
        !d.actions.contains(&Action::GracefulDemote),
        "fired 3 s early: {d:#?}"
    );
    assert_eq!(d.recheck_ms, Some(3_000));
    o.wall_ms += 3_000;
    assert_eq!(run(&o).actions, vec![Action::GracefulDemote]);
    o.wall_ms += 8_000;
    assert_eq!(run(&o).actions, vec![Action::GracefulDemote]);
}

#[test]
fn switchover_candidate_waits_for_the_last_wal_then_takes_over() {
    let mut c = with_failover(cluster(None), Some("pg0"), Some("pg1"), None);
    c.status.optime = Some(1_000);
    let mut o = obs(c, replica_pg(1_000, Some(5432)));
    o.config.name = "pg1".into();
    o.peers = vec![peer("pg0", 1_200, false), peer("pg2", 1_000, false)];
    let sql = o.pg.sql.as_mut().unwrap();
    sql.receive_lsn = Some(1_000);
    let mut mem = Memory::default();
    let d = decide(&o, &mut mem);
    assert!(d.actions.is_empty(), "{d:#?}");
    assert_eq!(d.recheck_ms, Some(50));
    // The shutdown checkpoint arrived: race (the former leader's higher WAL is ignored).
    o.pg.sql.as_mut().unwrap().receive_lsn = Some(1_100);
    o.now_ms += 100;
    let d = decide(&o, &mut mem);
    match only(&d) {
        Action::AcquireLock { won, .. } => {
            assert_eq!(won.actions[0], Action::Promote);
            assert!(won.actions.contains(&Action::ClearFailover { version: 7 }));
        }
        a => panic!("{a:?}"),
    }
    // Never received it: promote anyway after the budget.
    o.pg.sql.as_mut().unwrap().receive_lsn = Some(900);
    let mut mem = Memory::default();
    assert!(decide(&o, &mut mem).actions.is_empty());
    o.now_ms += switchover::CATCH_UP_BUDGET_MS + 1;
    assert!(matches!(
        only(&decide(&o, &mut mem)),
        Action::AcquireLock { .. }
    ));
}

#[test]
fn other_replicas_leave_the_race_to_a_healthy_candidate() {
    let c = with_failover(cluster(None), Some("pg0"), Some("pg1"), None);
    let mut o = obs(c, replica_pg(5_000, Some(5432)));
    o.config.name = "pg2".into();
    o.peers = vec![peer("pg0", 1_000, false), peer("pg1", 1_000, false)];
    let d = run(&o);
    assert!(d.actions.is_empty(), "{d:#?}");
    // The candidate is gone: normal election among the others, former leader excluded.
    o.peers = vec![
        peer("pg0", 9_000, false),
        PeerStatus {
            name: "pg1".into(),
            reply: None,
        },
    ];
    o.pg.sql.as_mut().unwrap().receive_lsn = Some(9_999);
    assert!(matches!(only(&run(&o)), Action::AcquireLock { .. }));
}

#[test]
fn failover_without_leader_goes_to_the_named_candidate_even_if_lagging() {
    let mut c = with_failover(cluster(None), None, Some("pg1"), None);
    c.status.optime = Some(100_000_000);
    let mut o = obs(c, replica_pg(1_000, Some(5432)));
    o.config.name = "pg1".into();
    o.peers = vec![peer("pg2", 5_000, false)];
    assert!(matches!(only(&run(&o)), Action::AcquireLock { .. }));
}

#[test]
fn demoted_node_waits_for_the_new_leader_then_checks_divergence() {
    let mut mem = Memory {
        demoted_for_switchover_ms: Some(900),
        ..Default::default()
    };
    let o = obs(cluster(None), stopped_pg("shut down"));
    let d = decide(&o, &mut mem);
    assert!(d.actions.is_empty(), "{d:#?}");
    let o = obs(cluster(Some("pg1")), stopped_pg("shut down"));
    let d = decide(&o, &mut mem);
    assert!(matches!(
        only(&d),
        Action::StartJob(Job::CheckDivergence { .. })
    ));
    assert_eq!(mem.demoted_for_switchover_ms, None);
}

// ---- pause ----

#[test]
fn paused_cluster_never_moves_postgres() {
    let paused = |mut o: Observation| {
        o.config.paused = true;
        o
    };
    // Replicas do not race for a free key.
    let d = run(&paused(obs(cluster(None), replica_pg(100, Some(5432)))));
    assert!(
        d.actions.is_empty() && d.message.starts_with("PAUSE"),
        "{d:#?}"
    );
    // A leader that loses its key keeps running.
    let d = run(&paused(obs(cluster(Some("pg0")), primary_pg(100))));
    let (_, lost) = held_actions(&d);
    assert!(lost.actions.is_empty(), "{lost:#?}");
    // DCS outage: no demotion.
    let mut o = paused(obs(cluster(Some("pg0")), primary_pg(100)));
    o.dcs = DcsView::Unreachable("down".into());
    assert!(run(&o).actions.is_empty());
    // A stopped leader gives up the key instead of starting PostgreSQL.
    let d = run(&paused(obs(cluster(Some("pg0")), stopped_pg("shut down"))));
    assert_eq!(d.actions, vec![Action::ReleaseLock]);
    // A stopped replica is not started.
    assert!(
        run(&paused(obs(cluster(Some("pg1")), stopped_pg("shut down"))))
            .actions
            .is_empty()
    );
    // A primary without the key takes it instead of demoting.
    let d = run(&paused(obs(cluster(None), primary_pg(100))));
    assert!(matches!(only(&d), Action::AcquireLock { .. }));
    // A replica following the wrong upstream is not re-pointed.
    let d = run(&paused(obs(
        cluster(Some("pg2")),
        replica_pg(100, Some(5433)),
    )));
    assert!(d.actions.is_empty());
}

// ---- synchronous replication ----

use crate::dcs::SyncState;
use crate::postgres::types::ReplicationConn;
use sync::{SyncConfig, SyncMode};

fn sync_on(o: &mut Observation, strict: bool) {
    o.config.sync = SyncConfig {
        mode: SyncMode::On,
        strict,
        node_count: 1,
        maximum_lag_on_syncnode: -1,
    };
}

fn standby(name: &str, sync_state: &str, flush: u64) -> ReplicationConn {
    ReplicationConn {
        usename: "replicator".into(),
        application_name: name.into(),
        client_addr: None,
        state: "streaming".into(),
        sync_state: sync_state.into(),
        sync_priority: 0,
        write_lsn: Some(flush),
        flush_lsn: Some(flush),
        replay_lsn: Some(flush),
    }
}

fn leader_with(c: Cluster, ssn: &str, repl: Vec<ReplicationConn>) -> Observation {
    let mut pg = primary_pg(1_000);
    let sql = pg.sql.as_mut().unwrap();
    sql.synchronous_standby_names = ssn.into();
    sql.replication = repl;
    let mut o = obs(c, pg);
    sync_on(&mut o, false);
    o
}

fn sync_key(leader: &str, members: Option<&str>) -> Option<SyncState> {
    Some(SyncState {
        leader: Some(leader.into()),
        sync_standby: members.map(Into::into),
        quorum: None,
        version: 11,
    })
}

/// The held branch's actions, without slot housekeeping.
fn held(d: &Decision) -> Vec<Action> {
    held_actions(d)
        .0
        .actions
        .iter()
        .filter(|a| !matches!(a, Action::CreateSlots(_) | Action::DropSlots(_)))
        .cloned()
        .collect()
}

fn wsync(members: &[&str], quorum: Option<u32>, version: Option<i64>) -> Action {
    Action::WriteSyncState {
        members: members.iter().map(|m| m.to_string()).collect(),
        quorum,
        version,
    }
}

#[test]
fn sync_standby_is_announced_to_postgres_before_the_dcs() {
    // No key yet: claim it (nobody promotable), then set synchronous_standby_names.
    let o = leader_with(
        cluster(Some("pg0")),
        "",
        vec![standby("pg1", "async", 1_000)],
    );
    let d = run(&o);
    assert_eq!(held(&d), vec![wsync(&[], None, None)]);
    assert_eq!(d.recheck_ms, Some(300));
    let mut c = cluster(Some("pg0"));
    c.sync = sync_key("pg0", None);
    let o = leader_with(c, "", vec![standby("pg1", "async", 1_000)]);
    assert_eq!(
        held(&run(&o)),
        vec![Action::SetSyncStandbyNames(Some("1 (\"pg1\")".into()))]
    );
    // PostgreSQL now reports it as sync: publish it in the key.
    let mut c = cluster(Some("pg0"));
    c.sync = sync_key("pg0", None);
    let o = leader_with(c, "1 (\"pg1\")", vec![standby("pg1", "sync", 1_000)]);
    assert_eq!(held(&run(&o)), vec![wsync(&["pg1"], None, Some(11))]);
}

#[test]
fn sync_key_is_narrowed_before_postgres_when_the_standby_leaves() {
    // pg1 was sync and disconnected; pg2 streams. First only the key shrinks.
    let mut c = cluster(Some("pg0"));
    c.sync = sync_key("pg0", Some("pg1"));
    let o = leader_with(c, "1 (\"pg1\")", vec![standby("pg2", "async", 1_000)]);
    assert_eq!(held(&run(&o)), vec![wsync(&[], None, Some(11))]);
    // Once that is written, PostgreSQL's list changes.
    let mut c = cluster(Some("pg0"));
    c.sync = sync_key("pg0", None);
    let o = leader_with(c, "1 (\"pg1\")", vec![standby("pg2", "async", 1_000)]);
    assert_eq!(
        held(&run(&o)),
        vec![Action::SetSyncStandbyNames(Some("1 (\"pg2\")".into()))]
    );
}

#[test]
fn strict_mode_without_standbys_blocks_writes_with_star() {
    let mut c = cluster(Some("pg0"));
    c.sync = sync_key("pg0", None);
    let mut o = leader_with(c, "", vec![]);
    sync_on(&mut o, true);
    let a = held(&run(&o));
    assert!(
        a.contains(&Action::SetSyncStandbyNames(Some("*".into()))),
        "{a:#?}"
    );
}

#[test]
fn nosync_and_lagging_standbys_are_not_picked() {
    let mut c = cluster(Some("pg0"));
    c.members[1].data.tags.insert("nosync".into(), true.into());
    let mut o = leader_with(
        c,
        "",
        vec![standby("pg1", "async", 1_000), standby("pg2", "async", 10)],
    );
    o.config.sync.maximum_lag_on_syncnode = 100;
    let a = held(&run(&o));
    // pg1 is nosync and pg2 lags 990 bytes: nobody qualifies (non-strict: empty list).
    assert!(
        !a.iter()
            .any(|x| matches!(x, Action::SetSyncStandbyNames(Some(v)) if !v.is_empty())),
        "{a:#?}"
    );
}

#[test]
fn only_a_synchronous_standby_may_take_over() {
    let mut c = cluster(None);
    c.sync = sync_key("pg0", Some("pg2"));
    let mut o = obs(c.clone(), replica_pg(5_000, Some(5432)));
    sync_on(&mut o, false);
    o.config.name = "pg1".into();
    o.peers = vec![peer("pg2", 1_000, false)];
    let d = run(&o);
    assert!(d.actions.is_empty(), "pg1 is not synchronous: {d:#?}");
    // pg2 is; the async pg1's higher WAL does not hold it back. It claims the key first.
    let mut o = obs(c, replica_pg(1_000, Some(5432)));
    sync_on(&mut o, false);
    o.config.name = "pg2".into();
    o.peers = vec![peer("pg1", 5_000, false)];
    match only(&run(&o)) {
        Action::AcquireLock { won, .. } => {
            assert_eq!(won.actions[0], wsync(&[], None, Some(11)));
            assert_eq!(
                won.actions[1],
                Action::SetSyncStandbyNames(Some(String::new()))
            );
            assert_eq!(won.actions[2], Action::Promote);
        }
        a => panic!("{a:?}"),
    }
}

#[test]
fn a_healthy_sync_standby_is_kept_when_another_catches_up() {
    // pg2 is the sync standby; pg1 (smaller name) has caught up to the same position, or
    // is even ahead. Switching would narrow the key to nobody for a cycle: keep pg2.
    for (case, pg1_flush) in [("same position", 1_000), ("pg1 ahead", 1_200)] {
        let mut c = cluster(Some("pg0"));
        c.sync = sync_key("pg0", Some("pg2"));
        let repl = vec![
            standby("pg1", "potential", pg1_flush),
            standby("pg2", "sync", 1_000),
        ];
        let o = leader_with(c, "1 (\"pg2\")", repl);
        let d = run(&o);
        assert!(held(&d).is_empty(), "{case}: {d:#?}");
    }
}

#[test]
fn a_sync_standby_that_disconnects_is_replaced_and_nofailover_comes_last() {
    // pg2 (the sync standby) is gone; pg1 is tagged nofailover, pg3 is not: pg3 is picked
    // even though pg1 received more WAL.
    let mut c = cluster(Some("pg0"));
    c.members.push(member("pg3", 5435));
    c.members[1]
        .data
        .tags
        .insert("nofailover".into(), true.into());
    c.sync = sync_key("pg0", None);
    let repl = vec![standby("pg1", "async", 1_000), standby("pg3", "async", 900)];
    let o = leader_with(c, "", repl);
    assert_eq!(
        held(&run(&o)),
        vec![Action::SetSyncStandbyNames(Some("1 (\"pg3\")".into()))]
    );
}

#[test]
fn sync_mode_race_counts_the_key_leader_as_synchronous() {
    // pg1 claimed the key (no standby yet) and its promotion failed; the leader key is
    // gone. pg1 may race again; pg2, not listed, may not.
    let mut c = cluster(None);
    c.sync = sync_key("pg1", None);
    let mut o = obs(c.clone(), replica_pg(1_000, Some(5432)));
    sync_on(&mut o, false);
    o.config.name = "pg1".into();
    o.peers = vec![peer("pg2", 1_000, false)];
    assert!(
        matches!(only(&run(&o)), Action::AcquireLock { .. }),
        "the key's leader may take over"
    );
    let mut o = obs(c, replica_pg(1_000, Some(5432)));
    sync_on(&mut o, false);
    o.config.name = "pg2".into();
    o.peers = vec![peer("pg1", 1_000, false)];
    assert!(run(&o).actions.is_empty(), "pg2 is not synchronous");
}

#[test]
fn switchover_to_an_async_standby_is_refused_in_sync_mode() {
    let mut c = with_failover(cluster(Some("pg0")), Some("pg0"), Some("pg1"), None);
    c.sync = sync_key("pg0", Some("pg2"));
    let mut o = leader_with(c, "1 (\"pg2\")", vec![standby("pg2", "sync", 1_000)]);
    o.peers = vec![peer("pg1", 1_000, false), peer("pg2", 1_000, false)];
    let a = held(&run(&o));
    assert!(a.contains(&Action::ClearFailover { version: 7 }), "{a:#?}");
}

#[test]
fn turning_sync_mode_off_resets_the_setting_and_the_key() {
    let mut c = cluster(Some("pg0"));
    c.sync = sync_key("pg0", Some("pg1"));
    let mut o = leader_with(c, "1 (\"pg1\")", vec![standby("pg1", "sync", 1_000)]);
    o.config.sync = SyncConfig::default();
    let a = held(&run(&o));
    assert!(a.contains(&Action::DeleteSyncState { version: Some(11) }));
    assert!(a.contains(&Action::SetSyncStandbyNames(None)));
}

#[test]
fn ssn_values_round_trip() {
    let cfg = SyncConfig {
        mode: SyncMode::On,
        strict: false,
        node_count: 2,
        maximum_lag_on_syncnode: -1,
    };
    let v = sync::render_ssn(&["b".into(), "a".into()], &cfg);
    assert_eq!(v, "2 (\"b\",\"a\")");
    assert_eq!(sync::parse_ssn(&v), vec!["a".to_string(), "b".to_string()]);
    assert_eq!(sync::parse_ssn("*"), vec!["*".to_string()]);
    assert!(sync::parse_ssn("").is_empty());
}

fn quorum_on(o: &mut Observation, acks: usize) {
    o.config.sync = SyncConfig {
        mode: SyncMode::Quorum,
        strict: false,
        node_count: acks,
        maximum_lag_on_syncnode: -1,
    };
}

fn quorum_key(members: &str, quorum: u32) -> Option<SyncState> {
    Some(SyncState {
        leader: Some("pg0".into()),
        sync_standby: Some(members.into()),
        quorum: Some(quorum),
        version: 11,
    })
}

#[test]
fn quorum_mode_lists_every_standby_and_publishes_the_quorum() {
    let mut c = cluster(Some("pg0"));
    c.sync = sync_key("pg0", None);
    let repl = vec![
        standby("pg1", "async", 1_000),
        standby("pg2", "async", 1_000),
    ];
    let mut o = leader_with(c.clone(), "", repl);
    quorum_on(&mut o, 1);
    assert_eq!(
        held(&run(&o)),
        vec![Action::SetSyncStandbyNames(Some(
            "ANY 1 (\"pg1\",\"pg2\")".into()
        ))]
    );
    // Both report quorum and flushed everything: key {pg1,pg2} with quorum 1.
    let repl = vec![
        standby("pg1", "quorum", 1_000),
        standby("pg2", "quorum", 1_000),
    ];
    let mut o = leader_with(c.clone(), "ANY 1 (\"pg1\",\"pg2\")", repl);
    quorum_on(&mut o, 1);
    assert_eq!(
        held(&run(&o)),
        vec![wsync(&["pg1", "pg2"], Some(1), Some(11))]
    );
    // Not flushed up to the primary's position yet: wait.
    let repl = vec![standby("pg1", "quorum", 900), standby("pg2", "quorum", 900)];
    let mut o = leader_with(c, "ANY 1 (\"pg1\",\"pg2\")", repl);
    quorum_on(&mut o, 1);
    let d = run(&o);
    assert!(held(&d).is_empty(), "{d:#?}");
    assert_eq!(d.recheck_ms, Some(300));
}

#[test]
fn quorum_key_is_widened_before_the_standby_set_changes() {
    // Key {pg1} quorum 0 (ANY 1 (pg1)); pg2 joins: first a key safe for both settings.
    let mut c = cluster(Some("pg0"));
    c.sync = quorum_key("pg1", 0);
    let repl = vec![
        standby("pg1", "quorum", 1_000),
        standby("pg2", "async", 1_000),
    ];
    let mut o = leader_with(c, "ANY 1 (\"pg1\")", repl.clone());
    quorum_on(&mut o, 1);
    assert_eq!(
        held(&run(&o)),
        vec![wsync(&["pg1", "pg2"], Some(1), Some(11))]
    );
    // With that key in place, PostgreSQL's setting changes.
    let mut c = cluster(Some("pg0"));
    c.sync = quorum_key("pg1,pg2", 1);
    let mut o = leader_with(c, "ANY 1 (\"pg1\")", repl);
    quorum_on(&mut o, 1);
    assert_eq!(
        held(&run(&o)),
        vec![Action::SetSyncStandbyNames(Some(
            "ANY 1 (\"pg1\",\"pg2\")".into()
        ))]
    );
}

#[test]
fn quorum_candidate_must_hear_from_enough_voters() {
    let mut c = cluster(None);
    c.sync = quorum_key("pg1,pg2", 1);
    let mut o = obs(c, replica_pg(1_000, Some(5432)));
    quorum_on(&mut o, 1);
    o.config.name = "pg1".into();
    o.peers = vec![PeerStatus {
        name: "pg2".into(),
        reply: None,
    }];
    assert!(run(&o).actions.is_empty(), "pg2 may have the last commit");
    o.peers = vec![peer("pg2", 1_000, false)];
    assert!(matches!(only(&run(&o)), Action::AcquireLock { .. }));
    o.peers = vec![peer("pg2", 2_000, false)];
    assert!(run(&o).actions.is_empty(), "pg2 is ahead");
}

#[test]
fn replica_that_cannot_follow_a_newer_timeline_is_checked_and_rewound() {
    let mut c = cluster(Some("pg1"));
    c.members[1].data.timeline = Some(2);
    let o = obs(c, replica_pg(5_000, Some(5433)));
    let mut mem = Memory::default();
    let d = decide(&o, &mut mem);
    assert!(
        matches!(only(&d), Action::StartJob(Job::CheckDivergence { from }) if from.member == "pg1"),
        "{d:#?}"
    );
    // The check found it diverged: stop, then the stopped path rewinds.
    let DcsView::Ok(cl) = &o.dcs else {
        unreachable!()
    };
    let up = upstream_of(cl, "pg1").unwrap();
    mem.divergence = Some((up, Divergence::Diverged("ahead of the fork".into())));
    assert_eq!(
        decide(&o, &mut mem).actions,
        vec![Action::Stop {
            mode: StopMode::Fast
        }]
    );
    // Streaming replicas are left alone.
    let mut o2 = o.clone();
    o2.pg.sql.as_mut().unwrap().wal_receiver = Some(crate::postgres::types::WalReceiver {
        status: "streaming".into(),
        sender_host: None,
        sender_port: None,
        slot_name: None,
    });
    let d = decide(&o2, &mut Memory::default());
    assert!(
        !d.actions
            .iter()
            .any(|a| matches!(a, Action::StartJob(_) | Action::Stop { .. })),
        "{d:#?}"
    );
}
