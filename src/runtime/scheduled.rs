//! A scheduled restart (POST /restart with `schedule`): kept in memory, written into our
//! member key as upstream's `scheduled_restart` object, read back from there when the
//! daemon starts again, and fired at its moment (not up to a loop_wait early).

use crate::command::RestartRequest;
use crate::ha::switchover;
use serde_json::{Value, json};
use std::time::Duration;

/// Upstream's `scheduled_restart` object. The member key carries everything needed to
/// run it after a daemon restart; `/patroni` leaves out `postmaster_start_time`.
pub fn to_json(r: &RestartRequest, for_member_key: bool) -> Option<Value> {
    let mut v = json!({ "schedule": r.schedule?.to_rfc3339() });
    if let Some(ver) = &r.postgres_version {
        v["postgres_version"] = ver.clone().into();
    }
    if !for_member_key {
        return Some(v);
    }
    if let Some(role) = &r.role {
        v["role"] = role.clone().into();
    }
    if r.restart_pending {
        v["restart_pending"] = true.into();
    }
    if let Some(t) = r.timeout {
        v["timeout"] = t.as_secs().into();
    }
    if let Some(pst) = &r.postmaster_start_time {
        v["postmaster_start_time"] = pst.clone().into();
    }
    Some(v)
}

/// Read back what `to_json` wrote (or upstream wrote) into a member key.
pub fn from_json(v: &Value) -> Option<RestartRequest> {
    let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    let schedule = switchover::parse_scheduled_at(v.get("schedule")?.as_str()?)?;
    Some(RestartRequest {
        schedule: Some(schedule),
        timeout: v
            .get("timeout")
            .and_then(Value::as_f64)
            .map(Duration::from_secs_f64),
        restart_pending: v
            .get("restart_pending")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        role: text("role"),
        postgres_version: text("postgres_version"),
        postmaster_start_time: text("postmaster_start_time"),
    })
}

/// What to do about a scheduled restart this cycle.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Not yet; run the loop again after this many ms when the moment is close.
    Wait(Option<u64>),
    /// Forget it, logging why.
    Drop(String),
    /// Restart now.
    Fire,
}

/// `now_pm_start`: pg_postmaster_start_time() now (None while PostgreSQL does not answer).
pub fn step(
    r: &RestartRequest,
    wall_ms: i64,
    loop_wait_s: u64,
    now_pm_start: Option<&str>,
) -> Step {
    if let (Some(then), Some(now)) = (r.postmaster_start_time.as_deref(), now_pm_start)
        && !then.is_empty()
        && !now.is_empty()
        && then != now
    {
        return Step::Drop(format!(
            "Cancelling scheduled restart: postgres restart has already happened at {now}"
        ));
    }
    let Some(at) = r.schedule else {
        return Step::Fire;
    };
    match switchover::due_at(
        at.timestamp_millis(),
        || at.to_rfc3339(),
        wall_ms,
        loop_wait_s,
    ) {
        switchover::Due::Later(_) => Step::Wait(None),
        switchover::Due::Soon(ms) => Step::Wait(Some(ms)),
        switchover::Due::Stale(why) => {
            Step::Drop(format!("dropping a stale scheduled restart: {why}"))
        }
        switchover::Due::Now => Step::Fire,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(at: &str) -> RestartRequest {
        RestartRequest {
            schedule: switchover::parse_scheduled_at(at),
            timeout: Some(Duration::from_secs(30)),
            restart_pending: true,
            role: Some("replica".into()),
            postgres_version: Some("15.4".into()),
            postmaster_start_time: Some("2026-11-24 11:00:00+00".into()),
        }
    }

    // 2026-11-24T12:00:00Z
    const NOON_MS: i64 = 1_795_521_600_000;

    #[test]
    fn the_member_key_object_round_trips() {
        let r = req("2026-11-24T12:00:30+00:00");
        let v = to_json(&r, true).unwrap();
        assert_eq!(from_json(&v), Some(r.clone()));
        let api = to_json(&r, false).unwrap();
        assert!(api.get("postmaster_start_time").is_none(), "{api}");
        assert_eq!(api["schedule"], v["schedule"]);
    }

    #[test]
    fn an_upstream_object_with_only_a_schedule_is_read() {
        let v = json!({"schedule": "2026-11-24T12:00:30+00:00", "postmaster_start_time": null});
        let r = from_json(&v).unwrap();
        assert!(!r.restart_pending);
        assert_eq!(r.postmaster_start_time, None);
        assert_eq!(from_json(&json!({"schedule": "soon"})), None);
    }

    #[test]
    fn it_fires_at_its_moment_not_a_loop_wait_early() {
        let r = req("2026-11-24T12:00:05+00:00");
        let pm = Some("2026-11-24 11:00:00+00");
        assert_eq!(step(&r, NOON_MS - 20_000, 10, pm), Step::Wait(None));
        assert_eq!(step(&r, NOON_MS, 10, pm), Step::Wait(Some(5_000)));
        assert_eq!(step(&r, NOON_MS + 4_999, 10, pm), Step::Wait(Some(1)));
        assert_eq!(step(&r, NOON_MS + 5_000, 10, pm), Step::Fire);
        assert_eq!(step(&r, NOON_MS + 19_000, 10, pm), Step::Fire);
        assert!(matches!(step(&r, NOON_MS + 25_000, 10, pm), Step::Drop(_)));
    }

    #[test]
    fn a_postmaster_restarted_since_scheduling_cancels_it() {
        let r = req("2026-11-24T12:00:05+00:00");
        let s = step(&r, NOON_MS + 5_000, 10, Some("2026-11-24 11:59:00+00"));
        assert!(
            matches!(&s, Step::Drop(m) if m.contains("restart has already happened")),
            "{s:?}"
        );
        // PostgreSQL not answering: no evidence either way.
        assert_eq!(step(&r, NOON_MS + 5_000, 10, None), Step::Fire);
    }
}
