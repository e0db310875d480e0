//! Turns the HA core's actions into DCS and PostgreSQL calls. Long work (bootstrap,
//! basebackup, rewind, start) runs in one background job slot so the loop keeps
//! refreshing the leader lock meanwhile.

use crate::callbacks::{CallbackAction, CallbackRole, Callbacks};
use crate::config::Config;
use crate::dcs::{Dcs, DcsError, History, HistoryEntry, Role, Status};
use crate::ha::{Action, Branch, Decision, Job, JobOutcome, JobState, Observation};
use crate::postgres::Postgres;
use crate::postgres::types::ConfigRole;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tracing::{info, warn};

/// What executing a decision ended with: the branch message and role that applied.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub message: String,
    pub role: Role,
    /// We hold the leader key after this cycle.
    pub has_lock: bool,
    /// The decision's slot positions for `status` (written with the leader key refresh).
    pub status_slots: Option<crate::ha::slots::StatusSlots>,
    /// Refreshing the leader key failed because the DCS was unreachable (failsafe mode on):
    /// the lock branches were not run.
    pub dcs_error: Option<String>,
    /// A step failed in a way that makes the remaining actions wrong (pre_promote refused).
    pub aborted: bool,
    /// Boot-clock ms taken just before the last leader-key write that succeeded this
    /// cycle: the lease runs from no earlier than this, so the fencing deadline counts
    /// from here, not from the start of the cycle.
    pub lease_written_boot_ms: Option<u64>,
    /// The pre_promote script failed and the leader key was released.
    pub promotion_cancelled: bool,
}

#[derive(Default)]
struct Slot {
    running: Option<Job>,
    /// The running job's task, so `cancel_job` can stop it (its child processes die with it).
    task: Option<tokio::task::AbortHandle>,
    finished: Option<(Job, JobOutcome)>,
}

pub struct Executor {
    dcs: Arc<dyn Dcs>,
    pg: Arc<Postgres>,
    local: Arc<Config>,
    slot: Arc<Mutex<Slot>>,
    wake: Arc<Notify>,
    callbacks: Callbacks,
}

impl Executor {
    pub fn new(
        dcs: Arc<dyn Dcs>,
        pg: Arc<Postgres>,
        local: Arc<Config>,
        wake: Arc<Notify>,
    ) -> Executor {
        let callbacks = Callbacks::new(
            local.postgresql.callbacks.as_ref(),
            &local.scope,
            crate::callbacks::DEFAULT_TIMEOUT,
        );
        Executor {
            dcs,
            pg,
            local,
            slot: Arc::default(),
            wake,
            callbacks,
        }
    }

    /// The local configuration was re-read (SIGHUP, POST /reload).
    pub fn set_local(&mut self, local: Arc<Config>) {
        self.callbacks
            .set_commands(local.postgresql.callbacks.as_ref());
        self.local = local;
    }

    /// The user callback scripts (the runtime fires `on_reload` and the shutdown `on_stop`).
    pub fn callbacks(&self) -> &Callbacks {
        &self.callbacks
    }

    pub fn set_postgres(&mut self, pg: Arc<Postgres>) {
        self.pg = pg;
    }

    /// The job slot as the HA core should see it this cycle (a finished job is reported once).
    pub fn job_state(&self) -> JobState {
        let mut s = self.slot.lock().expect("job slot");
        if let Some(j) = &s.running {
            return JobState::Running(j.clone());
        }
        match s.finished.take() {
            Some((j, o)) => JobState::Finished(j, o),
            None => JobState::Idle,
        }
    }

    pub fn job_running(&self) -> bool {
        self.slot.lock().expect("job slot").running.is_some()
    }

