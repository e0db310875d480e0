//! PostgreSQL parameters Patroni controls: the command-line options (upstream's
//! `ConfigHandler.CMDLINE_OPTIONS`), their defaults and sanity checks, and the final GUC set
//! built from the dynamic configuration plus the local `postgresql.parameters`.

use super::Config;
use super::dynamic::DynamicConfig;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Parameters passed to `postgres` on the command line (so `ALTER SYSTEM` cannot override
/// them), in upstream's order. `wal_keep_segments`/`wal_keep_size` are controlled the same
/// way but only written to `postgresql.conf`.
pub const CMDLINE_PARAMS: &[&str] = &[
    "listen_addresses",
    "port",
    "cluster_name",
    "wal_level",
    "hot_standby",
    "max_connections",
    "max_wal_senders",
    "max_prepared_transactions",
    "max_locks_per_transaction",
    "track_commit_timestamp",
    "max_replication_slots",
    "max_worker_processes",
    "wal_log_hints",
];

/// How a controlled parameter's value is checked when it comes from the dynamic configuration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ParamRule {
    /// Set by Patroni itself (from `postgresql.listen` / `scope`); never from configuration.
    SetByPatroni(&'static str),
    /// One of the listed words (case-insensitive).
    OneOf(&'static [&'static str]),
    /// Must be a boolean that is on.
    MustBeOn,
    /// Any boolean (`on`/`off`/`true`/`false`/`yes`/`no`/`1`/`0`).
    Bool,
    /// An integer at least this large.
    MinInt(i64),
    /// A size in MB (units accepted) at least this large.
    MinMegabytes(i64),
}

/// A parameter that must be the same cluster-wide; local values are ignored.
#[derive(Debug, Clone, Copy)]
pub struct ControlledParam {
    pub name: &'static str,
    /// Upstream's default, as written to `postgresql.conf` (None: derived by Patroni).
    pub default: Option<&'static str>,
    pub rule: ParamRule,
}

/// Upstream's CMDLINE_OPTIONS with defaults and minimums (PostgreSQL 13+ names).
pub const CONTROLLED_PARAMS: &[ControlledParam] = &[
    cp(
        "listen_addresses",
        None,
        ParamRule::SetByPatroni("postgresql.listen"),
    ),
    cp("port", None, ParamRule::SetByPatroni("postgresql.listen")),
    cp("cluster_name", None, ParamRule::SetByPatroni("scope")),
    cp(
        "wal_level",
        Some("hot_standby"),
        ParamRule::OneOf(&["hot_standby", "replica", "logical"]),
    ),
    cp("hot_standby", Some("on"), ParamRule::MustBeOn),
    cp("max_connections", Some("100"), ParamRule::MinInt(25)),
    cp("max_wal_senders", Some("10"), ParamRule::MinInt(3)),
    cp("wal_keep_segments", Some("8"), ParamRule::MinInt(1)),
    cp("wal_keep_size", Some("128MB"), ParamRule::MinMegabytes(16)),
    cp("max_prepared_transactions", Some("0"), ParamRule::MinInt(0)),
    cp(
        "max_locks_per_transaction",
        Some("64"),
        ParamRule::MinInt(32),
    ),
    cp("track_commit_timestamp", Some("off"), ParamRule::Bool),
    cp("max_replication_slots", Some("10"), ParamRule::MinInt(4)),
    cp("max_worker_processes", Some("8"), ParamRule::MinInt(2)),
    cp("wal_log_hints", Some("on"), ParamRule::Bool),
];

const fn cp(name: &'static str, default: Option<&'static str>, rule: ParamRule) -> ControlledParam {
    ControlledParam {
        name,
        default,
        rule,
    }
}

/// The controlled parameter called `name` (GUC names are case-insensitive).
pub fn controlled(name: &str) -> Option<&'static ControlledParam> {
    CONTROLLED_PARAMS
        .iter()
        .find(|p| p.name.eq_ignore_ascii_case(name))
}

