//! The HA loop: fixed cadence (next run = start + loop_wait), early wake on a leader-key
//! change, a postmaster exit, a finished job or an API command; shutdown first.
//! observe -> decide -> publish -> execute -> touch member.

mod commands;
mod safety;
mod scheduled;

use crate::callbacks::{CallbackAction, CallbackRole};
use crate::config::{Config, DynamicConfig};
use crate::dcs::{Cluster, Dcs, Role};
use crate::executor::Executor;
use crate::ha::{self, DcsView, HaConfig, Memory, Observation, PeerReply, PeerStatus};
use crate::postgres::Postgres;
use crate::postgres::types::StopMode;
use crate::status::NodeStatus;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Notify, watch};
use tracing::{info, warn};

pub struct Runtime {
    pub local: Arc<Config>,
    pub dcs: Arc<dyn Dcs>,
    pub pg: Arc<Postgres>,
    pub executor: Executor,
    pub status: watch::Sender<Arc<NodeStatus>>,
    pub wake: Arc<Notify>,
    pub memory: Memory,
    pub dynamic: DynamicConfig,
    /// New local configurations from SIGHUP / POST /reload (see `reload.rs`).
    config_tx: Arc<watch::Sender<Arc<Config>>>,
    config_rx: watch::Receiver<Arc<Config>>,
    commands_tx: crate::command::CommandSender,
    commands_rx: Option<crate::command::CommandReceiver>,
    /// POST /restart with a schedule, waiting for its time.
    scheduled_restart: Option<crate::command::RestartRequest>,
    /// The scheduled restart in our member key was read back (once, at start).
    schedule_restored: bool,
    /// The API call waiting for the running restart job.
    restart_reply: Option<tokio::sync::oneshot::Sender<crate::command::CommandReply>>,
    started: Instant,
    http: reqwest::Client,
    /// The last POST /failsafe received from a primary.
    failsafe_contact: Option<safety::ReceivedContact>,
    /// When the last DCS read that showed a leader key started.
    leader_seen_at: Option<Instant>,
    /// The self-fencing process (see `fence.rs`), when enabled.
    fence: Option<crate::fence::Fence>,
    watchdog: crate::watchdog::Watchdog,
    /// Watchdog mode is required and the device failed: published, and we do not lead.
    watchdog_failed: bool,
    /// Boot-clock ms before the last leader-key write that succeeded (fencing deadline).
    lease_written_boot_ms: Option<u64>,
}

impl Runtime {
    pub fn new(
        local: Arc<Config>,
        dcs: Arc<dyn Dcs>,
        pg: Arc<Postgres>,
        status: watch::Sender<Arc<NodeStatus>>,
    ) -> Runtime {
        let wake = Arc::new(Notify::new());
        let executor = Executor::new(dcs.clone(), pg.clone(), local.clone(), wake.clone());
        let dynamic = crate::config::dynamic::DynamicConfig::from_map(&local.bootstrap.dcs).0;
        let (config_tx, config_rx) = watch::channel(local.clone());
        let (commands_tx, commands_rx) = crate::command::channel();
        let watchdog = crate::watchdog::Watchdog::new(crate::watchdog::WatchdogConfig::from_map(
            &local.watchdog,
        ));
        Runtime {
            commands_tx,
            commands_rx: Some(commands_rx),
            scheduled_restart: None,
            schedule_restored: false,
            restart_reply: None,
            config_tx: Arc::new(config_tx),
            config_rx,
            local,
            dcs,
            pg,
            executor,
            status,
            wake,
            memory: Memory::default(),
            dynamic,
            started: Instant::now(),
            failsafe_contact: None,
            leader_seen_at: None,
            fence: None,
            watchdog,
            watchdog_failed: false,
            lease_written_boot_ms: None,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .expect("http client"),
        }
    }

    /// Start the self-fencing process (the `patroni` binary only; see `fence.rs`).
    pub fn enable_fence(&mut self) {
        match crate::fence::Fence::spawn(&self.local.postgresql.data_dir) {
            Ok(f) => self.fence = Some(f),
            Err(e) => warn!("cannot start the fencing process: {e}"),
        }
    }

