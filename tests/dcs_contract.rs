//! One contract for every DCS backend: each behaviour is a generic async fn over a
//! `Backend` factory, run against the in-memory store (manual clock) and a real etcd.

mod support;

use patroni::dcs::consul::ConsulDcs;
use patroni::dcs::etcd2::Etcd2Dcs;
use patroni::dcs::etcd3::Etcd3Dcs;
use patroni::dcs::kubernetes::{ApiServer, KubernetesDcs};
use patroni::dcs::mem::{MemDcs, MemStore};
use patroni::dcs::zookeeper::ZooKeeperDcs;
use patroni::dcs::{Dcs, DcsResult, MemberData, PgState, Role, Status};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::consul::ConsulFixture;
use support::etcd::Etcd;
use support::kube::KubeFixture;
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
    /// Whether member keys are attached to the member's lease/session. Kubernetes has no
    /// such thing: members are Pods, which live and die with the pod, not with a lease.
    fn member_leases(&self) -> bool {
        true
    }
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

/// Consul: the in-process fixture of the agent's HTTP API (no Consul binary here).
struct ConsulBackend {
    fx: ConsulFixture,
    cfg: patroni::config::ConsulConfig,
}

const CONSUL_PREFIX: &str = "service/batman/";

impl ConsulBackend {
    async fn start() -> ConsulBackend {
        // As a test agent would be configured: session_ttl_min lowered to allow short TTLs.
        let fx = ConsulFixture::start(Some("s3cret"), Duration::from_secs(1)).await;
        let cfg = serde_json::from_value(serde_json::json!({
            "host": format!("127.0.0.1:{}", fx.port),
            "token": "s3cret",
        }))
        .unwrap();
        ConsulBackend { fx, cfg }
    }
}

impl Backend for ConsulBackend {
    type D = ConsulDcs;
    async fn member(&self, name: &str) -> ConsulDcs {
        ConsulDcs::new(
            &self.cfg,
            NAMESPACE,
            SCOPE,
            name,
            self.ttl(),
            self.retry_timeout(),
        )
        .expect("consul client")
    }
    fn ttl(&self) -> Duration {
        // Session TTL 1 s: the test agent's session_ttl_min.
        Duration::from_secs(2)
    }
    fn retry_timeout(&self) -> Duration {
        Duration::from_secs(2)
    }
    async fn pass(&self, d: Duration) {
        tokio::time::sleep(d).await;
    }
    async fn put_raw(&self, rel: &str, value: &str) {
        self.fx.put_raw(&format!("{CONSUL_PREFIX}{rel}"), value);
    }
    async fn get_raw(&self, rel: &str) -> Option<String> {
        self.fx.get_raw(&format!("{CONSUL_PREFIX}{rel}"))
    }
    async fn delete_raw(&self, rel: &str) {
        self.fx.delete_raw(&format!("{CONSUL_PREFIX}{rel}"));
    }
    fn stop(&self) {
        self.fx.stop();
    }
    fn restart(&self) {
        self.fx.restart();
    }
}

/// Kubernetes: the in-process fixture of the API server (no API server binary here).
/// Relative keys map to upstream's objects: `config`/`history`/`initialize` are annotations
/// of `batman-config`, `leader`/`status`/`failsafe` of `batman-leader`, members are Pods.
struct KubeBackend {
    fx: KubeFixture,
    cfg: patroni::config::KubernetesConfig,
    labels: std::collections::BTreeMap<String, String>,
}

const K8S_NS: &str = "default";

impl KubeBackend {
    async fn start() -> KubeBackend {
        let fx = KubeFixture::start(Some("t0ken")).await;
        let cfg: patroni::config::KubernetesConfig =
            serde_json::from_value(serde_json::json!({"labels": {"application": "patroni"}}))
                .unwrap();
        let labels = cfg.selector_labels(SCOPE);
        KubeBackend { fx, cfg, labels }
    }

    /// Which object and annotation hold a relative key.
    fn location(rel: &str) -> (&'static str, &'static str) {
        match rel {
            "config" | "history" | "initialize" => ("batman-config", "config"),
            "failover" => ("batman-failover", ""),
            "sync" => ("batman-sync", ""),
            _ => ("batman-leader", "leader"),
        }
    }

    fn annotate(&self, object: &str, key: &str, value: Option<&str>) {
        self.fx
            .annotate(K8S_NS, "configmaps", object, &self.labels, key, value);
    }

    fn annotation(&self, object: &str, key: &str) -> Option<String> {
        let o = self.fx.object(K8S_NS, "configmaps", object)?;
        o["metadata"]["annotations"][key]
            .as_str()
            .map(str::to_string)
    }
}

