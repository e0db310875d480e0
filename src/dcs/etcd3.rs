//! etcd v3 backend (gRPC), with upstream's key layout and fencing:
//! one lease per member (TTL = `ttl`) carries the leader and member keys; the leader key
//! is created with `create_revision == 0` and refreshed/deleted only while its value is
//! our name; `config`/`failover`/`sync` writes compare `mod_revision`.
//!
//! Every call is bounded by `retry_timeout` and retried (the balanced channel spreads
//! attempts over all endpoints). Unreachable store -> `Err`, lost compare -> `Ok(false)`.

use super::{Cluster, Dcs, DcsError, DcsResult, MemberData, RawNode, Status, keys};
use crate::config::Etcd3Config;
use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, Event, GetOptions, PutOptions, Txn,
    TxnOp, TxnOpResponse, TxnResponse, WatchOptions,
};
use std::future::Future;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;
use tokio::time::Instant;

/// Pause between attempts after a failed request.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// `touch_member` skips the lease keep-alive when `update_leader` just did one.
const KEEPALIVE_REUSE: Duration = Duration::from_secs(1);

tokio::task_local! {
    /// Deadline shared by every request of one `Dcs` operation (see `Etcd3Dcs::bounded`).
    static DEADLINE: Instant;
}

/// Why one operation failed, before it becomes a `DcsError`.
#[derive(Debug)]
enum OpError {
    /// The lease we attached a key to is gone (expired or revoked).
    LeaseNotFound,
    Dcs(DcsError),
}

impl From<OpError> for DcsError {
    fn from(e: OpError) -> DcsError {
        match e {
            OpError::LeaseNotFound => DcsError::Rejected("etcd lease not found".into()),
            OpError::Dcs(e) => e,
        }
    }
}

enum Class {
    Retry,
    LeaseNotFound,
    Fatal,
}

/// gRPC status codes worth another attempt: Cancelled, Unknown, DeadlineExceeded,
/// ResourceExhausted, FailedPrecondition, Aborted, Internal, Unavailable.
const RETRYABLE_GRPC: [i32; 8] = [1, 2, 4, 8, 9, 10, 13, 14];

fn classify(e: &etcd_client::Error) -> Class {
    use etcd_client::Error as E;
    match e {
        E::GRpcStatus(s) if s.message().contains("lease not found") => Class::LeaseNotFound,
        E::LeaseKeepAliveError(m) if m.contains("not found") => Class::LeaseNotFound,
        E::GRpcStatus(s) if RETRYABLE_GRPC.contains(&i32::from(s.code())) => Class::Retry,
        E::TransportError(_) | E::IoError(_) | E::WatchError(_) | E::LeaseKeepAliveError(_) => {
            Class::Retry
        }
        _ => Class::Fatal,
    }
}

#[derive(Debug)]
struct Settings {
    ttl: Duration,
    retry_timeout: Duration,
}

#[derive(Debug, Default)]
struct LeaseState {
    id: Option<i64>,
    refreshed: Option<Instant>,
}

/// One member's handle on an etcd v3 cluster.
pub struct Etcd3Dcs {
    client: Client,
    prefix: String,
    name: String,
    settings: Mutex<Settings>,
    /// Held across the grant/keep-alive round trip so concurrent callers share one lease.
    lease: tokio::sync::Mutex<LeaseState>,
}

