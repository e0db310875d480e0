//! The `Dcs` operations of the Consul backend.

use super::http::{OpError, Req};
use super::service::{self, ServiceAction};
use super::{ConsulDcs, KvEntry, parse_entries, session_number, status_json};
use crate::dcs::{Cluster, Dcs, DcsError, DcsResult, MemberData, RawNode, Status, keys};
use async_trait::async_trait;
use reqwest::Method;
use std::time::Duration;
use tokio::time::Instant;

/// Pause between watch attempts while Consul cannot be reached.
const WATCH_RETRY_PAUSE: Duration = Duration::from_millis(300);

#[async_trait]
impl Dcs for ConsulDcs {
    fn member_name(&self) -> &str {
        &self.name
    }

    async fn get_cluster(&self) -> DcsResult<Cluster> {
        let (deadline, _) = self.deadline();
        let mut path = vec!["v1", "kv"];
        path.extend(self.prefix.split('/'));
        let mut req = Req::new(Method::GET, path).query("recurse", "");
        if let Some(c) = self.consistency {
            req = req.query(c, "");
        }
        let resp = self.call("get cluster", req, deadline).await?;
        let nodes: Vec<RawNode> = parse_entries(&resp)?
            .into_iter()
            .filter_map(|e| {
                let rel = e.key.strip_prefix(&self.prefix)?.to_string();
                Some(RawNode {
                    key: rel,
                    value: e.value,
                    version: e.modify_index,
                    session: e.session.as_deref().map(session_number),
                })
            })
            .collect();
        let cluster = Cluster::from_nodes(&nodes);
        if let Some(l) = &cluster.leader {
            self.remember_leader(l.version, &l.name);
        }
        Ok(cluster)
    }

    async fn set_ttl(&self, ttl: Duration) {
        let changed = {
            let mut s = self.settings();
            std::mem::replace(&mut s.ttl, ttl) != ttl
        };
        if changed {
            // As upstream: forget (do not destroy) the session; the next update_leader /
            // touch_member creates one with the new TTL and moves our keys onto it.
            *self.session.lock().await = Default::default();
        }
    }

    async fn set_retry_timeout(&self, retry_timeout: Duration) {
        self.settings().retry_timeout = retry_timeout;
    }

    async fn attempt_to_acquire_leader(&self) -> DcsResult<bool> {
        let (deadline, _) = self.deadline();
        let won = self
            .with_session(false, deadline, |sid| async move {
                self.kv_put(keys::LEADER, &self.name, &[("acquire", sid)], deadline)
                    .await
            })
            .await?;
        if !won {
            tracing::info!("Could not take out TTL lock");
        }
        Ok(won)
    }

    async fn update_leader(&self, status: Option<&Status>) -> DcsResult<bool> {
        let (deadline, _) = self.deadline();
        let held = self
            .with_session(true, deadline, |sid| async move {
                self.refresh_leader_key(&sid, deadline).await
            })
            .await?;
        if held && let Some(s) = status {
            self.kv_put(keys::STATUS, &status_json(s), &[], deadline)
                .await?;
        }
        Ok(held)
    }

    async fn delete_leader(&self, status: Option<&Status>) -> DcsResult<bool> {
        let (deadline, _) = self.deadline();
        let Some(leader) = self.kv_get(keys::LEADER, deadline).await? else {
            return Ok(false);
        };
        if leader.value != self.name {
            return Ok(false);
        }
        if let Some(s) = status {
            self.kv_put(keys::STATUS, &status_json(s), &[], deadline)
                .await?;
        }
        let cas = [("cas", leader.modify_index.to_string())];
        Ok(self.kv_delete(keys::LEADER, &cas, deadline).await?)
    }

    async fn touch_member(&self, data: &MemberData) -> DcsResult<bool> {
        let value = serde_json::to_string(data)
            .map_err(|e| DcsError::Rejected(format!("member data not serializable: {e}")))?;
        let (deadline, _) = self.deadline();
        let ok = self
            .with_session(false, deadline, |sid| {
                let value = value.clone();
                async move { self.put_member(&value, sid, deadline).await }
            })
            .await?;
        if self.service.is_some() {
            self.update_service(data, deadline).await;
        }
        Ok(ok)
    }