    /// Where the REST API sends restart / reinitialize requests.
    pub fn command_sender(&self) -> crate::command::CommandSender {
        self.commands_tx.clone()
    }

    /// The local configuration as last re-read (SIGHUP / POST /reload), e.g. for the API's
    /// authentication settings.
    pub fn config_watch(&self) -> watch::Receiver<Arc<Config>> {
        self.config_rx.clone()
    }

    /// A handle that re-reads the configuration file `path` and hands it to this loop.
    pub fn reloader(&self, path: Option<std::path::PathBuf>) -> crate::reload::ConfigReloader {
        crate::reload::ConfigReloader::new(path, self.config_tx.clone(), self.wake.clone())
    }

    /// Adopt a re-read local configuration; settings that need a daemon restart keep
    /// their running value.
    fn adopt_local(&mut self, new: Arc<Config>) {
        let mut new = (*new).clone();
        let old = &self.local;
        for key in crate::reload::restart_only_changes(old, &new) {
            warn!(
                "reload: a change of `{key}` needs a restart of patroni; keeping the running value"
            );
        }
        new.name = old.name.clone();
        new.scope = old.scope.clone();
        new.namespace = old.namespace.clone();
        new.etcd3 = old.etcd3.clone();
        new.restapi.listen = old.restapi.listen.clone();
        new.postgresql.data_dir = old.postgresql.data_dir.clone();
        if new == **old {
            info!("reload: the local configuration is unchanged");
            return;
        }
        info!("reload: adopting the re-read local configuration");
        let new = Arc::new(new);
        self.local = new.clone();
        self.executor.set_local(new);
    }

    /// Run cycles until `shutdown` resolves, then stop PostgreSQL and release the leader key.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        self.check_watchdog_at_start();
        let mut commands = self.commands_rx.take().expect("run is called once");
        loop {
            let cycle_start = Instant::now();
            let (leader_version, pid, recheck_ms) = self.cycle().await;
            let loop_wait = Duration::from_secs(self.dynamic.loop_wait.max(1));
            let next = cycle_start
                + recheck_ms.map_or(loop_wait, |ms| Duration::from_millis(ms).min(loop_wait));
            let wait = next.saturating_duration_since(Instant::now());
            let watch_leader = async {
                if self.memory.has_lock {
                    std::future::pending::<()>().await
                }
                match self.dcs.watch_leader(leader_version, wait).await {
                    Ok(true) => {}
                    _ => std::future::pending::<()>().await,
                }
            };
            let postmaster_exit = async {
                match pid {
                    Some(pid) => crate::postgres::wait_for_exit(pid).await,
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                _ = tokio::time::sleep(wait) => {}
                _ = self.wake.notified() => {}
                Some(cmd) = commands.recv() => self.handle_command(cmd),
                _ = watch_leader => info!("leader key changed; running the HA cycle early"),
                _ = postmaster_exit => warn!("the postmaster exited; running the HA cycle now"),
            }
        }
        self.shutdown().await;
    }

