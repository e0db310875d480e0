//! Replication slots (member slots with member_slots_ttl, permanent and ignored slots,
//! logical slot copies on replicas) and standby-cluster decisions.

use super::slots::{IgnoreRule, LogicalSlot, PermanentSlot, SlotsConfig, StatusSlots};
use super::standby::StandbyCluster;
use super::*;
use crate::dcs::{Cluster, Leader, Member, MemberData, Role};
use crate::postgres::types::{
    ConfigRole, ControlData, DataDirState, PgObservation, REMOTE_PRIMARY, SlotInfo, SqlObservation,
};
use std::sync::Arc;

const TTL_MS: u64 = 10_000;

fn cfg() -> HaConfig {
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
        failsafe_mode: false,
        lifecycle: Default::default(),
        clone_without_leader: false,
        standby_cluster: None,
        slots: SlotsConfig {
            member_slots_ttl_ms: TTL_MS,
            ..Default::default()
        },
    }
}

fn member(name: &str, port: u16) -> Member {
    Member {
        name: name.into(),
        version: 1,
        session: None,
        data: MemberData {
            conn_url: Some(format!("postgres://127.0.0.1:{port}/postgres")),
            ..Default::default()
        },
    }
}

fn cluster(leader: &str, members: &[&str]) -> Cluster {
    Cluster {
        initialize: Some("42".into()),
        leader: (!leader.is_empty()).then(|| Leader {
            name: leader.into(),
            version: 3,
            session: None,
        }),
        members: members
            .iter()
            .enumerate()
            .map(|(i, n)| member(n, 5432 + i as u16))
            .collect(),
        ..Default::default()
    }
}

fn physical(name: &str, lsn: u64) -> SlotInfo {
    SlotInfo {
        name: name.into(),
        slot_type: "physical".into(),
        restart_lsn: Some(lsn),
        ..Default::default()
    }
}

fn logical(name: &str, lsn: u64) -> SlotInfo {
    SlotInfo {
        name: name.into(),
        slot_type: "logical".into(),
        plugin: Some("test_decoding".into()),
        database: Some("postgres".into()),
        confirmed_flush_lsn: Some(lsn),
        restart_lsn: Some(lsn),
        ..Default::default()
    }
}

fn pg(in_recovery: bool, slots: Vec<SlotInfo>, following: Option<u16>) -> PgObservation {
    let state = if in_recovery {
        "in archive recovery"
    } else {
        "in production"
    };
    PgObservation {
        data_dir: DataDirState::Initialized(ControlData {
            system_identifier: "42".into(),
            cluster_state: state.into(),
            timeline: 1,
            ..Default::default()
        }),
        postmaster_pid: Some(100),
        sql: Some(SqlObservation {
            in_recovery,
            timeline: 1,
            wal_lsn: 1000,
            system_identifier: "42".into(),
            slots,
            ..Default::default()
        }),
        configured_primary: following.map(|p| ("127.0.0.1".to_string(), p)),
        standby_signal: in_recovery,
        ..Default::default()
    }
}

fn obs(now_ms: u64, config: HaConfig, c: Cluster, pg: PgObservation) -> Observation {
    Observation {
        now_ms,
        wall_ms: 1_795_521_600_000,
        config,
        dcs: DcsView::Ok(Arc::new(c)),
        pg,
        job: JobState::Idle,
        peers: vec![],
        failsafe: Default::default(),
    }
}

/// The actions of the branch taken when the leader key refresh succeeds.
fn held(d: &Decision) -> &Branch {
    match d.actions.as_slice() {
        [Action::UpdateLock { held, .. }] => held,
        a => panic!("expected one UpdateLock: {a:?}"),
    }
}

fn drops(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .flat_map(|a| match a {
            Action::DropSlots(n) => n.clone(),
            _ => vec![],
        })
        .collect()
}

fn with_permanent(mut c: HaConfig) -> HaConfig {
    c.slots
        .permanent
        .insert("keep_me".into(), PermanentSlot::Physical);
    c.slots.permanent.insert(
        "cdc".into(),
        PermanentSlot::Logical {
            database: "postgres".into(),
            plugin: "test_decoding".into(),
        },
    );
    c
}

