//! Strict validation of a dynamic configuration map (the DCS `config` key, PATCH /config,
//! `bootstrap.dcs`): every problem at once, each with its path.

use super::pg_params::{check_controlled, controlled, parse_bool, parse_int};
use super::timing::{ALLOW_SHORT_TTL, TimingFloors, floor_message, rule_violation};
use super::validate::{ConfigIssue, describe_value, join_path};
use serde_json::{Map, Value};

/// Validates `map`; issue paths are `prefix.key` (or just `key` when `prefix` is empty).
pub fn validate_dynamic_map(map: &Map<String, Value>, prefix: &str) -> Vec<ConfigIssue> {
    // A key written without a value is unset, as when reading the configuration.
    let owned: Map<String, Value> = map
        .iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let map = &owned;
    let mut out = Vec::new();
    let at = |k: &str| join_path(prefix, k);
    check_timing(map, prefix, &mut out);
    for key in [
        "primary_start_timeout",
        "master_start_timeout",
        "primary_stop_timeout",
        "master_stop_timeout",
    ] {
        check_seconds(map, key, 0, &at(key), &mut out);
    }
    for (key, min) in [
        ("maximum_lag_on_failover", 0),
        ("max_timelines_history", 0),
        ("synchronous_node_count", 1),
        ("maximum_lag_on_syncnode", -1),
    ] {
        check_int(map.get(key), min, "", &at(key), &mut out);
    }
    for key in [
        "synchronous_mode_strict",
        "failsafe_mode",
        "pause",
        "check_timeline",
    ] {
        check_bool(map.get(key), &at(key), &mut out);
    }
    check_sync_mode(
        map.get("synchronous_mode"),
        &at("synchronous_mode"),
        &mut out,
    );
    check_member_slots_ttl(
        map.get("member_slots_ttl"),
        &at("member_slots_ttl"),
        &mut out,
    );
    check_standby_cluster(map.get("standby_cluster"), &at("standby_cluster"), &mut out);
    check_slots(map.get("slots"), &at("slots"), &mut out);
    check_ignore_slots(map.get("ignore_slots"), &at("ignore_slots"), &mut out);
    check_postgresql(map.get("postgresql"), &at("postgresql"), &mut out);
    out
}

fn issue(out: &mut Vec<ConfigIssue>, path: &str, message: String) {
    out.push(ConfigIssue {
        path: path.to_string(),
        message,
    });
}

/// An integer number of seconds at least `min`; returns it when valid.
fn check_seconds(
    map: &Map<String, Value>,
    key: &str,
    min: i64,
    path: &str,
    out: &mut Vec<ConfigIssue>,
) -> Option<i64> {
    check_int(map.get(key), min, " seconds", path, out)
}

/// An integer (plain number or digits in a string) at least `min`.
fn check_int(
    v: Option<&Value>,
    min: i64,
    unit: &str,
    path: &str,
    out: &mut Vec<ConfigIssue>,
) -> Option<i64> {
    let v = v?;
    match parse_int(v) {
        Some(n) if n >= min => Some(n),
        Some(n) => {
            issue(out, path, format!("must be at least {min}{unit}, got {n}"));
            None
        }
        None => {
            let what = if unit.is_empty() {
                "an integer".to_string()
            } else {
                format!("an integer number of{unit}")
            };
            issue(
                out,
                path,
                format!("must be {what}, got {}", describe_value(v)),
            );
            None
        }
    }
}

fn check_bool(v: Option<&Value>, path: &str, out: &mut Vec<ConfigIssue>) {
    if let Some(v) = v
        && parse_bool(v).is_none()
    {
        issue(
            out,
            path,
            format!("must be true or false, got {}", describe_value(v)),
        );
    }
}

/// ttl, loop_wait and retry_timeout against the floors in force (upstream's, or the short
/// ones when the same map says `allow_short_ttl: true`), then the rule
/// `loop_wait + 2*retry_timeout <= ttl` with defaults for missing values.
fn check_timing(map: &Map<String, Value>, prefix: &str, out: &mut Vec<ConfigIssue>) {
    check_bool(
        map.get(ALLOW_SHORT_TTL),
        &join_path(prefix, ALLOW_SHORT_TTL),
        out,
    );
    let short = map
        .get(ALLOW_SHORT_TTL)
        .and_then(parse_bool)
        .unwrap_or(false);
    let floors = TimingFloors::select(short);
    for (key, floor) in floors.named() {
        let Some(v) = map.get(key) else { continue };
        match parse_int(v) {
            Some(n) if n < floor as i64 => issue(
                out,
                &join_path(prefix, key),
                floor_message(key, n, floor, short),
            ),
            _ => {
                check_seconds(map, key, 0, &join_path(prefix, key), out);
            }
        }
    }
    let get = |k: &str, d: u64| match map.get(k) {
        None => Some(d),
        Some(v) => parse_int(v).and_then(|n| u64::try_from(n).ok()),
    };
    let (Some(ttl), Some(lw), Some(rt)) = (
        get("ttl", 30),
        get("loop_wait", 10),
        get("retry_timeout", 10),
    ) else {
        return;
    };
    if let Some(problem) = rule_violation(ttl, lw, rt) {
        issue(
            out,
            &join_path(prefix, "ttl"),
            format!("{problem}; Patroni would lower loop_wait/retry_timeout to fit"),
        );
    }
}

