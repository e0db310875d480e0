//! In-memory DCS with etcd-like semantics (revisions, leases, compare-and-set), for unit
//! tests and multi-node simulations. Several `MemDcs` handles on one `MemStore` form a
//! cluster. Time is either a manual clock (moved only by `MemStore::advance`, so TTL
//! expiry needs no sleeping) or tokio's clock (so `tokio::time::pause` also works).

use super::{Cluster, Dcs, DcsError, DcsResult, MemberData, RawNode, Status, keys};
use async_trait::async_trait;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::watch;

/// How many key events are kept for `watch_leader`; older versions count as "changed".
const EVENT_LOG_LEN: usize = 4096;

#[derive(Debug, Clone)]
struct Entry {
    value: String,
    mod_revision: i64,
    create_revision: i64,
    lease: Option<i64>,
}

#[derive(Debug, Clone, Copy)]
struct Lease {
    ttl: Duration,
    expires: Duration,
}

#[derive(Debug)]
enum Clock {
    Manual(Duration),
    Tokio(tokio::time::Instant),
}

#[derive(Debug)]
struct State {
    kv: BTreeMap<String, Entry>,
    leases: HashMap<i64, Lease>,
    revision: i64,
    next_lease: i64,
    clock: Clock,
    unreachable: bool,
    /// (revision, key, new value or None for a delete), newest last.
    events: VecDeque<(i64, String, Option<String>)>,
    /// Revisions at or below this may be missing from `events`.
    compacted: i64,
}

struct Inner {
    state: Mutex<State>,
    /// Carries the store revision; bumped on every change so watchers wake up.
    changes: watch::Sender<i64>,
}

/// The shared store. Cloning gives another handle to the same data.
#[derive(Clone)]
pub struct MemStore {
    inner: Arc<Inner>,
}

/// A write was attached to a lease that no longer exists.
#[derive(Debug)]
struct LeaseGone;

impl Default for MemStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemStore {
    /// A store with a manual clock starting at zero; only `advance` moves time.
    pub fn new() -> MemStore {
        Self::with_clock(Clock::Manual(Duration::ZERO))
    }

    /// A store whose leases expire on tokio's clock (real time, or paused test time).
    pub fn new_tokio_clock() -> MemStore {
        Self::with_clock(Clock::Tokio(tokio::time::Instant::now()))
    }

    fn with_clock(clock: Clock) -> MemStore {
        let state = State {
            kv: BTreeMap::new(),
            leases: HashMap::new(),
            revision: 1,
            next_lease: 1000,
            clock,
            unreachable: false,
            events: VecDeque::new(),
            compacted: 1,
        };
        MemStore {
            inner: Arc::new(Inner {
                state: Mutex::new(state),
                changes: watch::channel(1).0,
            }),
        }
    }

    /// Move the manual clock forward and expire leases. No-op for the time on a tokio clock
    /// (expiry still runs).
    pub fn advance(&self, by: Duration) {
        let mut st = self.lock_raw();
        if let Clock::Manual(now) = &mut st.clock {
            *now += by;
        }
        self.expire(&mut st);
    }

    /// Simulate a DCS outage: while set, every `Dcs` call returns `Err(Unreachable)`.
    pub fn set_unreachable(&self, unreachable: bool) {
        self.lock_raw().unreachable = unreachable;
        self.inner.changes.send_modify(|_| {});
    }

    /// Write any value (garbage included) at a full key such as `/service/batman/config`.
    pub fn put_raw(&self, key: &str, value: &str) {
        let mut st = self.lock_raw();
        self.expire(&mut st);
        let _ = self.put(&mut st, key, value, None);
    }

    /// Read a full key: (value, mod_revision, lease).
    pub fn get_raw(&self, key: &str) -> Option<(String, i64, Option<i64>)> {
        let mut st = self.lock_raw();
        self.expire(&mut st);
        st.kv
            .get(key)
            .map(|e| (e.value.clone(), e.mod_revision, e.lease))
    }

    /// Delete a full key; true when it existed.
    pub fn delete_raw(&self, key: &str) -> bool {
        let mut st = self.lock_raw();
        self.expire(&mut st);
        self.delete(&mut st, key)
    }

    /// Current store revision (bumped by every write or delete).
    pub fn revision(&self) -> i64 {
        self.lock_raw().revision
    }