    /// One HA cycle. Returns the leader key version seen (for the watch), the postmaster pid
    /// and, when the core asked for it, how soon to run again.
    async fn cycle(&mut self) -> (Option<i64>, Option<u32>, Option<u64>) {
        if self.config_rx.has_changed().unwrap_or(false) {
            let new = self.config_rx.borrow_and_update().clone();
            self.adopt_local(new);
        }
        let cycle_boot_ms = crate::fence::boottime_ms();
        let retry = Duration::from_secs(self.dynamic.retry_timeout.max(1));
        let read_started = Instant::now();
        let dcs_view = match tokio::time::timeout(retry, self.dcs.get_cluster()).await {
            Ok(Ok(c)) => {
                if c.leader.is_some() {
                    self.leader_seen_at = Some(read_started);
                }
                for w in &c.parse_warnings {
                    warn!("ignoring an unreadable DCS value: {w}");
                }
                DcsView::Ok(Arc::new(c))
            }
            Ok(Err(e)) => DcsView::Unreachable(e.to_string()),
            Err(_) => DcsView::Unreachable(format!("no answer within retry_timeout ({retry:?})")),
        };
        if let DcsView::Ok(c) = &dcs_view {
            self.apply_dynamic(c).await;
            if !self.schedule_restored {
                self.restore_scheduled_restart(c);
                self.schedule_restored = true;
            }
        }
        self.apply_pg_settings();
        let pg = self.pg.observe().await;
        let restart_soon = self.run_scheduled_restart(&pg);
        let mut obs = Observation {
            now_ms: self.started.elapsed().as_millis() as u64,
            wall_ms: chrono::Utc::now().timestamp_millis(),
            config: self.ha_config(),
            dcs: dcs_view,
            pg,
            job: self.executor.job_state(),
            peers: vec![],
            failsafe: Default::default(),
        };
        obs.failsafe = self.failsafe_input();
        if ha::failsafe::needs_round(&obs) {
            obs.failsafe.round = Some(self.failsafe_round().await);
        }
        if ha::needs_peers(&obs, &self.memory)
            && let DcsView::Ok(c) = &obs.dcs
        {
            obs.peers = fetch_peers(&self.http, c, &obs.config.name).await;
        }
        if let ha::JobState::Finished(ha::Job::Restart { .. }, outcome) = &obs.job
            && let Some(tx) = self.restart_reply.take()
        {
            let _ = tx.send(match outcome {
                ha::JobOutcome::Failed(e) => {
                    warn!("restart failed: {e}");
                    crate::command::CommandReply::Refused {
                        status: 503,
                        message: "restart failed".into(),
                    }
                }
                _ => crate::command::CommandReply::Done("restarted successfully".into()),
            });
        }
        let mut decision = ha::decide(&obs, &mut self.memory);
        self.publish(&obs, decision.role, self.memory.has_lock, &decision.message);
        let mut outcome = self.executor.execute(&decision, &obs).await;
        if let Some(err) = outcome.dcs_error.take() {
            // Refreshing the leader key hit an unreachable DCS (failsafe mode on): decide
            // again as a DCS outage, with a POST /failsafe round.
            obs.dcs = DcsView::Unreachable(err);
            if ha::failsafe::needs_round(&obs) {
                obs.failsafe.round = Some(self.failsafe_round().await);
            }
            decision = ha::decide(&obs, &mut self.memory);
            self.publish(&obs, decision.role, self.memory.has_lock, &decision.message);
            outcome = self.executor.execute(&decision, &obs).await;
        }
        if changes_postgres(&decision.actions) {
            // Publish what PostgreSQL is now (a promoted primary must answer /primary at
            // once, not a loop_wait later).
            obs.pg = self.pg.observe().await;
        }
        if let DcsView::Ok(_) = &obs.dcs {
            self.memory.has_lock = outcome.has_lock;
        } else {
            // Without the DCS only the core knows (failsafe mode may keep us leading).
            outcome.has_lock = self.memory.has_lock;
        }
        self.memory.last_role = outcome.role;
        if outcome.promotion_cancelled {
            self.memory.pre_promote_failed_ms = Some(obs.now_ms);
        }
        self.lease_written_boot_ms = outcome.lease_written_boot_ms.or(self.lease_written_boot_ms);
        // The fencing deadline runs from the last lease write that succeeded; in a DCS
        // outage the core only keeps leading after a failsafe round every member accepted
        // this cycle, which is then the proof.
        let fence_from = match (&obs.dcs, self.lease_written_boot_ms) {
            (DcsView::Ok(_), Some(t)) => t,
            _ => cycle_boot_ms,
        };
        self.after_cycle_safety(&obs, outcome.role, fence_from);
        if decision.touch_member {
            self.touch_member(&obs, outcome.role, &decision.state).await;
        }
        self.publish(&obs, outcome.role, outcome.has_lock, &outcome.message);
        if !outcome.message.is_empty() {
            info!("{}", outcome.message);
        }
        let leader_version = match &obs.dcs {
            DcsView::Ok(c) => c.leader.as_ref().map(|l| l.version),
            _ => None,
        };
        let recheck = [decision.recheck_ms, restart_soon]
            .into_iter()
            .flatten()
            .min();
        (leader_version, obs.pg.postmaster_pid, recheck)
    }