    /// Run a decision's actions in order; conditional actions pick their branch.
    pub async fn execute(&self, d: &Decision, obs: &Observation) -> Outcome {
        let mut out = Outcome {
            message: d.message.clone(),
            role: d.role,
            has_lock: false,
            status_slots: d.status_slots.clone(),
            dcs_error: None,
            aborted: false,
            lease_written_boot_ms: None,
            promotion_cancelled: false,
        };
        out.has_lock = matches!(&obs.dcs, crate::ha::DcsView::Ok(c) if c.leader_name() == Some(obs.config.name.as_str()));
        self.run_actions(&d.actions, obs, &mut out).await;
        out
    }

    fn run_actions<'a>(
        &'a self,
        actions: &'a [Action],
        obs: &'a Observation,
        out: &'a mut Outcome,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            for a in actions {
                if out.dcs_error.is_some() || out.aborted {
                    return;
                }
                if let Some(branch) = self.run_one(a, obs, out).await {
                    if !branch.message.is_empty() {
                        out.message = branch.message.clone();
                    }
                    if let Some(r) = branch.role {
                        out.role = r;
                    }
                    self.run_actions(&branch.actions, obs, out).await;
                }
            }
        })
    }

    /// Execute one action; conditional ones return the branch to continue with.
    async fn run_one(&self, a: &Action, obs: &Observation, out: &mut Outcome) -> Option<Branch> {
        match a {
            Action::AcquireLock { won, lost } => {
                let t = crate::fence::boottime_ms();
                let ok = log_dcs(
                    "acquire leader lock",
                    self.dcs.attempt_to_acquire_leader().await,
                );
                out.has_lock = ok;
                if ok {
                    out.lease_written_boot_ms = Some(t);
                }
                Some(if ok { won.clone() } else { lost.clone() })
            }
            Action::UpdateLock { held, lost } => {
                let status = match (&obs.pg.sql, &out.status_slots) {
                    (Some(s), Some(extra)) => Some(Status {
                        optime: Some(s.wal_lsn),
                        slots: extra.slots.clone(),
                        retain_slots: extra.retain_slots.clone(),
                    }),
                    (Some(s), None) if !s.in_recovery => Some(Status {
                        optime: Some(s.wal_lsn),
                        ..Default::default()
                    }),
                    _ => None,
                };
                let t = crate::fence::boottime_ms();
                let r = self.dcs.update_leader(status.as_ref()).await;
                if let Err(e) = &r
                    && obs.config.failsafe_mode
                    && !obs.config.paused
                {
                    // Not a lost lock but an unreachable store: the runtime re-decides this
                    // cycle as a DCS outage (failsafe round) instead of demoting outright.
                    warn!("update leader lock failed: {e}");
                    out.dcs_error = Some(e.to_string());
                    return None;
                }
                let ok = log_dcs("update leader lock", r);
                out.has_lock = ok;
                if ok {
                    out.lease_written_boot_ms = Some(t);
                }
                Some(if ok { held.clone() } else { lost.clone() })
            }
            Action::ReleaseLock => {
                log_dcs("release leader lock", self.dcs.delete_leader(None).await);
                out.has_lock = false;
                None
            }
            Action::GracefulDemote => {
                self.graceful_demote(obs).await;
                self.callbacks
                    .fire(CallbackAction::OnStop, CallbackRole::Primary);
                out.has_lock = false;
                None
            }
            Action::RaceInitialize { won, lost } => {
                let ok = log_dcs("race for initialize", self.dcs.initialize(true, "").await);
                Some(if ok { won.clone() } else { lost.clone() })
            }
            Action::SetInitialize { sysid } => {
                log_dcs(
                    "store system identifier",
                    self.dcs.initialize(false, sysid).await,
                );
                None
            }
            Action::CancelInitialize => {
                log_dcs(
                    "cancel initialization",
                    self.dcs.cancel_initialization().await,
                );
                None
            }
            Action::WriteBootstrapConfig => {
                self.write_bootstrap_config(obs).await;
                None
            }
            Action::UpdateHistory { current, timeline } => {
                self.update_history(current.as_ref(), *timeline, &obs.config.name)
                    .await;
                None
            }
            Action::ClearFailover { version } => {
                log_dcs(
                    "clear failover key",
                    self.dcs.set_failover_value("{}", Some(*version)).await,
                );
                None
            }
            Action::StartJob(job) => {
                self.start_job(job.clone());
                None
            }
            Action::CancelJob => {
                self.cancel_job();
                None
            }
            Action::Stop { mode } => {
                // Every Stop is a demotion of a primary that may no longer lead: a fast
                // shutdown waits for walsenders to dead standbys (tens of seconds), so it
                // gets retry_timeout before it escalates to an immediate stop, and
                // primary_stop_timeout (synchronous mode) kills a primary's stop outright.
                let primary = obs.pg.sql.as_ref().is_some_and(|s| !s.in_recovery);
                let plan = crate::postgres::stop_plan::stop_plan(
                    *mode,
                    crate::postgres::stop_plan::StopReason::Demote,
                    &self.stop_timeouts(obs),
                    primary,
                );
                match self.pg.stop_planned(&plan).await {
                    Ok(_) if obs.pg.is_running() => self
                        .callbacks
                        .fire(CallbackAction::OnStop, observed_role(obs, &self.callbacks)),
                    Ok(_) => {}
                    Err(e) => warn!("stopping PostgreSQL ({}) failed: {e}", mode.as_str()),
                }
                None
            }
            Action::Promote => {
                if let Some(cmd) = self.local.postgresql.pre_promote.as_deref()
                    && let Err(why) =
                        crate::callbacks::run_pre_promote(cmd, self.stop_timeout()).await
                {
                    // Fencing failed: we must not become a primary; give the key back so
                    // another member can try (this one backs off for ttl).
                    warn!(
                        "Releasing the leader key voluntarily because the pre-promote script failed ({why})"
                    );
                    log_dcs("release leader lock", self.dcs.delete_leader(None).await);
                    out.has_lock = false;
                    out.aborted = true;
                    out.promotion_cancelled = true;
                    out.role = Role::Replica;
                    out.message =
                        "Promotion cancelled because the pre-promote script failed".into();
                    return None;
                }
                match self.promote_keeping_the_lease(obs, out).await {
                    // As upstream: checkpoint right after promotion so a former primary can
                    // pg_rewind from us at once (pg_rewind needs the new timeline in pg_control).
                    // In the background: clients may write while it runs.
                    Ok(()) => {
                        // Upstream calls on_role_change as soon as `pg_ctl promote` returned,
                        // before the promotion is complete.
                        self.callbacks
                            .fire(CallbackAction::OnRoleChange, CallbackRole::Primary);
                        let pg = self.pg.clone();
                        tokio::spawn(async move {
                            if let Err(e) = pg.checkpoint().await {
                                warn!("checkpoint after promote failed: {e}");
                            }
                        });
                    }
                    Err(e) => warn!("promote failed: {e}"),
                }
                None
            }
            Action::Follow { upstream } => {
                let slot_name = upstream
                    .as_ref()
                    .filter(|u| u.member != crate::postgres::types::REMOTE_PRIMARY)
                    .filter(|u| {
                        obs.config.use_slots
                            && matches!(&obs.dcs, crate::ha::DcsView::Ok(c)
                                if crate::ha::cascade::streams_from_leader(u, c))
                    })
                    .map(|_| crate::ha::slots::slot_name(&obs.config.name));
                let role = ConfigRole::Standby {
                    upstream: upstream.clone(),
                    slot_name,
                };
                match self.pg.write_config(&role) {
                    Ok(()) => match self.pg.reload() {
                        Ok(_) => self
                            .callbacks
                            .fire(CallbackAction::OnReload, CallbackRole::Replica),
                        Err(e) => warn!("reload after re-pointing the standby failed: {e}"),
                    },
                    Err(e) => warn!("rewriting the standby configuration failed: {e}"),
                }
                None
            }
            Action::RemoveDataDir => {
                if let Err(e) = self.pg.remove_data_dir().await {
                    warn!("removing the data directory failed: {e}");
                }
                None
            }
            Action::WriteSyncState {
                members,
                quorum,
                version,
            } => {
                let mut value = serde_json::json!({
                    "leader": obs.config.name,
                    "sync_standby": if members.is_empty() { None } else { Some(members.join(",")) },
                });
                if let Some(q) = quorum {
                    value["quorum"] = (*q).into();
                }
                if log_dcs(
                    "write sync state",
                    self.dcs
                        .set_sync_state_value(&value.to_string(), *version)
                        .await,
                ) {
                    info!("synchronous standbys in the DCS: {members:?}");
                }
                None
            }
            Action::DeleteSyncState { version } => {
                log_dcs(
                    "delete sync state",
                    self.dcs.delete_sync_state(*version).await,
                );
                None
            }
            Action::SetSyncStandbyNames(value) => {
                match self
                    .pg
                    .set_synchronous_standby_names(value.as_deref())
                    .await
                {
                    Ok(()) => info!(
                        "synchronous_standby_names set to '{}'",
                        value.as_deref().unwrap_or("")
                    ),
                    Err(e) => warn!("setting synchronous_standby_names failed: {e}"),
                }
                None
            }
            Action::CreateSlots(names) => {
                if let Err(e) = self.pg.ensure_physical_slots(names).await {
                    warn!("creating replication slots {names:?} failed: {e}");
                }
                None
            }
            Action::WriteFailsafe(map) => {
                let value = serde_json::to_string(map).unwrap_or_default();
                log_dcs("write failsafe key", self.dcs.write_failsafe(&value).await);
                None
            }
            Action::DropSlots(names) => {
                match self.pg.drop_slots(names).await {
                    Ok(left) => {
                        let gone: Vec<&String> =
                            names.iter().filter(|n| !left.contains(n)).collect();
                        if !gone.is_empty() {
                            info!("dropped replication slots {gone:?}");
                        }
                    }
                    Err(e) => warn!("dropping replication slots {names:?} failed: {e}"),
                }
                None
            }
            Action::CreateLogicalSlots(slots) => {
                for l in slots {
                    match self
                        .pg
                        .create_logical_slot(&l.name, &l.database, &l.plugin)
                        .await
                    {
                        Ok(()) => info!(
                            "created permanent logical slot {} ({} in {})",
                            l.name, l.plugin, l.database
                        ),
                        Err(e) => warn!("creating logical slot {} failed: {e}", l.name),
                    }
                }
                None
            }
            Action::AdvanceSlots(targets) => {
                for (name, e) in self.pg.advance_slots(targets).await {
                    warn!("moving replication slot {name} forward failed: {e}");
                }
                None
            }
            Action::CopyLogicalSlots { from, names } => {
                self.copy_logical_slots(from, names).await;
                None
            }
        }
    }

    /// Fast shutdown, then release the leader key with the shutdown checkpoint as the last
    /// optime so the candidate knows how far it must have received before promoting.
    /// `pg_ctl promote`, refreshing the leader key every loop_wait while it runs. A slow
    /// promotion (seconds on a loaded machine) must not let the lease we just took lapse:
    /// the fencer would then rightly stop the new primary. Upstream's loop keeps running
    /// while its promotion runs in the background, with the same effect.
    async fn promote_keeping_the_lease(
        &self,
        obs: &Observation,
        out: &mut Outcome,
    ) -> Result<(), crate::postgres::PgError> {
        let promote = self.pg.promote(self.stop_timeout());
        tokio::pin!(promote);
        let every = Duration::from_secs(obs.config.loop_wait.max(1));
        loop {
            tokio::select! {
                r = &mut promote => return r,
                _ = tokio::time::sleep(every) => {
                    let t = crate::fence::boottime_ms();
                    match self.dcs.update_leader(None).await {
                        Ok(true) => out.lease_written_boot_ms = Some(t),
                        Ok(false) => warn!("lost the leader key while promoting"),
                        Err(e) => warn!("could not refresh the leader key while promoting: {e}"),
                    }
                }
            }
        }
    }

    async fn graceful_demote(&self, obs: &Observation) {
        let plan = crate::postgres::stop_plan::stop_plan(
            crate::postgres::StopMode::Fast,
            crate::postgres::stop_plan::StopReason::Switchover,
            &self.stop_timeouts(obs),
            true,
        );
        if let Err(e) = self.pg.stop_planned(&plan).await {
            warn!("stopping PostgreSQL for the switchover failed: {e}");
        }
        let optime = match self.pg.observe().await.data_dir {
            crate::postgres::types::DataDirState::Initialized(c) => Some(c.checkpoint_lsn),
            _ => None,
        };
        let status = Status {
            optime,
            ..Default::default()
        };
        log_dcs(
            "release leader lock after demote",
            self.dcs.delete_leader(Some(&status)).await,
        );
    }

    /// Copy the slots' state from the leader, then restart (in the background job slot)
    /// so PostgreSQL loads them.
    async fn copy_logical_slots(
        &self,
        from: &crate::postgres::types::UpstreamConn,
        names: &[String],
    ) {
        match self.pg.copy_logical_slots(from, names).await {
            Ok(()) => {
                info!(
                    "copied logical slots {names:?} from '{}'; restarting to load them",
                    from.member
                );
                self.start_job(Job::Restart {
                    role: self.pg.config_role(),
                });
            }
            Err(e) => warn!(
                "copying logical slots {names:?} from '{}' failed: {e}",
                from.member
            ),
        }
    }

    fn stop_timeouts(&self, obs: &Observation) -> crate::postgres::stop_plan::StopTimeouts {
        crate::postgres::stop_plan::StopTimeouts {
            pg_ctl_timeout: self.local.postgresql.pg_ctl_timeout,
            retry_timeout: obs.config.retry_timeout,
            primary_stop_timeout: obs.config.lifecycle.primary_stop_timeout,
            synchronous: obs.config.sync.enabled(),
            standby_cluster: obs.config.standby_cluster.is_some(),
        }
    }

    fn stop_timeout(&self) -> Duration {
        Duration::from_secs(self.local.postgresql.pg_ctl_timeout.max(1))
    }

    async fn write_bootstrap_config(&self, obs: &Observation) {
        let already = matches!(&obs.dcs, crate::ha::DcsView::Ok(c) if c.config.is_some());
        if already {
            return;
        }
        let value = serde_json::Value::Object(self.local.bootstrap.dcs.clone()).to_string();
        log_dcs(
            "write cluster config",
            self.dcs.set_config_value(&value, None).await,
        );
    }

    /// Rebuild `history` from the timeline history file of the current timeline.
    async fn update_history(&self, current: Option<&History>, timeline: u32, me: &str) {
        info!("recording timeline history up to timeline {timeline}");
        let lines = match read_timeline_history(&self.pg.settings().data_dir(), timeline) {
            Ok(l) => l,
            Err(e) => {
                warn!("cannot read the history file of timeline {timeline}: {e}");
                return;
            }
        };
        let mut entries: Vec<HistoryEntry> = current.map(|h| h.lines.clone()).unwrap_or_default();
        for (tl, lsn, reason) in lines {
            if entries.iter().any(|e| e.timeline == tl) {
                continue;
            }
            let newest = tl + 1 == timeline;
            entries.push(HistoryEntry {
                timeline: tl,
                lsn,
                reason,
                timestamp: newest.then(|| {
                    chrono::Local::now()
                        .format("%Y-%m-%dT%H:%M:%S%.6f%:z")
                        .to_string()
                }),
                new_leader: newest.then(|| me.to_string()),
            });
        }
        entries.sort_by_key(|e| e.timeline);
        let h = History {
            version: 0,
            lines: entries,
        };
        log_dcs(
            "write history",
            self.dcs.set_history_value(&h.to_json_string()).await,
        );
    }

    /// The job running right now, if any.
    pub fn running_job(&self) -> Option<Job> {
        self.slot.lock().expect("job slot").running.clone()
    }

    /// Stop the running job, if any (POST /reinitialize with force). Returns what it was.
    pub fn cancel_job(&self) -> Option<Job> {
        let mut s = self.slot.lock().expect("job slot");
        if let Some(t) = s.task.take() {
            t.abort();
        }
        let job = s.running.take();
        if let Some(j) = &job {
            warn!("cancelled {}", j.describe());
        }
        job
    }

    /// Start a background job unless one is running (false then).
    pub fn start_job(&self, job: Job) -> bool {
        {
            let mut s = self.slot.lock().expect("job slot");
            if s.running.is_some() {
                warn!("a job is already running; not starting {}", job.describe());
                return false;
            }
            s.running = Some(job.clone());
        }
        info!("starting {}", job.describe());
        let (pg, local, slot, wake, callbacks) = (
            self.pg.clone(),
            self.local.clone(),
            self.slot.clone(),
            self.wake.clone(),
            self.callbacks.clone(),
        );
        let task_slot = slot.clone();
        let mut s = task_slot.lock().expect("job slot");
        let task = tokio::spawn(async move {
            let outcome = crate::jobs::run_job(&pg, &local, &job).await;
            match &outcome {
                JobOutcome::Failed(e) => warn!("{} failed: {e}", job.describe()),
                o => {
                    info!("{} finished: {o:?}", job.describe());
                    job_callback(&callbacks, &job);
                }
            }
            let mut s = slot.lock().expect("job slot");
            s.running = None;
            s.task = None;
            s.finished = Some((job, outcome));
            drop(s);
            wake.notify_one();
        });
        s.task = Some(task.abort_handle());
        true
    }
}