impl Etcd3Dcs {
    /// Build the client. Without authentication no request is made yet (the channel
    /// connects lazily), so this succeeds while etcd is down; with a username the
    /// authentication round trip must succeed within `retry_timeout`.
    pub async fn connect(
        cfg: &Etcd3Config,
        namespace: &str,
        scope: &str,
        name: &str,
        ttl: Duration,
        retry_timeout: Duration,
    ) -> Result<Etcd3Dcs, DcsError> {
        let endpoints = cfg.endpoints();
        if endpoints.is_empty() {
            return Err(DcsError::Rejected(
                "no etcd3 endpoint configured (etcd3.host, etcd3.hosts or etcd3.url)".into(),
            ));
        }
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(
                retry_timeout.clamp(Duration::from_millis(200), Duration::from_secs(2)),
            )
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3));
        if let Some(user) = &cfg.username {
            let password = cfg.password.clone().unwrap_or_default();
            opts = opts.with_user(user, password).with_auto_token_refresh(true);
        }
        let client = match tokio::time::timeout(
            retry_timeout,
            Client::connect(&endpoints, Some(opts)),
        )
        .await
        {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                return Err(match classify(&e) {
                    Class::Fatal => DcsError::Rejected(format!("etcd {endpoints:?}: {e}")),
                    _ => DcsError::Unreachable(format!("etcd {endpoints:?}: {e}")),
                });
            }
            Err(_) => return Err(DcsError::Timeout(retry_timeout)),
        };
        Ok(Etcd3Dcs {
            client,
            prefix: keys::cluster_prefix(namespace, scope),
            name: name.to_string(),
            settings: Mutex::new(Settings { ttl, retry_timeout }),
            lease: tokio::sync::Mutex::new(LeaseState::default()),
        })
    }

    /// The lease our leader and member keys are attached to, if one was granted.
    pub async fn lease_id(&self) -> Option<i64> {
        self.lease.lock().await.id
    }

    /// The underlying etcd client (for tools and tests).
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn settings(&self) -> MutexGuard<'_, Settings> {
        self.settings.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn key(&self, rel: &str) -> String {
        format!("{}{rel}", self.prefix)
    }

    /// Run `op` until it succeeds, fails for good, or `retry_timeout` is spent.
    async fn call<T, F, Fut>(&self, what: &str, op: F) -> Result<T, OpError>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let budget = self.settings().retry_timeout;
        let deadline = DEADLINE
            .try_with(|d| *d)
            .unwrap_or_else(|_| Instant::now() + budget);
        // Leave room for a second attempt when one endpoint hangs.
        let per_attempt = (budget / 2).max(Duration::from_secs(1));
        let mut last: Option<String> = None;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            match tokio::time::timeout(remaining.min(per_attempt), op(self.client.clone())).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => match classify(&e) {
                    Class::LeaseNotFound => return Err(OpError::LeaseNotFound),
                    Class::Fatal => {
                        return Err(OpError::Dcs(DcsError::Rejected(format!("{what}: {e}"))));
                    }
                    Class::Retry => {
                        tracing::debug!("etcd {what} failed, retrying: {e}");
                        last = Some(e.to_string());
                    }
                },
                Err(_) => tracing::debug!("etcd {what}: no answer, retrying"),
            }
            let pause = RETRY_PAUSE.min(deadline.saturating_duration_since(Instant::now()));
            tokio::time::sleep(pause).await;
        }
        Err(OpError::Dcs(match last {
            Some(e) => DcsError::Unreachable(format!("{what}: {e}")),
            None => DcsError::Timeout(budget),
        }))
    }

    /// Run a multi-request operation (lease refresh + write) within one `retry_timeout`,
    /// as upstream shares one retry deadline between them; waiting for the lease lock
    /// counts too.
    async fn bounded<T>(&self, fut: impl Future<Output = DcsResult<T>>) -> DcsResult<T> {
        let budget = self.settings().retry_timeout;
        let deadline = Instant::now() + budget;
        // The slack lets the requests report their own, more telling, error first.
        let hard_stop = deadline + Duration::from_millis(250);
        match tokio::time::timeout_at(hard_stop, DEADLINE.scope(deadline, fut)).await {
            Ok(r) => r,
            Err(_) => Err(DcsError::Timeout(budget)),
        }
    }

    async fn txn(&self, what: &str, txn: Txn) -> Result<TxnResponse, OpError> {
        self.call(what, |mut c| {
            let t = txn.clone();
            async move { c.txn(t).await }
        })
        .await
    }

    async fn put(&self, rel: &str, value: &str) -> DcsResult<bool> {
        let (key, value) = (self.key(rel), value.to_string());
        self.call(rel, |mut c| {
            let (k, v) = (key.clone(), value.clone());
            async move { c.put(k, v, None).await }
        })
        .await?;
        Ok(true)
    }

    /// Put only while the key's `mod_revision` is `version` (0 = absent), like upstream's CAS.
    async fn put_cas(&self, rel: &str, value: &str, version: Option<i64>) -> DcsResult<bool> {
        let Some(version) = version else {
            return self.put(rel, value).await;
        };
        let key = self.key(rel);
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                version,
            )])
            .and_then([TxnOp::put(key, value, None)]);
        Ok(self.txn(rel, txn).await?.succeeded())
    }

    async fn delete(&self, rel: &str, opts: Option<DeleteOptions>) -> DcsResult<bool> {
        let key = self.key(rel);
        self.call(rel, |mut c| {
            let (k, o) = (key.clone(), opts.clone());
            async move { c.delete(k, o).await }
        })
        .await?;
        Ok(true)
    }

    /// Keep our lease alive, or grant a new one if it is gone. Without `force`, a lease
    /// refreshed within the last second is reused as is.
    async fn refresh_lease(&self, force: bool) -> DcsResult<i64> {
        let mut st = self.lease.lock().await;
        if let Some(id) = st.id {
            let fresh = st.refreshed.is_some_and(|t| t.elapsed() < KEEPALIVE_REUSE);
            if !force && fresh {
                return Ok(id);
            }
            let alive = self.call("lease keep-alive", |mut c| async move {
                c.lease_keep_alive(id).await.map(|_| ())
            });
            match alive.await {
                Ok(()) => {
                    st.refreshed = Some(Instant::now());
                    return Ok(id);
                }
                Err(OpError::LeaseNotFound) => {
                    tracing::warn!("etcd lease {id:x} expired, granting a new one");
                    st.id = None;
                }
                Err(e) => return Err(e.into()),
            }
        }
        let ttl = self.settings().ttl.as_secs().max(1) as i64;
        let granted = self
            .call("lease grant", |mut c| async move {
                c.lease_grant(ttl, None).await
            })
            .await?;
        st.id = Some(granted.id());
        st.refreshed = Some(Instant::now());
        Ok(granted.id())
    }

    async fn forget_lease(&self, id: i64) {
        let mut st = self.lease.lock().await;
        if st.id == Some(id) {
            st.id = None;
        }
    }

    /// Run a transaction that attaches keys to our lease; if etcd says the lease is gone
    /// (it expired between keep-alive and write), grant a new one and try once more.
    async fn with_lease<T, F, Fut>(&self, force: bool, op: F) -> DcsResult<T>
    where
        F: Fn(i64) -> Fut,
        Fut: Future<Output = Result<T, OpError>>,
    {
        let lease = self.refresh_lease(force).await?;
        match op(lease).await {
            Err(OpError::LeaseNotFound) => {
                self.forget_lease(lease).await;
                let lease = self.refresh_lease(true).await?;
                Ok(op(lease).await?)
            }
            other => Ok(other?),
        }
    }

    async fn watch_attempt(
        &self,
        key: &str,
        progress: &mut WatchProgress,
    ) -> Result<bool, etcd_client::Error> {
        let mut client = self.client.clone();
        let start = match progress.start {
            Some(s) => s,
            None => {
                // We believe there is no leader: if one exists already, that is the change.
                let resp = client.get(key, None).await?;
                if !resp.kvs().is_empty() {
                    return Ok(true);
                }
                let rev = resp.header().map_or(0, |h| h.revision());
                *progress.start.insert(rev + 1)
            }
        };
        let opts = WatchOptions::new()
            .with_start_revision(start)
            .with_prev_key();
        let mut stream = client.watch(key, Some(opts)).await?;
        loop {
            let Some(resp) = stream.message().await? else {
                return Err(etcd_client::Error::WatchError(
                    "etcd closed the watch".into(),
                ));
            };
            progress.healthy = true;
            if resp.canceled() {
                if resp.compact_revision() > 0 {
                    // History we wanted to see is compacted away: tell the caller to re-read.
                    return Ok(true);
                }
                let reason = resp.cancel_reason().to_string();
                return Err(etcd_client::Error::WatchError(reason));
            }
            for ev in resp.events() {
                if leader_changed(ev) {
                    return Ok(true);
                }
                if let Some(kv) = ev.kv() {
                    progress.start = Some(kv.mod_revision() + 1);
                }
            }
        }
    }
}