    /// Adopt the DCS `config` key (merged with local overrides) and push timing to the DCS.
    async fn apply_dynamic(&mut self, c: &Cluster) {
        let Some(cfg) = &c.config else { return };
        let (d, warnings) = DynamicConfig::from_map(&cfg.data);
        for w in warnings {
            warn!("DCS config: {w}");
        }
        let mut d = crate::config::dynamic::merge_local(&self.local, &d.clone());
        if let Some(w) = d.enforce_timing() {
            warn!("{w}");
        }
        if d.ttl != self.dynamic.ttl {
            self.dcs.set_ttl(Duration::from_secs(d.ttl)).await;
        }
        if d.retry_timeout != self.dynamic.retry_timeout {
            self.dcs
                .set_retry_timeout(Duration::from_secs(d.retry_timeout))
                .await;
        }
        std::mem::swap(&mut self.dynamic, &mut d);
    }

    /// Push the effective PostgreSQL settings (local file + dynamic config) to the server:
    /// files rewritten and a reload when anything changed.
    fn apply_pg_settings(&self) {
        let settings = crate::postgres::settings_from_config(&self.local, &self.dynamic);
        match self.pg.apply_settings(settings) {
            Ok(crate::postgres::Reconfigured::Reloaded) => {
                info!("PostgreSQL configuration changed: files rewritten and reloaded");
                let cb = self.executor.callbacks();
                let role = if self.memory.has_lock {
                    CallbackRole::Primary
                } else {
                    cb.last_role().unwrap_or(CallbackRole::Replica)
                };
                cb.fire(CallbackAction::OnReload, role);
            }
            Ok(_) => {}
            Err(e) => warn!("applying the new PostgreSQL configuration failed: {e}"),
        }
    }

    fn ha_config(&self) -> HaConfig {
        let pgc = &self.local.postgresql;
        HaConfig {
            name: self.local.name.clone(),
            ttl: self.dynamic.ttl,
            loop_wait: self.dynamic.loop_wait,
            retry_timeout: self.dynamic.retry_timeout,
            maximum_lag_on_failover: self.dynamic.maximum_lag_on_failover,
            use_pg_rewind: pgc
                .use_pg_rewind
                .unwrap_or(self.dynamic.postgresql.use_pg_rewind),
            use_slots: self.dynamic.postgresql.use_slots,
            remove_data_directory_on_rewind_failure: pgc.remove_data_directory_on_rewind_failure,
            remove_data_directory_on_diverged_timelines: pgc
                .remove_data_directory_on_diverged_timelines,
            tags: self.effective_tags(),
            paused: self.dynamic.pause,
            failsafe_mode: self.dynamic.failsafe_mode,
            lifecycle: ha::LifecycleConfig {
                primary_start_timeout: self.dynamic.primary_start_timeout,
                check_timeline: self.dynamic.check_timeline,
                primary_stop_timeout: self.dynamic.primary_stop_timeout,
            },
            sync: ha::sync::SyncConfig::from_value(
                &self.dynamic.synchronous_mode,
                self.dynamic.synchronous_mode_strict,
                self.dynamic.synchronous_node_count,
                self.dynamic
                    .extra
                    .get("maximum_lag_on_syncnode")
                    .and_then(|v| v.as_i64())
                    .unwrap_or(-1),
            ),
            standby_cluster: self
                .dynamic
                .standby_cluster
                .as_ref()
                .and_then(ha::standby::StandbyCluster::from_map),
            slots: ha::slots::SlotsConfig::from_dynamic(
                self.dynamic.slots.as_ref(),
                self.dynamic.ignore_slots.as_ref(),
                &self.dynamic.member_slots_ttl,
            ),
            clone_without_leader: crate::postgres::replica_methods::any_works_without_leader(
                pgc, None,
            ),
        }
    }

    /// Our tags, plus nofailover while a required watchdog is unusable.
    fn effective_tags(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut tags = self.local.tags.clone();
        if self.watchdog_failed {
            tags.insert("nofailover".into(), true.into());
        }
        tags
    }

