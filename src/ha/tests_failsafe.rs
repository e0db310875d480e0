//! Failsafe mode decisions: a primary without the DCS keeps running only when every
//! listed member accepted POST /failsafe; replicas never promote without the DCS and do not
//! race while a primary says it is alive.

use super::failsafe::{FailsafeAnswer, FailsafeContact, FailsafeRound};
use super::tests::{cfg, cluster, obs, primary_pg, replica_pg, run};
use super::*;
use crate::postgres::types::StopMode;

fn unreachable(pg: crate::postgres::types::PgObservation, failsafe_mode: bool) -> Observation {
    let mut o = obs(cluster(Some("pg0")), pg);
    o.dcs = DcsView::Unreachable("etcd is down".into());
    o.config.failsafe_mode = failsafe_mode;
    o
}

fn accepted() -> FailsafeAnswer {
    FailsafeAnswer::Accepted { lsn: Some(100) }
}

fn round(listed: bool, answers: Vec<(&str, FailsafeAnswer)>) -> Option<FailsafeRound> {
    Some(FailsafeRound {
        listed,
        answers: answers
            .into_iter()
            .map(|(n, a)| (n.to_string(), a))
            .collect(),
    })
}

fn demotes(d: &Decision) -> bool {
    d.actions
        == vec![Action::Stop {
            mode: StopMode::Immediate,
        }]
        && d.role == crate::dcs::Role::Demoted
}

#[test]
fn primary_without_dcs_decisions() {
    use FailsafeAnswer::*;
    let cases: Vec<(&str, bool, Option<FailsafeRound>, bool, &str)> = vec![
        (
            "failsafe off: demote",
            false,
            None,
            true,
            "DCS is not accessible",
        ),
        (
            "all members accepted: keep running",
            true,
            round(true, vec![("pg1", accepted()), ("pg2", accepted())]),
            false,
            "acknowledged by pg1, pg2",
        ),
        (
            "single-member cluster: keep running",
            true,
            round(true, vec![]),
            false,
            "single-member cluster",
        ),
        (
            "one member silent: demote",
            true,
            round(
                true,
                vec![("pg1", accepted()), ("pg2", NoAnswer("timed out".into()))],
            ),
            true,
            "pg2 did not answer: timed out",
        ),
        (
            "a member is primary itself: demote",
            true,
            round(true, vec![("pg1", Refused("Running as a leader".into()))]),
            true,
            "pg1 refused: Running as a leader",
        ),
        (
            "not listed in the failsafe key: demote",
            true,
            round(false, vec![("pg1", accepted())]),
            true,
            "not listed in the failsafe key",
        ),
        (
            "no round could run: demote",
            true,
            None,
            true,
            "no POST /failsafe round",
        ),
    ];
    for (name, mode, r, demote, words) in cases {
        let mut o = unreachable(primary_pg(500), mode);
        o.failsafe.round = r;
        let mut mem = Memory {
            has_lock: true,
            ..Default::default()
        };
        let d = decide(&o, &mut mem);
        assert_eq!(demotes(&d), demote, "{name}: {d:#?}");
        assert!(d.message.contains(words), "{name}: {}", d.message);
        assert!(!d.touch_member, "{name}");
        assert_eq!(mem.has_lock, !demote, "{name}");
        if !demote {
            assert!(d.actions.is_empty(), "{name}");
            assert_eq!(d.role, crate::dcs::Role::Primary, "{name}");
        }
    }
}

#[test]
fn replicas_never_promote_without_dcs() {
    let mut o = unreachable(replica_pg(400, Some(5432)), true);
    o.failsafe.contact = None;
    let d = run(&o);
    assert!(d.actions.is_empty(), "{d:#?}");
    assert_eq!(d.role, crate::dcs::Role::Replica);
}

fn unlocked_replica(contact: Option<FailsafeContact>, in_key: bool) -> Observation {
    let mut c = cluster(None);
    let mut key = failsafe::topology(&c);
    if !in_key {
        key.remove("pg0");
    }
    c.failsafe = Some(key);
    let mut o = obs(c, replica_pg(400, Some(5433)));
    o.config = HaConfig {
        failsafe_mode: true,
        ..cfg()
    };
    o.failsafe.contact = contact;
    o
}

