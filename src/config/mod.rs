//! Configuration: the local YAML file (upstream's keys), the `PATRONI_*` environment
//! overlay, and the dynamic configuration stored in the DCS `config` key.
//!
//! Unknown keys are kept in `extra` maps and warned about, never fatal.

pub mod dcs_sections;
pub mod dynamic;
mod dynamic_check;
pub mod env;
pub mod load;
mod methods_check;
pub mod pg_params;
mod schema;
pub mod timing;
pub mod validate;
pub mod zk;

pub use dcs_sections::{ConsulConfig, KubernetesConfig};
pub use dynamic::{DynamicConfig, deep_merge_patch, merge_local};
pub use env::apply_env;
pub use load::{ConfigError, Loaded, load, load_file, load_str};
pub use pg_params::{CMDLINE_PARAMS, effective_pg_parameters};
pub use timing::{ALLOW_SHORT_TTL, SHORT_FLOORS, TimingFloors, UPSTREAM_FLOORS};
pub use validate::{ConfigIssue, validate, validate_file};
pub use zk::{ExhibitorConfig, ZooKeeperConfig};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The local configuration file after the environment overlay.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct Config {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub scope: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    #[serde(default)]
    pub log: Map<String, Value>,
    #[serde(default)]
    pub restapi: RestApiConfig,
    #[serde(default)]
    pub ctl: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd3: Option<Etcd3Config>,
    /// etcd v2 API section: the same keys as `etcd3` (served by `dcs::etcd2`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd: Option<Etcd3Config>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consul: Option<ConsulConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zookeeper: Option<ZooKeeperConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exhibitor: Option<ExhibitorConfig>,
    #[serde(default)]
    pub bootstrap: BootstrapConfig,
    #[serde(default)]
    pub postgresql: PostgresqlConfig,
    #[serde(default)]
    pub watchdog: Map<String, Value>,
    #[serde(default)]
    pub tags: Map<String, Value>,
    /// Local overrides of dynamic settings (ttl, loop_wait, ... may also be set locally).
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

fn default_namespace() -> String {
    "/service/".to_string()
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct RestApiConfig {
    #[serde(default)]
    pub listen: String,
    #[serde(default)]
    pub connect_address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication: Option<Credentials>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certfile: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyfile: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cafile: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_client: Option<String>,
    /// Password of an encrypted `keyfile`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyfile_password: Option<String>,
    /// Addresses, host names or CIDR networks allowed to call the unsafe endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Kept as raw YAML (a list of strings) so a malformed entry is a validation issue, not a
    /// load failure.
    pub allowlist: Option<Value>,
    /// Also allow the REST API addresses of the cluster members.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Upstream's boolean spellings ("on", "yes"...) are accepted, so kept raw.
    pub allowlist_include_members: Option<Value>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct Credentials {
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct Etcd3Config {
    /// `host: h:p`
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// `hosts:` a list or a comma separated string; normalised to a list by `load`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosts: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

impl Etcd3Config {
    /// Endpoints as `http(s)://host:port`, from host / hosts / url.
    pub fn endpoints(&self) -> Vec<String> {
        let scheme = self.protocol.clone().unwrap_or_else(|| "http".into());
        let mut raw: Vec<String> = Vec::new();
        if let Some(h) = &self.host {
            raw.push(h.clone());
        }
        match &self.hosts {
            Some(Value::String(s)) => raw.extend(s.split(',').map(|h| h.trim().to_string())),
            Some(Value::Array(a)) => {
                raw.extend(a.iter().filter_map(|v| v.as_str().map(str::to_string)))
            }
            _ => {}
        }
        if let Some(u) = &self.url {
            raw.push(u.clone());
        }
        raw.into_iter()
            .filter(|h| !h.is_empty())
            .map(|h| {
                if h.contains("://") {
                    h
                } else {
                    format!("{scheme}://{h}")
                }
            })
            .collect()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct BootstrapConfig {
    /// Written to the DCS `config` key by the node that initialises the cluster.
    #[serde(default)]
    pub dcs: Map<String, Value>,
    /// initdb options: a list of `"switch"` or `{key: value}` entries.
    #[serde(default)]
    pub initdb: Vec<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pg_hba: Option<Vec<String>>,
    #[serde(default, alias = "post_init", skip_serializing_if = "Option::is_none")]
    pub post_bootstrap: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct Authentication {
    #[serde(default)]
    pub superuser: Credentials,
    #[serde(default)]
    pub replication: Credentials,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewind: Option<Credentials>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PostgresqlConfig {
    #[serde(default)]
    pub listen: String,
    #[serde(default)]
    pub connect_address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_address: Option<String>,
    #[serde(default)]
    pub data_dir: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bin_dir: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_dir: Option<PathBuf>,
    #[serde(default)]
    pub pgpass: Option<PathBuf>,
    #[serde(default)]
    pub authentication: Authentication,
    /// Open map: any GUC.
    #[serde(default)]
    pub parameters: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pg_hba: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pg_ident: Option<Vec<String>>,
    #[serde(default = "default_pg_ctl_timeout")]
    pub pg_ctl_timeout: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_pg_rewind: Option<bool>,
    #[serde(default)]
    pub remove_data_directory_on_rewind_failure: bool,
    #[serde(default)]
    pub remove_data_directory_on_diverged_timelines: bool,
    #[serde(default)]
    pub use_unix_socket: bool,
    #[serde(default)]
    pub use_unix_socket_repl: bool,
    /// `basebackup:` a list of `"switch"` / `{key: value}` or a map.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basebackup: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_replica_methods: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callbacks: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_promote: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_conf: Option<PathBuf>,
    /// Binary name overrides (`pg_ctl`, `initdb`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bin_name: Option<Map<String, Value>>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

fn default_pg_ctl_timeout() -> u64 {
    60
}

impl Default for PostgresqlConfig {
    fn default() -> Self {
        serde_json::from_value(serde_json::json!({})).expect("defaults deserialize")
    }
}