    async fn touch_member(&self, obs: &Observation, role: Role, state: &crate::dcs::PgState) {
        let (conn_url, api_url) = self.urls();
        let id = ha::member::MemberIdentity {
            conn_url: &conn_url,
            api_url: &api_url,
            proxy_url: self.local.postgresql.proxy_address.as_deref(),
            tags: &self.local.tags,
        };
        let mut data = ha::member::member_data(&id, &obs.pg, role, state);
        let reason = self.restart_reason(obs);
        if !reason.is_empty() {
            data.pending_restart = Some(true);
            data.pending_restart_reason = Some(serde_json::Value::Object(reason));
        }
        // Upstream's member key carries both: `patronictl pause --wait` polls `pause` in every
        // member key, and `patronictl list` shows `scheduled_restart` from there.
        if obs.config.paused {
            data.pause = Some(true);
        }
        data.scheduled_restart = self.scheduled_restart_json(true);
        if let Err(e) = self.dcs.touch_member(&data).await {
            warn!("updating my member key failed: {e}");
        }
    }

    fn urls(&self) -> (String, String) {
        let pg = &self.local.postgresql;
        let api = &self.local.restapi;
        let api_addr = if api.connect_address.is_empty() {
            &api.listen
        } else {
            &api.connect_address
        };
        let scheme = if api.certfile.is_some() {
            "https"
        } else {
            "http"
        };
        (
            format!("postgres://{}/postgres", pg.connect_address),
            format!("{scheme}://{api_addr}/patroni"),
        )
    }

    /// Upstream's `pending_restart_reason`: {name: {old_value, new_value}}.
    fn restart_reason(&self, obs: &Observation) -> serde_json::Map<String, serde_json::Value> {
        let sql_pending = obs
            .pg
            .sql
            .as_ref()
            .map(|s| s.pending_restart.clone())
            .unwrap_or_default();
        self.pg
            .pending_restart_reason(&sql_pending)
            .into_iter()
            .map(|(k, r)| {
                (
                    k,
                    serde_json::json!({"old_value": r.old_value, "new_value": r.new_value}),
                )
            })
            .collect()
    }

    fn publish(&self, obs: &Observation, role: Role, has_lock: bool, message: &str) {
        let (conn_url, api_url) = self.urls();
        let (cluster, unlocked, last_seen) = match &obs.dcs {
            DcsView::Ok(c) => (
                Some(c.clone()),
                c.is_unlocked(),
                Some(chrono::Utc::now().timestamp()),
            ),
            DcsView::Unreachable(_) => {
                let prev = self.status.borrow();
                (
                    prev.cluster.clone(),
                    prev.cluster_unlocked,
                    prev.dcs_last_seen,
                )
            }
        };
        let restart_reason = self.restart_reason(obs);
        let status = NodeStatus {
            name: self.local.name.clone(),
            scope: self.local.scope.clone(),
            role,
            state: ha::observed_state(obs),
            pg: obs.pg.sql.clone(),
            database_system_identifier: obs.pg.system_identifier().map(str::to_string),
            has_lock,
            cluster_unlocked: unlocked,
            dcs_last_seen: last_seen,
            tags: self.local.tags.clone(),
            dynamic: self.dynamic.clone(),
            cluster,
            pending_restart: !restart_reason.is_empty(),
            scheduled_restart: self.scheduled_restart_json(false),
            pending_restart_reason: restart_reason,
            watchdog_failed: self.watchdog_failed,
            loop_running: true,
            last_cycle_at: Some(chrono::Utc::now().timestamp()),
            last_message: message.to_string(),
            conn_url: Some(conn_url),
            api_url: Some(api_url),
        };
        self.status.send_replace(Arc::new(status));
    }