/// Upstream's `parse_bool`.
pub fn parse_bool(v: &Value) -> Option<bool> {
    let s = match v {
        Value::Bool(b) => return Some(*b),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.to_ascii_lowercase(),
        _ => return None,
    };
    match s.trim() {
        "on" | "true" | "yes" | "1" => Some(true),
        "off" | "false" | "no" | "0" => Some(false),
        _ => None,
    }
}

/// An integer given as a number or a string of digits.
pub fn parse_int(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64)),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A size with an optional unit (kB, MB, GB, TB) converted to MB; a bare number means MB.
fn parse_megabytes(v: &Value) -> Option<i64> {
    if let Some(n) = parse_int(v) {
        return Some(n);
    }
    let s = v.as_str()?.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (num, unit) = s.split_at(split);
    let n: i64 = num.parse().ok()?;
    match unit.trim() {
        "kB" => Some(n / 1024),
        "MB" => Some(n),
        "GB" => Some(n * 1024),
        "TB" => Some(n * 1024 * 1024),
        _ => None,
    }
}

/// Checks a value for a controlled parameter; `Err` says what is wrong, for a DBA.
pub fn check_controlled(p: &ControlledParam, v: &Value) -> Result<(), String> {
    let got = render_value(v).unwrap_or_else(|| "an empty value".into());
    match p.rule {
        ParamRule::SetByPatroni(from) => Err(format!(
            "is set by Patroni from `{from}` and cannot be configured here"
        )),
        ParamRule::OneOf(words) => match v.as_str() {
            Some(s) if words.iter().any(|w| w.eq_ignore_ascii_case(s)) => Ok(()),
            _ => Err(format!("must be one of {}, got {got}", words.join(", "))),
        },
        ParamRule::MustBeOn => match parse_bool(v) {
            Some(true) => Ok(()),
            _ => Err(format!("must be on (Patroni needs it), got {got}")),
        },
        ParamRule::Bool => match parse_bool(v) {
            Some(_) => Ok(()),
            None => Err(format!("must be on or off, got {got}")),
        },
        ParamRule::MinInt(min) => match parse_int(v) {
            Some(n) if n >= min => Ok(()),
            Some(n) => Err(format!("must be at least {min}, got {n}")),
            None => Err(format!("must be an integer, got {got}")),
        },
        ParamRule::MinMegabytes(min) => match parse_megabytes(v) {
            Some(n) if n >= min => Ok(()),
            Some(_) => Err(format!("must be at least {min}MB, got {got}")),
            None => Err(format!("must be a size such as 128MB, got {got}")),
        },
    }
}

/// A GUC value as `postgresql.conf` wants it: booleans as on/off, numbers as digits.
/// `None` for null (the parameter is not written).
pub fn render_value(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::Bool(true) => Some("on".into()),
        Value::Bool(false) => Some("off".into()),
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// Dynamic `postgresql.parameters` after upstream's filtering: controlled parameters with a
/// bad value are dropped (the default applies) with a warning; integers are normalised.
pub fn process_dynamic_parameters(
    params: &Map<String, Value>,
) -> (Map<String, Value>, Vec<String>) {
    let mut out = Map::new();
    let mut warnings = Vec::new();
    for (name, value) in params {
        let Some(p) = controlled(name) else {
            out.insert(name.clone(), value.clone());
            continue;
        };
        match check_controlled(p, value) {
            Ok(()) => {
                let v = match (p.rule, parse_int(value)) {
                    (ParamRule::MinInt(_), Some(n)) => Value::from(n),
                    _ => value.clone(),
                };
                out.insert(p.name.to_string(), v);
            }
            Err(why) => warnings.push(format!(
                "postgresql.parameters.{name} {why}; using the default {}",
                p.default.unwrap_or("set by Patroni")
            )),
        }
    }
    (out, warnings)
}

/// Local `postgresql.parameters` minus the controlled ones, which must be cluster-wide.
/// Returns the kept parameters and the names that were ignored.
pub fn process_local_parameters(params: &Map<String, Value>) -> (Map<String, Value>, Vec<String>) {
    let mut out = Map::new();
    let mut ignored = Vec::new();
    for (name, value) in params {
        if controlled(name).is_some() {
            ignored.push(name.clone());
        } else {
            out.insert(name.clone(), value.clone());
        }
    }
    (out, ignored)
}

/// Upstream's defaults for the controlled parameters (without `wal_keep_*`, which are derived).
fn default_parameters() -> Map<String, Value> {
    CONTROLLED_PARAMS
        .iter()
        .filter(|p| !p.name.starts_with("wal_keep_"))
        .filter_map(|p| p.default.map(|d| (p.name.to_string(), Value::from(d))))
        .collect()
}

/// Inserts `v` replacing any key equal to `k` ignoring case (GUC names are case-insensitive).
fn insert_ci(map: &mut Map<String, Value>, k: &str, v: Value) {
    let existing: Vec<String> = map
        .keys()
        .filter(|x| x.eq_ignore_ascii_case(k) && *x != k)
        .cloned()
        .collect();
    for e in existing {
        map.remove(&e);
    }
    map.insert(k.to_string(), v);
}

/// Splits `host[,host2]:port`; the port defaults to 5432.
pub fn split_listen(listen: &str) -> (String, String) {
    match listen.rsplit_once(':') {
        Some((h, p)) if !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()) => {
            (h.trim_matches(['[', ']']).to_string(), p.to_string())
        }
        _ => (listen.to_string(), "5432".to_string()),
    }
}

