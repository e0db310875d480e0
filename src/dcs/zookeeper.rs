//! ZooKeeper backend (also used by Exhibitor), with upstream's layout: one znode per key
//! under `/<namespace>/<scope>/`; the leader and member znodes are ephemeral (they live as
//! long as our session, whose timeout is `ttl`); `config`/`failover`/`sync` writes are
//! versioned sets (the znode's data version).
//!
//! Lease semantics like the other stores: a ZooKeeper client keeps its session alive by
//! itself, so a daemon whose HA loop hangs would keep the leader znode forever. We close
//! our session when no leader/member refresh succeeded within `ttl`, so our ephemeral
//! znodes go away as TTL keys would.
//!
//! A TTL change needs a new session (the timeout is negotiated at session start). The
//! old session is kept until `ttl` passes so our znodes can move over; moving the leader
//! znode is one multi-op (delete + create), so nobody can take it in between.
//!
//! Versions: the leader reports its creation zxid (the watch must tell "re-created" from
//! "refreshed"), everything else its data version. Sessions: the ephemeral owner.

use super::{DcsError, DcsResult, keys};
use crate::config::ZooKeeperConfig;
use async_trait::async_trait;
use serde_json::Value;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::time::Instant;
use zookeeper_client::{
    Acl, Acls, AuthId, Client, CreateMode, CreateOptions, Error as ZkError, MultiWriteError,
    MultiWriteResult, Permission, Stat,
};

mod ops;

const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// How often the session reaper looks for a session that missed its refresh.
const REAPER_TICK: Duration = Duration::from_millis(200);
/// Leader names remembered per creation zxid (for the watch).
const LEADER_MEMORY: usize = 16;

/// Where the connect string comes from when it can change (Exhibitor).
#[async_trait]
pub trait HostsSource: Send + Sync {
    /// The current connect string if it changed since the last call.
    async fn refresh(&self) -> Option<String>;
}

#[derive(Debug)]
struct Settings {
    ttl: Duration,
    retry_timeout: Duration,
}

#[derive(Default)]
struct SessionSlot {
    current: Option<Client>,
    /// Last successful refresh of our ephemeral znodes (or the session start).
    refreshed: Option<Instant>,
    /// A session replaced by a TTL change, closed once `until` passes.
    retiring: Option<(Client, Instant)>,
}

struct Inner {
    hosts: Mutex<String>,
    hosts_source: Option<Arc<dyn HostsSource>>,
    prefix: String,
    name: String,
    auth: Vec<(String, Vec<u8>)>,
    acls: Vec<Acl>,
    settings: Mutex<Settings>,
    session: tokio::sync::Mutex<SessionSlot>,
    /// Creation zxid -> leader name, as seen by `get_cluster` and our own writes.
    leader_names: Mutex<BTreeMap<i64, String>>,
}

/// Where and how to connect.
struct Target {
    hosts: String,
    source: Option<Arc<dyn HostsSource>>,
    auth: Vec<(String, Vec<u8>)>,
    acls: Vec<Acl>,
}

/// One member's handle on a ZooKeeper ensemble.
pub struct ZooKeeperDcs {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `["CREATE", "READ"]` -> permission bits; `None` for anything unknown.
pub fn parse_permissions(v: &Value) -> Option<Permission> {
    let list = v.as_array()?;
    let mut perm = Permission::NONE;
    for p in list {
        perm = perm
            | match p.as_str()?.to_ascii_uppercase().as_str() {
                "READ" => Permission::READ,
                "WRITE" => Permission::WRITE,
                "CREATE" => Permission::CREATE,
                "DELETE" => Permission::DELETE,
                "ADMIN" => Permission::ADMIN,
                "ALL" => Permission::ALL,
                _ => return None,
            };
    }
    Some(perm)
}

fn retryable(e: &ZkError) -> bool {
    !matches!(
        e,
        ZkError::NoAuth
            | ZkError::AuthFailed
            | ZkError::InvalidAcl
            | ZkError::BadArguments(_)
            | ZkError::Unimplemented
            | ZkError::MarshallingError
            | ZkError::QuotaExceeded
    )
}

impl ZooKeeperDcs {
    /// Build the handle; the session is opened by the first operation, so this
    /// succeeds while ZooKeeper is down.
    pub async fn connect(
        cfg: &ZooKeeperConfig,
        namespace: &str,
        scope: &str,
        name: &str,
        ttl: Duration,
        retry_timeout: Duration,
    ) -> DcsResult<ZooKeeperDcs> {
        let hosts = cfg.host_list();
        if hosts.is_empty() {
            return Err(DcsError::Rejected(
                "no ZooKeeper host configured (zookeeper.hosts)".into(),
            ));
        }
        if cfg.use_ssl() {
            return Err(DcsError::Rejected(
                "zookeeper.use_ssl: TLS connections to ZooKeeper are not supported by this build"
                    .into(),
            ));
        }
        let mut auth = Vec::new();
        for (scheme, cred) in cfg.auth_data.iter().flatten() {
            let cred = cred
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| cred.to_string());
            auth.push((scheme.clone(), cred.into_bytes()));
        }
        let mut acls = Vec::new();
        for (principal, perms) in cfg.set_acls.iter().flatten() {
            let perm = parse_permissions(perms).ok_or_else(|| {
                DcsError::Rejected(format!(
                    "zookeeper.set_acls.{principal}: unknown permission"
                ))
            })?;
            acls.push(Acl::new(perm, AuthId::new("x509", principal)));
        }
        let target = Target {
            hosts: hosts.join(","),
            source: None,
            auth,
            acls,
        };
        Ok(Self::build(
            target,
            namespace,
            scope,
            name,
            ttl,
            retry_timeout,
        ))
    }