impl Backend for KubeBackend {
    type D = KubernetesDcs;
    async fn member(&self, name: &str) -> KubernetesDcs {
        self.fx.add_pod(K8S_NS, name, &self.labels);
        let server = ApiServer::from_parts(&self.fx.url(), Some("t0ken".into())).unwrap();
        KubernetesDcs::new(
            &self.cfg,
            server,
            SCOPE,
            name,
            self.ttl(),
            self.retry_timeout(),
        )
        .expect("kubernetes client")
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
        if let Some(member) = rel.strip_prefix("members/") {
            // A pod name cannot contain '/': such a key cannot exist in Kubernetes.
            if !member.contains('/') {
                self.fx.add_pod(K8S_NS, member, &self.labels);
                self.fx
                    .annotate(K8S_NS, "pods", member, &self.labels, "status", Some(value));
            }
            return;
        }
        let (object, _) = Self::location(rel);
        let fields = serde_json::from_str::<serde_json::Value>(value)
            .ok()
            .and_then(|v| v.as_object().cloned());
        match (rel, fields) {
            ("status" | "failover" | "sync", Some(m)) => {
                for (k, v) in m {
                    let text = v.as_str().map_or_else(|| v.to_string(), str::to_string);
                    self.annotate(object, &k, Some(&text));
                }
            }
            // Not an object: what one annotation of that object would hold.
            ("status", None) => self.annotate(object, "optime", Some(value)),
            ("failover", None) => self.annotate(object, "member", Some(value)),
            ("sync", None) => self.annotate(object, "sync_standby", Some(value)),
            _ => self.annotate(object, rel, Some(value)),
        }
    }
    async fn get_raw(&self, rel: &str) -> Option<String> {
        if let Some(member) = rel.strip_prefix("members/") {
            let pod = self.fx.object(K8S_NS, "pods", member)?;
            return pod["metadata"]["annotations"]["status"]
                .as_str()
                .map(str::to_string);
        }
        if rel == "status" {
            let mut m = serde_json::Map::new();
            let optime = self.annotation("batman-leader", "optime")?;
            m.insert("optime".into(), optime.parse::<u64>().ok()?.into());
            for k in ["slots", "retain_slots"] {
                if let Some(v) = self.annotation("batman-leader", k) {
                    m.insert(k.into(), serde_json::from_str(&v).ok()?);
                }
            }
            return Some(serde_json::Value::Object(m).to_string());
        }
        let (object, _) = Self::location(rel);
        self.annotation(object, rel)
    }
    async fn delete_raw(&self, rel: &str) {
        let (object, _) = Self::location(rel);
        if rel == "leader" {
            // The leader "key" vanishing is its object being deleted.
            self.fx.delete(K8S_NS, "configmaps", object);
        } else {
            self.annotate(object, rel, None);
        }
    }
    fn stop(&self) {
        self.fx.stop();
    }
    fn restart(&self) {
        self.fx.restart();
    }
    fn member_leases(&self) -> bool {
        false
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
    if b.member_leases() {
        assert!(m.session.is_some(), "member key carries the member's lease");
    }
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
    if b.member_leases() {
        assert_eq!(c.member("pg0").unwrap().session, after.session);
    }
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
        mod consul_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $behaviour() {
                    let b = super::ConsulBackend::start().await;
                    super::$behaviour(&b).await;
                }
            )*
        }
        mod kubernetes_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $behaviour() {
                    let b = super::KubeBackend::start().await;
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

/// Consul only: sessions as upstream creates them, and service registration with role tags.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_session_and_service_registration() {
    let b = ConsulBackend::start().await;
    let mut cfg = b.cfg.clone();
    cfg.register_service = Some(true.into());
    cfg.service_tags = Some(vec!["zone-b".into(), "a".into()]);
    let x = ConsulDcs::new(
        &cfg,
        NAMESPACE,
        "Bat_man",
        "pg0",
        b.ttl(),
        b.retry_timeout(),
    )
    .unwrap();
    let mut data = MemberData {
        conn_url: Some("postgres://127.0.0.2:5433/postgres".into()),
        api_url: Some("http://127.0.0.2:8009/patroni".into()),
        state: PgState::Running,
        role: Role::Primary,
        ..Default::default()
    };
    assert!(x.touch_member(&data).await.unwrap());

    let sid = x.session_id().await.expect("a session was created");
    {
        let d = b.fx.data();
        let s = d.sessions.get(&sid).expect("session known to the agent");
        assert_eq!(s.name, "Bat_man-pg0");
        assert_eq!(s.ttl, Duration::from_secs(1), "session TTL is ttl/2");
        assert_eq!(s.behavior, "delete");
        assert!(s.lock_delay < Duration::from_millis(10));
        let member = d.kv.get("service/Bat_man/members/pg0").expect("member key");
        assert_eq!(member.session.as_deref(), Some(sid.as_str()));
        let svc = d.services.get("Bat_man/pg0").expect("service registered");
        assert_eq!(svc["Name"], "bat-man");
        assert_eq!(
            svc["Tags"],
            serde_json::json!(["a", "zone-b", "primary", "master"])
        );
        assert_eq!(svc["Address"], "127.0.0.2");
        assert_eq!(svc["Port"], 5433);
        assert_eq!(svc["Check"]["HTTP"], "http://127.0.0.2:8009/primary");
    }

    data.role = Role::Replica;
    assert!(x.touch_member(&data).await.unwrap());
    let tags = b.fx.data().services["Bat_man/pg0"]["Tags"].clone();
    assert_eq!(tags, serde_json::json!(["a", "zone-b", "replica"]));

    data.state = PgState::Stopped;
    assert!(x.touch_member(&data).await.unwrap());
    assert!(
        b.fx.data().services.is_empty(),
        "stopped members deregister"
    );
}

