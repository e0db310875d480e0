//! Kubernetes backend, with upstream's object layout: cluster state lives in annotations
//! of ConfigMaps (or Endpoints with `use_endpoints`) labelled with `kubernetes.labels` +
//! `<scope_label>: <scope>`:
//! - `<scope>-config`: `initialize`, `config`, `history`;
//! - `<scope>-leader` (ConfigMap) or `<scope>` (Endpoints): `leader`, `acquireTime`,
//!   `renewTime`, `ttl`, `transitions`, `optime`, `slots`, `retain_slots`, `failsafe`;
//! - `<scope>-failover`: `leader`, `member`, `scheduled_at`;
//! - `<scope>-sync`: `leader`, `sync_standby`, `quorum`;
//! - each member's Pod (named like the member): annotation `status` (the member JSON)
//!   and the role label.
//!
//! Writes compare `resourceVersion` (HTTP 409 = lost). The leader lock has no server-side
//! expiry: as upstream, a reader treats the leader record as expired when it has not seen
//! it change for `ttl` seconds.
//!
//! Snapshot versions: config/failover/sync carry the object's resourceVersion. The leader
//! "version" identifies the leadership term (holder + acquireTime), because a renewal
//! rewrites the object but is no change of leader; its "session" is the record's `ttl`.

mod annotations;
mod api;
mod ops;

pub use api::ApiServer;

use super::{DcsError, RawNode, keys};
use crate::config::KubernetesConfig;
use crate::config::dcs_sections::EndpointPort;
use api::Api;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;
use tokio::time::Instant;

/// Annotations that make up the leader record (watched for changes to judge expiry).
const LEADER_RECORD: [&str; 5] = ["leader", "acquireTime", "ttl", "renewTime", "transitions"];

#[derive(Debug)]
struct Settings {
    ttl: Duration,
    retry_timeout: Duration,
}

/// What this member last saw of the leader object (upstream's leader_observed_*).
#[derive(Debug, Default, Clone)]
struct Observed {
    record: BTreeMap<String, String>,
    since: Option<Instant>,
    resource_version: Option<String>,
}

struct Names {
    config: String,
    leader: String,
    failover: String,
    sync: String,
}

struct Roles {
    label: String,
    leader: String,
    follower: String,
    standby_leader: String,
    tmp_label: Option<String>,
}

/// One member's handle on a Kubernetes namespace.
pub struct KubernetesDcs {
    api: Api,
    namespace: String,
    name: String,
    /// `configmaps` or `endpoints`.
    kind: &'static str,
    labels: BTreeMap<String, String>,
    selector: String,
    names: Names,
    roles: Roles,
    pod_ip: Option<String>,
    ports: Vec<EndpointPort>,
    settings: Mutex<Settings>,
    observed: Mutex<Observed>,
}

impl KubernetesDcs {
    /// Build the client for `server`; no request is made yet.
    pub fn new(
        cfg: &KubernetesConfig,
        server: ApiServer,
        scope: &str,
        name: &str,
        ttl: Duration,
        retry_timeout: Duration,
    ) -> Result<KubernetesDcs, DcsError> {
        let rejected = |m: String| DcsError::Rejected(format!("kubernetes: {m}"));
        let retriable = cfg.retriable_http_codes().map_err(rejected)?;
        let ports = cfg.endpoint_ports().map_err(rejected)?;
        let use_endpoints = cfg.use_endpoints();
        // `/<scope>/` -> `<scope>-...` (the Patroni namespace is not part of the names).
        let base = keys::cluster_prefix("", scope)
            .trim_matches('/')
            .replace('/', "-");
        let labels = cfg.selector_labels(scope);
        let selector = labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        Ok(KubernetesDcs {
            api: Api::new(server, &retriable)?,
            namespace: cfg.namespace(),
            name: name.to_string(),
            kind: if use_endpoints {
                "endpoints"
            } else {
                "configmaps"
            },
            labels,
            selector,
            names: Names {
                config: format!("{base}-config"),
                leader: if use_endpoints {
                    base.clone()
                } else {
                    format!("{base}-leader")
                },
                failover: format!("{base}-failover"),
                sync: format!("{base}-sync"),
            },
            roles: Roles {
                label: cfg.role_label.clone().unwrap_or_else(|| "role".into()),
                leader: cfg
                    .leader_label_value
                    .clone()
                    .unwrap_or_else(|| "primary".into()),
                follower: cfg
                    .follower_label_value
                    .clone()
                    .unwrap_or_else(|| "replica".into()),
                standby_leader: cfg
                    .standby_leader_label_value
                    .clone()
                    .unwrap_or_else(|| "primary".into()),
                tmp_label: cfg.tmp_role_label.clone(),
            },
            pod_ip: use_endpoints.then(|| cfg.pod_ip.clone()).flatten(),
            ports,
            settings: Mutex::new(Settings { ttl, retry_timeout }),
            observed: Mutex::new(Observed::default()),
        })
    }

