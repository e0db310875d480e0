//! One contract for every DCS backend: each behaviour is a generic async fn over a
//! `Backend` factory, run against the in-memory store (manual clock) and a real etcd.

mod support;

use patroni::dcs::etcd2::Etcd2Dcs;
use patroni::dcs::etcd3::Etcd3Dcs;
use patroni::dcs::mem::{MemDcs, MemStore};
use patroni::dcs::zookeeper::ZooKeeperDcs;
use patroni::dcs::{Dcs, DcsResult, MemberData, PgState, Role, Status};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::etcd::Etcd;
use support::zookeeper::ZooKeeper;

const NAMESPACE: &str = "/service/";
const SCOPE: &str = "batman";
const PREFIX: &str = "/service/batman/";

/// What the contract needs from a backend besides the `Dcs` trait itself.
trait Backend {
    type D: Dcs;
    /// A handle for member `name` with the backend's TTL.
    async fn member(&self, name: &str) -> Self::D;
    fn ttl(&self) -> Duration;
    /// The retry budget of one call (how long an outage may take to surface).
    fn retry_timeout(&self) -> Duration;
    /// Let `d` pass for lease purposes (manual clock or real sleep).
    async fn pass(&self, d: Duration);
    /// Write any value at a key relative to the cluster prefix, bypassing the backend.
    async fn put_raw(&self, rel: &str, value: &str);
    async fn get_raw(&self, rel: &str) -> Option<String>;
    async fn delete_raw(&self, rel: &str);
    fn stop(&self);
    fn restart(&self);
}

struct MemBackend {
    store: MemStore,
}

impl Backend for MemBackend {
    type D = MemDcs;
    async fn member(&self, name: &str) -> MemDcs {
        MemDcs::new(self.store.clone(), NAMESPACE, SCOPE, name, self.ttl())
    }
    fn ttl(&self) -> Duration {
        Duration::from_secs(30)
    }
    fn retry_timeout(&self) -> Duration {
        Duration::from_millis(100)
    }
    async fn pass(&self, d: Duration) {
        self.store.advance(d);
    }
    async fn put_raw(&self, rel: &str, value: &str) {
        self.store.put_raw(&format!("{PREFIX}{rel}"), value);
    }
    async fn get_raw(&self, rel: &str) -> Option<String> {
        self.store
            .get_raw(&format!("{PREFIX}{rel}"))
            .map(|(v, _, _)| v)
    }
    async fn delete_raw(&self, rel: &str) {
        self.store.delete_raw(&format!("{PREFIX}{rel}"));
    }
    fn stop(&self) {
        self.store.set_unreachable(true);
    }
    fn restart(&self) {
        self.store.set_unreachable(false);
    }
}

struct EtcdBackend {
    etcd: Mutex<Etcd>,
    cfg: patroni::config::Etcd3Config,
    raw: etcd_client::Client,
}

impl EtcdBackend {
    async fn start() -> EtcdBackend {
        let etcd = tokio::task::block_in_place(Etcd::start);
        let raw = etcd_client::Client::connect([etcd.endpoint()], None)
            .await
            .expect("raw etcd client");
        EtcdBackend {
            cfg: etcd.etcd3_config(),
            etcd: Mutex::new(etcd),
            raw,
        }
    }
}