/// Consul only: a wrong ACL token is a rejection with a message naming the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_wrong_token_is_rejected() {
    let b = ConsulBackend::start().await;
    let mut cfg = b.cfg.clone();
    cfg.token = Some("wrong".into());
    let x = ConsulDcs::new(&cfg, NAMESPACE, SCOPE, "pg0", b.ttl(), b.retry_timeout()).unwrap();
    let err = x.get_cluster().await.unwrap_err();
    assert!(err.to_string().contains("consul.token"), "{err}");
}

/// Kubernetes only: upstream's object names, labels, Pod role label, and with
/// `use_endpoints` the leader Endpoints `<scope>` pointing at the leader pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_objects_labels_and_endpoints() {
    let b = KubeBackend::start().await;
    let x = b.member("pg0").await;
    let data = MemberData {
        state: PgState::Running,
        role: Role::Primary,
        ..Default::default()
    };
    assert!(x.attempt_to_acquire_leader().await.unwrap());
    assert!(x.touch_member(&data).await.unwrap());
    let leader = b.fx.object(K8S_NS, "configmaps", "batman-leader").unwrap();
    assert_eq!(leader["metadata"]["labels"]["cluster-name"], "batman");
    assert_eq!(leader["metadata"]["labels"]["application"], "patroni");
    let ann = &leader["metadata"]["annotations"];
    assert_eq!(
        (ann["leader"].as_str(), ann["ttl"].as_str()),
        (Some("pg0"), Some("2"))
    );
    assert_eq!(ann["transitions"], "0");
    let pod = b.fx.object(K8S_NS, "pods", "pg0").unwrap();
    assert_eq!(pod["metadata"]["labels"]["role"], "primary");
    assert!(
        pod["metadata"]["annotations"]["status"]
            .as_str()
            .unwrap()
            .contains("\"role\":\"primary\"")
    );

    // Endpoints mode: the leader object is `batman` and lists the leader pod's IP and ports.
    let mut cfg = b.cfg.clone();
    cfg.use_endpoints = Some(true.into());
    cfg.pod_ip = Some("10.1.2.3".into());
    cfg.ports = Some(vec![
        serde_json::json!({"name": "postgresql", "port": 5432}),
    ]);
    let server = ApiServer::from_parts(&b.fx.url(), Some("t0ken".into())).unwrap();
    let e = KubernetesDcs::new(&cfg, server, SCOPE, "pg0", b.ttl(), b.retry_timeout()).unwrap();
    assert!(e.attempt_to_acquire_leader().await.unwrap());
    assert!(e.update_leader(None).await.unwrap());
    let ep =
        b.fx.object(K8S_NS, "endpoints", "batman")
            .expect("leader Endpoints");
    assert_eq!(ep["subsets"][0]["addresses"][0]["ip"], "10.1.2.3");
    assert_eq!(ep["subsets"][0]["ports"][0]["name"], "postgresql");
    assert!(e.delete_leader(None).await.unwrap());
    let ep = b.fx.object(K8S_NS, "endpoints", "batman").unwrap();
    assert_eq!(
        ep["subsets"],
        serde_json::json!([]),
        "released leader Endpoints are empty"
    );
}

/// Kubernetes only: a wrong token is a rejection naming RBAC, not an outage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_wrong_token_is_rejected() {
    let b = KubeBackend::start().await;
    let server = ApiServer::from_parts(&b.fx.url(), Some("nope".into())).unwrap();
    let x = KubernetesDcs::new(&b.cfg, server, SCOPE, "pg0", b.ttl(), b.retry_timeout()).unwrap();
    let err = x.get_cluster().await.unwrap_err();
    assert!(err.to_string().contains("permission denied"), "{err}");
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