/// The callback a successfully finished job triggers (bootstrap runs none until it is done).
fn job_callback(cb: &Callbacks, job: &Job) {
    match job {
        Job::Bootstrap => cb.started(CallbackRole::Primary),
        Job::Start { role } => cb.started(callback_role(role)),
        Job::Restart { role } => cb.fire(CallbackAction::OnRestart, callback_role(role)),
        _ => {}
    }
}

fn callback_role(role: &ConfigRole) -> CallbackRole {
    match role {
        ConfigRole::Primary => CallbackRole::Primary,
        ConfigRole::Standby { .. } => CallbackRole::Replica,
    }
}

/// The role PostgreSQL had this cycle (for `on_stop`); the last reported one while it was
/// not answering queries.
fn observed_role(obs: &Observation, cb: &Callbacks) -> CallbackRole {
    match &obs.pg.sql {
        Some(s) if s.in_recovery => CallbackRole::Replica,
        Some(_) => CallbackRole::Primary,
        None => cb.last_role().unwrap_or(CallbackRole::Replica),
    }
}

/// `Ok(false)` and `Err` both mean "did not happen"; the error is logged with the operation.
fn log_dcs(what: &str, r: Result<bool, DcsError>) -> bool {
    match r {
        Ok(ok) => ok,
        Err(e) => {
            warn!("{what} failed: {e}");
            false
        }
    }
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor").finish_non_exhaustive()
    }
}

/// Parse `pg_wal/<TL>.history`: lines "parentTLI\tswitchpoint\treason".
fn read_timeline_history(
    data_dir: &std::path::Path,
    timeline: u32,
) -> std::io::Result<Vec<(u32, u64, String)>> {
    let path = data_dir
        .join("pg_wal")
        .join(format!("{timeline:08X}.history"));
    let text = std::fs::read_to_string(path)?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut f = l.splitn(3, '\t');
            let tl = f.next()?.trim().parse().ok()?;
            let lsn = crate::postgres::types::parse_lsn(f.next()?)?;
            Some((tl, lsn, f.next().unwrap_or("").trim().to_string()))
        })
        .collect())
}