#[test]
fn departed_member_slot_is_kept_for_member_slots_ttl_then_dropped() {
    let mut mem = Memory::default();
    let slots = vec![physical("pg1", 900), physical("pg2", 900)];
    let all = cluster("pg0", &["pg0", "pg1", "pg2"]);
    let d = decide(
        &obs(1_000, cfg(), all, pg(false, slots.clone(), None)),
        &mut mem,
    );
    assert!(drops(&held(&d).actions).is_empty());
    let st = d.status_slots.expect("leader writes status slots");
    assert_eq!(st.retain_slots, vec!["pg0", "pg1", "pg2"]);
    // pg2's member key expired: its slot stays while it is within member_slots_ttl.
    let two = cluster("pg0", &["pg0", "pg1"]);
    let d = decide(
        &obs(6_000, cfg(), two.clone(), pg(false, slots.clone(), None)),
        &mut mem,
    );
    assert!(drops(&held(&d).actions).is_empty(), "{d:?}");
    assert!(
        d.status_slots
            .unwrap()
            .retain_slots
            .contains(&"pg2".to_string())
    );
    // Past last-seen + ttl: dropped, and no longer retained.
    let d = decide(&obs(11_001, cfg(), two, pg(false, slots, None)), &mut mem);
    assert_eq!(drops(&held(&d).actions), vec!["pg2"]);
    assert_eq!(d.status_slots.unwrap().retain_slots, vec!["pg0", "pg1"]);
}

#[test]
fn zero_member_slots_ttl_drops_a_departed_member_slot_at_once() {
    let mut c = cfg();
    c.slots.member_slots_ttl_ms = 0;
    let slots = vec![physical("pg1", 900), physical("pg2", 900)];
    let d = decide(
        &obs(
            1_000,
            c,
            cluster("pg0", &["pg0", "pg1"]),
            pg(false, slots, None),
        ),
        &mut Memory::default(),
    );
    assert_eq!(drops(&held(&d).actions), vec!["pg2"]);
}

#[test]
fn new_leader_keeps_slots_listed_in_retain_slots_then_expires_them() {
    let mut mem = Memory::default();
    let mut c = cluster("pg0", &["pg0", "pg1"]);
    c.status.retain_slots = vec!["pg1".into(), "old".into()];
    let slots = vec![physical("pg1", 900), physical("old", 900)];
    let d = decide(
        &obs(50_000, cfg(), c.clone(), pg(false, slots.clone(), None)),
        &mut mem,
    );
    assert!(drops(&held(&d).actions).is_empty());
    let d = decide(
        &obs(50_000 + TTL_MS, cfg(), c, pg(false, slots, None)),
        &mut mem,
    );
    assert_eq!(drops(&held(&d).actions), vec!["old"]);
}

#[test]
fn primary_creates_permanent_physical_and_logical_slots_and_publishes_positions() {
    let slots = vec![
        physical("pg1", 900),
        physical("keep_me", 800),
        logical("cdc", 700),
    ];
    let d = decide(
        &obs(
            1_000,
            with_permanent(cfg()),
            cluster("pg0", &["pg0", "pg1"]),
            pg(false, slots, None),
        ),
        &mut Memory::default(),
    );
    assert!(held(&d).actions.is_empty(), "{:?}", held(&d).actions);
    let StatusSlots { slots, .. } = d.status_slots.unwrap();
    let want = [("cdc", 700), ("keep_me", 800), ("pg0", 1000), ("pg1", 900)];
    assert_eq!(
        slots,
        want.iter().map(|(n, l)| (n.to_string(), *l)).collect()
    );

    let d = decide(
        &obs(
            1_000,
            with_permanent(cfg()),
            cluster("pg0", &["pg0", "pg1"]),
            pg(false, vec![], None),
        ),
        &mut Memory::default(),
    );
    assert_eq!(
        held(&d).actions,
        vec![
            Action::CreateSlots(vec!["keep_me".into(), "pg1".into()]),
            Action::CreateLogicalSlots(vec![LogicalSlot {
                name: "cdc".into(),
                database: "postgres".into(),
                plugin: "test_decoding".into(),
            }]),
        ]
    );
}