impl Backend for EtcdBackend {
    type D = Etcd3Dcs;
    async fn member(&self, name: &str) -> Etcd3Dcs {
        Etcd3Dcs::connect(
            &self.cfg,
            NAMESPACE,
            SCOPE,
            name,
            self.ttl(),
            self.retry_timeout(),
        )
        .await
        .expect("connect to etcd")
    }
    fn ttl(&self) -> Duration {
        // etcd's smallest lease TTL with default election timeouts.
        Duration::from_secs(2)
    }
    fn retry_timeout(&self) -> Duration {
        Duration::from_secs(2)
    }
    async fn pass(&self, d: Duration) {
        tokio::time::sleep(d).await;
    }
    async fn put_raw(&self, rel: &str, value: &str) {
        let mut c = self.raw.clone();
        c.put(format!("{PREFIX}{rel}"), value, None)
            .await
            .expect("raw put");
    }
    async fn get_raw(&self, rel: &str) -> Option<String> {
        let mut c = self.raw.clone();
        let resp = c
            .get(format!("{PREFIX}{rel}"), None)
            .await
            .expect("raw get");
        resp.kvs()
            .first()
            .map(|kv| kv.value_str().expect("utf8").to_string())
    }
    async fn delete_raw(&self, rel: &str) {
        let mut c = self.raw.clone();
        c.delete(format!("{PREFIX}{rel}"), None)
            .await
            .expect("raw delete");
    }
    fn stop(&self) {
        tokio::task::block_in_place(|| self.etcd.lock().unwrap().stop());
    }
    fn restart(&self) {
        tokio::task::block_in_place(|| self.etcd.lock().unwrap().restart());
    }
}

/// etcd through the v2 keys API (`--enable-v2`); raw access over plain HTTP.
struct Etcd2Backend {
    etcd: Mutex<Etcd>,
    cfg: patroni::config::Etcd3Config,
    http: reqwest::Client,
    keys_url: String,
}

impl Etcd2Backend {
    async fn start() -> Etcd2Backend {
        let etcd = tokio::task::block_in_place(Etcd::start);
        Etcd2Backend {
            cfg: etcd.etcd3_config(),
            keys_url: format!("{}/v2/keys{PREFIX}", etcd.endpoint()),
            etcd: Mutex::new(etcd),
            http: reqwest::Client::new(),
        }
    }
}

impl Backend for Etcd2Backend {
    type D = Etcd2Dcs;
    async fn member(&self, name: &str) -> Etcd2Dcs {
        Etcd2Dcs::connect(
            &self.cfg,
            NAMESPACE,
            SCOPE,
            name,
            self.ttl(),
            self.retry_timeout(),
        )
        .expect("etcd v2 client")
    }
    fn ttl(&self) -> Duration {
        Duration::from_secs(2)
    }
    fn retry_timeout(&self) -> Duration {
        Duration::from_secs(2)
    }
    async fn pass(&self, d: Duration) {
        tokio::time::sleep(d).await;
    }
    async fn put_raw(&self, rel: &str, value: &str) {
        let url = format!("{}{rel}", self.keys_url);
        let r = self.http.put(url).form(&[("value", value)]).send().await;
        assert!(r.expect("raw put").status().is_success());
    }
    async fn get_raw(&self, rel: &str) -> Option<String> {
        let url = format!("{}{rel}?quorum=true", self.keys_url);
        let v: serde_json::Value = self.http.get(url).send().await.ok()?.json().await.ok()?;
        v["node"]["value"].as_str().map(str::to_string)
    }
    async fn delete_raw(&self, rel: &str) {
        let url = format!("{}{rel}", self.keys_url);
        self.http.delete(url).send().await.expect("raw delete");
    }
    fn stop(&self) {
        tokio::task::block_in_place(|| self.etcd.lock().unwrap().stop());
    }
    fn restart(&self) {
        tokio::task::block_in_place(|| self.etcd.lock().unwrap().restart());
    }
}

/// A real ZooKeeper; raw access through a separate session.
struct ZkBackend {
    zk: Mutex<ZooKeeper>,
    cfg: patroni::config::ZooKeeperConfig,
    raw: zookeeper_client::Client,
}

impl ZkBackend {
    async fn start() -> ZkBackend {
        let zk = tokio::task::block_in_place(ZooKeeper::start);
        let raw = zookeeper_client::Client::connect(&zk.hosts())
            .await
            .expect("raw ZooKeeper client");
        ZkBackend {
            cfg: zk.config(),
            zk: Mutex::new(zk),
            raw,
        }
    }
    fn path(rel: &str) -> String {
        format!("{PREFIX}{rel}")
    }
}

