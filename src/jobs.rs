//! The long jobs of the background slot: bootstrap (initdb or a custom method), replica
//! creation, divergence check, rewind, start, restart and reinitialize.

use crate::config::Config;
use crate::ha::{Divergence, Job, JobOutcome};
use crate::postgres::Postgres;
use crate::postgres::types::ConfigRole;
use std::time::Duration;

pub(crate) async fn run_job(pg: &Postgres, local: &Config, job: &Job) -> JobOutcome {
    let timeout = Duration::from_secs(local.postgresql.pg_ctl_timeout.max(1));
    let r = match job {
        Job::Bootstrap => bootstrap(pg, local, timeout).await,
        Job::Basebackup { from } => pg
            .create_replica(Some(from))
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
        Job::CloneWithoutLeader => pg
            .create_replica(None)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
        Job::CheckDivergence { from } => {
            // A crashed former primary must finish crash recovery before its WAL end is known
            // (a running replica is checked as it runs).
            if pg.postmaster_pid().is_none()
                && let Err(e) = pg.ensure_clean_shutdown().await
            {
                return JobOutcome::Failed(format!(
                    "crash recovery before the divergence check failed: {e}"
                ));
            }
            return match pg.check_timeline_divergence(from).await {
                Ok(d) => JobOutcome::Divergence(match d {
                    crate::postgres::Divergence::NotDiverged => Divergence::NotDiverged,
                    crate::postgres::Divergence::Diverged { reason } => {
                        Divergence::Diverged(reason)
                    }
                    crate::postgres::Divergence::Unknown(why) => Divergence::Unknown(why),
                }),
                Err(e) => JobOutcome::Failed(e.to_string()),
            };
        }
        Job::Rewind { from } => pg
            .rewind(from, &local.postgresql.authentication)
            .await
            .map_err(|e| e.to_string()),
        Job::Start { role } => pg
            .start(role, timeout)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
        Job::Restart { role } => pg
            .restart(role, timeout)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
        Job::Reinitialize { from } => reinitialize(pg, from, timeout).await,
    };
    match r {
        Ok(()) => JobOutcome::Ok,
        Err(e) => JobOutcome::Failed(e),
    }
}

/// Stop, wipe, clone from `from`, start as its standby (the next cycle re-points it if the
/// leader changed meanwhile).
async fn reinitialize(
    pg: &Postgres,
    from: &crate::postgres::UpstreamConn,
    timeout: Duration,
) -> Result<(), String> {
    if pg.postmaster_pid().is_some() {
        pg.stop(crate::postgres::StopMode::Immediate, timeout)
            .await
            .map_err(|e| format!("stopping PostgreSQL: {e}"))?;
    }
    pg.remove_data_dir().await.map_err(|e| e.to_string())?;
    pg.create_replica(Some(from))
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

async fn bootstrap(pg: &Postgres, local: &Config, timeout: Duration) -> Result<(), String> {
    let custom = crate::postgres::custom_bootstrap::from_config(&local.bootstrap);
    let r = bootstrap_steps(pg, local, custom.as_ref(), timeout).await;
    if r.is_err() && custom.is_some() {
        pg.abandon_custom_bootstrap();
    }
    r
}

/// initdb (or the custom method and its recovery), start, users, post_bootstrap.
async fn bootstrap_steps(
    pg: &Postgres,
    local: &Config,
    custom: Option<&crate::postgres::custom_bootstrap::CustomBootstrap>,
    timeout: Duration,
) -> Result<(), String> {
    match custom {
        Some(cb) => pg
            .custom_bootstrap(cb, timeout)
            .await
            .map_err(|e| e.to_string())?,
        None => {
            pg.initdb(&local.bootstrap.initdb)
                .await
                .map_err(|e| e.to_string())?;
            pg.start(&ConfigRole::Primary, timeout)
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    pg.create_bootstrap_users(&local.postgresql.authentication)
        .await
        .map_err(|e| e.to_string())?;
    if let Some(script) = &local.bootstrap.post_bootstrap {
        pg.run_post_bootstrap(script)
            .await
            .map_err(|e| e.to_string())?;
    }
    if custom.is_some() {
        pg.finish_custom_bootstrap().map_err(|e| e.to_string())?;
    }
    Ok(())
}
