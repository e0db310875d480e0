//! Dynamic configuration: what lives in the DCS `config` key (seeded from `bootstrap.dcs`)
//! and applies to every member.

use super::Config;
use super::dynamic_check::validate_dynamic_map;
use super::timing::{TimingFloors, rule_violation};
use super::validate::ConfigIssue;
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
    /// Ours only (upstream ignores it): accept the fast-failover floors, see `timing`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_short_ttl: bool,
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
fn is_false(b: &bool) -> bool {
    !*b
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

/// Keys holding an integer (seconds or bytes) at the top of the dynamic configuration.
const INT_KEYS: &[&str] = &[
    "ttl",
    "loop_wait",
    "retry_timeout",
    "maximum_lag_on_failover",
    "primary_start_timeout",
    "master_start_timeout",
    "primary_stop_timeout",
    "master_stop_timeout",
    "synchronous_node_count",
];
/// Keys holding a boolean at the top of the dynamic configuration.
const BOOL_KEYS: &[&str] = &[
    "synchronous_mode_strict",
    "failsafe_mode",
    "pause",
    "check_timeline",
    super::timing::ALLOW_SHORT_TTL,
];
/// Keys upstream reads from the dynamic configuration that our struct keeps in `extra`.
const OTHER_KNOWN_KEYS: &[&str] = &[
    "maximum_lag_on_syncnode",
    "max_timelines_history",
    "synchronous_mode",
    "member_slots_ttl",
    "standby_cluster",
    "slots",
    "ignore_slots",
    "postgresql",
];

/// `true` if `key` is a setting upstream understands in the dynamic configuration.
pub fn is_known_dynamic_key(key: &str) -> bool {
    INT_KEYS.contains(&key) || BOOL_KEYS.contains(&key) || OTHER_KNOWN_KEYS.contains(&key)
}

/// Coerces upstream-tolerated spellings ("30" for 30, "on" for true) so serde accepts them.
fn coerce(key: &str, v: &Value) -> Value {
    if INT_KEYS.contains(&key) {
        if let Some(n) = super::pg_params::parse_int(v).filter(|n| *n >= 0) {
            return Value::from(n);
        }
    } else if (BOOL_KEYS.contains(&key) || key == "use_pg_rewind" || key == "use_slots")
        && let Some(b) = super::pg_params::parse_bool(v)
    {
        return Value::Bool(b);
    }
    v.clone()
}

fn describe(v: &Value) -> String {
    super::validate::describe_value(v)
}

impl DynamicConfig {
    /// Tolerant reading of the DCS `config` key: a value of the wrong type keeps the default
    /// for that setting and yields a warning; timing values are then adjusted as upstream does.
    pub fn from_map(map: &Map<String, Value>) -> (DynamicConfig, Vec<String>) {
        let mut warnings = Vec::new();
        let mut good = Map::new();
        // A key written with no value (`parameters:` with every line commented out) is unset.
        for (key, raw) in map.iter().filter(|(_, v)| !v.is_null()) {
            let value = if key == "postgresql" {
                match raw {
                    Value::Object(pg) => Value::Object(tolerant_postgresql(pg, &mut warnings)),
                    other => {
                        warnings.push(format!(
                            "postgresql: must be a mapping, got {}; ignored",
                            describe(other)
                        ));
                        continue;
                    }
                }
            } else {
                coerce(key, raw)
            };
            let mut probe = Map::new();
            probe.insert(key.clone(), value.clone());
            match serde_json::from_value::<DynamicConfig>(Value::Object(probe)) {
                Ok(_) => {
                    good.insert(key.clone(), value);
                }
                Err(_) => warnings.push(format!(
                    "{key}: invalid value {}, using the default",
                    describe(raw)
                )),
            }
        }
        // `primary_*` wins over the legacy `master_*` spelling when both are present.
        for (new, old) in [
            ("primary_start_timeout", "master_start_timeout"),
            ("primary_stop_timeout", "master_stop_timeout"),
        ] {
            if good.contains_key(new) {
                good.remove(old);
            }
        }
        let mut cfg: DynamicConfig = match serde_json::from_value(Value::Object(good)) {
            Ok(c) => c,
            Err(e) => {
                warnings.push(format!(
                    "dynamic configuration unreadable ({e}); using defaults"
                ));
                DynamicConfig::default()
            }
        };
        if let Some(w) = cfg.enforce_timing() {
            warnings.push(w);
        }
        (cfg, warnings)
    }

    /// Strict check of a dynamic configuration (PATCH /config, `bootstrap.dcs`): every problem,
    /// with paths relative to the dynamic configuration's root.
    pub fn validate_map(map: &Map<String, Value>) -> Vec<ConfigIssue> {
        validate_dynamic_map(map, "")
    }

    /// The timing floors in force: upstream's, or the short ones with `allow_short_ttl`.
    pub fn floors(&self) -> TimingFloors {
        TimingFloors::select(self.allow_short_ttl)
    }

    /// Applies the floors (upstream's: ttl >= 20, loop_wait >= 1, retry_timeout >= 3, unless
    /// `allow_short_ttl`) and the rule `loop_wait + 2*retry_timeout <= ttl`, reducing
    /// loop_wait first and retry_timeout only when loop_wait is already at its floor, as
    /// upstream does. Returns what was changed, for a warning.
    pub fn enforce_timing(&mut self) -> Option<String> {
        let floors = self.floors();
        let mut notes = Vec::new();
        for (name, value, min) in [
            ("loop_wait", &mut self.loop_wait, floors.loop_wait),
            (
                "retry_timeout",
                &mut self.retry_timeout,
                floors.retry_timeout,
            ),
            ("ttl", &mut self.ttl, floors.ttl),
        ] {
            if *value < min {
                notes.push(format!(
                    "{name}={value} can't be smaller than {min}, using {min}"
                ));
                *value = min;
            }
        }
        let (ttl, loop_wait, retry) = (self.ttl, self.loop_wait, self.retry_timeout);
        if let Some(problem) = rule_violation(ttl, loop_wait, retry) {
            if rule_violation(ttl, floors.loop_wait, retry).is_some() {
                self.loop_wait = floors.loop_wait;
                self.retry_timeout = (ttl - floors.loop_wait) / 2;
                notes.push(format!(
                    "{problem}; using loop_wait={} and retry_timeout={}",
                    self.loop_wait, self.retry_timeout
                ));
            } else {
                self.loop_wait = ttl - 2 * retry;
                notes.push(format!("{problem}; using loop_wait={}", self.loop_wait));
            }
        }
        (!notes.is_empty()).then(|| notes.join("; "))
    }
}

/// Reads the DCS `postgresql` section key by key, dropping (with a warning) what does not fit.
fn tolerant_postgresql(pg: &Map<String, Value>, warnings: &mut Vec<String>) -> Map<String, Value> {
    let mut good = Map::new();
    for (key, raw) in pg.iter().filter(|(_, v)| !v.is_null()) {
        let value = coerce(key, raw);
        let mut probe = Map::new();
        probe.insert(key.clone(), value.clone());
        if serde_json::from_value::<DynamicPostgresql>(Value::Object(probe)).is_ok() {
            good.insert(key.clone(), value);
        } else {
            warnings.push(format!(
                "postgresql.{key}: invalid value {}, using the default",
                describe(raw)
            ));
        }
    }
    good
}

/// JSON merge-patch (RFC 7396): objects merge recursively, `null` deletes, anything else
/// replaces. Used for PATCH /config and for overlaying configuration fragments.
pub fn deep_merge_patch(target: &mut Map<String, Value>, patch: &Map<String, Value>) {
    for (key, value) in patch {
        match value {
            Value::Null => {
                target.remove(key);
            }
            Value::Object(p) => {
                if let Some(Value::Object(t)) = target.get_mut(key) {
                    deep_merge_patch(t, p);
                } else {
                    let mut fresh = Map::new();
                    deep_merge_patch(&mut fresh, p);
                    target.insert(key.clone(), Value::Object(fresh));
                }
            }
            other => {
                target.insert(key.clone(), other.clone());
            }
        }
    }
}

/// The dynamic configuration as this member applies it, following upstream's
/// `_build_effective_configuration`: the local `postgresql` section overrides the DCS one
/// (parameters merged, cluster-wide parameters and `use_slots` excepted). Top-level timing
/// keys in the local file do not override the DCS values, exactly as upstream.
pub fn merge_local(local: &Config, dynamic: &DynamicConfig) -> DynamicConfig {
    let mut out = dynamic.clone();
    let (params, _) = super::pg_params::merged_parameters(local, dynamic);
    out.postgresql.parameters = params;
    let lp = &local.postgresql;
    if let Some(v) = lp.use_pg_rewind {
        out.postgresql.use_pg_rewind = v;
    }
    if lp.pg_hba.is_some() {
        out.postgresql.pg_hba = lp.pg_hba.clone();
    }
    if lp.pg_ident.is_some() {
        out.postgresql.pg_ident = lp.pg_ident.clone();
    }
    if let Some(Value::Object(rc)) = lp.extra.get("recovery_conf") {
        out.postgresql.recovery_conf = Some(rc.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().expect("object")
    }

    #[test]
    fn enforce_timing_table() {
        // (ttl, loop_wait, retry_timeout) -> adjusted, warned?
        let cases = [
            ((30, 10, 10), (30, 10, 10), false),
            ((30, 15, 10), (30, 10, 10), true), // loop_wait reduced first
            ((20, 10, 10), (20, 1, 9), true),   // then retry_timeout, loop_wait at 1
            ((10, 10, 10), (20, 1, 9), true),   // ttl raised to its minimum first
            ((30, 0, 1), (30, 1, 3), true),     // minimums
            ((40, 10, 15), (40, 10, 15), false), // exactly on the rule
        ];
        for ((ttl, lw, rt), (ettl, elw, ert), warned) in cases {
            let mut c = DynamicConfig {
                ttl,
                loop_wait: lw,
                retry_timeout: rt,
                ..DynamicConfig::default()
            };
            let w = c.enforce_timing();
            assert_eq!(
                (c.ttl, c.loop_wait, c.retry_timeout),
                (ettl, elw, ert),
                "{ttl}/{lw}/{rt}"
            );
            assert_eq!(w.is_some(), warned, "{ttl}/{lw}/{rt}: {w:?}");
        }
        let mut c = DynamicConfig {
            ttl: 20,
            loop_wait: 10,
            retry_timeout: 10,
            ..DynamicConfig::default()
        };
        let w = c.enforce_timing().expect("warning");
        assert!(
            w.contains("ttl (20) must be at least loop_wait + 2*retry_timeout (30)"),
            "{w}"
        );
    }

    #[test]
    fn from_map_keeps_defaults_for_bad_values() {
        let (c, w) = DynamicConfig::from_map(&obj(json!({
            "ttl": "ten", "loop_wait": "5", "pause": "on", "synchronous_node_count": -1,
            "postgresql": {"use_slots": "maybe", "use_pg_rewind": true, "parameters": {"max_connections": 200}},
            "master_start_timeout": 10, "future_setting": 1
        })));
        assert_eq!(c.ttl, 30);
        assert_eq!(c.loop_wait, 5);
        assert!(c.pause);
        assert_eq!(c.synchronous_node_count, 1);
        assert!(c.postgresql.use_slots);
        assert!(c.postgresql.use_pg_rewind);
        assert_eq!(c.primary_start_timeout, 10);
        assert_eq!(c.extra.get("future_setting"), Some(&json!(1)));
        let joined = w.join("\n");
        for needle in [
            "ttl: invalid value \"ten\"",
            "synchronous_node_count",
            "postgresql.use_slots",
        ] {
            assert!(joined.contains(needle), "{needle} missing in {joined}");
        }
        assert_eq!(w.len(), 3, "{w:?}");
    }

    #[test]
    fn from_map_not_an_object_postgresql_and_timing() {
        let (c, w) = DynamicConfig::from_map(&obj(json!({"postgresql": 5, "ttl": 10})));
        assert_eq!(c.postgresql, DynamicPostgresql::default());
        assert_eq!(c.ttl, 20);
        assert_eq!(w.len(), 2, "{w:?}");
    }

    #[test]
    fn validate_map_table() {
        let cases: Vec<(Value, Vec<&str>)> = vec![
            (
                json!({"ttl": 30, "loop_wait": 10, "retry_timeout": 10}),
                vec![],
            ),
            (json!({"loop_wait": "ten"}), vec!["loop_wait"]),
            (json!({"ttl": 10}), vec!["ttl", "ttl"]), // below minimum, and breaks the rule
            (json!({"ttl": 25}), vec!["ttl"]),
            (
                json!({"retry_timeout": 1, "loop_wait": 0}),
                vec!["retry_timeout", "loop_wait"],
            ),
            (
                json!({"synchronous_mode": "quorum", "pause": "yes"}),
                vec![],
            ),
            (
                json!({"synchronous_mode": "sometimes", "failsafe_mode": 3}),
                vec!["failsafe_mode", "synchronous_mode"],
            ),
            (json!({"member_slots_ttl": "30min"}), vec![]),
            (
                json!({"member_slots_ttl": "soon"}),
                vec!["member_slots_ttl"],
            ),
            (
                json!({"standby_cluster": {"host": "h", "port": "x"}}),
                vec!["standby_cluster.port"],
            ),
            (
                json!({"slots": {"s1": null, "s2": {"type": "logical", "database": "db"}}}),
                vec!["slots.s2.plugin"],
            ),
            (
                json!({"postgresql": {"parameters": {"max_connections": 10, "wal_level": "minimal", "port": 1, "work_mem": "4MB"}}}),
                vec![
                    "postgresql.parameters.max_connections",
                    "postgresql.parameters.port",
                    "postgresql.parameters.wal_level",
                ],
            ),
            (
                json!({"postgresql": {"pg_hba": "host all all"}}),
                vec!["postgresql.pg_hba"],
            ),
            (
                json!({"ignore_slots": [{"name": "x"}, 3]}),
                vec!["ignore_slots[1]"],
            ),
        ];
        for (input, mut want) in cases {
            let mut got: Vec<String> = DynamicConfig::validate_map(&obj(input.clone()))
                .into_iter()
                .map(|i| i.path)
                .collect();
            got.sort();
            want.sort();
            assert_eq!(got, want, "{input}");
        }
        let msg = DynamicConfig::validate_map(&obj(json!({"loop_wait": "ten"})))[0].to_string();
        assert_eq!(
            msg,
            "loop_wait: must be an integer number of seconds, got \"ten\""
        );
    }

    #[test]
    fn merge_patch_table() {
        let cases = [
            (
                json!({"a": 1, "b": {"c": 2, "d": 3}}),
                json!({"b": {"c": null, "e": 4}, "f": 5}),
                json!({"a": 1, "b": {"d": 3, "e": 4}, "f": 5}),
            ),
            (json!({"a": {"b": 1}}), json!({"a": 2}), json!({"a": 2})),
            (
                json!({"a": 2}),
                json!({"a": {"b": null, "c": 1}}),
                json!({"a": {"c": 1}}),
            ),
            (json!({"a": [1, 2]}), json!({"a": [3]}), json!({"a": [3]})),
            (json!({}), json!({"x": null}), json!({})),
        ];
        for (target, patch, want) in cases {
            let mut t = obj(target);
            deep_merge_patch(&mut t, &obj(patch.clone()));
            assert_eq!(Value::Object(t), want, "{patch}");
        }
    }

    #[test]
    fn merge_local_overrides_postgresql_but_not_cluster_wide_settings() {
        let local: Config = serde_json::from_value(json!({
            "ttl": 99,
            "postgresql": {"use_pg_rewind": true, "pg_hba": ["local all all trust"],
                           "parameters": {"work_mem": "8MB", "max_connections": 500}}
        }))
        .unwrap();
        let (dynamic, _) = DynamicConfig::from_map(&obj(json!({
            "loop_wait": 5,
            "postgresql": {"parameters": {"work_mem": "4MB", "shared_buffers": "1GB", "max_connections": 300}}
        })));
        let m = merge_local(&local, &dynamic);
        assert_eq!(
            m.ttl, 30,
            "local top-level ttl does not override, as upstream"
        );
        assert_eq!(m.loop_wait, 5);
        assert!(m.postgresql.use_pg_rewind);
        assert_eq!(
            m.postgresql.pg_hba,
            Some(vec!["local all all trust".to_string()])
        );
        let p = &m.postgresql.parameters;
        assert_eq!(p["work_mem"], json!("8MB"));
        assert_eq!(p["shared_buffers"], json!("1GB"));
        assert_eq!(p["max_connections"], json!(300));
        assert_eq!(p["wal_level"], json!("hot_standby"));
    }
}