impl Backend for ZkBackend {
    type D = ZooKeeperDcs;
    async fn member(&self, name: &str) -> ZooKeeperDcs {
        ZooKeeperDcs::connect(
            &self.cfg,
            NAMESPACE,
            SCOPE,
            name,
            self.ttl(),
            self.retry_timeout(),
        )
        .await
        .expect("ZooKeeper handle")
    }
    fn ttl(&self) -> Duration {
        Duration::from_secs(2)
    }
    fn retry_timeout(&self) -> Duration {
        Duration::from_secs(2)
    }
    async fn pass(&self, d: Duration) {
        tokio::time::sleep(d).await;
    }
    async fn put_raw(&self, rel: &str, value: &str) {
        use zookeeper_client::{Acls, CreateMode, Error};
        let path = Self::path(rel);
        let opts = CreateMode::Persistent.with_acls(Acls::anyone_all());
        let parent = &path[..path.rfind('/').unwrap()];
        self.raw.mkdir(parent, &opts).await.expect("raw mkdir");
        match self.raw.create(&path, value.as_bytes(), &opts).await {
            Err(Error::NodeExists) => {
                self.raw
                    .set_data(&path, value.as_bytes(), None)
                    .await
                    .expect("raw set");
            }
            r => {
                r.expect("raw create");
            }
        }
    }
    async fn get_raw(&self, rel: &str) -> Option<String> {
        let (data, _) = self.raw.get_data(&Self::path(rel)).await.ok()?;
        Some(String::from_utf8(data).expect("utf8"))
    }
    async fn delete_raw(&self, rel: &str) {
        let _ = self.raw.delete(&Self::path(rel), None).await;
    }
    fn stop(&self) {
        tokio::task::block_in_place(|| self.zk.lock().unwrap().stop());
    }
    fn restart(&self) {
        tokio::task::block_in_place(|| self.zk.lock().unwrap().restart());
    }
}

/// Poll `probe` every 100 ms until it yields `Some`, or panic after `timeout`.
async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn leader_of(c: &patroni::dcs::Cluster) -> Option<String> {
    c.leader_name().map(str::to_string)
}

// ---------------------------------------------------------------------------------
// Behaviours
// ---------------------------------------------------------------------------------

async fn bootstrap_race_has_one_winner<B: Backend>(b: &B) {
    let (x, y) = (b.member("pg0").await, b.member("pg1").await);
    let (rx, ry) = tokio::join!(x.initialize(true, ""), y.initialize(true, ""));
    let (rx, ry) = (rx.unwrap(), ry.unwrap());
    assert!(
        rx ^ ry,
        "exactly one member must win the bootstrap race: {rx} {ry}"
    );
    assert_eq!(
        x.get_cluster().await.unwrap().initialize.as_deref(),
        Some("")
    );
    assert!(
        !x.initialize(true, "1").await.unwrap(),
        "initialize exists already"
    );

    let winner = if rx { &x } else { &y };
    assert!(winner.initialize(false, "7301").await.unwrap());
    assert_eq!(b.get_raw("initialize").await.as_deref(), Some("7301"));
    assert!(winner.cancel_initialization().await.unwrap());
    assert_eq!(x.get_cluster().await.unwrap().initialize, None);
}