#[test]
fn replica_does_not_race_while_primary_pings() {
    let fresh = Some(FailsafeContact {
        leader: "pg1".into(),
        age_ms: 5_000,
    });
    let d = run(&unlocked_replica(fresh, true));
    assert!(d.actions.is_empty(), "{d:#?}");
    assert!(d.message.contains("pg1 contacted me"), "{}", d.message);

    // Older than ttl (30 s): the contact no longer counts; the normal race runs.
    let stale = Some(FailsafeContact {
        leader: "pg1".into(),
        age_ms: 31_000,
    });
    let d = run(&unlocked_replica(stale, true));
    assert!(!d.message.contains("contacted me"), "{}", d.message);
    assert!(
        d.actions
            .iter()
            .any(|a| matches!(a, Action::AcquireLock { .. })),
        "{d:#?}"
    );
}

#[test]
fn a_ping_from_before_the_dcs_showed_a_leader_again_does_not_block_the_race() {
    let contact = |age_ms| {
        Some(FailsafeContact {
            leader: "pg1".into(),
            age_ms,
        })
    };
    let races = |d: &Decision| {
        d.actions
            .iter()
            .any(|a| matches!(a, Action::AcquireLock { .. }))
    };
    // The outage ended, the DCS showed a leader 3 s ago, the ping came 8 s ago (sent
    // during the outage): the leader released the key since, so the race runs.
    let mut o = unlocked_replica(contact(8_000), true);
    o.failsafe.leader_seen_age_ms = Some(3_000);
    let d = run(&o);
    assert!(races(&d), "{d:#?}");
    assert!(!d.message.contains("contacted me"), "{}", d.message);

    // A ping sent after the last sighting of a leader (a new outage) still blocks it.
    let mut o = unlocked_replica(contact(2_000), true);
    o.failsafe.leader_seen_age_ms = Some(3_000);
    let d = run(&o);
    assert!(!races(&d), "{d:#?}");
    assert!(d.message.contains("pg1 contacted me"), "{}", d.message);

    // No leader seen since this daemon started: a fresh ping counts.
    let mut o = unlocked_replica(contact(8_000), true);
    o.failsafe.leader_seen_age_ms = None;
    assert!(!races(&run(&o)));
}

#[test]
fn member_missing_from_failsafe_key_does_not_race() {
    let d = run(&unlocked_replica(None, false));
    assert!(d.actions.is_empty(), "{d:#?}");
    assert!(
        d.message.contains("not listed in the failsafe key"),
        "{}",
        d.message
    );
}

#[test]
fn leader_keeps_failsafe_key_current() {
    let mut o = obs(cluster(Some("pg0")), primary_pg(500));
    o.config.failsafe_mode = true;
    let d = run(&o);
    let Action::UpdateLock { held, .. } = &d.actions[0] else {
        panic!("{d:#?}")
    };
    let want = failsafe::topology(&cluster(None));
    assert_eq!(want.len(), 3);
    assert!(held.actions.contains(&Action::WriteFailsafe(want.clone())));

    // Unchanged key, or failsafe mode off: nothing written.
    let mut c = cluster(Some("pg0"));
    c.failsafe = Some(want);
    let mut o = obs(c, primary_pg(500));
    o.config.failsafe_mode = true;
    let d = run(&o);
    let Action::UpdateLock { held, .. } = &d.actions[0] else {
        panic!("{d:#?}")
    };
    assert!(
        !held
            .actions
            .iter()
            .any(|a| matches!(a, Action::WriteFailsafe(_)))
    );
    let d = run(&obs(cluster(Some("pg0")), primary_pg(500)));
    let Action::UpdateLock { held, .. } = &d.actions[0] else {
        panic!("{d:#?}")
    };
    assert!(
        !held
            .actions
            .iter()
            .any(|a| matches!(a, Action::WriteFailsafe(_)))
    );
}

#[test]
fn needs_round_only_for_primary_without_dcs() {
    assert!(failsafe::needs_round(&unreachable(primary_pg(1), true)));
    assert!(!failsafe::needs_round(&unreachable(primary_pg(1), false)));
    assert!(!failsafe::needs_round(&unreachable(
        replica_pg(1, Some(5433)),
        true
    )));
    let mut o = obs(cluster(Some("pg0")), primary_pg(1));
    o.config.failsafe_mode = true;
    assert!(!failsafe::needs_round(&o));
}