fn check_sync_mode(v: Option<&Value>, path: &str, out: &mut Vec<ConfigIssue>) {
    let Some(v) = v else { return };
    let ok =
        parse_bool(v).is_some() || v.as_str().is_some_and(|s| s.eq_ignore_ascii_case("quorum"));
    if !ok {
        issue(
            out,
            path,
            format!("must be off, on or quorum, got {}", describe_value(v)),
        );
    }
}

/// An integer of seconds or a duration such as `30min`.
fn check_member_slots_ttl(v: Option<&Value>, path: &str, out: &mut Vec<ConfigIssue>) {
    let Some(v) = v else { return };
    let ok = match v {
        Value::Number(_) => parse_int(v).is_some_and(|n| n >= 0),
        Value::String(s) => {
            let s = s.trim();
            let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
            digits > 0 && ["", "ms", "s", "min", "h", "d"].contains(&s[digits..].trim())
        }
        _ => false,
    };
    if !ok {
        issue(
            out,
            path,
            format!(
                "must be a duration such as 30min or a number of seconds, got {}",
                describe_value(v)
            ),
        );
    }
}

fn expect_map<'a>(
    v: &'a Value,
    path: &str,
    out: &mut Vec<ConfigIssue>,
) -> Option<&'a Map<String, Value>> {
    match v {
        Value::Object(m) => Some(m),
        other => {
            issue(
                out,
                path,
                format!(
                    "must be a mapping (key: value), got {}",
                    describe_value(other)
                ),
            );
            None
        }
    }
}

fn check_str(v: Option<&Value>, path: &str, out: &mut Vec<ConfigIssue>) {
    if let Some(v) = v
        && !v.is_string()
    {
        issue(
            out,
            path,
            format!("must be a string, got {}", describe_value(v)),
        );
    }
}

fn check_str_list(v: Option<&Value>, path: &str, out: &mut Vec<ConfigIssue>) {
    let Some(v) = v else { return };
    match v {
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                check_str(Some(item), &format!("{path}[{i}]"), out);
            }
        }
        other => issue(
            out,
            path,
            format!("must be a list of strings, got {}", describe_value(other)),
        ),
    }
}

fn check_standby_cluster(v: Option<&Value>, path: &str, out: &mut Vec<ConfigIssue>) {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return;
    };
    let Some(m) = expect_map(v, path, out) else {
        return;
    };
    for key in [
        "host",
        "primary_slot_name",
        "restore_command",
        "archive_cleanup_command",
    ] {
        check_str(m.get(key), &join_path(path, key), out);
    }
    if let Some(p) = m.get("port")
        && !parse_int(p).is_some_and(|n| (1..=65535).contains(&n))
    {
        issue(
            out,
            &join_path(path, "port"),
            format!("must be a port number, got {}", describe_value(p)),
        );
    }
    check_str_list(
        m.get("create_replica_methods"),
        &join_path(path, "create_replica_methods"),
        out,
    );
}

fn check_slots(v: Option<&Value>, path: &str, out: &mut Vec<ConfigIssue>) {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return;
    };
    let Some(m) = expect_map(v, path, out) else {
        return;
    };
    for (name, slot) in m {
        let p = join_path(path, name);
        let Some(s) = (match slot {
            Value::Null => continue, // a bare name means a physical slot
            other => expect_map(other, &p, out),
        }) else {
            continue;
        };
        match s.get("type").and_then(Value::as_str).unwrap_or("physical") {
            "physical" => {}
            "logical" => {
                for key in ["database", "plugin"] {
                    if !s.get(key).is_some_and(Value::is_string) {
                        issue(
                            out,
                            &join_path(&p, key),
                            "is required for a logical slot".into(),
                        );
                    }
                }
            }
            other => issue(
                out,
                &join_path(&p, "type"),
                format!("must be physical or logical, got \"{other}\""),
            ),
        }
    }
}

fn check_ignore_slots(v: Option<&Value>, path: &str, out: &mut Vec<ConfigIssue>) {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return;
    };
    match v {
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                expect_map(item, &format!("{path}[{i}]"), out);
            }
        }
        other => issue(
            out,
            path,
            format!(
                "must be a list of slot descriptions, got {}",
                describe_value(other)
            ),
        ),
    }
}

fn check_postgresql(v: Option<&Value>, path: &str, out: &mut Vec<ConfigIssue>) {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return;
    };
    let Some(m) = expect_map(v, path, out) else {
        return;
    };
    check_bool(
        m.get("use_pg_rewind"),
        &join_path(path, "use_pg_rewind"),
        out,
    );
    check_bool(m.get("use_slots"), &join_path(path, "use_slots"), out);
    check_str_list(m.get("pg_hba"), &join_path(path, "pg_hba"), out);
    check_str_list(m.get("pg_ident"), &join_path(path, "pg_ident"), out);
    if let Some(rc) = m.get("recovery_conf").filter(|v| !v.is_null()) {
        expect_map(rc, &join_path(path, "recovery_conf"), out);
    }
    let Some(params) = m.get("parameters").filter(|v| !v.is_null()) else {
        return;
    };
    let ppath = join_path(path, "parameters");
    let Some(params) = expect_map(params, &ppath, out) else {
        return;
    };
    for (name, value) in params {
        if let Some(p) = controlled(name)
            && let Err(why) = check_controlled(p, value)
        {
            issue(out, &join_path(&ppath, name), why);
        }
    }
}
