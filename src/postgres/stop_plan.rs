//! How long a stop of PostgreSQL may run and what happens when it runs longer: a smart or
//! fast stop escalates to an immediate one, and with `primary_stop_timeout` (synchronous
//! mode only, as upstream) a primary whose stop still runs after that many seconds is
//! killed outright (SIGKILL to the postmaster and its children).

use std::time::Duration;

use super::Postgres;
use super::error::Result;
use super::process;
use super::types::StopMode;

/// Why PostgreSQL is being stopped; decides how long a fast stop may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// A primary that may no longer lead (lost lock, DCS outage, demote-cluster): bounded
    /// by retry_timeout before the immediate stop, so it rejoins quickly.
    Demote,
    /// Switchover / failover hand-over: a clean shutdown checkpoint is worth waiting for.
    Switchover,
    /// The daemon shuts down.
    Shutdown,
}

/// The timing settings a stop depends on (seconds, as configured).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StopTimeouts {
    pub pg_ctl_timeout: u64,
    pub retry_timeout: u64,
    /// `primary_stop_timeout` from the dynamic configuration (0: not set).
    pub primary_stop_timeout: u64,
    /// `synchronous_mode` is on (or quorum).
    pub synchronous: bool,
    /// `standby_cluster` is configured (upstream's synchronous mode is off then).
    pub standby_cluster: bool,
}

/// What a stop does, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopPlan {
    pub mode: StopMode,
    /// A smart/fast stop still running after this becomes an immediate stop.
    pub escalate_after: Duration,
    /// The whole stop still running after this: SIGKILL the postmaster and its children.
    pub kill_after: Option<Duration>,
}

/// `primary_stop_timeout` as upstream applies it: only in synchronous mode (which a
/// standby cluster never is), only when positive, only for a primary.
pub fn primary_kill_after(t: &StopTimeouts, primary: bool) -> Option<Duration> {
    let applies = primary && t.synchronous && !t.standby_cluster && t.primary_stop_timeout > 0;
    applies.then(|| Duration::from_secs(t.primary_stop_timeout))
}

/// The plan for stopping with `mode` for `reason`; `primary`: PostgreSQL runs as a primary.
pub fn stop_plan(mode: StopMode, reason: StopReason, t: &StopTimeouts, primary: bool) -> StopPlan {
    let pg_ctl = Duration::from_secs(t.pg_ctl_timeout.max(1));
    let escalate_after = match (mode, reason) {
        (StopMode::Immediate, _) => pg_ctl,
        // Bounded demotion: a fast shutdown waits for walsenders to dead standbys.
        (_, StopReason::Demote) => pg_ctl.min(Duration::from_secs(t.retry_timeout.max(1))),
        _ => pg_ctl,
    };
    StopPlan {
        mode,
        escalate_after,
        kill_after: primary_kill_after(t, primary),
    }
}

impl Postgres {
    /// Stop as `plan` says. When the kill deadline passes first, the postmaster and its
    /// children get SIGKILL (the data directory then needs crash recovery).
    pub async fn stop_planned(&self, plan: &StopPlan) -> Result<()> {
        let stop = self.stop(plan.mode, plan.escalate_after);
        let Some(limit) = plan.kill_after else {
            return stop.await;
        };
        let pid = self.postmaster_pid();
        match tokio::time::timeout(limit, stop).await {
            Ok(r) => r,
            Err(_) => {
                tracing::warn!(
                    "stopping PostgreSQL took longer than primary_stop_timeout ({}s); aborting it",
                    limit.as_secs()
                );
                if let Some(pid) = pid {
                    process::kill_process_tree(pid);
                    let _ =
                        tokio::time::timeout(Duration::from_secs(10), process::wait_for_exit(pid))
                            .await;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(primary_stop_timeout: u64, synchronous: bool) -> StopTimeouts {
        StopTimeouts {
            pg_ctl_timeout: 60,
            retry_timeout: 10,
            primary_stop_timeout,
            synchronous,
            standby_cluster: false,
        }
    }

    #[test]
    fn kill_deadline_only_for_a_primary_in_synchronous_mode() {
        let secs = |s| Some(Duration::from_secs(s));
        let cases = [
            ("sync, set, primary", t(5, true), true, secs(5)),
            ("sync, not set", t(0, true), true, None),
            ("async, set", t(5, false), true, None),
            ("sync, set, replica", t(5, true), false, None),
            (
                "standby cluster",
                StopTimeouts {
                    standby_cluster: true,
                    ..t(5, true)
                },
                true,
                None,
            ),
        ];
        for (name, timeouts, primary, want) in cases {
            assert_eq!(primary_kill_after(&timeouts, primary), want, "{name}");
        }
    }

    #[test]
    fn demotion_stays_bounded_by_retry_timeout() {
        let p = stop_plan(StopMode::Fast, StopReason::Demote, &t(0, false), true);
        assert_eq!(p.escalate_after, Duration::from_secs(10));
        assert_eq!(p.kill_after, None);
        // primary_stop_timeout adds a kill deadline; the escalation is unchanged.
        let p = stop_plan(StopMode::Fast, StopReason::Demote, &t(30, true), true);
        assert_eq!(p.escalate_after, Duration::from_secs(10));
        assert_eq!(p.kill_after, Some(Duration::from_secs(30)));
        // pg_ctl_timeout shorter than retry_timeout wins.
        let short = StopTimeouts {
            pg_ctl_timeout: 3,
            ..t(0, false)
        };
        let p = stop_plan(StopMode::Fast, StopReason::Demote, &short, true);
        assert_eq!(p.escalate_after, Duration::from_secs(3));
    }

    #[test]
    fn switchover_and_shutdown_wait_pg_ctl_timeout_then_the_kill_deadline() {
        for reason in [StopReason::Switchover, StopReason::Shutdown] {
            let p = stop_plan(StopMode::Fast, reason, &t(4, true), true);
            assert_eq!(p.mode, StopMode::Fast);
            assert_eq!(p.escalate_after, Duration::from_secs(60), "{reason:?}");
            assert_eq!(p.kill_after, Some(Duration::from_secs(4)), "{reason:?}");
            let p = stop_plan(StopMode::Fast, reason, &t(4, false), true);
            assert_eq!(p.kill_after, None, "{reason:?}");
        }
        let p = stop_plan(StopMode::Immediate, StopReason::Demote, &t(0, false), true);
        assert_eq!(p.escalate_after, Duration::from_secs(60));
    }
}
