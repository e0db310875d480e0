//! The `Dcs` operations of the ZooKeeper backend (session handling is in the parent).

use super::{Inner, ZooKeeperDcs, owner, text};
use crate::dcs::{Cluster, Dcs, DcsError, DcsResult, MemberData, RawNode, Status, keys};
use async_trait::async_trait;
use std::time::Duration;
use tokio::time::Instant;
use zookeeper_client::{Client, CreateMode, Error as ZkError, EventType, OneshotWatcher};

fn status_json(status: &Status) -> String {
    serde_json::to_string(status).unwrap_or_else(|_| "{}".into())
}

impl Inner {
    /// Every key of the cluster as raw nodes (members one level down, `optime/leader`).
    async fn load(&self, c: &Client) -> Result<Vec<RawNode>, ZkError> {
        let base = self.prefix.trim_end_matches('/');
        let children = match c.list_children(base).await {
            Err(ZkError::NoNode) => return Ok(Vec::new()),
            r => r?,
        };
        let mut rels: Vec<String> = Vec::new();
        for child in children {
            match child.as_str() {
                "members" => match c.list_children(&self.path("members")).await {
                    Ok(names) => rels.extend(names.iter().map(|n| keys::member_key(n))),
                    Err(ZkError::NoNode) => {}
                    Err(e) => return Err(e),
                },
                "optime" => rels.push(keys::LEADER_OPTIME.to_string()),
                _ => rels.push(child),
            }
        }
        // Requests are sent in order and answered together.
        let reads: Vec<_> = rels.iter().map(|r| c.get_data(&self.path(r))).collect();
        let results = futures::future::join_all(reads).await;
        let mut nodes = Vec::new();
        for (rel, result) in rels.into_iter().zip(results) {
            let (data, stat) = match result {
                Ok(v) => v,
                Err(ZkError::NoNode) => continue,
                Err(e) => return Err(e),
            };
            // A member "directory" (a znode with children) is not a member key.
            if rel.starts_with(keys::MEMBERS) && stat.num_children > 0 {
                continue;
            }
            let version = if rel == keys::LEADER {
                stat.czxid
            } else {
                i64::from(stat.version)
            };
            nodes.push(RawNode {
                key: rel,
                value: text(data),
                version,
                session: owner(&stat),
            });
        }
        Ok(nodes)
    }