#[test]
fn ignored_slots_are_never_dropped_other_unknown_ones_are() {
    let mut c = cfg();
    c.slots.ignore = vec![IgnoreRule {
        name: Some("external".into()),
        ..Default::default()
    }];
    let slots = vec![
        physical("pg1", 900),
        physical("external", 1),
        logical("stray", 5),
    ];
    let d = decide(
        &obs(
            1_000,
            c,
            cluster("pg0", &["pg0", "pg1"]),
            pg(false, slots, None),
        ),
        &mut Memory::default(),
    );
    assert_eq!(drops(&held(&d).actions), vec!["stray"]);
}

#[test]
fn replica_keeps_member_and_permanent_slots_and_copies_logical_ones() {
    let mut c = cluster("pg1", &["pg0", "pg1", "pg2"]);
    c.status.slots = [
        ("pg0", 1000),
        ("pg1", 950),
        ("pg2", 900),
        ("keep_me", 800),
        ("cdc", 700),
    ]
    .iter()
    .map(|(n, l)| (n.to_string(), *l))
    .collect();
    let slots = vec![physical("pg2", 500), physical("gone", 1)];
    let d = decide(
        &obs(
            1_000,
            with_permanent(cfg()),
            c.clone(),
            pg(true, slots, Some(5433)),
        ),
        &mut Memory::default(),
    );
    assert_eq!(
        d.actions,
        vec![
            Action::DropSlots(vec!["gone".into()]),
            Action::CreateSlots(vec!["keep_me".into(), "pg1".into()]),
            Action::AdvanceSlots(vec![("pg2".into(), 900)]),
            Action::CopyLogicalSlots {
                from: upstream_of(&c, "pg1").unwrap(),
                names: vec!["cdc".into()],
            },
        ]
    );
    // Once copied, the logical slot is moved forward to the leader's position.
    let slots = vec![
        physical("pg1", 950),
        physical("pg2", 900),
        physical("keep_me", 800),
        logical("cdc", 600),
    ];
    let d = decide(
        &obs(1_000, with_permanent(cfg()), c, pg(true, slots, Some(5433))),
        &mut Memory::default(),
    );
    assert_eq!(
        d.actions,
        vec![Action::AdvanceSlots(vec![("cdc".into(), 700)])]
    );
}

#[test]
fn replica_drops_slot_no_longer_retained_by_the_leader() {
    let c = cluster("pg1", &["pg0", "pg1"]);
    let slots = vec![physical("pg1", 950), physical("pg2", 900)];
    let d = decide(
        &obs(1_000, cfg(), c, pg(true, slots, Some(5433))),
        &mut Memory::default(),
    );
    assert_eq!(d.actions, vec![Action::DropSlots(vec!["pg2".into()])]);
}

fn standby_cfg() -> HaConfig {
    let mut c = cfg();
    c.standby_cluster = Some(StandbyCluster {
        host: "127.0.0.1".into(),
        port: 6000,
        primary_slot_name: Some("standby_slot".into()),
        ..Default::default()
    });
    c
}

fn remote() -> crate::postgres::types::UpstreamConn {
    standby_cfg().standby_cluster.unwrap().upstream()
}

#[test]
fn standby_leader_follows_the_remote_primary_and_never_promotes() {
    let c = cluster("pg0", &["pg0", "pg1"]);
    let d = decide(
        &obs(
            1_000,
            standby_cfg(),
            c.clone(),
            pg(true, vec![physical("pg1", 5)], None),
        ),
        &mut Memory::default(),
    );
    assert_eq!(d.role, Role::StandbyLeader);
    let b = held(&d);
    assert_eq!(
        b.actions,
        vec![Action::Follow {
            upstream: Some(remote())
        }]
    );
    assert!(!b.actions.contains(&Action::Promote));
    // Already following it: nothing to do.
    let d = decide(
        &obs(
            1_000,
            standby_cfg(),
            c,
            pg(true, vec![physical("pg1", 5)], Some(6000)),
        ),
        &mut Memory::default(),
    );
    assert!(held(&d).actions.is_empty());
    assert!(
        held(&d)
            .message
            .contains("the standby leader with the lock"),
        "{}",
        held(&d).message
    );
}

#[test]
fn removing_standby_cluster_promotes_the_standby_leader() {
    let c = cluster("pg0", &["pg0", "pg1"]);
    let d = decide(
        &obs(1_000, cfg(), c, pg(true, vec![], Some(6000))),
        &mut Memory::default(),
    );
    assert!(held(&d).actions.contains(&Action::Promote));
    assert_eq!(held(&d).role, Some(Role::Primary));
}