struct WatchProgress {
    start: Option<i64>,
    healthy: bool,
}

/// A delete, a creation, or a new value. A put of the same name (the holder moving the
/// key to a new lease) does not count, as upstream only wakes on value changes.
fn leader_changed(ev: &Event) -> bool {
    let Some(kv) = ev.kv() else { return true };
    // Delete events carry version 0; puts carry version >= 1.
    if kv.version() == 0 {
        return true;
    }
    match ev.prev_kv() {
        Some(prev) => prev.value() != kv.value(),
        None => true,
    }
}

/// True when the transaction, or the transaction nested first in its failure branch
/// (recursively), took its success branch.
fn any_succeeded(resp: &TxnResponse) -> bool {
    if resp.succeeded() {
        return true;
    }
    match resp.op_responses().into_iter().next() {
        Some(TxnOpResponse::Txn(inner)) => any_succeeded(&inner),
        _ => false,
    }
}

fn status_json(status: &Status) -> String {
    serde_json::to_string(status).unwrap_or_else(|_| "{}".into())
}

#[async_trait]
impl Dcs for Etcd3Dcs {
    fn member_name(&self) -> &str {
        &self.name
    }

    async fn get_cluster(&self) -> DcsResult<Cluster> {
        let prefix = self.prefix.clone();
        let resp = self
            .call("get cluster", |mut c| {
                let p = prefix.clone();
                async move { c.get(p, Some(GetOptions::new().with_prefix())).await }
            })
            .await?;
        let nodes: Vec<RawNode> = resp
            .kvs()
            .iter()
            .filter_map(|kv| {
                let key = String::from_utf8_lossy(kv.key());
                let rel = key.strip_prefix(&self.prefix)?.to_string();
                Some(RawNode {
                    key: rel,
                    value: String::from_utf8_lossy(kv.value()).into_owned(),
                    version: kv.mod_revision(),
                    session: (kv.lease() != 0).then_some(kv.lease()),
                })
            })
            .collect();
        Ok(Cluster::from_nodes(&nodes))
    }

