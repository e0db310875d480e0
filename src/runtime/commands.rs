//! The HA loop's side of REST commands (POST/DELETE /restart, POST /reinitialize): they run
//! as background jobs in the executor's slot, so the loop keeps refreshing the leader key.

use super::Runtime;
use crate::command::{CommandReply, NodeCommand, ReinitRequest, RestartRequest};
use crate::ha::{self, Job};
use crate::postgres::types::ConfigRole;
use tokio::sync::oneshot;
use tracing::{info, warn};

fn refused(status: u16, message: impl Into<String>) -> CommandReply {
    CommandReply::Refused {
        status,
        message: message.into(),
    }
}

impl Runtime {
    pub(crate) fn handle_command(&mut self, cmd: NodeCommand) {
        match cmd {
            NodeCommand::Restart(mut req, reply) if req.schedule.is_some() => {
                let answer = if self.scheduled_restart.is_some() {
                    refused(409, "Another restart is already scheduled")
                } else {
                    info!(
                        "restart scheduled at {}",
                        req.schedule.unwrap().to_rfc3339()
                    );
                    req.postmaster_start_time = self
                        .status
                        .borrow()
                        .pg
                        .as_ref()
                        .map(|s| s.postmaster_start_time.clone())
                        .filter(|t| !t.is_empty());
                    self.scheduled_restart = Some(req);
                    CommandReply::Accepted("Restart scheduled".into())
                };
                let _ = reply.send(answer);
            }
            NodeCommand::Restart(_, reply) => self.restart_now(Some(reply)),
            NodeCommand::CancelScheduledRestart(reply) => {
                let answer = match self.scheduled_restart.take() {
                    Some(_) => CommandReply::Done("scheduled restart deleted".into()),
                    None => refused(404, "no restarts are scheduled"),
                };
                let _ = reply.send(answer);
            }
            NodeCommand::FailsafeContact { leader, at } => {
                self.failsafe_contact = Some(super::safety::ReceivedContact { leader, at });
            }
            NodeCommand::Reinitialize(req, reply) => {
                let answer = self.reinitialize(&req);
                let _ = reply.send(answer);
            }
        }
    }

    /// Start the restart job; `reply` gets the result when it finishes.
    fn restart_now(&mut self, reply: Option<oneshot::Sender<CommandReply>>) {
        let role = if self.memory.has_lock {
            ConfigRole::Primary
        } else {
            self.pg.config_role()
        };
        if let Some(running) = self.executor.running_job() {
            if let Some(tx) = reply {
                let _ = tx.send(refused(
                    503,
                    format!("{} already in progress", running.describe()),
                ));
            }
            return;
        }
        if self.executor.start_job(Job::Restart { role }) {
            self.restart_reply = reply;
            self.wake.notify_one();
        } else if let Some(tx) = reply {
            let _ = tx.send(refused(503, "another job is in progress"));
        }
    }

    /// Fire a scheduled restart when its time comes (upstream re-checks restart_pending).
    /// Returns how soon to run the loop again when the moment is within a loop_wait.
    pub(crate) fn run_scheduled_restart(
        &mut self,
        pg: &crate::postgres::types::PgObservation,
    ) -> Option<u64> {
        let req = self.scheduled_restart.as_ref()?;
        let now = chrono::Utc::now().timestamp_millis();
        let pm_start = pg.sql.as_ref().map(|s| s.postmaster_start_time.as_str());
        match super::scheduled::step(req, now, self.dynamic.loop_wait, pm_start) {
            super::scheduled::Step::Wait(soon) => soon,
            super::scheduled::Step::Drop(why) => {
                warn!("{why}");
                self.scheduled_restart = None;
                None
            }
            super::scheduled::Step::Fire => {
                let req = self.scheduled_restart.take().expect("checked above");
                if req.restart_pending && !self.status.borrow().pending_restart {
                    info!("scheduled restart skipped: no restart is pending any more");
                    return None;
                }
                info!("running the scheduled restart");
                self.restart_now(None);
                None
            }
        }
    }

    /// After a daemon restart: take back a scheduled restart from our member key.
    pub(crate) fn restore_scheduled_restart(&mut self, cluster: &crate::dcs::Cluster) {
        if self.scheduled_restart.is_some() {
            return;
        }
        let stored = cluster
            .member(&self.local.name)
            .and_then(|m| m.data.scheduled_restart.as_ref());
        if let Some(req) = stored.and_then(super::scheduled::from_json) {
            info!(
                "restart scheduled at {} (kept in my member key)",
                req.schedule.map(|t| t.to_rfc3339()).unwrap_or_default()
            );
            self.scheduled_restart = Some(req);
        }
    }

    fn reinitialize(&mut self, req: &ReinitRequest) -> CommandReply {
        let cluster = self.status.borrow().cluster.clone();
        let Some(cluster) = cluster.filter(|c| !c.is_unlocked()) else {
            return refused(503, "Cluster has no leader, can not reinitialize");
        };
        let leader = cluster.leader_name().unwrap_or_default().to_string();
        if leader == self.local.name {
            return refused(503, "I am the leader, can not reinitialize");
        }
        let Some(from) = ha::upstream_of(&cluster, &leader) else {
            return refused(
                503,
                format!("the leader '{leader}' has no connection address"),
            );
        };
        if let Some(running) = self.executor.running_job() {
            if !req.force {
                return refused(503, format!("{} already in progress", running.describe()));
            }
            self.executor.cancel_job();
        }
        if !self.executor.start_job(Job::Reinitialize { from }) {
            return refused(503, "another job is in progress");
        }
        self.wake.notify_one();
        CommandReply::Done("reinitialize started".into())
    }

    /// Upstream's `scheduled_restart` object: all of it for the member key, without
    /// `postmaster_start_time` for /patroni.
    pub(crate) fn scheduled_restart_json(&self, for_member_key: bool) -> Option<serde_json::Value> {
        let r: &RestartRequest = self.scheduled_restart.as_ref()?;
        super::scheduled::to_json(r, for_member_key)
    }
}