    /// SIGTERM: stop PostgreSQL cleanly, then hand the leader key over at once (with the
    /// shutdown checkpoint as the last optime) instead of letting it expire after ttl.
    /// Paused (maintenance mode): PostgreSQL keeps running and the leader key stays, as in
    /// upstream's pause.rst; the key then expires after ttl unless a daemon comes back.
    async fn shutdown(&mut self) {
        if self.dynamic.pause {
            info!("shutting down while paused: leaving PostgreSQL running");
            return;
        }
        info!("shutting down: stopping PostgreSQL");
        let mut st = (**self.status.borrow()).clone();
        st.role = Role::Demoted;
        self.status.send_replace(Arc::new(st));
        let was_running = self.pg.postmaster_pid().is_some();
        let timeouts = crate::postgres::stop_plan::StopTimeouts {
            pg_ctl_timeout: self.local.postgresql.pg_ctl_timeout,
            retry_timeout: self.dynamic.retry_timeout,
            primary_stop_timeout: self.dynamic.primary_stop_timeout,
            synchronous: self.dynamic.synchronous_enabled(),
            standby_cluster: self.dynamic.standby_cluster.is_some(),
        };
        let plan = crate::postgres::stop_plan::stop_plan(
            StopMode::Fast,
            crate::postgres::stop_plan::StopReason::Shutdown,
            &timeouts,
            self.memory.has_lock,
        );
        if let Err(e) = self.pg.stop_planned(&plan).await {
            warn!("stopping PostgreSQL failed: {e}");
        }
        self.watchdog.disable();
        if let Some(f) = self.fence.take() {
            f.exit();
        }
        if was_running {
            let cb = self.executor.callbacks();
            let role = if self.memory.has_lock {
                CallbackRole::Primary
            } else {
                cb.last_role().unwrap_or(CallbackRole::Replica)
            };
            cb.fire(CallbackAction::OnStop, role);
        }
        if self.memory.has_lock {
            let pg = self.pg.observe().await;
            let optime = match &pg.data_dir {
                crate::postgres::types::DataDirState::Initialized(c) => Some(c.checkpoint_lsn),
                _ => None,
            };
            let status = crate::dcs::Status {
                optime,
                ..Default::default()
            };
            match self.dcs.delete_leader(Some(&status)).await {
                Ok(true) => info!("released the leader key"),
                Ok(false) => warn!("the leader key was no longer mine at shutdown"),
                Err(e) => warn!("could not release the leader key: {e}"),
            }
        }
    }
}

/// Whether any (possibly conditional) action changes the server's role or state.
fn changes_postgres(actions: &[ha::Action]) -> bool {
    use ha::Action as A;
    actions.iter().any(|a| match a {
        A::Promote | A::Stop { .. } | A::GracefulDemote | A::Follow { .. } => true,
        A::AcquireLock { won, lost } | A::UpdateLock { held: won, lost } => {
            changes_postgres(&won.actions) || changes_postgres(&lost.actions)
        }
        _ => false,
    })
}

/// GET /patroni of every other member, 2 s budget each, in parallel.
async fn fetch_peers(http: &reqwest::Client, c: &Cluster, me: &str) -> Vec<PeerStatus> {
    let futs = c.members.iter().filter(|m| m.name != me).map(|m| {
        let url = m.api_base().map(|b| format!("{b}/patroni"));
        let name = m.name.clone();
        async move {
            let reply = match url {
                Some(u) => match http.get(&u).send().await {
                    Ok(r) => r
                        .json::<serde_json::Value>()
                        .await
                        .ok()
                        .map(|v| parse_peer(&v)),
                    Err(_) => None,
                },
                None => None,
            };
            PeerStatus { name, reply }
        }
    });
    futures::future::join_all(futs).await
}

/// Read what upstream's race reads from /patroni.
pub fn parse_peer(v: &serde_json::Value) -> PeerReply {
    let role = v.get("role").and_then(|r| r.as_str()).unwrap_or("");
    let xlog = v.get("xlog").or_else(|| v.get("wal"));
    let get = |k: &str| xlog.and_then(|x| x.get(k)).and_then(|n| n.as_u64());
    let wal = get("location")
        .unwrap_or(0)
        .max(get("received_location").unwrap_or(0))
        .max(get("replayed_location").unwrap_or(0));
    let tags = v.get("tags");
    PeerReply {
        is_primary: matches!(role, "primary" | "master"),
        wal_position: wal,
        timeline: v.get("timeline").and_then(|t| t.as_u64()).map(|t| t as u32),
        nofailover: crate::dcs::tag_is_true(tags.and_then(|t| t.get("nofailover"))),
        failover_priority: tags
            .and_then(|t| t.get("failover_priority"))
            .and_then(|p| p.as_i64())
            .unwrap_or(1),
        watchdog_failed: v
            .get("watchdog_failed")
            .and_then(|w| w.as_bool())
            .unwrap_or(false),
    }
}
