//! etcd v2 API backend (HTTP keys API), with upstream's key layout and atomic writes:
//! the leader and member keys carry a TTL (`ttl`); the leader key is created with
//! `prevExist=false`, refreshed with `prevValue=<name>&refresh=true` (extends the TTL
//! without a write that would wake watchers) and deleted with `prevValue=<name>`;
//! `config`/`failover`/`sync` writes compare `prevIndex` (the key's modifiedIndex).
//!
//! Versions: every key reports its `modifiedIndex`, except the leader key, which reports
//! its `createdIndex`: a refresh moves modifiedIndex but is not a change of leadership,
//! and the watch only needs to know whether the key was re-created or removed.
//! Sessions: upstream reports a key's remaining TTL as its "session"; so do we.
//!
//! Requests rotate over the configured endpoints and are retried until `retry_timeout`
//! is spent. Unreachable store -> `Err`, failed comparison -> `Ok(false)`.

use super::{Cluster, Dcs, DcsError, DcsResult, MemberData, Status, keys};
use crate::config::Etcd3Config;
use async_trait::async_trait;
use reqwest::{Method, Url};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::time::Instant;

mod wire;

use wire::{COMPARE_FAILED, EVENT_INDEX_CLEARED, KEY_NOT_FOUND, NODE_EXISTS, Reply, Req, flatten};

const RETRY_PAUSE: Duration = Duration::from_millis(100);

#[derive(Debug)]
struct Settings {
    ttl: Duration,
    retry_timeout: Duration,
}

/// One member's handle on an etcd cluster through the v2 API.
pub struct Etcd2Dcs {
    http: reqwest::Client,
    endpoints: Vec<Url>,
    /// The endpoint that answered last; failures move on to the next one.
    current: AtomicUsize,
    prefix: String,
    name: String,
    auth: Option<(String, String)>,
    settings: Mutex<Settings>,
}

