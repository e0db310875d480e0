//! Dynamic configuration: what lives in the DCS `config` key (seeded from `bootstrap.dcs`)
//! and applies to every member.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DynamicConfig {
    #[serde(default = "d_ttl")]
    pub ttl: u64,
    #[serde(default = "d_loop_wait")]
    pub loop_wait: u64,
    #[serde(default = "d_retry_timeout")]
    pub retry_timeout: u64,
    #[serde(default = "d_max_lag")]
    pub maximum_lag_on_failover: u64,
    #[serde(default = "d_primary_start_timeout", alias = "master_start_timeout")]
    pub primary_start_timeout: u64,
    #[serde(default, alias = "master_stop_timeout")]
    pub primary_stop_timeout: u64,
    #[serde(default)]
    pub synchronous_mode: Value,
    #[serde(default)]
    pub synchronous_mode_strict: bool,
    #[serde(default = "d_one")]
    pub synchronous_node_count: u64,
    #[serde(default)]
    pub failsafe_mode: bool,
    #[serde(default)]
    pub pause: bool,
    #[serde(default)]
    pub check_timeline: bool,
    #[serde(default = "d_member_slots_ttl")]
    pub member_slots_ttl: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standby_cluster: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slots: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignore_slots: Option<Vec<Value>>,
    #[serde(default)]
    pub postgresql: DynamicPostgresql,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DynamicPostgresql {
    #[serde(default)]
    pub use_pg_rewind: bool,
    #[serde(default = "d_true")]
    pub use_slots: bool,
    #[serde(default)]
    pub parameters: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pg_hba: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pg_ident: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_conf: Option<Map<String, Value>>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

impl Default for DynamicPostgresql {
    fn default() -> Self {
        serde_json::from_value(Value::Object(Map::new())).expect("defaults deserialize")
    }
}

impl Default for DynamicConfig {
    fn default() -> Self {
        serde_json::from_value(Value::Object(Map::new())).expect("defaults deserialize")
    }
}

fn d_ttl() -> u64 {
    30
}
fn d_loop_wait() -> u64 {
    10
}
fn d_retry_timeout() -> u64 {
    10
}
fn d_max_lag() -> u64 {
    1_048_576
}
fn d_primary_start_timeout() -> u64 {
    300
}
fn d_one() -> u64 {
    1
}
fn d_true() -> bool {
    true
}
fn d_member_slots_ttl() -> Value {
    Value::from("30min")
}

impl DynamicConfig {
    /// `true` for `synchronous_mode: true|on|quorum`.
    pub fn synchronous_enabled(&self) -> bool {
        match &self.synchronous_mode {
            Value::String(s) => {
                s == "quorum" || crate::dcs::tag_is_true(Some(&self.synchronous_mode))
            }
            v => crate::dcs::tag_is_true(Some(v)),
        }
    }
}