    fn settings(&self) -> MutexGuard<'_, Settings> {
        self.settings.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn observed(&self) -> MutexGuard<'_, Observed> {
        self.observed.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.settings().retry_timeout
    }

    fn ttl_secs(&self) -> u64 {
        self.settings().ttl.as_secs().max(1)
    }

    /// Remember the leader record as seen now; returns whether it is still valid
    /// (changed within its ttl, as far as this member has watched it).
    fn observe_leader(&self, obj: Option<&Value>) -> bool {
        let record: BTreeMap<String, String> = obj
            .map(|o| {
                LEADER_RECORD
                    .iter()
                    .filter_map(|k| Some((k.to_string(), annotation(o, k)?.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        let ttl = record
            .get("ttl")
            .and_then(|t| t.parse::<u64>().ok())
            .filter(|t| *t > 0)
            .unwrap_or_else(|| self.ttl_secs());
        let mut o = self.observed();
        o.resource_version = obj.and_then(resource_version).map(str::to_string);
        if record != o.record || o.since.is_none() {
            o.record = record;
            o.since = Some(Instant::now());
        }
        obj.is_some()
            && o.since
                .is_some_and(|t| t.elapsed() <= Duration::from_secs(ttl))
    }

    /// The labels and annotations every object we create carries.
    fn metadata(&self, name: &str, annotations: Map<String, Value>, rv: Option<&str>) -> Value {
        let mut m = json!({
            "name": name,
            "namespace": self.namespace,
            "labels": self.labels,
            "annotations": annotations,
        });
        if let Some(rv) = rv {
            m["resourceVersion"] = Value::from(rv);
        }
        m
    }

    /// The Endpoints subset pointing at this pod (leader Endpoints only).
    fn subsets(&self, ours: bool) -> Option<Value> {
        if self.kind != "endpoints" {
            return None;
        }
        match (&self.pod_ip, ours) {
            (Some(ip), true) => Some(json!([{
                "addresses": [{ "ip": ip }],
                "ports": self.ports,
            }])),
            _ => Some(json!([])),
        }
    }
}

pub(crate) fn annotation<'a>(obj: &'a Value, key: &str) -> Option<&'a str> {
    obj["metadata"]["annotations"][key].as_str()
}

pub(crate) fn resource_version(obj: &Value) -> Option<&str> {
    obj["metadata"]["resourceVersion"].as_str()
}

/// resourceVersion as the snapshot's integer version (it is an etcd revision in practice).
pub fn version_number(rv: Option<&str>) -> i64 {
    let rv = rv.unwrap_or("0");
    rv.parse().unwrap_or_else(|_| fnv(rv))
}

fn fnv(s: &str) -> i64 {
    let h = s.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (h >> 1) as i64
}

/// The leadership term: same holder, same acquireTime. A renewal keeps it.
fn term_version(obj: &Value) -> Option<i64> {
    let leader = annotation(obj, "leader").filter(|l| !l.is_empty())?;
    let acquired = annotation(obj, "acquireTime").unwrap_or("");
    Some(fnv(&format!("{leader}\u{0}{acquired}")))
}

/// Convert the cluster's objects and pods into raw nodes with upstream's key names, so
/// one tolerant parser (`Cluster::from_nodes`) reads every store. Values kept in several
/// annotations (status, failover, sync) become the JSON object other stores hold;
/// annotation values that are not what they should be stay strings and are reported by it.
fn nodes_from_objects(
    names: &Names,
    objects: &[Value],
    pods: &[Value],
    leader_valid: bool,
) -> Vec<RawNode> {
    let by_name = |n: &str| {
        objects
            .iter()
            .find(|o| o["metadata"]["name"].as_str() == Some(n))
    };
    let mut nodes = Vec::new();
    let mut push = |key: &str, value: String, version: i64, session: Option<i64>| {
        nodes.push(RawNode {
            key: key.to_string(),
            value,
            version,
            session,
        })
    };
    if let Some(cfg) = by_name(&names.config) {
        let v = version_number(resource_version(cfg));
        for key in [keys::INITIALIZE, keys::CONFIG, keys::HISTORY] {
            if let Some(a) = annotation(cfg, key) {
                push(key, a.to_string(), v, None);
            }
        }
    }
    if let Some(l) = by_name(&names.leader) {
        if leader_valid && let (Some(name), Some(term)) = (annotation(l, "leader"), term_version(l))
        {
            let ttl = annotation(l, "ttl").and_then(|t| t.parse().ok());
            push(keys::LEADER, name.to_string(), term, ttl);
        }
        if let Some(status) = status_json(l) {
            push(keys::STATUS, status, 0, None);
        }
        if let Some(f) = annotation(l, "failsafe") {
            push(keys::FAILSAFE, f.to_string(), 0, None);
        }
    }
    if let Some(f) = by_name(&names.failover) {
        let v = version_number(resource_version(f));
        let value = annotations_json(f, &["leader", "member", "scheduled_at"], &[]);
        push(keys::FAILOVER, value.to_string(), v, None);
    }
    if let Some(s) = by_name(&names.sync)
        && (annotation(s, "leader").is_some() || annotation(s, "sync_standby").is_some())
    {
        let v = version_number(resource_version(s));
        let value = annotations_json(s, &["leader", "sync_standby"], &["quorum"]);
        push(keys::SYNC, value.to_string(), v, None);
    }
    for pod in pods {
        let (Some(name), Some(status)) =
            (pod["metadata"]["name"].as_str(), annotation(pod, "status"))
        else {
            continue;
        };
        let v = version_number(resource_version(pod));
        push(&keys::member_key(name), status.to_string(), v, None);
    }
    nodes
}

/// Selected annotations as a JSON object; `ints` are numbers when they parse as such.
fn annotations_json(obj: &Value, strings: &[&str], ints: &[&str]) -> Value {
    let mut m = Map::new();
    for k in strings {
        if let Some(a) = annotation(obj, k) {
            m.insert(k.to_string(), Value::from(a));
        }
    }
    for k in ints {
        if let Some(a) = annotation(obj, k) {
            let v = a
                .parse::<i64>()
                .map_or_else(|_| Value::from(a), Value::from);
            m.insert(k.to_string(), v);
        }
    }
    Value::Object(m)
}

/// `optime` (integer text), `slots` and `retain_slots` (JSON text) as the `status` JSON.
fn status_json(obj: &Value) -> Option<String> {
    let optime = annotation(obj, "optime");
    let slots = annotation(obj, "slots");
    let retain = annotation(obj, "retain_slots");
    if optime.is_none() && slots.is_none() && retain.is_none() {
        return None;
    }
    let mut m = Map::new();
    if let Some(o) = optime {
        let v = o
            .trim()
            .parse::<u64>()
            .map_or_else(|_| Value::from(o), Value::from);
        m.insert("optime".into(), v);
    }
    for (k, a) in [("slots", slots), ("retain_slots", retain)] {
        if let Some(a) = a {
            let v = serde_json::from_str::<Value>(a).unwrap_or_else(|_| Value::from(a));
            if !v.is_null() {
                m.insert(k.into(), v);
            }
        }
    }
    Some(Value::Object(m).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Names {
        Names {
            config: "b-config".into(),
            leader: "b-leader".into(),
            failover: "b-failover".into(),
            sync: "b-sync".into(),
        }
    }

    fn obj(name: &str, rv: &str, ann: Value) -> Value {
        json!({"metadata": {"name": name, "resourceVersion": rv, "annotations": ann}})
    }

    #[test]
    fn objects_become_upstream_keys() {
        let objects = vec![
            obj(
                "b-config",
                "10",
                json!({"initialize": "7301", "config": "{\"ttl\":30}"}),
            ),
            obj(
                "b-leader",
                "11",
                json!({"leader": "pg0", "ttl": "30", "acquireTime": "t0",
                "optime": "1234", "slots": "{\"pg1\":1000}"}),
            ),
            obj("b-failover", "12", json!({"member": "pg1"})),
            obj(
                "b-sync",
                "13",
                json!({"leader": "pg0", "sync_standby": "pg1", "quorum": "1"}),
            ),
        ];
        let pods = vec![
            obj("pg0", "20", json!({"status": "{\"role\":\"primary\"}"})),
            obj("pg9", "21", json!({})),
        ];
        let c =
            crate::dcs::Cluster::from_nodes(&nodes_from_objects(&names(), &objects, &pods, true));
        assert!(c.parse_warnings.is_empty(), "{:?}", c.parse_warnings);
        assert_eq!(c.initialize.as_deref(), Some("7301"));
        assert_eq!(c.config.as_ref().unwrap().version, 10);
        let l = c.leader.clone().unwrap();
        assert_eq!((l.name.as_str(), l.session), ("pg0", Some(30)));
        assert_eq!(c.status.optime, Some(1234));
        assert_eq!(c.status.slots.get("pg1"), Some(&1000));
        assert_eq!(c.failover.as_ref().unwrap().member.as_deref(), Some("pg1"));
        assert_eq!(c.sync.as_ref().unwrap().quorum, Some(1));
        assert_eq!(c.members.len(), 1, "pods without status are not members");

        let c =
            crate::dcs::Cluster::from_nodes(&nodes_from_objects(&names(), &objects, &pods, false));
        assert!(c.leader.is_none(), "an expired record is no leader");
        assert_eq!(c.status.optime, Some(1234));
    }

    #[test]
    fn renewal_keeps_the_term() {
        let a = obj(
            "l",
            "1",
            json!({"leader": "pg0", "acquireTime": "t0", "renewTime": "t1"}),
        );
        let b = obj(
            "l",
            "2",
            json!({"leader": "pg0", "acquireTime": "t0", "renewTime": "t2"}),
        );
        let c = obj("l", "3", json!({"leader": "pg1", "acquireTime": "t3"}));
        assert_eq!(term_version(&a), term_version(&b));
        assert_ne!(term_version(&a), term_version(&c));
        assert_eq!(term_version(&obj("l", "4", json!({"leader": ""}))), None);
    }
}