    async fn set_ttl(&self, ttl: Duration) {
        let changed = {
            let mut s = self.settings();
            std::mem::replace(&mut s.ttl, ttl) != ttl
        };
        if changed {
            // As upstream: forget (do not revoke) the lease. The next update_leader /
            // touch_member grants one with the new TTL and moves our keys onto it; the
            // old lease keeps them alive until then and then runs out on its own.
            *self.lease.lock().await = LeaseState::default();
        }
    }

    async fn set_retry_timeout(&self, retry_timeout: Duration) {
        self.settings().retry_timeout = retry_timeout;
    }

    async fn attempt_to_acquire_leader(&self) -> DcsResult<bool> {
        self.bounded(self.acquire_leader()).await
    }

    async fn update_leader(&self, status: Option<&Status>) -> DcsResult<bool> {
        self.bounded(self.refresh_leader(status)).await
    }

    async fn delete_leader(&self, status: Option<&Status>) -> DcsResult<bool> {
        let key = self.key(keys::LEADER);
        // Status and delete in one transaction: only the holder may write the status.
        let mut ops = Vec::new();
        if let Some(s) = status {
            ops.push(TxnOp::put(self.key(keys::STATUS), status_json(s), None));
        }
        ops.push(TxnOp::delete(key.clone(), None));
        let txn = Txn::new()
            .when([Compare::value(key, CompareOp::Equal, self.name.clone())])
            .and_then(ops);
        Ok(self.txn("delete leader", txn).await?.succeeded())
    }

    async fn touch_member(&self, data: &MemberData) -> DcsResult<bool> {
        let value = serde_json::to_string(data)
            .map_err(|e| DcsError::Rejected(format!("member data not serializable: {e}")))?;
        self.bounded(self.put_member(value)).await
    }
    async fn delete_member(&self, name: &str) -> DcsResult<bool> {
        self.delete(&keys::member_key(name), None).await
    }

    async fn initialize(&self, create_new: bool, sysid: &str) -> DcsResult<bool> {
        if !create_new {
            return self.put(keys::INITIALIZE, sysid).await;
        }
        let key = self.key(keys::INITIALIZE);
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, sysid, None)]);
        Ok(self.txn("initialize", txn).await?.succeeded())
    }

    async fn cancel_initialization(&self) -> DcsResult<bool> {
        self.delete(keys::INITIALIZE, None).await
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
        let Some(version) = version else {
            return self.delete(keys::SYNC, None).await;
        };
        let key = self.key(keys::SYNC);
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                version,
            )])
            .and_then([TxnOp::delete(key, None)]);
        Ok(self.txn("delete sync", txn).await?.succeeded())
    }

    async fn write_status(&self, status: &Status) -> DcsResult<bool> {
        self.put(keys::STATUS, &status_json(status)).await
    }

    async fn write_failsafe(&self, value: &str) -> DcsResult<bool> {
        self.put(keys::FAILSAFE, value).await
    }

    async fn delete_cluster(&self) -> DcsResult<bool> {
        self.delete("", Some(DeleteOptions::new().with_prefix()))
            .await
    }

    async fn watch_leader(
        &self,
        leader_version: Option<i64>,
        timeout: Duration,
    ) -> DcsResult<bool> {
        let deadline = Instant::now() + timeout;
        let key = self.key(keys::LEADER);
        let mut progress = WatchProgress {
            start: leader_version.map(|v| v + 1),
            healthy: false,
        };
        loop {
            progress.healthy = false;
            let attempt = self.watch_attempt(&key, &mut progress);
            let err = match tokio::time::timeout_at(deadline, attempt).await {
                Ok(Ok(changed)) => return Ok(changed),
                Err(_) if progress.healthy => return Ok(false),
                Err(_) => return Err(DcsError::Timeout(timeout)),
                Ok(Err(e)) => e,
            };
            if let Class::Fatal = classify(&err) {
                return Err(DcsError::Rejected(format!("watch leader: {err}")));
            }
            // Keep trying until the deadline: a watch is the loop's sleep, so an outage
            // must not turn it into a busy loop.
            tracing::debug!("etcd watch failed, retrying: {err}");
            tokio::time::sleep_until(deadline.min(Instant::now() + RETRY_PAUSE * 3)).await;
            if Instant::now() >= deadline {
                return Err(DcsError::Unreachable(format!("watch leader: {err}")));
            }
        }
    }
}