    async fn delete_member(&self, name: &str) -> DcsResult<bool> {
        let (deadline, _) = self.deadline();
        Ok(self
            .kv_delete(&keys::member_key(name), &[], deadline)
            .await?)
    }

    async fn initialize(&self, create_new: bool, sysid: &str) -> DcsResult<bool> {
        // cas=0: only if the key does not exist yet.
        self.put_simple(keys::INITIALIZE, sysid, create_new.then_some(0))
            .await
    }

    async fn cancel_initialization(&self) -> DcsResult<bool> {
        let (deadline, _) = self.deadline();
        Ok(self.kv_delete(keys::INITIALIZE, &[], deadline).await?)
    }

    async fn set_config_value(&self, value: &str, version: Option<i64>) -> DcsResult<bool> {
        self.put_simple(keys::CONFIG, value, version).await
    }

    async fn set_failover_value(&self, value: &str, version: Option<i64>) -> DcsResult<bool> {
        self.put_simple(keys::FAILOVER, value, version).await
    }

    async fn set_history_value(&self, value: &str) -> DcsResult<bool> {
        self.put_simple(keys::HISTORY, value, None).await
    }

    async fn set_sync_state_value(&self, value: &str, version: Option<i64>) -> DcsResult<bool> {
        self.put_simple(keys::SYNC, value, version).await
    }

    async fn delete_sync_state(&self, version: Option<i64>) -> DcsResult<bool> {
        let (deadline, _) = self.deadline();
        let query: Vec<(&str, String)> = version
            .map(|v| ("cas", v.to_string()))
            .into_iter()
            .collect();
        Ok(self.kv_delete(keys::SYNC, &query, deadline).await?)
    }

    async fn write_status(&self, status: &Status) -> DcsResult<bool> {
        self.put_simple(keys::STATUS, &status_json(status), None)
            .await
    }

    async fn write_failsafe(&self, value: &str) -> DcsResult<bool> {
        self.put_simple(keys::FAILSAFE, value, None).await
    }

    async fn delete_cluster(&self) -> DcsResult<bool> {
        let (deadline, _) = self.deadline();
        Ok(self
            .kv_delete("", &[("recurse", String::new())], deadline)
            .await?)
    }

    async fn watch_leader(
        &self,
        leader_version: Option<i64>,
        timeout: Duration,
    ) -> DcsResult<bool> {
        let deadline = Instant::now() + timeout;
        let mut watch = LeaderWatch {
            index: leader_version.unwrap_or(0),
            since: leader_version,
            holder: leader_version.and_then(|v| self.leader_seen_at(v)),
            answered: false,
        };
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Ok(false);
            }
            let err = match self.watch_once(&mut watch, remaining).await {
                Ok(Some(changed)) => return Ok(changed),
                Ok(None) => continue,
                Err(e) => e,
            };
            tracing::debug!("consul watch failed, retrying: {err}");
            tokio::time::sleep_until(deadline.min(Instant::now() + WATCH_RETRY_PAUSE)).await;
            if Instant::now() >= deadline {
                return if watch.answered { Ok(false) } else { Err(err) };
            }
        }
    }
}

/// Where a leader watch stands between blocking queries.
struct LeaderWatch {
    /// Index for the next blocking query (0: answer at once).
    index: i64,
    /// The leader version the caller knows (`None`: it saw no leader).
    since: Option<i64>,
    /// The name that held the key at `since`, if this handle read it.
    holder: Option<String>,
    answered: bool,
}

