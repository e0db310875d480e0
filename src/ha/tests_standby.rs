//! demote-cluster: a primary whose cluster gets a `standby_cluster` section stops, is
//! checked against (and rewound from) the remote primary, then starts as standby leader.

use super::tests::{cluster, obs, primary_pg};
use super::*;
use crate::postgres::types::{ConfigRole, ControlData, DataDirState, PgObservation, StopMode};
use serde_json::json;

fn with_remote(mut o: Observation) -> Observation {
    let m = json!({"host": "10.0.0.9", "port": 5999});
    o.config.standby_cluster = standby::StandbyCluster::from_map(m.as_object().unwrap());
    o
}

fn stopped(state: &str) -> PgObservation {
    PgObservation {
        data_dir: DataDirState::Initialized(ControlData {
            system_identifier: "42".into(),
            cluster_state: state.into(),
            timeline: 2,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The actions of the held-lock branch of the single UpdateLock action.
fn held(d: &Decision) -> &[Action] {
    match d.actions.as_slice() {
        [Action::UpdateLock { held, .. }] => &held.actions,
        a => panic!("expected one UpdateLock, got {a:?}"),
    }
}

#[test]
fn demote_cluster_stops_rewinds_from_the_remote_then_starts_as_standby_leader() {
    let mut mem = Memory::default();
    let d = decide(
        &with_remote(obs(cluster(Some("pg0")), primary_pg(100))),
        &mut mem,
    );
    assert!(
        matches!(
            held(&d),
            [Action::Stop {
                mode: StopMode::Fast
            }]
        ),
        "{d:?}"
    );
    assert_eq!(d.role, crate::dcs::Role::StandbyLeader);

    // Down with the key, was a primary: check the timeline against the remote first.
    let down = with_remote(obs(cluster(Some("pg0")), stopped("shut down")));
    let d = decide(&down, &mut mem);
    let [Action::StartJob(Job::CheckDivergence { from })] = held(&d) else {
        panic!("{d:?}")
    };
    assert_eq!((from.host.as_str(), from.port), ("10.0.0.9", 5999));
    let from = from.clone();

    let mut checked = down.clone();
    checked.job = JobState::Finished(
        Job::CheckDivergence { from: from.clone() },
        JobOutcome::Divergence(Divergence::Diverged("local timeline 2 is ahead".into())),
    );
    let d = decide(&checked, &mut mem);
    assert!(
        matches!(held(&d), [Action::StartJob(Job::Rewind { from: f })] if *f == from),
        "{d:?}"
    );

    // Rewound (pg_rewind leaves the cluster "in archive recovery"): start following it.
    let mut rewound = with_remote(obs(cluster(Some("pg0")), stopped("in archive recovery")));
    rewound.job = JobState::Finished(Job::Rewind { from: from.clone() }, JobOutcome::Ok);
    let d = decide(&rewound, &mut mem);
    assert!(
        matches!(held(&d), [Action::StartJob(Job::Start { role: ConfigRole::Standby { upstream: Some(u), .. } })] if *u == from),
        "{d:?}"
    );
}

#[test]
fn a_former_primary_that_did_not_diverge_starts_as_standby_leader_at_once() {
    let mut mem = Memory::default();
    let down = with_remote(obs(cluster(Some("pg0")), stopped("shut down")));
    let d = decide(&down, &mut mem);
    let [Action::StartJob(Job::CheckDivergence { from })] = held(&d) else {
        panic!("{d:?}")
    };
    let mut checked = down.clone();
    checked.job = JobState::Finished(
        Job::CheckDivergence { from: from.clone() },
        JobOutcome::Divergence(Divergence::NotDiverged),
    );
    let d = decide(&checked, &mut mem);
    assert!(
        matches!(held(&d), [Action::StartJob(Job::Start { .. })]),
        "{d:?}"
    );
    // A standby's data directory needs no check.
    let d = decide(
        &with_remote(obs(cluster(Some("pg0")), stopped("shut down in recovery"))),
        &mut Memory::default(),
    );
    assert!(
        matches!(held(&d), [Action::StartJob(Job::Start { .. })]),
        "{d:?}"
    );
}