    async fn acquire(&self, c: Client) -> Result<bool, ZkError> {
        let path = self.path(keys::LEADER);
        let me = c.session_id().0;
        match self
            .create(&c, &path, self.name.as_bytes(), CreateMode::Ephemeral)
            .await
        {
            Ok(stat) => {
                self.remember_leader(stat.czxid, &self.name);
                Ok(true)
            }
            Err(ZkError::NodeExists) => match c.get_data(&path).await {
                // A retried request whose first try did land finds our own znode.
                Ok((data, stat)) => Ok(data == self.name.as_bytes() && owner(&stat) == Some(me)),
                Err(ZkError::NoNode) => Ok(false),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        }
    }

    /// Keep the leader znode ours: nothing to do while it is on our session; move it
    /// when it carries our name on another (older) session; re-create it if it vanished.
    async fn refresh_leader(&self, c: Client) -> Result<bool, ZkError> {
        let path = self.path(keys::LEADER);
        let (data, stat) = match c.get_data(&path).await {
            Err(ZkError::NoNode) => return self.acquire(c).await,
            r => r?,
        };
        if data != self.name.as_bytes() {
            return Ok(false);
        }
        if owner(&stat) == Some(c.session_id().0) {
            return Ok(true);
        }
        tracing::info!("moving the leader key to our current ZooKeeper session");
        match self
            .move_to_session(&c, &path, stat.version, self.name.as_bytes())
            .await?
        {
            Some(new) => {
                self.remember_leader(new.czxid, &self.name);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn put_member(&self, c: Client, value: &[u8]) -> Result<bool, ZkError> {
        let path = self.path(&keys::member_key(&self.name));
        match c.check_stat(&path).await? {
            None => match self.create(&c, &path, value, CreateMode::Ephemeral).await {
                // Created meanwhile (a retried request): the next attempt updates it.
                Err(ZkError::NodeExists) => Err(ZkError::ConnectionLoss),
                r => r.map(|_| true),
            },
            Some(stat) if owner(&stat) == Some(c.session_id().0) => {
                c.set_data(&path, value, None).await.map(|_| true)
            }
            Some(stat) => match self.move_to_session(&c, &path, stat.version, value).await? {
                Some(_) => Ok(true),
                None => Err(ZkError::ConnectionLoss),
            },
        }
    }

    async fn release_leader(&self, c: Client, status: Option<&Status>) -> Result<bool, ZkError> {
        let path = self.path(keys::LEADER);
        let (data, stat) = match c.get_data(&path).await {
            Err(ZkError::NoNode) => return Ok(false),
            r => r?,
        };
        if data != self.name.as_bytes() {
            return Ok(false);
        }
        if let Some(s) = status {
            let status_path = self.path(keys::STATUS);
            let value = status_json(s);
            if let Err(ZkError::NoNode) = c.set_data(&status_path, value.as_bytes(), None).await {
                self.create(&c, &status_path, value.as_bytes(), CreateMode::Persistent)
                    .await?;
            }
        }
        match c.delete(&path, Some(stat.version)).await {
            Ok(()) => Ok(true),
            Err(ZkError::NoNode | ZkError::BadVersion) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Delete `path` and everything below it, children first.
    async fn delete_tree(&self, c: &Client, path: &str) -> Result<(), ZkError> {
        let mut stack = vec![(path.to_string(), false)];
        while let Some((p, expanded)) = stack.pop() {
            if expanded {
                match c.delete(&p, None).await {
                    Ok(()) | Err(ZkError::NoNode) => continue,
                    Err(e) => return Err(e),
                }
            }
            let children = match c.list_children(&p).await {
                Err(ZkError::NoNode) => continue,
                r => r?,
            };
            stack.push((p.clone(), true));
            stack.extend(children.into_iter().map(|ch| (format!("{p}/{ch}"), false)));
        }
        Ok(())
    }

    /// Look at the leader znode and set a watch on it: `None` when it already differs
    /// from what the caller saw (`expected` creation zxid, or no leader).
    async fn check_leader(
        &self,
        c: &Client,
        expected: Option<i64>,
    ) -> Result<Option<OneshotWatcher>, ZkError> {
        let path = self.path(keys::LEADER);
        let (stat, watcher) = c.check_and_watch_stat(&path).await?;
        match (stat, expected) {
            (None, None) => Ok(Some(watcher)),
            (Some(_), None) | (None, Some(_)) => Ok(None),
            (Some(stat), Some(v)) if stat.czxid != v => {
                // Re-created under the same name (moved to a new session) is no change.
                let (data, _) = match c.get_data(&path).await {
                    Err(ZkError::NoNode) => return Ok(None),
                    r => r?,
                };
                if self.leader_name_at(v).is_none_or(|n| n.as_bytes() != data) {
                    return Ok(None);
                }
                self.remember_leader(stat.czxid, &text(data));
                Ok(Some(watcher))
            }
            (Some(_), Some(_)) => Ok(Some(watcher)),
        }
    }
}

#[async_trait]
impl Dcs for ZooKeeperDcs {
    fn member_name(&self) -> &str {
        &self.inner.name
    }

    async fn get_cluster(&self) -> DcsResult<Cluster> {
        let inner = &self.inner;
        if let Some(source) = &inner.hosts_source
            && let Some(hosts) = source.refresh().await
        {
            tracing::info!("ZooKeeper connect string is now {hosts}");
            *super::lock(&inner.hosts) = hosts;
        }
        let nodes = inner
            .run("get cluster", |c| async move { inner.load(&c).await })
            .await?;
        if let Some(l) = nodes.iter().find(|n| n.key == keys::LEADER) {
            inner.remember_leader(l.version, &l.value);
        }
        Ok(Cluster::from_nodes(&nodes))
    }

    async fn set_ttl(&self, ttl: Duration) {
        let old = std::mem::replace(&mut super::lock(&self.inner.settings).ttl, ttl);
        if old == ttl {
            return;
        }
        // The session timeout is fixed at session start: open a new session on next use
        // and keep the old one (with our znodes) until they moved over or it would expire.
        let mut slot = self.inner.session.lock().await;
        if let Some(c) = slot.current.take() {
            slot.retiring = Some((c, Instant::now() + old));
        }
    }

    async fn set_retry_timeout(&self, retry_timeout: Duration) {
        super::lock(&self.inner.settings).retry_timeout = retry_timeout;
    }

    async fn attempt_to_acquire_leader(&self) -> DcsResult<bool> {
        let inner = &self.inner;
        let won = inner.run("acquire leader", |c| inner.acquire(c)).await?;
        if won {
            inner.mark_refreshed().await;
        } else {
            tracing::info!("could not take out the leader lock: another member holds it");
        }
        Ok(won)
    }

    async fn update_leader(&self, status: Option<&Status>) -> DcsResult<bool> {
        let inner = &self.inner;
        let held = inner
            .run("update leader", |c| inner.refresh_leader(c))
            .await?;
        if held {
            inner.mark_refreshed().await;
            if let Some(s) = status {
                inner
                    .set_or_create(keys::STATUS, &status_json(s), None)
                    .await?;
            }
        }
        Ok(held)
    }

    async fn delete_leader(&self, status: Option<&Status>) -> DcsResult<bool> {
        let inner = &self.inner;
        inner
            .run("delete leader", |c| inner.release_leader(c, status))
            .await
    }

    async fn touch_member(&self, data: &MemberData) -> DcsResult<bool> {
        let value = serde_json::to_string(data)
            .map_err(|e| DcsError::Rejected(format!("member data not serializable: {e}")))?;
        let inner = &self.inner;
        let ok = inner
            .run("touch member", |c| inner.put_member(c, value.as_bytes()))
            .await?;
        inner.mark_refreshed().await;
        Ok(ok)
    }

    async fn delete_member(&self, name: &str) -> DcsResult<bool> {
        self.inner.delete(&keys::member_key(name), None).await
    }

    async fn initialize(&self, create_new: bool, sysid: &str) -> DcsResult<bool> {
        let inner = &self.inner;
        if !create_new {
            return inner.set_or_create(keys::INITIALIZE, sysid, None).await;
        }
        let path = inner.path(keys::INITIALIZE);
        inner
            .run("initialize", |c| {
                let path = path.clone();
                async move {
                    match inner
                        .create(&c, &path, sysid.as_bytes(), CreateMode::Persistent)
                        .await
                    {
                        Ok(_) => Ok(true),
                        Err(ZkError::NodeExists) => Ok(false),
                        Err(e) => Err(e),
                    }
                }
            })
            .await
    }

    async fn cancel_initialization(&self) -> DcsResult<bool> {
        self.inner.delete(keys::INITIALIZE, None).await
    }

    async fn set_config_value(&self, value: &str, version: Option<i64>) -> DcsResult<bool> {
        self.inner.set_or_create(keys::CONFIG, value, version).await
    }

    async fn set_failover_value(&self, value: &str, version: Option<i64>) -> DcsResult<bool> {
        self.inner
            .set_or_create(keys::FAILOVER, value, version)
            .await
    }

    async fn set_history_value(&self, value: &str) -> DcsResult<bool> {
        self.inner.set_or_create(keys::HISTORY, value, None).await
    }

    async fn set_sync_state_value(&self, value: &str, version: Option<i64>) -> DcsResult<bool> {
        self.inner.set_or_create(keys::SYNC, value, version).await
    }

    async fn delete_sync_state(&self, version: Option<i64>) -> DcsResult<bool> {
        match version.map(i32::try_from) {
            Some(Err(_)) => Ok(false),
            Some(Ok(v)) => self.inner.delete(keys::SYNC, Some(v)).await,
            None => self.inner.delete(keys::SYNC, None).await,
        }
    }

    async fn write_status(&self, status: &Status) -> DcsResult<bool> {
        self.inner
            .set_or_create(keys::STATUS, &status_json(status), None)
            .await
    }

    async fn write_failsafe(&self, value: &str) -> DcsResult<bool> {
        self.inner.set_or_create(keys::FAILSAFE, value, None).await
    }

    async fn delete_cluster(&self) -> DcsResult<bool> {
        let inner = &self.inner;
        let base = inner.prefix.trim_end_matches('/').to_string();
        inner
            .run("delete cluster", |c| {
                let base = base.clone();
                async move { inner.delete_tree(&c, &base).await.map(|_| true) }
            })
            .await
    }

    async fn watch_leader(
        &self,
        leader_version: Option<i64>,
        timeout: Duration,
    ) -> DcsResult<bool> {
        let inner = &self.inner;
        let deadline = Instant::now() + timeout;
        // Once ZooKeeper answered, running out of time is the quiet end of a watch.
        let mut healthy = false;
        let mut last_err: Option<String> = None;
        loop {
            let check = async {
                let c = inner.client().await?;
                inner.check_leader(&c, leader_version).await
            };
            let watcher = match tokio::time::timeout_at(deadline, check).await {
                Ok(Ok(None)) => return Ok(true),
                Ok(Ok(Some(w))) => w,
                Ok(Err(e)) => {
                    last_err = Some(e.to_string());
                    let pause = deadline.min(Instant::now() + RETRY_PAUSE_WATCH);
                    tokio::time::sleep_until(pause).await;
                    if Instant::now() < deadline {
                        continue;
                    }
                    break;
                }
                Err(_) => break,
            };
            healthy = true;
            match tokio::time::timeout_at(deadline, watcher.changed()).await {
                Err(_) => return Ok(false),
                Ok(ev) => match ev.event_type {
                    EventType::NodeCreated
                    | EventType::NodeDeleted
                    | EventType::NodeDataChanged => {
                        return Ok(true);
                    }
                    // A session event (disconnect): look again.
                    _ => continue,
                },
            }
        }
        match last_err {
            _ if healthy => Ok(false),
            Some(e) => Err(DcsError::Unreachable(format!("watch leader: {e}"))),
            None => Err(DcsError::Timeout(timeout)),
        }
    }
}

const RETRY_PAUSE_WATCH: Duration = Duration::from_millis(300);