/// Dynamic + local parameters merged as upstream does, with warnings about dropped values.
pub fn merged_parameters(
    local: &Config,
    dynamic: &DynamicConfig,
) -> (Map<String, Value>, Vec<String>) {
    let mut params = default_parameters();
    let (dyn_params, mut warnings) = process_dynamic_parameters(&dynamic.postgresql.parameters);
    for (k, v) in dyn_params {
        insert_ci(&mut params, &k, v);
    }
    let (local_params, ignored) = process_local_parameters(&local.postgresql.parameters);
    for (k, v) in local_params {
        insert_ci(&mut params, &k, v);
    }
    for name in ignored {
        warnings.push(format!(
            "postgresql.parameters.{name} is ignored in the local configuration: it must be the \
             same on every member, set it in the dynamic configuration (patronictl edit-config)"
        ));
    }
    (params, warnings)
}

/// The final GUCs for `postgresql.conf`, as strings (PostgreSQL 13+ assumed: `wal_keep_size`,
/// `wal_level = replica`). Includes `listen_addresses`, `port` and `cluster_name`.
pub fn effective_pg_parameters(
    local: &Config,
    dynamic: &DynamicConfig,
) -> BTreeMap<String, String> {
    let (mut params, _) = merged_parameters(local, dynamic);
    let (host, port) = split_listen(&local.postgresql.listen);
    params.insert("listen_addresses".into(), Value::from(host));
    params.insert("port".into(), Value::from(port));
    params.insert("cluster_name".into(), Value::from(local.scope.clone()));
    if params
        .get("wal_level")
        .and_then(Value::as_str)
        .is_some_and(|s| s.eq_ignore_ascii_case("hot_standby"))
    {
        params.insert("wal_level".into(), Value::from("replica"));
    }
    // wal_keep_segments is gone since PostgreSQL 13: translate it assuming 16MB segments.
    let segments = params
        .remove("wal_keep_segments")
        .and_then(|v| parse_int(&v))
        .unwrap_or(8);
    if !params.contains_key("wal_keep_size") {
        params.insert(
            "wal_keep_size".into(),
            Value::from(format!("{}MB", segments * 16)),
        );
    }
    params
        .iter()
        .filter_map(|(k, v)| render_value(v).map(|s| (k.clone(), s)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(v: Value) -> Config {
        serde_json::from_value(v).expect("config")
    }

    fn dynamic(v: Value) -> DynamicConfig {
        DynamicConfig::from_map(v.as_object().unwrap()).0
    }

    #[test]
    fn defaults_match_upstream() {
        let local = config(json!({"scope": "batman", "postgresql": {"listen": "127.0.0.1:5433"}}));
        let p = effective_pg_parameters(&local, &DynamicConfig::default());
        let want = [
            ("listen_addresses", "127.0.0.1"),
            ("port", "5433"),
            ("cluster_name", "batman"),
            ("wal_level", "replica"),
            ("hot_standby", "on"),
            ("max_connections", "100"),
            ("max_wal_senders", "10"),
            ("max_prepared_transactions", "0"),
            ("max_locks_per_transaction", "64"),
            ("track_commit_timestamp", "off"),
            ("max_replication_slots", "10"),
            ("max_worker_processes", "8"),
            ("wal_log_hints", "on"),
            ("wal_keep_size", "128MB"),
        ];
        let want: BTreeMap<String, String> = want
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(p, want);
        for name in CMDLINE_PARAMS {
            assert!(p.contains_key(*name), "{name}");
        }
    }

    #[test]
    fn dynamic_and_local_merge() {
        let local = config(
            json!({"scope": "s", "postgresql": {"listen": "0.0.0.0,::1:5432",
            "parameters": {"work_mem": "8MB", "max_connections": 1000, "ssl": true, "null_one": null}}}),
        );
        let d = dynamic(json!({"postgresql": {"parameters": {
            "max_connections": "200", "max_wal_senders": 1, "hot_standby": "off", "wal_level": "logical",
            "wal_keep_segments": 10, "track_commit_timestamp": true, "work_mem": "4MB", "port": 1, "Max_Locks_Per_Transaction": 128}}}));
        let p = effective_pg_parameters(&local, &d);
        let expect = [
            ("max_connections", "200"), // dynamic wins; local ignored
            ("max_wal_senders", "10"),  // below minimum: default
            ("hot_standby", "on"),      // must be on
            ("wal_level", "logical"),
            ("wal_keep_size", "160MB"),       // 10 segments of 16MB
            ("track_commit_timestamp", "on"), // bool rendered on/off
            ("work_mem", "8MB"),              // local wins for ordinary GUCs
            ("ssl", "on"),
            ("port", "5432"),
            ("listen_addresses", "0.0.0.0,::1"),
            ("max_locks_per_transaction", "128"),
        ];
        for (k, v) in expect {
            assert_eq!(p.get(k).map(String::as_str), Some(v), "{k}");
        }
        assert!(!p.contains_key("wal_keep_segments"));
        assert!(!p.contains_key("null_one"));
        assert!(!p.contains_key("Max_Locks_Per_Transaction"));
    }

    #[test]
    fn check_controlled_table() {
        let cases = [
            ("max_connections", json!(25), true),
            ("max_connections", json!("24"), false),
            ("max_connections", json!("many"), false),
            ("wal_level", json!("REPLICA"), true),
            ("wal_level", json!("minimal"), false),
            ("hot_standby", json!("on"), true),
            ("hot_standby", json!(false), false),
            ("wal_log_hints", json!("off"), true),
            ("track_commit_timestamp", json!("maybe"), false),
            ("wal_keep_size", json!("1GB"), true),
            ("wal_keep_size", json!("8MB"), false),
            ("wal_keep_size", json!(64), true),
            ("listen_addresses", json!("*"), false),
        ];
        for (name, v, ok) in cases {
            let p = controlled(name).unwrap();
            assert_eq!(check_controlled(p, &v).is_ok(), ok, "{name}={v}");
        }
    }

    #[test]
    fn render_and_split() {
        assert_eq!(render_value(&json!(true)).as_deref(), Some("on"));
        assert_eq!(render_value(&json!(false)).as_deref(), Some("off"));
        assert_eq!(render_value(&json!(1.5)).as_deref(), Some("1.5"));
        assert_eq!(render_value(&Value::Null), None);
        assert_eq!(split_listen("h:1"), ("h".into(), "1".into()));
        assert_eq!(split_listen("h"), ("h".into(), "5432".into()));
        assert_eq!(split_listen("[::1]:5432"), ("::1".into(), "5432".into()));
    }
}