impl Etcd2Dcs {
    /// Build the client; no request is made, so this succeeds while etcd is down.
    pub fn connect(
        cfg: &Etcd3Config,
        namespace: &str,
        scope: &str,
        name: &str,
        ttl: Duration,
        retry_timeout: Duration,
    ) -> DcsResult<Etcd2Dcs> {
        let mut configured = cfg.endpoints();
        // `proxy:` is one more URL to talk to (upstream then skips topology discovery,
        // which this client never does: it uses the configured endpoints as given).
        if let Some(proxy) = cfg.extra.get("proxy").and_then(|v| v.as_str()) {
            configured.push(proxy.to_string());
        }
        if configured.is_empty() && cfg.extra.contains_key("srv") {
            return Err(DcsError::Rejected(
                "etcd.srv: DNS SRV discovery is not supported; list the endpoints in etcd.hosts"
                    .into(),
            ));
        }
        let mut endpoints = Vec::new();
        for e in configured {
            let url = Url::parse(&e)
                .map_err(|err| DcsError::Rejected(format!("etcd endpoint {e:?}: {err}")))?;
            if url.scheme() != "http" {
                return Err(DcsError::Rejected(format!(
                    "etcd endpoint {e}: only http:// is supported by this build (no TLS client)"
                )));
            }
            endpoints.push(url);
        }
        if endpoints.is_empty() {
            return Err(DcsError::Rejected(
                "no etcd endpoint configured (etcd.host, etcd.hosts or etcd.url)".into(),
            ));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(
                retry_timeout.clamp(Duration::from_millis(200), Duration::from_secs(2)),
            )
            .build()
            .map_err(|e| DcsError::Rejected(format!("HTTP client: {e}")))?;
        let auth = cfg
            .username
            .clone()
            .map(|u| (u, cfg.password.clone().unwrap_or_default()));
        Ok(Etcd2Dcs {
            http,
            endpoints,
            current: AtomicUsize::new(0),
            prefix: keys::cluster_prefix(namespace, scope),
            name: name.to_string(),
            auth,
            settings: Mutex::new(Settings { ttl, retry_timeout }),
        })
    }

    fn settings(&self) -> std::sync::MutexGuard<'_, Settings> {
        self.settings.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ttl_secs(&self) -> u64 {
        self.settings().ttl.as_secs().max(1)
    }

    /// `<endpoint>/v2/keys/<namespace>/<scope>/<rel>` with every segment escaped.
    fn url(&self, endpoint: &Url, req: &Req) -> Url {
        let mut url = endpoint.clone();
        let full = format!("{}{}", self.prefix, req.rel);
        if let Ok(mut segs) = url.path_segments_mut() {
            segs.pop_if_empty().push("v2").push("keys");
            segs.extend(full.split('/').filter(|s| !s.is_empty()));
        }
        if !req.query.is_empty() {
            let mut q = url.query_pairs_mut();
            for (k, v) in &req.query {
                q.append_pair(k, v);
            }
        }
        url
    }

    /// One attempt against one endpoint. `Err` only for transport problems.
    async fn attempt(
        &self,
        endpoint: &Url,
        req: &Req<'_>,
        timeout: Duration,
    ) -> Result<Reply, String> {
        let mut rb = self
            .http
            .request(req.method.clone(), self.url(endpoint, req))
            .timeout(timeout);
        if !req.form.is_empty() {
            rb = rb.form(&req.form);
        }
        if let Some((u, p)) = &self.auth {
            rb = rb.basic_auth(u, Some(p));
        }
        let resp = rb.send().await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let etcd_index = resp
            .headers()
            .get("x-etcd-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let text = resp.text().await.map_err(|e| e.to_string())?;
        let body = serde_json::from_str(&text).unwrap_or_default();
        Ok(Reply {
            status,
            etcd_index,
            body,
        })
    }

    /// Send `req`, moving over the endpoints until one answers (5xx answers count as no
    /// answer: etcd is electing or overloaded) or `retry_timeout` is spent.
    async fn call(&self, what: &str, req: Req<'_>) -> DcsResult<Reply> {
        let budget = self.settings().retry_timeout;
        let deadline = Instant::now() + budget;
        let per_attempt = (budget / 2).max(Duration::from_secs(1));
        let mut last: Option<String> = None;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            let i = self.current.load(Ordering::Relaxed) % self.endpoints.len();
            let endpoint = &self.endpoints[i];
            match self
                .attempt(endpoint, &req, remaining.min(per_attempt))
                .await
            {
                Ok(r) if !r.status.is_server_error() => return Ok(r),
                Ok(r) => last = Some(format!("{endpoint}: {}", r.rejected(what))),
                Err(e) => last = Some(format!("{endpoint}: {e}")),
            }
            tracing::debug!("etcd {what} failed, trying the next endpoint: {last:?}");
            let _ = self
                .current
                .compare_exchange(i, i + 1, Ordering::Relaxed, Ordering::Relaxed);
            let pause = RETRY_PAUSE.min(deadline.saturating_duration_since(Instant::now()));
            tokio::time::sleep(pause).await;
        }
        Err(match last {
            Some(e) => DcsError::Unreachable(format!("{what}: {e}")),
            None => DcsError::Timeout(budget),
        })
    }

    async fn put(&self, rel: &str, value: &str) -> DcsResult<bool> {
        let r = self
            .call(rel, Req::new(Method::PUT, rel).f("value", value))
            .await?;
        r.cas(rel)
    }

    /// Put only while the key's modifiedIndex is `version`, as upstream's `prevIndex`.
    async fn put_cas(&self, rel: &str, value: &str, version: Option<i64>) -> DcsResult<bool> {
        let mut req = Req::new(Method::PUT, rel).f("value", value);
        if let Some(v) = version {
            req = req.q("prevIndex", v);
        }
        self.call(rel, req).await?.cas(rel)
    }

    async fn delete(&self, rel: &str, req: Req<'_>) -> DcsResult<bool> {
        let r = self.call(rel, req).await?;
        if r.code() == Some(KEY_NOT_FOUND) && !r.ok() {
            // Nothing to delete is as good as deleted, unless a comparison was asked for.
            return Ok(true);
        }
        r.cas(rel)
    }

    async fn create_leader(&self) -> DcsResult<bool> {
        let req = Req::new(Method::PUT, keys::LEADER)
            .q("prevExist", "false")
            .f("value", &self.name)
            .f("ttl", self.ttl_secs());
        let r = self.call("acquire leader", req).await?;
        if r.ok() {
            return Ok(true);
        }
        if r.code() == Some(NODE_EXISTS) {
            // A retried request whose first try did land finds our own name.
            return Ok(self.leader_value().await?.as_deref() == Some(self.name.as_str()));
        }
        Err(r.rejected("acquire leader"))
    }

    async fn leader_value(&self) -> DcsResult<Option<String>> {
        let r = self
            .call(
                "read leader",
                Req::new(Method::GET, keys::LEADER).q("quorum", "true"),
            )
            .await?;
        match r.code() {
            _ if r.ok() => Ok(r.body.node.and_then(|n| n.value)),
            Some(KEY_NOT_FOUND) => Ok(None),
            _ => Err(r.rejected("read leader")),
        }
    }

    /// Read the leader key: `(createdIndex, value)` if present, and the store index.
    async fn leader_state(&self) -> DcsResult<(Option<(i64, String)>, i64)> {
        let r = self
            .call(
                "read leader",
                Req::new(Method::GET, keys::LEADER).q("quorum", "true"),
            )
            .await?;
        let index = r.etcd_index.unwrap_or(0);
        match r.code() {
            _ if r.ok() => {
                let n = r.body.node.unwrap_or_default();
                Ok((Some((n.created_index, n.value.unwrap_or_default())), index))
            }
            Some(KEY_NOT_FOUND) => Ok((None, index)),
            _ => Err(r.rejected("read leader")),
        }
    }

    /// One long poll on the leader key from `wait_index`: `Some(next index)` when an
    /// event left the leader as it was, `None` when the leader changed.
    async fn wait_leader_event(
        &self,
        wait_index: i64,
        timeout: Duration,
    ) -> Result<Option<i64>, String> {
        let i = self.current.load(Ordering::Relaxed) % self.endpoints.len();
        let req = Req::new(Method::GET, keys::LEADER)
            .q("wait", "true")
            .q("waitIndex", wait_index);
        let r = self.attempt(&self.endpoints[i], &req, timeout).await?;
        if r.code() == Some(EVENT_INDEX_CLEARED) {
            return Ok(None);
        }
        if !r.ok() {
            return Err(r.rejected("watch leader").to_string());
        }
        let unchanged = matches!(
            r.body.action.as_deref(),
            Some("set" | "update" | "compareAndSwap")
        ) && r.body.prev_node.as_ref().and_then(|p| p.value.as_deref())
            == r.body.node.as_ref().and_then(|n| n.value.as_deref());
        Ok(unchanged.then(|| r.body.node.map_or(wait_index, |n| n.modified_index) + 1))
    }
}

fn status_json(status: &Status) -> String {
    serde_json::to_string(status).unwrap_or_else(|_| "{}".into())
}

#[async_trait]
impl Dcs for Etcd2Dcs {
    fn member_name(&self) -> &str {
        &self.name
    }

