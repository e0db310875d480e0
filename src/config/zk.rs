//! `zookeeper:` and `exhibitor:` sections (upstream's keys).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// ZooKeeper's default client port, used for hosts given without one.
pub const ZOOKEEPER_DEFAULT_PORT: u16 = 2181;
/// Upstream's default for `exhibitor.poll_interval` (seconds).
pub const EXHIBITOR_DEFAULT_POLL_INTERVAL: u64 = 300;

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct ZooKeeperConfig {
    /// `hosts:` a list or a comma separated string of `host:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosts: Option<Value>,
    /// Upstream reads any truthy value (the environment gives a string).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_ssl: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cacert: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<Value>,
    /// `{principal: [CREATE, READ, ...]}`: x509 ACLs put on every znode we create.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_acls: Option<Map<String, Value>>,
    /// `{scheme: credential}` sent as authentication when a session starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_data: Option<Map<String, Value>>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

impl ZooKeeperConfig {
    /// `host:port` entries (`:2181` added to a bare host name), in configured order.
    pub fn host_list(&self) -> Vec<String> {
        host_list(self.hosts.as_ref())
            .into_iter()
            .map(|h| {
                if h.contains(':') {
                    h
                } else {
                    format!("{h}:{ZOOKEEPER_DEFAULT_PORT}")
                }
            })
            .collect()
    }

    pub fn use_ssl(&self) -> bool {
        crate::dcs::tag_is_true(self.use_ssl.as_ref())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct ExhibitorConfig {
    /// Initial Exhibitor hosts (names only; the port is `port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosts: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Seconds between refreshes of the ZooKeeper host list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poll_interval: Option<u64>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

impl ExhibitorConfig {
    pub fn host_list(&self) -> Vec<String> {
        host_list(self.hosts.as_ref())
    }
    pub fn poll_interval(&self) -> u64 {
        self.poll_interval
            .unwrap_or(EXHIBITOR_DEFAULT_POLL_INTERVAL)
    }
}

/// A YAML list or a comma separated string (quotes around entries tolerated).
fn host_list(v: Option<&Value>) -> Vec<String> {
    let raw: Vec<String> = match v {
        Some(Value::String(s)) => s.split(',').map(str::to_string).collect(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    };
    raw.into_iter()
        .map(|h| h.trim().trim_matches(['\'', '"']).to_string())
        .filter(|h| !h.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn zookeeper_hosts_get_default_port() {
        let c: ZooKeeperConfig =
            serde_json::from_value(json!({"hosts": "'a:1', b ,c:2182"})).unwrap();
        assert_eq!(c.host_list(), vec!["a:1", "b:2181", "c:2182"]);
        let c: ZooKeeperConfig =
            serde_json::from_value(json!({"hosts": ["x:5"], "use_ssl": "true"})).unwrap();
        assert_eq!(c.host_list(), vec!["x:5"]);
        assert!(c.use_ssl());
    }

    #[test]
    fn sections_load_from_yaml() {
        let yaml = "scope: s\nname: n\nzookeeper:\n  hosts: a:1, 'b'\n  auth_data: {digest: 'u:p'}\n\
                    exhibitor: {hosts: 'e1, e2', port: 8181, poll_interval: 10}\n";
        let c = crate::config::load_str(yaml).unwrap();
        let zk = c.zookeeper.unwrap();
        assert_eq!(zk.host_list(), vec!["a:1", "b:2181"]);
        assert_eq!(zk.auth_data.unwrap().get("digest"), Some(&json!("u:p")));
        let ex = c.exhibitor.unwrap();
        assert_eq!(
            (ex.host_list(), ex.port, ex.poll_interval()),
            (vec!["e1".to_string(), "e2".into()], Some(8181), 10)
        );
    }

    #[test]
    fn exhibitor_defaults() {
        let c: ExhibitorConfig =
            serde_json::from_value(json!({"hosts": "h1,h2", "port": 8181})).unwrap();
        assert_eq!(c.host_list(), vec!["h1", "h2"]);
        assert_eq!(c.poll_interval(), 300);
    }
}