#[test]
fn adding_standby_cluster_demotes_the_primary_to_a_standby_leader() {
    let c = cluster("pg0", &["pg0", "pg1"]);
    let d = decide(
        &obs(1_000, standby_cfg(), c, pg(false, vec![], None)),
        &mut Memory::default(),
    );
    assert_eq!(d.role, Role::StandbyLeader);
    // Stop only: the start as standby leader follows the divergence check (tests_standby).
    assert_eq!(
        held(&d).actions,
        vec![Action::Stop {
            mode: crate::postgres::types::StopMode::Fast
        }]
    );
}

#[test]
fn standby_cluster_replica_winning_the_race_becomes_standby_leader() {
    let c = cluster("", &["pg0", "pg1"]);
    let d = decide(
        &obs(1_000, standby_cfg(), c, pg(true, vec![], Some(5433))),
        &mut Memory::default(),
    );
    match d.actions.as_slice() {
        [Action::AcquireLock { won, .. }] => {
            assert_eq!(won.role, Some(Role::StandbyLeader));
            assert_eq!(
                won.actions,
                vec![Action::Follow {
                    upstream: Some(remote())
                }]
            );
        }
        a => panic!("{a:?}"),
    }
}

#[test]
fn standby_cluster_bootstrap_clones_the_remote_primary() {
    let mut c = cluster("", &[]);
    c.initialize = None;
    let d = decide(
        &obs(1_000, standby_cfg(), c, PgObservation::default()),
        &mut Memory::default(),
    );
    match d.actions.as_slice() {
        [Action::RaceInitialize { won, .. }] => {
            assert_eq!(
                won.actions,
                vec![Action::StartJob(Job::Basebackup { from: remote() })]
            );
        }
        a => panic!("{a:?}"),
    }
    // The clone finished: record the sysid and take the key as the standby leader.
    let mut c = cluster("", &[]);
    c.initialize = Some(String::new());
    let mut o = obs(2_000, standby_cfg(), c, pg(false, vec![], None));
    o.pg.sql = None;
    o.pg.postmaster_pid = None;
    o.job = JobState::Finished(Job::Basebackup { from: remote() }, JobOutcome::Ok);
    let d = decide(&o, &mut Memory::default());
    assert_eq!(d.actions[0], Action::SetInitialize { sysid: "42".into() });
    match &d.actions[2] {
        Action::AcquireLock { won, .. } => assert_eq!(won.role, Some(Role::StandbyLeader)),
        a => panic!("{a:?}"),
    }
    assert_eq!(remote().member, REMOTE_PRIMARY);
}

#[test]
fn standby_leader_restarts_following_the_remote() {
    let c = cluster("pg0", &["pg0", "pg1"]);
    let mut p = pg(true, vec![], None);
    p.sql = None;
    p.postmaster_pid = None;
    let d = decide(&obs(1_000, standby_cfg(), c, p), &mut Memory::default());
    assert_eq!(
        held(&d).actions,
        vec![Action::StartJob(Job::Start {
            role: ConfigRole::Standby {
                upstream: Some(remote()),
                slot_name: None
            },
        })]
    );
}

#[test]
fn standby_cluster_section_parsing() {
    let m = serde_json::json!({"host": "10.0.0.1", "port": 5433, "primary_slot_name": "s",
        "restore_command": "cp /a/%f %p", "recovery_min_apply_delay": "5min"});
    let sc = StandbyCluster::from_map(m.as_object().unwrap()).unwrap();
    assert_eq!((sc.host.as_str(), sc.port), ("10.0.0.1", 5433));
    let s = sc.pg_settings();
    assert_eq!(s.primary_slot_name.as_deref(), Some("s"));
    assert_eq!(
        s.recovery.get("restore_command").map(String::as_str),
        Some("cp /a/%f %p")
    );
    assert!(StandbyCluster::from_map(serde_json::json!({}).as_object().unwrap()).is_none());
    let cfg = SlotsConfig::from_dynamic(
        serde_json::json!({"a": null, "b": {"type": "logical", "database": "d", "plugin": "p"}})
            .as_object(),
        None,
        &serde_json::json!("1h"),
    );
    assert_eq!(cfg.permanent.get("a"), Some(&PermanentSlot::Physical));
    assert_eq!(cfg.member_slots_ttl_ms, 3_600_000);
}