    async fn get_cluster(&self) -> DcsResult<Cluster> {
        let req = Req::new(Method::GET, "")
            .q("recursive", "true")
            .q("quorum", "true");
        let r = self.call("get cluster", req).await?;
        if r.code() == Some(KEY_NOT_FOUND) {
            return Ok(Cluster::default());
        }
        if !r.ok() {
            return Err(r.rejected("get cluster"));
        }
        let mut nodes = Vec::new();
        if let Some(root) = r.body.node {
            flatten(root, &self.prefix, &mut nodes);
        }
        Ok(Cluster::from_nodes(&nodes))
    }

    async fn set_ttl(&self, ttl: Duration) {
        // The next refresh and member write carry the new TTL.
        self.settings().ttl = ttl;
    }

    async fn set_retry_timeout(&self, retry_timeout: Duration) {
        self.settings().retry_timeout = retry_timeout;
    }

    async fn attempt_to_acquire_leader(&self) -> DcsResult<bool> {
        let won = self.create_leader().await?;
        if !won {
            tracing::info!("could not take out the leader lock: another member holds it");
        }
        Ok(won)
    }

    async fn update_leader(&self, status: Option<&Status>) -> DcsResult<bool> {
        let req = Req::new(Method::PUT, keys::LEADER)
            .q("prevValue", &self.name)
            .q("refresh", "true")
            .f("ttl", self.ttl_secs());
        let r = self.call("update leader", req).await?;
        let held = match r.code() {
            _ if r.ok() => true,
            // As upstream's etcd3 backend: the holder re-creates a key that vanished.
            Some(KEY_NOT_FOUND) => self.create_leader().await?,
            Some(COMPARE_FAILED) => false,
            _ => return Err(r.rejected("update leader")),
        };
        if held && let Some(s) = status {
            self.put(keys::STATUS, &status_json(s)).await?;
        }
        Ok(held)
    }

    async fn delete_leader(&self, status: Option<&Status>) -> DcsResult<bool> {
        // No transactions in v2: only the holder writes the last status, then deletes.
        if self.leader_value().await?.as_deref() != Some(self.name.as_str()) {
            return Ok(false);
        }
        if let Some(s) = status {
            self.put(keys::STATUS, &status_json(s)).await?;
        }
        let req = Req::new(Method::DELETE, keys::LEADER).q("prevValue", &self.name);
        self.call("delete leader", req).await?.cas("delete leader")
    }

    async fn touch_member(&self, data: &MemberData) -> DcsResult<bool> {
        let value = serde_json::to_string(data)
            .map_err(|e| DcsError::Rejected(format!("member data not serializable: {e}")))?;
        let rel = keys::member_key(&self.name);
        let req = Req::new(Method::PUT, &rel)
            .f("value", value)
            .f("ttl", self.ttl_secs());
        self.call("touch member", req).await?.cas("touch member")
    }