    /// A handle on the ensemble at `hosts` (a connect string), optionally refreshed
    /// from `source` before each cluster read. Must run inside a tokio runtime.
    pub fn with_hosts(
        hosts: String,
        source: Option<Arc<dyn HostsSource>>,
        namespace: &str,
        scope: &str,
        name: &str,
        ttl: Duration,
        retry_timeout: Duration,
    ) -> ZooKeeperDcs {
        let target = Target {
            hosts,
            source,
            auth: Vec::new(),
            acls: Vec::new(),
        };
        Self::build(target, namespace, scope, name, ttl, retry_timeout)
    }

    fn build(
        target: Target,
        namespace: &str,
        scope: &str,
        name: &str,
        ttl: Duration,
        retry_timeout: Duration,
    ) -> ZooKeeperDcs {
        let inner = Arc::new(Inner {
            hosts: Mutex::new(target.hosts),
            hosts_source: target.source,
            prefix: keys::cluster_prefix(namespace, scope),
            name: name.to_string(),
            auth: target.auth,
            acls: target.acls,
            settings: Mutex::new(Settings { ttl, retry_timeout }),
            session: tokio::sync::Mutex::new(SessionSlot::default()),
            leader_names: Mutex::new(BTreeMap::new()),
        });
        tokio::spawn(reap_sessions(Arc::downgrade(&inner)));
        ZooKeeperDcs { inner }
    }

    /// The connect string in use (Exhibitor may change it).
    pub fn hosts(&self) -> String {
        lock(&self.inner.hosts).clone()
    }
}

/// Close sessions whose owner stopped refreshing (see the module docs).
async fn reap_sessions(inner: Weak<Inner>) {
    loop {
        tokio::time::sleep(REAPER_TICK).await;
        let Some(inner) = inner.upgrade() else { return };
        let ttl = lock(&inner.settings).ttl;
        let mut slot = inner.session.lock().await;
        let stale = slot.refreshed.is_some_and(|t| t.elapsed() > ttl);
        if stale && slot.current.take().is_some() {
            tracing::warn!(
                "no leader/member refresh within ttl ({ttl:?}): closing the ZooKeeper session \
                 so our ephemeral keys expire"
            );
            slot.refreshed = None;
        }
        if slot
            .retiring
            .as_ref()
            .is_some_and(|(_, until)| *until <= Instant::now())
        {
            slot.retiring = None;
        }
    }
}

impl Inner {
    fn path(&self, rel: &str) -> String {
        format!("{}{rel}", self.prefix)
    }