async fn leader_race_and_fencing<B: Backend>(b: &B) {
    let (x, y) = (b.member("pg0").await, b.member("pg1").await);
    let (rx, ry) = tokio::join!(x.attempt_to_acquire_leader(), y.attempt_to_acquire_leader());
    let (rx, ry) = (rx.unwrap(), ry.unwrap());
    assert!(
        rx ^ ry,
        "exactly one member must get the leader key: {rx} {ry}"
    );
    let (holder, other) = if rx { (&x, &y) } else { (&y, &x) };

    let c = other.get_cluster().await.unwrap();
    assert_eq!(c.leader_name(), Some(holder.member_name()));
    assert!(
        c.leader.as_ref().unwrap().session.is_some(),
        "leader key carries a lease"
    );
    assert_eq!(
        b.get_raw("leader").await.as_deref(),
        Some(holder.member_name())
    );
    assert!(!other.attempt_to_acquire_leader().await.unwrap());

    let mine = Status {
        optime: Some(100),
        ..Default::default()
    };
    assert!(holder.update_leader(Some(&mine)).await.unwrap());
    let theirs = Status {
        optime: Some(999),
        ..Default::default()
    };
    assert!(!other.update_leader(Some(&theirs)).await.unwrap());
    let c = other.get_cluster().await.unwrap();
    assert_eq!(c.leader_name(), Some(holder.member_name()));
    assert_eq!(
        c.status.optime,
        Some(100),
        "a non-holder must not write status"
    );

    assert!(!other.delete_leader(Some(&theirs)).await.unwrap());
    assert_eq!(
        leader_of(&other.get_cluster().await.unwrap()).as_deref(),
        Some(holder.member_name())
    );
    let last = Status {
        optime: Some(200),
        ..Default::default()
    };
    assert!(holder.delete_leader(Some(&last)).await.unwrap());
    let c = other.get_cluster().await.unwrap();
    assert!(c.is_unlocked());
    assert_eq!(
        c.status.optime,
        Some(200),
        "status written on clean release"
    );
    assert!(other.attempt_to_acquire_leader().await.unwrap());
}

async fn leader_expires_without_refresh<B: Backend>(b: &B) {
    let (x, y) = (b.member("pg0").await, b.member("pg1").await);
    let ttl = b.ttl();
    assert!(x.attempt_to_acquire_leader().await.unwrap());
    let version = y.get_cluster().await.unwrap().leader.unwrap().version;

    // Refreshing keeps the key past one TTL, without rewriting it.
    b.pass(ttl * 6 / 10).await;
    assert!(x.update_leader(None).await.unwrap());
    b.pass(ttl * 6 / 10).await;
    let c = y.get_cluster().await.unwrap();
    assert_eq!(
        c.leader_name(),
        Some("pg0"),
        "refreshed leader key must survive"
    );
    assert_eq!(
        c.leader.unwrap().version,
        version,
        "a keep-alive is not a write"
    );

    // Without refresh it runs out and another member can take over.
    b.pass(ttl).await;
    eventually(Duration::from_secs(4), "leader key to expire", || async {
        y.get_cluster().await.unwrap().is_unlocked().then_some(())
    })
    .await;
    assert!(y.attempt_to_acquire_leader().await.unwrap());
    assert!(
        !x.update_leader(None).await.unwrap(),
        "pg0 lost the key to pg1"
    );
}