    async fn delete_member(&self, name: &str) -> DcsResult<bool> {
        let rel = keys::member_key(name);
        self.delete(&rel, Req::new(Method::DELETE, &rel)).await
    }

    async fn initialize(&self, create_new: bool, sysid: &str) -> DcsResult<bool> {
        // As upstream: create only if absent, or update only if present.
        let req = Req::new(Method::PUT, keys::INITIALIZE)
            .q("prevExist", if create_new { "false" } else { "true" })
            .f("value", sysid);
        self.call("initialize", req).await?.cas("initialize")
    }

    async fn cancel_initialization(&self) -> DcsResult<bool> {
        self.delete(keys::INITIALIZE, Req::new(Method::DELETE, keys::INITIALIZE))
            .await
    }

    async fn set_config_value(&self, value: &str, version: Option<i64>) -> DcsResult<bool> {
        self.put_cas(keys::CONFIG, value, version).await
    }

    async fn set_failover_value(&self, value: &str, version: Option<i64>) -> DcsResult<bool> {
        self.put_cas(keys::FAILOVER, value, version).await
    }

    async fn set_history_value(&self, value: &str) -> DcsResult<bool> {
        self.put(keys::HISTORY, value).await
    }

    async fn set_sync_state_value(&self, value: &str, version: Option<i64>) -> DcsResult<bool> {
        self.put_cas(keys::SYNC, value, version).await
    }

    async fn delete_sync_state(&self, version: Option<i64>) -> DcsResult<bool> {
        let Some(v) = version else {
            return self
                .delete(keys::SYNC, Req::new(Method::DELETE, keys::SYNC))
                .await;
        };
        let req = Req::new(Method::DELETE, keys::SYNC).q("prevIndex", v);
        self.call("delete sync", req).await?.cas("delete sync")
    }

    async fn write_status(&self, status: &Status) -> DcsResult<bool> {
        self.put(keys::STATUS, &status_json(status)).await
    }

    async fn write_failsafe(&self, value: &str) -> DcsResult<bool> {
        self.put(keys::FAILSAFE, value).await
    }

    async fn delete_cluster(&self) -> DcsResult<bool> {
        let req = Req::new(Method::DELETE, "")
            .q("recursive", "true")
            .q("dir", "true");
        self.delete("", req).await
    }

    async fn watch_leader(
        &self,
        leader_version: Option<i64>,
        timeout: Duration,
    ) -> DcsResult<bool> {
        let deadline = Instant::now() + timeout;
        let mut healthy = false;
        let mut last_err = String::new();
        while Instant::now() < deadline {
            // Where are we now? A change before the watch started is reported at once.
            let state = tokio::time::timeout_at(deadline, self.leader_state()).await;
            let (current, index) = match state {
                Err(_) => break,
                Ok(Err(e)) => {
                    last_err = e.to_string();
                    tokio::time::sleep_until(deadline.min(Instant::now() + RETRY_PAUSE * 3)).await;
                    continue;
                }
                Ok(Ok(s)) => s,
            };
            healthy = true;
            if current.map(|(created, _)| created) != leader_version {
                return Ok(true);
            }
            let mut wait_index = index + 1;
            loop {
                let remaining = deadline.saturating_duration_since(Instant::now());
                if remaining.is_zero() {
                    return Ok(false);
                }
                match self.wait_leader_event(wait_index, remaining).await {
                    Ok(None) => return Ok(true),
                    Ok(Some(next)) => wait_index = next,
                    // A timed-out long poll is the normal end of a quiet watch.
                    Err(_) if Instant::now() + Duration::from_millis(50) >= deadline => {
                        return Ok(false);
                    }
                    Err(e) => {
                        last_err = e;
                        break;
                    }
                }
            }
        }
        if healthy {
            Ok(false)
        } else if last_err.is_empty() {
            Err(DcsError::Timeout(timeout))
        } else {
            Err(DcsError::Unreachable(format!("watch leader: {last_err}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_escape_names() {
        let cfg = Etcd3Config {
            hosts: Some(serde_json::json!(["127.0.0.1:2379"])),
            ..Default::default()
        };
        let d = Etcd2Dcs::connect(
            &cfg,
            "/service/",
            "b",
            "pg 0",
            Duration::from_secs(30),
            Duration::from_secs(10),
        )
        .unwrap();
        let rel = keys::member_key("pg 0/x");
        let req = Req::new(Method::PUT, &rel).q("prevIndex", 5);
        assert_eq!(
            d.url(&d.endpoints[0], &req).as_str(),
            "http://127.0.0.1:2379/v2/keys/service/b/members/pg%200/x?prevIndex=5"
        );
    }
}