    fn acls(&self) -> Acls<'_> {
        if self.acls.is_empty() {
            Acls::anyone_all()
        } else {
            Acls::new(&self.acls)
        }
    }

    fn opts(&self, mode: CreateMode) -> CreateOptions<'_> {
        mode.with_acls(self.acls())
    }

    fn remember_leader(&self, czxid: i64, name: &str) {
        let mut m = lock(&self.leader_names);
        m.insert(czxid, name.to_string());
        while m.len() > LEADER_MEMORY {
            m.pop_first();
        }
    }

    fn leader_name_at(&self, czxid: i64) -> Option<String> {
        lock(&self.leader_names).get(&czxid).cloned()
    }

    /// Our session, opened (with the current TTL as its timeout) if there is none.
    async fn client(&self) -> Result<Client, ZkError> {
        let mut slot = self.session.lock().await;
        if let Some(c) = &slot.current {
            if !c.state().is_terminated() {
                return Ok(c.clone());
            }
            slot.current = None;
        }
        let ttl = lock(&self.settings).ttl;
        let hosts = lock(&self.hosts).clone();
        let mut connector = Client::connector()
            .with_session_timeout(ttl)
            .with_fail_eagerly();
        for (scheme, cred) in &self.auth {
            connector = connector.with_auth(scheme, cred);
        }
        let c = connector.connect(&hosts).await?;
        tracing::debug!("ZooKeeper session {} opened on {hosts}", c.session_id());
        slot.current = Some(c.clone());
        slot.refreshed = Some(Instant::now());
        Ok(c)
    }

    async fn mark_refreshed(&self) {
        self.session.lock().await.refreshed = Some(Instant::now());
    }

    async fn forget_session(&self, c: &Client) {
        let mut slot = self.session.lock().await;
        if slot
            .current
            .as_ref()
            .is_some_and(|s| s.session_id() == c.session_id())
        {
            slot.current = None;
        }
    }

    /// Run `op` with our session until it succeeds, fails for good, or `retry_timeout`
    /// is spent. `op` turns expected outcomes (no node, bad version) into values.
    async fn run<T, F, Fut>(&self, what: &str, op: F) -> DcsResult<T>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, ZkError>>,
    {
        let budget = lock(&self.settings).retry_timeout;
        let deadline = Instant::now() + budget;
        let mut last: Option<String> = None;
        loop {
            let attempt = async {
                let c = self.client().await?;
                match op(c.clone()).await {
                    Err(e @ (ZkError::SessionExpired | ZkError::ClientClosed)) => {
                        self.forget_session(&c).await;
                        Err(e)
                    }
                    other => other,
                }
            };
            match tokio::time::timeout_at(deadline, attempt).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) if retryable(&e) => {
                    tracing::debug!("ZooKeeper {what} failed, retrying: {e}");
                    last = Some(e.to_string());
                }
                Ok(Err(e)) => return Err(DcsError::Rejected(format!("ZooKeeper {what}: {e}"))),
                Err(_) => break,
            }
            let pause = RETRY_PAUSE.min(deadline.saturating_duration_since(Instant::now()));
            if pause.is_zero() {
                break;
            }
            tokio::time::sleep(pause).await;
        }
        let hosts = lock(&self.hosts).clone();
        Err(match last {
            Some(e) => DcsError::Unreachable(format!("ZooKeeper {hosts} ({what}): {e}")),
            None => DcsError::Timeout(budget),
        })
    }

    /// Create `path`, creating missing parents (persistent) first.
    async fn create(
        &self,
        c: &Client,
        path: &str,
        data: &[u8],
        mode: CreateMode,
    ) -> Result<Stat, ZkError> {
        let opts = self.opts(mode);
        match c.create(path, data, &opts).await {
            Err(ZkError::NoNode) => {
                let parent = &path[..path.rfind('/').unwrap_or(0)];
                if !parent.is_empty() {
                    c.mkdir(parent, &self.opts(CreateMode::Persistent)).await?;
                }
                c.create(path, data, &opts).await.map(|(s, _)| s)
            }
            r => r.map(|(s, _)| s),
        }
    }

    /// Delete `path` (at `version`) and create it again as our ephemeral znode, atomically.
    async fn move_to_session(
        &self,
        c: &Client,
        path: &str,
        version: i32,
        data: &[u8],
    ) -> Result<Option<Stat>, ZkError> {
        let opts = self.opts(CreateMode::Ephemeral);
        let mut w = c.new_multi_writer();
        w.add_delete(path, Some(version))?;
        w.add_create(path, data, &opts)?;
        match w.commit().await {
            Ok(results) => Ok(results.into_iter().find_map(|r| match r {
                MultiWriteResult::Create { stat, .. } => Some(stat),
                _ => None,
            })),
            Err(MultiWriteError::OperationFailed {
                source: ZkError::NoNode | ZkError::BadVersion | ZkError::NodeExists,
                ..
            }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Set `rel` to `value`; with a version, only at that version. Without one, create
    /// the znode if it is missing.
    async fn set_or_create(&self, rel: &str, value: &str, version: Option<i64>) -> DcsResult<bool> {
        let path = self.path(rel);
        let expected = match version.map(i32::try_from) {
            Some(Ok(v)) => Some(v),
            Some(Err(_)) => return Ok(false),
            None => None,
        };
        self.run(rel, |c| {
            let path = path.clone();
            async move {
                match c.set_data(&path, value.as_bytes(), expected).await {
                    Ok(_) => Ok(true),
                    Err(ZkError::BadVersion) => Ok(false),
                    Err(ZkError::NoNode) if expected.is_some() => Ok(false),
                    Err(ZkError::NoNode) => {
                        match self
                            .create(&c, &path, value.as_bytes(), CreateMode::Persistent)
                            .await
                        {
                            // Somebody created it meanwhile: the next attempt sets it.
                            Err(ZkError::NodeExists) => Err(ZkError::ConnectionLoss),
                            r => r.map(|_| true),
                        }
                    }
                    Err(e) => Err(e),
                }
            }
        })
        .await
    }

    async fn delete(&self, rel: &str, version: Option<i32>) -> DcsResult<bool> {
        let path = self.path(rel);
        self.run(rel, |c| {
            let path = path.clone();
            async move {
                match c.delete(&path, version).await {
                    Ok(()) => Ok(true),
                    Err(ZkError::NoNode) => Ok(version.is_none()),
                    Err(ZkError::BadVersion) => Ok(false),
                    Err(e) => Err(e),
                }
            }
        })
        .await
    }
}

/// A znode's data as text.
fn text(data: Vec<u8>) -> String {
    String::from_utf8_lossy(&data).into_owned()
}

fn owner(stat: &Stat) -> Option<i64> {
    (stat.ephemeral_owner != 0).then_some(stat.ephemeral_owner)
}