async fn members_round_trip<B: Backend>(b: &B) {
    let x = b.member("pg0").await;
    let mut data = MemberData {
        conn_url: Some("postgres://127.0.0.1:5432/postgres".into()),
        api_url: Some("http://127.0.0.1:8008/patroni".into()),
        state: PgState::Running,
        role: Role::Replica,
        version: Some("4.1.0".into()),
        xlog_location: Some(67108960),
        timeline: Some(2),
        ..Default::default()
    };
    data.tags.insert("nofailover".into(), true.into());
    data.extra.insert("future_field".into(), "kept".into());
    assert!(x.touch_member(&data).await.unwrap());
    assert!(
        x.touch_member(&data).await.unwrap(),
        "touching again is fine"
    );

    let y = b.member("pg1").await;
    let c = y.get_cluster().await.unwrap();
    let m = c.member("pg0").expect("member key visible to others");
    assert_eq!(m.data, data);
    assert!(m.session.is_some(), "member key carries the member's lease");
    let raw = b.get_raw("members/pg0").await.unwrap();
    assert!(
        !raw.contains(": ") && raw.contains(r#""role":"replica""#),
        "compact JSON: {raw}"
    );

    assert!(y.delete_member("pg0").await.unwrap());
    assert!(y.get_cluster().await.unwrap().member("pg0").is_none());
}

async fn compare_and_set_with_versions<B: Backend>(b: &B) {
    let x = b.member("pg0").await;
    assert!(x.set_config_value(r#"{"ttl":30}"#, None).await.unwrap());
    let v1 = x.get_cluster().await.unwrap().config.unwrap().version;
    assert!(x.set_config_value(r#"{"ttl":20}"#, Some(v1)).await.unwrap());
    assert!(
        !x.set_config_value(r#"{"ttl":10}"#, Some(v1)).await.unwrap(),
        "stale config"
    );
    let cfg = x.get_cluster().await.unwrap().config.unwrap();
    assert_eq!(cfg.data.get("ttl"), Some(&20.into()));
    assert_ne!(cfg.version, v1);

    assert!(
        x.set_failover_value(r#"{"leader":"pg0"}"#, None)
            .await
            .unwrap()
    );
    let f1 = x.get_cluster().await.unwrap().failover.unwrap().version;
    assert!(
        x.set_failover_value(r#"{"member":"pg1"}"#, Some(f1))
            .await
            .unwrap()
    );
    assert!(
        !x.set_failover_value("{}", Some(f1)).await.unwrap(),
        "stale failover"
    );
    let f = x.get_cluster().await.unwrap().failover.unwrap();
    assert_eq!(f.member.as_deref(), Some("pg1"));

    assert!(
        x.set_sync_state_value(r#"{"leader":"pg0","sync_standby":null}"#, None)
            .await
            .unwrap()
    );
    let s1 = x.get_cluster().await.unwrap().sync.unwrap().version;
    let value = r#"{"leader":"pg0","sync_standby":"pg1"}"#;
    assert!(x.set_sync_state_value(value, Some(s1)).await.unwrap());
    assert!(
        !x.set_sync_state_value(value, Some(s1)).await.unwrap(),
        "stale sync"
    );
    assert!(
        !x.delete_sync_state(Some(s1)).await.unwrap(),
        "stale sync delete"
    );
    let s2 = x.get_cluster().await.unwrap().sync.unwrap();
    assert_eq!(s2.members(), vec!["pg1"]);
    assert!(x.delete_sync_state(Some(s2.version)).await.unwrap());
    assert!(x.get_cluster().await.unwrap().sync.is_none());
}

async fn history_status_failsafe_round_trip<B: Backend>(b: &B) {
    let x = b.member("pg0").await;
    let history =
        r#"[[1,25165984,"no recovery target specified","2024-01-01T00:00:00+00:00","pg0"]]"#;
    assert!(x.set_history_value(history).await.unwrap());
    let mut status = Status {
        optime: Some(67108960),
        ..Default::default()
    };
    status.slots.insert("pg1".into(), 67108000);
    assert!(x.write_status(&status).await.unwrap());
    assert!(
        x.write_failsafe(r#"{"pg0":"http://127.0.0.1:8008/patroni"}"#)
            .await
            .unwrap()
    );

    let c = x.get_cluster().await.unwrap();
    assert_eq!(c.history.as_ref().unwrap().to_json_string(), history);
    assert_eq!(c.timeline(), Some(2));
    assert_eq!(c.status, status);
    assert_eq!(
        c.failsafe.unwrap().get("pg0").map(String::as_str),
        Some("http://127.0.0.1:8008/patroni")
    );
    let raw = b.get_raw("status").await.unwrap();
    assert_eq!(raw, r#"{"optime":67108960,"slots":{"pg1":67108000}}"#);

    assert!(x.delete_cluster().await.unwrap());
    let c = x.get_cluster().await.unwrap();
    assert!(c.history.is_none() && c.failsafe.is_none() && c.status.optime.is_none());
}

async fn garbage_is_tolerated<B: Backend>(b: &B) {
    for (key, value) in [
        ("config", "not json"),
        ("history", "{"),
        ("status", "[1,"),
        ("failover", "???"),
        ("sync", "42"),
        ("failsafe", "nope"),
        ("members/pg9", "<xml/>"),
        ("members/pg8", r#"{"role":"wizard","timeline":"x"}"#),
        ("leader", ""),
        ("initialize", "\u{1}\u{7f}"),
        ("members/a/b/c", "deep"),
    ] {
        b.put_raw(key, value).await;
    }
    let x = b.member("pg0").await;
    let c = x
        .get_cluster()
        .await
        .expect("garbage must not fail get_cluster");
    assert!(c.parse_warnings.len() >= 6, "{:?}", c.parse_warnings);
    assert!(c.is_unlocked(), "an empty leader value is no leader");
    assert_eq!(c.members.len(), 2);
    // The store still works around the garbage.
    assert!(
        x.set_config_value(r#"{"ttl":30}"#, Some(c.config.unwrap().version))
            .await
            .unwrap()
    );
}

async fn watch_leader_wakes_and_times_out<B: Backend>(b: &B) {
    let (x, y) = (b.member("pg0").await, Arc::new(b.member("pg1").await));
    // No leader yet: the watch wakes when one appears.
    let watcher = {
        let y = y.clone();
        tokio::spawn(async move { y.watch_leader(None, Duration::from_secs(10)).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(x.attempt_to_acquire_leader().await.unwrap());
    let woke = tokio::time::timeout(Duration::from_secs(2), watcher).await;
    assert!(woke.expect("watch wakes on a new leader").unwrap().unwrap());

    // Nothing changes: false after the timeout, not earlier.
    let version = y.get_cluster().await.unwrap().leader.unwrap().version;
    assert!(x.update_leader(None).await.unwrap());
    let start = Instant::now();
    assert!(
        !y.watch_leader(Some(version), Duration::from_millis(600))
            .await
            .unwrap()
    );
    assert!(
        start.elapsed() >= Duration::from_millis(550),
        "{:?}",
        start.elapsed()
    );

    // Dropping a pending watch (the caller's select! picked another branch) is harmless.
    let dropped = tokio::time::timeout(
        Duration::from_millis(100),
        y.watch_leader(Some(version), Duration::from_secs(10)),
    );
    assert!(dropped.await.is_err());

    // Deleting the leader key wakes the watcher within a second.
    let watcher = {
        let y = y.clone();
        tokio::spawn(async move { y.watch_leader(Some(version), Duration::from_secs(10)).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let start = Instant::now();
    assert!(x.delete_leader(None).await.unwrap());
    let woke = tokio::time::timeout(Duration::from_secs(1), watcher).await;
    assert!(woke.expect("watch wakes within 1 s").unwrap().unwrap());
    assert!(start.elapsed() < Duration::from_secs(1));

    // A change that happened before the watch started is reported at once.
    let start = Instant::now();
    assert!(
        y.watch_leader(Some(version), Duration::from_secs(5))
            .await
            .unwrap()
    );
    assert!(start.elapsed() < Duration::from_secs(1));
}

async fn ttl_change_moves_keys_to_a_new_lease<B: Backend>(b: &B) {
    let x = b.member("pg0").await;
    assert!(x.attempt_to_acquire_leader().await.unwrap());
    assert!(x.touch_member(&MemberData::default()).await.unwrap());
    let before = x.get_cluster().await.unwrap().leader.unwrap();

    x.set_ttl(b.ttl() * 2).await;
    assert!(x.update_leader(None).await.unwrap());
    assert!(x.touch_member(&MemberData::default()).await.unwrap());
    let c = x.get_cluster().await.unwrap();
    let after = c.leader.clone().unwrap();
    assert_eq!(after.name, "pg0");
    assert_ne!(
        after.session, before.session,
        "leader key moved to the new lease"
    );
    assert_eq!(c.member("pg0").unwrap().session, after.session);
    // Moving the key to another lease is not a leader change for watchers.
    let w = x
        .watch_leader(Some(before.version), Duration::from_millis(300))
        .await;
    assert!(!w.unwrap());

    // As upstream: the holder re-creates a leader key that vanished under it.
    b.delete_raw("leader").await;
    assert!(x.update_leader(None).await.unwrap());
    assert_eq!(
        leader_of(&x.get_cluster().await.unwrap()).as_deref(),
        Some("pg0")
    );
}

/// Every call of an unreachable store is an `Err` (never `Ok(false)`), within the budget.
async fn outage_is_an_error_and_recovers<B: Backend>(b: &B) {
    let x = b.member("pg0").await;
    assert!(x.attempt_to_acquire_leader().await.unwrap());
    assert!(x.touch_member(&MemberData::default()).await.unwrap());
    b.stop();

    let start = Instant::now();
    let data = MemberData::default();
    let (c, u, t, s, a, w) = tokio::join!(
        x.get_cluster(),
        x.update_leader(None),
        x.touch_member(&data),
        x.set_config_value("{}", None),
        x.attempt_to_acquire_leader(),
        x.watch_leader(None, Duration::from_millis(500)),
    );
    let elapsed = start.elapsed();
    assert!(c.is_err(), "get_cluster: {c:?}");
    expect_err("update_leader", u);
    expect_err("touch_member", t);
    expect_err("set_config_value", s);
    expect_err("attempt_to_acquire_leader", a);
    expect_err("watch_leader", w);
    let bound = b.retry_timeout() + Duration::from_millis(1500);
    assert!(elapsed < bound, "errors took {elapsed:?}, budget {bound:?}");

    b.restart();
    eventually(
        Duration::from_secs(15),
        "DCS calls to work again",
        || async { x.get_cluster().await.ok() },
    )
    .await;
    assert!(x.touch_member(&data).await.unwrap());
    // Our key may or may not have outlived the outage; either way we can hold it again.
    assert!(x.update_leader(None).await.unwrap() || x.attempt_to_acquire_leader().await.unwrap());
    assert_eq!(
        leader_of(&x.get_cluster().await.unwrap()).as_deref(),
        Some("pg0")
    );
}

fn expect_err(what: &str, r: DcsResult<bool>) {
    assert!(
        r.is_err(),
        "{what} must fail while the DCS is down, got {r:?}"
    );
}

macro_rules! contract {
    ($($behaviour:ident),* $(,)?) => {
        mod mem_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $behaviour() {
                    let b = super::MemBackend { store: super::MemStore::new() };
                    super::$behaviour(&b).await;
                }
            )*
        }
        mod etcd_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $behaviour() {
                    let b = super::EtcdBackend::start().await;
                    super::$behaviour(&b).await;
                }
            )*
        }
        mod etcd2_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $behaviour() {
                    let b = super::Etcd2Backend::start().await;
                    super::$behaviour(&b).await;
                }
            )*
        }
        mod zookeeper_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $behaviour() {
                    let b = super::ZkBackend::start().await;
                    super::$behaviour(&b).await;
                }
            )*
        }
    };
}

contract!(
    bootstrap_race_has_one_winner,
    leader_race_and_fencing,
    leader_expires_without_refresh,
    members_round_trip,
    compare_and_set_with_versions,
    history_status_failsafe_round_trip,
    garbage_is_tolerated,
    watch_leader_wakes_and_times_out,
    ttl_change_moves_keys_to_a_new_lease,
    outage_is_an_error_and_recovers,
);

/// etcd only: with one dead endpoint in the list, calls still succeed via the live one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_dead_endpoint_is_skipped() {
    let b = EtcdBackend::start().await;
    let dead = support::free_port();
    let mut cfg = b.cfg.clone();
    let live = b.etcd.lock().unwrap().client_port;
    cfg.hosts = Some(serde_json::json!([
        format!("127.0.0.1:{dead}"),
        format!("127.0.0.1:{live}")
    ]));
    let x = Etcd3Dcs::connect(&cfg, NAMESPACE, SCOPE, "pg0", b.ttl(), b.retry_timeout())
        .await
        .unwrap();
    for _ in 0..5 {
        let start = Instant::now();
        assert!(x.attempt_to_acquire_leader().await.is_ok());
        assert!(x.get_cluster().await.unwrap().leader.is_some());
        assert!(
            start.elapsed() < b.retry_timeout() * 2,
            "{:?}",
            start.elapsed()
        );
    }
}

/// Exhibitor: the ZooKeeper connect string comes from Exhibitor's documented
/// `/exhibitor/v1/cluster/list` JSON (served by a fixture), is used for the session,
/// and is refreshed every `poll_interval`; an Exhibitor outage keeps the last list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhibitor_host_list_is_polled_and_used() {
    use patroni::dcs::exhibitor::{self, CLUSTER_LIST_PATH};
    let zk = tokio::task::block_in_place(ZooKeeper::start);
    let answer = Arc::new(Mutex::new(
        serde_json::json!({"servers": ["127.0.0.1"], "port": zk.client_port}),
    ));
    let app = {
        let answer = answer.clone();
        axum::Router::new().route(
            CLUSTER_LIST_PATH,
            axum::routing::get(move || {
                let v = answer.lock().unwrap().clone();
                async move { axum::Json(v) }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let cfg = patroni::config::ExhibitorConfig {
        hosts: Some(serde_json::json!(["127.0.0.1"])),
        port: Some(port),
        poll_interval: Some(1),
        ..Default::default()
    };
    let ttl = Duration::from_secs(5);
    let x = exhibitor::connect(&cfg, NAMESPACE, SCOPE, "pg0", ttl, ttl)
        .await
        .expect("exhibitor connect");
    assert_eq!(x.hosts(), format!("127.0.0.1:{}", zk.client_port));
    assert!(x.attempt_to_acquire_leader().await.unwrap());
    assert_eq!(x.get_cluster().await.unwrap().leader_name(), Some("pg0"));

    // The ensemble grows: the next poll after poll_interval picks it up (sorted).
    *answer.lock().unwrap() =
        serde_json::json!({"servers": ["localhost", "127.0.0.1"], "port": zk.client_port});
    let p = zk.client_port;
    let want = format!("127.0.0.1:{p},localhost:{p}");
    eventually(Duration::from_secs(10), "new host list", || async {
        x.get_cluster().await.unwrap();
        (x.hosts() == want).then_some(())
    })
    .await;

    // Exhibitor goes away: the store keeps working with the last list.
    server.abort();
    let _ = server.await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let c = x.get_cluster().await.expect("ZooKeeper still reachable");
    assert_eq!(c.leader_name(), Some("pg0"));
    assert_eq!(x.hosts(), want);
}

/// etcd v2: with one dead endpoint first in the list, calls still succeed via the live one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd2_dead_endpoint_is_skipped() {
    let b = Etcd2Backend::start().await;
    let dead = support::free_port();
    let mut cfg = b.cfg.clone();
    let live = b.etcd.lock().unwrap().client_port;
    cfg.hosts = Some(serde_json::json!([
        format!("127.0.0.1:{dead}"),
        format!("127.0.0.1:{live}")
    ]));
    let x = Etcd2Dcs::connect(&cfg, NAMESPACE, SCOPE, "pg0", b.ttl(), b.retry_timeout()).unwrap();
    for _ in 0..5 {
        let start = Instant::now();
        assert!(x.attempt_to_acquire_leader().await.is_ok());
        assert_eq!(x.get_cluster().await.unwrap().leader_name(), Some("pg0"));
        assert!(start.elapsed() < b.retry_timeout(), "{:?}", start.elapsed());
    }
}