impl Etcd3Dcs {
    async fn acquire_leader(&self) -> DcsResult<bool> {
        let key = self.key(keys::LEADER);
        let won = self
            .with_lease(false, |lease| {
                let txn = Txn::new()
                    .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(
                        key.clone(),
                        self.name.clone(),
                        Some(PutOptions::new().with_lease(lease)),
                    )])
                    .or_else([TxnOp::get(key.clone(), None)]);
                async move {
                    let resp = self.txn("acquire leader", txn).await?;
                    // A retried request whose first try did land finds our own key.
                    Ok(resp.succeeded() || self.holds_leader(&resp, lease))
                }
            })
            .await?;
        if !won {
            tracing::info!("could not take out the leader lock: another member holds it");
        }
        Ok(won)
    }

    async fn refresh_leader(&self, status: Option<&Status>) -> DcsResult<bool> {
        let key = self.key(keys::LEADER);
        let held = self
            .with_lease(true, |lease| {
                let txn = update_leader_txn(&key, &self.name, lease);
                async move { Ok(any_succeeded(&self.txn("update leader", txn).await?)) }
            })
            .await?;
        if held && let Some(s) = status {
            self.put(keys::STATUS, &status_json(s)).await?;
        }
        Ok(held)
    }

    async fn put_member(&self, value: String) -> DcsResult<bool> {
        let key = self.key(&keys::member_key(&self.name));
        self.with_lease(false, |lease| {
            let (k, v) = (key.clone(), value.clone());
            async move {
                self.call("touch member", |mut c| {
                    let (k, v) = (k.clone(), v.clone());
                    async move { c.put(k, v, Some(PutOptions::new().with_lease(lease))).await }
                })
                .await
            }
        })
        .await?;
        Ok(true)
    }

    /// The `or_else` get of a failed acquire shows our own name on our lease.
    fn holds_leader(&self, resp: &TxnResponse, lease: i64) -> bool {
        resp.op_responses().iter().any(|op| match op {
            TxnOpResponse::Get(g) => g
                .kvs()
                .iter()
                .any(|kv| kv.value() == self.name.as_bytes() && kv.lease() == lease),
            _ => false,
        })
    }
}

/// Upstream's fenced refresh, as one transaction:
/// 1. the key is ours and on our lease: nothing to write (the keep-alive did the work);
/// 2. else, the key is ours: move it onto our current lease;
/// 3. else, the key is absent: re-create it (upstream does this too); otherwise lost.
fn update_leader_txn(key: &str, name: &str, lease: i64) -> Txn {
    let put = || TxnOp::put(key, name, Some(PutOptions::new().with_lease(lease)));
    let create = Txn::new()
        .when([Compare::create_revision(key, CompareOp::Equal, 0)])
        .and_then([put()]);
    let reattach = Txn::new()
        .when([Compare::value(key, CompareOp::Equal, name)])
        .and_then([put()])
        .or_else([TxnOp::txn(create)]);
    Txn::new()
        .when([
            Compare::value(key, CompareOp::Equal, name),
            Compare::lease(key, CompareOp::Equal, lease),
        ])
        .and_then([])
        .or_else([TxnOp::txn(reattach)])
}