    fn lock_raw(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent data (every mutation is a
        // single insert/remove), so a poisoned lock is still usable.
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lock for a `Dcs` call: fails while unreachable, and expires leases first.
    fn lock(&self) -> DcsResult<MutexGuard<'_, State>> {
        let mut st = self.lock_raw();
        if st.unreachable {
            return Err(DcsError::Unreachable(
                "in-memory store set unreachable".into(),
            ));
        }
        self.expire(&mut st);
        Ok(st)
    }

    fn now(st: &State) -> Duration {
        match st.clock {
            Clock::Manual(now) => now,
            Clock::Tokio(start) => tokio::time::Instant::now() - start,
        }
    }

    /// Drop expired leases and every key attached to them, as etcd does.
    fn expire(&self, st: &mut State) {
        let now = Self::now(st);
        let dead: Vec<i64> = st
            .leases
            .iter()
            .filter(|(_, l)| l.expires <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in dead {
            self.revoke(st, id);
        }
    }

    fn revoke(&self, st: &mut State, id: i64) {
        st.leases.remove(&id);
        let attached: Vec<String> = st
            .kv
            .iter()
            .filter(|(_, e)| e.lease == Some(id))
            .map(|(k, _)| k.clone())
            .collect();
        for k in attached {
            self.delete(st, &k);
        }
    }

    fn bump(&self, st: &mut State, key: &str, value: Option<&str>) -> i64 {
        st.revision += 1;
        let rev = st.revision;
        st.events
            .push_back((rev, key.to_string(), value.map(str::to_string)));
        while st.events.len() > EVENT_LOG_LEN {
            if let Some((r, _, _)) = st.events.pop_front() {
                st.compacted = r;
            }
        }
        self.inner.changes.send_replace(rev);
        rev
    }

    fn put(
        &self,
        st: &mut State,
        key: &str,
        value: &str,
        lease: Option<i64>,
    ) -> Result<i64, LeaseGone> {
        if let Some(id) = lease
            && !st.leases.contains_key(&id)
        {
            return Err(LeaseGone);
        }
        let rev = self.bump(st, key, Some(value));
        let create_revision = st.kv.get(key).map_or(rev, |e| e.create_revision);
        st.kv.insert(
            key.to_string(),
            Entry {
                value: value.to_string(),
                mod_revision: rev,
                create_revision,
                lease,
            },
        );
        Ok(rev)
    }

    fn delete(&self, st: &mut State, key: &str) -> bool {
        if st.kv.remove(key).is_some() {
            self.bump(st, key, None);
            true
        } else {
            false
        }
    }

    fn grant(st: &mut State, ttl: Duration) -> i64 {
        st.next_lease += 1;
        let id = st.next_lease;
        let expires = Self::now(st) + ttl;
        st.leases.insert(id, Lease { ttl, expires });
        id
    }

    /// Keep-alive: true when the lease still existed.
    fn keepalive(st: &mut State, id: i64) -> bool {
        let now = Self::now(st);
        match st.leases.get_mut(&id) {
            Some(l) => {
                l.expires = now + l.ttl;
                true
            }
            None => false,
        }
    }

    /// Has `key` changed (value or existence) since revision `since`?
    /// `since = None` means "we believed it absent".
    fn changed_since(st: &State, key: &str, since: Option<i64>) -> bool {
        let Some(since) = since else {
            return st.kv.contains_key(key);
        };
        if since < st.compacted {
            return true;
        }
        let mut prev: Option<Option<&str>> = None;
        for (rev, _, v) in st.events.iter().filter(|(_, k, _)| k == key) {
            if *rev <= since {
                prev = Some(v.as_deref());
                continue;
            }
            // A put with an unchanged value (lease re-attach) is not a change.
            match (prev, v.as_deref()) {
                (Some(Some(old)), Some(new)) if old == new => {}
                _ => return true,
            }
            prev = Some(v.as_deref());
        }
        false
    }

    /// The deadline of the lease that holds `key`, if the store runs on tokio's clock.
    fn tokio_expiry(st: &State, key: &str) -> Option<tokio::time::Instant> {
        let Clock::Tokio(start) = st.clock else {
            return None;
        };
        let lease = st.kv.get(key)?.lease?;
        Some(start + st.leases.get(&lease)?.expires)
    }
}

#[derive(Debug)]
struct Session {
    ttl: Duration,
    lease: Option<i64>,
}

/// One member's handle on a `MemStore`.
pub struct MemDcs {
    store: MemStore,
    prefix: String,
    name: String,
    session: Mutex<Session>,
}

impl MemDcs {
    pub fn new(
        store: MemStore,
        namespace: &str,
        scope: &str,
        member_name: &str,
        ttl: Duration,
    ) -> MemDcs {
        MemDcs {
            store,
            prefix: keys::cluster_prefix(namespace, scope),
            name: member_name.to_string(),
            session: Mutex::new(Session { ttl, lease: None }),
        }
    }

    /// The lease this member's leader/member keys are attached to, if any.
    pub fn lease_id(&self) -> Option<i64> {
        self.session().lease
    }

    /// The shared store behind this handle.
    pub fn store(&self) -> &MemStore {
        &self.store
    }

    fn session(&self) -> MutexGuard<'_, Session> {
        self.session.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn key(&self, rel: &str) -> String {
        format!("{}{rel}", self.prefix)
    }

    /// Keep our lease alive, or grant a new one when it is gone (expired or TTL changed).
    fn refresh_lease(&self, st: &mut State) -> i64 {
        let mut s = self.session();
        match s.lease {
            Some(id) if MemStore::keepalive(st, id) => id,
            _ => {
                let id = MemStore::grant(st, s.ttl);
                s.lease = Some(id);
                id
            }
        }
    }

    /// Put attached to our lease, granting a fresh lease if ours vanished meanwhile.
    fn put_leased(&self, st: &mut State, rel: &str, value: &str) -> i64 {
        let lease = self.refresh_lease(st);
        let key = self.key(rel);
        match self.store.put(st, &key, value, Some(lease)) {
            Ok(rev) => rev,
            Err(LeaseGone) => {
                self.session().lease = None;
                let lease = self.refresh_lease(st);
                self.store.put(st, &key, value, Some(lease)).unwrap_or(0)
            }
        }
    }

    /// Put only if the key's mod_revision still is `version` (absent = 0), like an etcd txn.
    fn put_cas(&self, rel: &str, value: &str, version: Option<i64>) -> DcsResult<bool> {
        let mut st = self.store.lock()?;
        let key = self.key(rel);
        if let Some(v) = version {
            let current = st.kv.get(&key).map_or(0, |e| e.mod_revision);
            if current != v {
                return Ok(false);
            }
        }
        let _ = self.store.put(&mut st, &key, value, None);
        Ok(true)
    }

    fn status_json(status: &Status) -> String {
        serde_json::to_string(status).unwrap_or_else(|_| "{}".into())
    }
}

#[async_trait]
impl Dcs for MemDcs {
    fn member_name(&self) -> &str {
        &self.name
    }

    async fn get_cluster(&self) -> DcsResult<Cluster> {
        let st = self.store.lock()?;
        let nodes: Vec<RawNode> = st
            .kv
            .range(self.prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&self.prefix))
            .map(|(k, e)| RawNode {
                key: k[self.prefix.len()..].to_string(),
                value: e.value.clone(),
                version: e.mod_revision,
                session: e.lease,
            })
            .collect();
        Ok(Cluster::from_nodes(&nodes))
    }

    async fn set_ttl(&self, ttl: Duration) {
        let mut s = self.session();
        if s.ttl != ttl {
            // Like upstream: forget the old lease; the next write grants one with the new
            // TTL and re-attaches our keys, the old lease simply runs out.
            s.ttl = ttl;
            s.lease = None;
        }
    }

    async fn set_retry_timeout(&self, _retry_timeout: Duration) {}

    async fn attempt_to_acquire_leader(&self) -> DcsResult<bool> {
        let mut st = self.store.lock()?;
        let key = self.key(keys::LEADER);
        if st.kv.contains_key(&key) {
            return Ok(false);
        }
        self.put_leased(&mut st, keys::LEADER, &self.name);
        Ok(true)
    }

    async fn update_leader(&self, status: Option<&Status>) -> DcsResult<bool> {
        let mut st = self.store.lock()?;
        let lease = self.refresh_lease(&mut st);
        let key = self.key(keys::LEADER);
        let held = match st.kv.get(&key) {
            Some(e) if e.value == self.name => {
                if e.lease != Some(lease) {
                    self.put_leased(&mut st, keys::LEADER, &self.name);
                }
                true
            }
            Some(_) => false,
            // Upstream re-creates a leader key that vanished under its holder.
            None => {
                self.put_leased(&mut st, keys::LEADER, &self.name);
                true
            }
        };
        if held && let Some(s) = status {
            let _ = self.store.put(
                &mut st,
                &self.key(keys::STATUS),
                &Self::status_json(s),
                None,
            );
        }
        Ok(held)
    }

    async fn delete_leader(&self, status: Option<&Status>) -> DcsResult<bool> {
        let mut st = self.store.lock()?;
        let key = self.key(keys::LEADER);
        if st.kv.get(&key).is_none_or(|e| e.value != self.name) {
            return Ok(false);
        }
        if let Some(s) = status {
            let _ = self.store.put(
                &mut st,
                &self.key(keys::STATUS),
                &Self::status_json(s),
                None,
            );
        }
        self.store.delete(&mut st, &key);
        Ok(true)
    }

    async fn touch_member(&self, data: &MemberData) -> DcsResult<bool> {
        let value = serde_json::to_string(data)
            .map_err(|e| DcsError::Rejected(format!("member data not serializable: {e}")))?;
        let mut st = self.store.lock()?;
        self.put_leased(&mut st, &keys::member_key(&self.name), &value);
        Ok(true)
    }

    async fn delete_member(&self, name: &str) -> DcsResult<bool> {
        let mut st = self.store.lock()?;
        self.store
            .delete(&mut st, &self.key(&keys::member_key(name)));
        Ok(true)
    }

    async fn initialize(&self, create_new: bool, sysid: &str) -> DcsResult<bool> {
        let mut st = self.store.lock()?;
        let key = self.key(keys::INITIALIZE);
        if create_new && st.kv.contains_key(&key) {
            return Ok(false);
        }
        let _ = self.store.put(&mut st, &key, sysid, None);
        Ok(true)
    }

    async fn cancel_initialization(&self) -> DcsResult<bool> {
        let mut st = self.store.lock()?;
        self.store.delete(&mut st, &self.key(keys::INITIALIZE));
        Ok(true)
    }

    async fn set_config_value(&self, value: &str, version: Option<i64>) -> DcsResult<bool> {
        self.put_cas(keys::CONFIG, value, version)
    }

    async fn set_failover_value(&self, value: &str, version: Option<i64>) -> DcsResult<bool> {
        self.put_cas(keys::FAILOVER, value, version)
    }

    async fn set_history_value(&self, value: &str) -> DcsResult<bool> {
        self.put_cas(keys::HISTORY, value, None)
    }

    async fn set_sync_state_value(&self, value: &str, version: Option<i64>) -> DcsResult<bool> {
        self.put_cas(keys::SYNC, value, version)
    }

    async fn delete_sync_state(&self, version: Option<i64>) -> DcsResult<bool> {
        let mut st = self.store.lock()?;
        let key = self.key(keys::SYNC);
        let current = st.kv.get(&key).map_or(0, |e| e.mod_revision);
        if version.is_some_and(|v| v != current) {
            return Ok(false);
        }
        self.store.delete(&mut st, &key);
        Ok(true)
    }

    async fn write_status(&self, status: &Status) -> DcsResult<bool> {
        self.put_cas(keys::STATUS, &Self::status_json(status), None)
    }

    async fn write_failsafe(&self, value: &str) -> DcsResult<bool> {
        self.put_cas(keys::FAILSAFE, value, None)
    }

    async fn delete_cluster(&self) -> DcsResult<bool> {
        let mut st = self.store.lock()?;
        let doomed: Vec<String> = st
            .kv
            .keys()
            .filter(|k| k.starts_with(&self.prefix))
            .cloned()
            .collect();
        for k in doomed {
            self.store.delete(&mut st, &k);
        }
        Ok(true)
    }

    async fn watch_leader(
        &self,
        leader_version: Option<i64>,
        timeout: Duration,
    ) -> DcsResult<bool> {
        let deadline = tokio::time::Instant::now() + timeout;
        let key = self.key(keys::LEADER);
        let mut rx = self.store.inner.changes.subscribe();
        loop {
            let wake_at = {
                let mut st = self.store.lock_raw();
                self.store.expire(&mut st);
                if !st.unreachable && MemStore::changed_since(&st, &key, leader_version) {
                    return Ok(true);
                }
                // On tokio's clock nobody calls `advance`: wake up when the lease runs out.
                MemStore::tokio_expiry(&st, &key).map_or(deadline, |t| t.min(deadline))
            };
            tokio::select! {
                _ = rx.changed() => {}
                _ = tokio::time::sleep_until(wake_at) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                let st = self.store.lock_raw();
                if st.unreachable {
                    return Err(DcsError::Unreachable(
                        "in-memory store set unreachable".into(),
                    ));
                }
                return Ok(MemStore::changed_since(&st, &key, leader_version));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(30);

    fn member(store: &MemStore, name: &str) -> MemDcs {
        MemDcs::new(store.clone(), "/service/", "batman", name, TTL)
    }

    #[tokio::test]
    async fn leader_expires_without_refresh_and_survives_with_it() {
        let store = MemStore::new();
        let (a, b) = (member(&store, "a"), member(&store, "b"));
        assert!(a.attempt_to_acquire_leader().await.unwrap());
        assert!(!b.attempt_to_acquire_leader().await.unwrap());

        store.advance(Duration::from_secs(20));
        assert!(a.update_leader(None).await.unwrap());
        store.advance(Duration::from_secs(20));
        let c = a.get_cluster().await.unwrap();
        assert_eq!(
            c.leader_name(),
            Some("a"),
            "refreshed leader key must survive"
        );
        assert_eq!(c.leader.unwrap().session, a.lease_id());

        store.advance(Duration::from_secs(11));
        assert!(b.get_cluster().await.unwrap().is_unlocked());
        assert!(b.attempt_to_acquire_leader().await.unwrap());
        assert!(!a.update_leader(None).await.unwrap(), "a lost the key to b");
    }

    #[tokio::test]
    async fn member_key_expires_with_its_lease() {
        let store = MemStore::new();
        let a = member(&store, "a");
        assert!(a.touch_member(&MemberData::default()).await.unwrap());
        store.advance(TTL - Duration::from_secs(1));
        assert_eq!(a.get_cluster().await.unwrap().members.len(), 1);
        store.advance(Duration::from_secs(1));
        assert!(a.get_cluster().await.unwrap().members.is_empty());
        // The next touch grants a fresh lease.
        assert!(a.touch_member(&MemberData::default()).await.unwrap());
        assert_eq!(a.get_cluster().await.unwrap().members.len(), 1);
    }

    #[tokio::test]
    async fn set_ttl_moves_keys_to_a_new_lease() {
        let store = MemStore::new();
        let a = member(&store, "a");
        assert!(a.attempt_to_acquire_leader().await.unwrap());
        let old = a.lease_id();
        a.set_ttl(Duration::from_secs(5)).await;
        assert!(a.update_leader(None).await.unwrap());
        assert_ne!(a.lease_id(), old);
        store.advance(Duration::from_secs(6));
        assert!(a.get_cluster().await.unwrap().is_unlocked());
    }

    #[tokio::test]
    async fn watch_wakes_on_expiry_via_advance() {
        let store = MemStore::new();
        let (a, b) = (member(&store, "a"), member(&store, "b"));
        assert!(a.attempt_to_acquire_leader().await.unwrap());
        let v = b.get_cluster().await.unwrap().leader.unwrap().version;
        let waiter =
            tokio::spawn(async move { b.watch_leader(Some(v), Duration::from_secs(10)).await });
        tokio::task::yield_now().await;
        store.advance(TTL);
        let woke = tokio::time::timeout(Duration::from_secs(2), waiter).await;
        assert!(woke.unwrap().unwrap().unwrap());
    }

    #[tokio::test]
    async fn tokio_clock_expires_without_advance() {
        let store = MemStore::new_tokio_clock();
        let ttl = Duration::from_millis(300);
        let a = MemDcs::new(store.clone(), "/service/", "batman", "a", ttl);
        let b = member(&store, "b");
        assert!(a.attempt_to_acquire_leader().await.unwrap());
        let v = b.get_cluster().await.unwrap().leader.unwrap().version;
        let start = tokio::time::Instant::now();
        assert!(
            b.watch_leader(Some(v), Duration::from_secs(5))
                .await
                .unwrap()
        );
        assert!(start.elapsed() >= ttl / 2 && start.elapsed() < Duration::from_secs(2));
        assert!(b.get_cluster().await.unwrap().is_unlocked());
    }

    #[tokio::test]
    async fn lease_reattach_is_not_a_leader_change() {
        let store = MemStore::new();
        let a = member(&store, "a");
        assert!(a.attempt_to_acquire_leader().await.unwrap());
        let v = a.get_cluster().await.unwrap().leader.unwrap().version;
        a.set_ttl(Duration::from_secs(10)).await;
        assert!(a.update_leader(None).await.unwrap());
        assert_ne!(a.get_cluster().await.unwrap().leader.unwrap().version, v);
        assert!(
            !a.watch_leader(Some(v), Duration::from_millis(50))
                .await
                .unwrap()
        );
    }

    #[tokio::test]
    async fn unreachable_store_errors() {
        let store = MemStore::new();
        let a = member(&store, "a");
        store.set_unreachable(true);
        assert!(matches!(
            a.get_cluster().await,
            Err(DcsError::Unreachable(_))
        ));
        assert!(a.attempt_to_acquire_leader().await.is_err());
        assert!(
            a.watch_leader(None, Duration::from_millis(20))
                .await
                .is_err()
        );
        store.set_unreachable(false);
        assert!(a.attempt_to_acquire_leader().await.unwrap());
    }
}