impl ConsulDcs {
    /// One blocking query on the leader key. `Some(changed)` ends the watch.
    async fn watch_once(
        &self,
        w: &mut LeaderWatch,
        remaining: Duration,
    ) -> DcsResult<Option<bool>> {
        let key = self.key(keys::LEADER);
        let mut path = vec!["v1", "kv"];
        path.extend(key.split('/'));
        let mut req = Req::new(Method::GET, path);
        if w.index > 0 {
            // Consul adds up to wait/16 of jitter; leave room for it in the HTTP timeout.
            let wait_ms = remaining.as_millis().max(1);
            req = req
                .query("index", w.index.to_string())
                .query("wait", format!("{wait_ms}ms"));
            req.timeout = Some(remaining + remaining / 15 + Duration::from_secs(1));
        }
        let deadline = Instant::now() + req.timeout.unwrap_or(remaining);
        let resp = self.call("watch leader", req, deadline).await?;
        w.answered = true;
        let entry = parse_entries(&resp)?
            .into_iter()
            .next()
            .filter(|e| !e.value.is_empty());
        let new_index = resp.index.unwrap_or(0);
        // Consul: an index that goes backwards means the raft state was reset; start over.
        w.index = if new_index < w.index { 0 } else { new_index };
        match (w.since, entry) {
            (None, Some(_)) => Ok(Some(true)),
            (None, None) => Ok(None),
            (Some(_), None) => Ok(Some(true)),
            (Some(v), Some(e)) if e.modify_index == v => {
                w.index = w.index.max(v);
                Ok(None)
            }
            (Some(_), Some(e)) => {
                if w.holder.as_deref() == Some(e.value.as_str()) {
                    // The same holder re-attached the key to a new session: not a change.
                    w.since = Some(e.modify_index);
                    w.index = w.index.max(e.modify_index);
                    Ok(None)
                } else {
                    Ok(Some(true))
                }
            }
        }
    }

    /// Upstream's refresh: the key must carry our name; if it is held by another (older)
    /// session of ours, move it onto the current one; if it vanished, take it again.
    async fn refresh_leader_key(&self, sid: &str, deadline: Instant) -> Result<bool, OpError> {
        let acquire = [("acquire", sid.to_string())];
        match self.kv_get(keys::LEADER, deadline).await? {
            None => {
                tracing::warn!("the leader key vanished; taking it again");
                self.kv_put(keys::LEADER, &self.name, &acquire, deadline)
                    .await
            }
            Some(KvEntry { value, .. }) if value != self.name => Ok(false),
            Some(KvEntry { session, .. }) if session.as_deref() == Some(sid) => Ok(true),
            Some(e) => {
                tracing::warn!("Recreating the leader key due to session mismatch");
                let cas = [("cas", e.modify_index.to_string())];
                if !self.kv_delete(keys::LEADER, &cas, deadline).await? {
                    return Ok(false);
                }
                self.kv_put(keys::LEADER, &self.name, &acquire, deadline)
                    .await
            }
        }
    }

    /// Write our member key held by our session. A key still held by an older session of
    /// ours (after a TTL change or expiry) cannot be acquired: delete it and write anew.
    async fn put_member(
        &self,
        value: &str,
        sid: String,
        deadline: Instant,
    ) -> Result<bool, OpError> {
        let rel = keys::member_key(&self.name);
        let acquire = [("acquire", sid)];
        if self.kv_put(&rel, value, &acquire, deadline).await? {
            return Ok(true);
        }
        self.kv_delete(&rel, &[], deadline).await?;
        self.kv_put(&rel, value, &acquire, deadline).await
    }

    /// Register, re-register or deregister our service when what it should be changed.
    /// Failures are logged, never fatal, as upstream.
    async fn update_service(&self, data: &MemberData, deadline: Instant) {
        let Some(settings) = &self.service else {
            return;
        };
        let Some(action) = service::desired(settings, data, self.session_ttl().as_secs_f64())
        else {
            return;
        };
        let applied = self
            .service_applied
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if applied.as_ref() == Some(&action) {
            return;
        }
        let req = match &action {
            ServiceAction::Register(body) => {
                tracing::info!("Register service {}, params {body}", settings.name);
                Req::new(Method::PUT, vec!["v1", "agent", "service", "register"])
                    .body(body.to_string())
            }
            ServiceAction::Deregister(id) => {
                tracing::info!("Deregister service {id}");
                Req::new(
                    Method::PUT,
                    vec!["v1", "agent", "service", "deregister", id],
                )
            }
        };
        let ok = match self.call("service registration", req, deadline).await {
            Ok(r) if r.status == 200 => true,
            Ok(r) => {
                tracing::error!("update_service: HTTP {} {}", r.status, r.body.trim());
                false
            }
            Err(e) => {
                tracing::error!("update_service: {}", DcsError::from(e));
                false
            }
        };
        *self
            .service_applied
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = ok.then_some(action);
    }
}
