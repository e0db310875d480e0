//! The shape of upstream's local YAML: which keys exist where and what type each holds.
//! Walking the parsed document against it gives type problems as path-named issues (the bad
//! value is removed so the rest still deserializes) and unknown keys as warnings.

use super::validate::{ConfigIssue, describe_value, join_path};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy)]
pub enum Node {
    /// Anything; not checked here.
    Any,
    /// A string (numbers are accepted and turned into strings).
    Str,
    /// A whole number of seconds, 0 or more.
    Seconds,
    /// A whole number (Value-backed, only checked).
    Int,
    /// Strictly true/false (bool fields).
    Bool,
    /// true/false or on/off/yes/no strings (Value-backed fields).
    BoolLike,
    StrList,
    List,
    Mapping,
    /// `hosts`: a comma separated string or a list of strings.
    StrOrList,
    /// A mapping with known keys; `open` sections accept any other key silently.
    Section(&'static [(&'static str, Node)], bool),
}

use Node::*;

const CREDS: &[(&str, Node)] = &[("username", Str), ("password", Str)];
const PG_CREDS: &[(&str, Node)] = &[
    ("username", Str),
    ("password", Str),
    ("sslmode", Str),
    ("sslcert", Str),
    ("sslkey", Str),
    ("sslpassword", Str),
    ("sslrootcert", Str),
    ("sslcrl", Str),
    ("sslcrldir", Str),
    ("gssencmode", Str),
    ("channel_binding", Str),
    ("sslnegotiation", Str),
];
const LOG: &[(&str, Node)] = &[
    ("type", Str),
    ("level", Str),
    ("traceback_level", Str),
    ("format", Any),
    ("dateformat", Str),
    ("static_fields", Mapping),
    ("max_queue_size", Int),
    ("dir", Str),
    ("mode", Int),
    ("file_num", Int),
    ("file_size", Int),
    ("loggers", Mapping),
    ("deduplicate_heartbeat_logs", BoolLike),
];
const RESTAPI: &[(&str, Node)] = &[
    ("listen", Str),
    ("connect_address", Str),
    ("authentication", Section(CREDS, false)),
    ("certfile", Str),
    ("keyfile", Str),
    ("keyfile_password", Str),
    ("cafile", Str),
    ("ciphers", Str),
    ("verify_client", Str),
    ("allowlist", List),
    ("allowlist_include_members", BoolLike),
    ("http_extra_headers", Mapping),
    ("https_extra_headers", Mapping),
    ("request_queue_size", Int),
    ("server_tokens", Str),
    ("thread_pool_size", Int),
];
const CTL: &[(&str, Node)] = &[
    ("authentication", Section(CREDS, false)),
    ("insecure", BoolLike),
    ("cacert", Str),
    ("certfile", Str),
    ("keyfile", Str),
    ("keyfile_password", Str),
];
const ETCD: &[(&str, Node)] = &[
    ("host", Str),
    ("hosts", StrOrList),
    ("use_proxies", BoolLike),
    ("url", Str),
    ("proxy", Str),
    ("srv", Str),
    ("srv_suffix", Str),
    ("protocol", Str),
    ("username", Str),
    ("password", Str),
    ("cacert", Str),
    ("cert", Str),
    ("key", Str),
    ("port", Int),
];
const CONSUL: &[(&str, Node)] = &[
    ("host", Str),
    ("url", Str),
    ("port", Int),
    ("scheme", Str),
    ("token", Str),
    ("verify", BoolLike),
    ("cacert", Str),
    ("cert", Str),
    ("key", Str),
    ("dc", Str),
    ("consistency", Str),
    ("checks", StrList),
    ("register_service", BoolLike),
    ("service_tags", StrList),
    ("service_check_interval", Str),
    ("service_check_tls_server_name", Str),
];
const KUBERNETES: &[(&str, Node)] = &[
    ("namespace", Str),
    ("labels", Mapping),
    ("scope_label", Str),
    ("role_label", Str),
    ("leader_label_value", Str),
    ("follower_label_value", Str),
    ("standby_leader_label_value", Str),
    ("tmp_role_label", Str),
    ("bootstrap_labels", Mapping),
    ("use_endpoints", BoolLike),
    ("pod_ip", Str),
    ("ports", List),
    ("bypass_api_service", BoolLike),
    ("cacert", Str),
    ("context", Str),
    ("retriable_http_codes", Any),
];
const ZOOKEEPER: &[(&str, Node)] = &[
    ("hosts", StrOrList),
    ("use_ssl", BoolLike),
    ("cacert", Str),
    ("cert", Str),
    ("key", Str),
    ("key_password", Str),
    ("verify", BoolLike),
    ("set_acls", Mapping),
    ("auth_data", Mapping),
];
const EXHIBITOR: &[(&str, Node)] = &[("hosts", StrOrList), ("port", Int), ("poll_interval", Int)];
const BOOTSTRAP: &[(&str, Node)] = &[
    ("dcs", Mapping),
    ("initdb", List),
    ("pg_hba", StrList),
    ("post_bootstrap", Str),
    ("post_init", Str),
    ("method", Str),
    ("users", Any),
];
const AUTHENTICATION: &[(&str, Node)] = &[
    ("superuser", Section(PG_CREDS, false)),
    ("replication", Section(PG_CREDS, false)),
    ("rewind", Section(PG_CREDS, false)),
];
const CALLBACKS: &[(&str, Node)] = &[
    ("on_reload", Str),
    ("on_restart", Str),
    ("on_role_change", Str),
    ("on_start", Str),
    ("on_stop", Str),
];
const BIN_NAME: &[(&str, Node)] = &[
    ("pg_ctl", Str),
    ("initdb", Str),
    ("pg_controldata", Str),
    ("pg_basebackup", Str),
    ("postgres", Str),
    ("pg_isready", Str),
    ("pg_rewind", Str),
];
const POSTGRESQL: &[(&str, Node)] = &[
    ("listen", Str),
    ("connect_address", Str),
    ("proxy_address", Str),
    ("data_dir", Str),
    ("bin_dir", Str),
    ("config_dir", Str),
    ("pgpass", Str),
    ("authentication", Section(AUTHENTICATION, false)),
    ("parameters", Mapping),
    ("pg_hba", StrList),
    ("pg_ident", StrList),
    ("pg_ctl_timeout", Seconds),
    ("use_pg_rewind", Bool),
    ("remove_data_directory_on_rewind_failure", Bool),
    ("remove_data_directory_on_diverged_timelines", Bool),
    ("use_unix_socket", Bool),
    ("use_unix_socket_repl", Bool),
    ("basebackup", Any),
    ("create_replica_methods", StrList),
    ("callbacks", Section(CALLBACKS, false)),
    ("pre_promote", Str),
    ("before_stop", Str),
    ("custom_conf", Str),
    ("bin_name", Section(BIN_NAME, false)),
    ("recovery_conf", Mapping),
    ("krbsrvname", Str),
    ("config_base_name", Str),
    ("use_slots", Any),
];
const WATCHDOG: &[(&str, Node)] = &[("mode", Any), ("device", Str), ("safety_margin", Int)];
const TAGS: &[(&str, Node)] = &[
    ("nofailover", BoolLike),
    ("clonefrom", BoolLike),
    ("noloadbalance", BoolLike),
    ("replicatefrom", Str),
    ("nosync", BoolLike),
    ("nostream", BoolLike),
    ("failover_priority", Int),
    ("sync_priority", Int),
];
/// DCS sections upstream knows but this implementation does not serve (yet).
pub const OTHER_DCS: &[&str] = &["raft"];

/// The whole local file. Top-level dynamic settings are handled by the caller.
pub const ROOT: &[(&str, Node)] = &[
    ("name", Str),
    ("scope", Str),
    ("namespace", Str),
    ("log", Section(LOG, false)),
    ("restapi", Section(RESTAPI, false)),
    ("ctl", Section(CTL, false)),
    ("etcd3", Section(ETCD, false)),
    ("etcd", Section(ETCD, false)),
    ("bootstrap", Section(BOOTSTRAP, false)),
    ("postgresql", Section(POSTGRESQL, false)),
    ("watchdog", Section(WATCHDOG, false)),
    ("tags", Section(TAGS, true)),
    ("consul", Section(CONSUL, false)),
    ("zookeeper", Section(ZOOKEEPER, false)),
    ("exhibitor", Section(EXHIBITOR, false)),
    ("kubernetes", Section(KUBERNETES, false)),
    ("raft", Any),
    ("citus", Any),
    ("thread_pool_size", Int),
    ("thread_stack_size", Any),
];

/// What a walk found.
#[derive(Debug, Default)]
pub struct Report {
    pub issues: Vec<ConfigIssue>,
    pub warnings: Vec<String>,
}

/// Walks `root` against the schema, fixing what serde would reject: nulls are dropped (the
/// default applies), numbers in string fields become strings, wrong types are removed and
/// reported. `also_known` lists, per section path, extra keys that are legal there (custom
/// replica methods, a custom bootstrap method, top-level dynamic settings).
pub fn walk_root(
    root: &mut Map<String, Value>,
    also_known: &BTreeMap<String, Vec<String>>,
) -> Report {
    let mut report = Report::default();
    walk_section(root, ROOT, false, "", also_known, &mut report);
    report
}

fn walk_section(
    map: &mut Map<String, Value>,
    keys: &[(&str, Node)],
    open: bool,
    path: &str,
    also_known: &BTreeMap<String, Vec<String>>,
    report: &mut Report,
) {
    let names: Vec<String> = map.keys().cloned().collect();
    for key in names {
        let child = join_path(path, &key);
        let Some(node) = keys.iter().find(|(k, _)| *k == key).map(|(_, n)| *n) else {
            let extra = also_known.get(path).is_some_and(|l| l.contains(&key));
            if !open && !extra {
                report
                    .warnings
                    .push(format!("unknown key {child}, kept and ignored"));
            }
            continue;
        };
        let value = map.get_mut(&key).expect("key listed above");
        if value.is_null() {
            map.remove(&key);
            continue;
        }
        if let Err(message) = check(value, node, &child, also_known, report) {
            report.issues.push(ConfigIssue {
                path: child,
                message,
            });
            map.remove(&key);
        }
    }
}

/// Checks one value; `Err` is the message for a value that must be removed.
fn check(
    value: &mut Value,
    node: Node,
    path: &str,
    also_known: &BTreeMap<String, Vec<String>>,
    report: &mut Report,
) -> Result<(), String> {
    let got = describe_value(value);
    match node {
        Any => Ok(()),
        Str => match value {
            Value::String(_) => Ok(()),
            Value::Number(n) => {
                *value = Value::from(n.to_string());
                Ok(())
            }
            _ => Err(format!("must be a string, got {got}")),
        },
        Seconds if value.as_u64().is_some() => Ok(()),
        Seconds => Err(format!("must be an integer number of seconds, got {got}")),
        Int if value.as_i64().is_some() || value.as_u64().is_some() => Ok(()),
        Int => Err(format!("must be an integer, got {got}")),
        Bool if value.is_boolean() => Ok(()),
        Bool => Err(format!("must be true or false, got {got}")),
        BoolLike if super::pg_params::parse_bool(value).is_some() => Ok(()),
        BoolLike => Err(format!("must be true or false, got {got}")),
        List if value.is_array() => Ok(()),
        List => Err(format!("must be a list, got {got}")),
        Mapping if value.is_object() => Ok(()),
        Mapping => Err(format!("must be a mapping (key: value pairs), got {got}")),
        StrList => check_str_list(value, path, report),
        StrOrList if value.is_string() => Ok(()),
        StrOrList => check_str_list(value, path, report)
            .map_err(|_| format!("must be a host:port string or a list of them, got {got}")),
        Section(keys, open) => match value {
            Value::Object(m) => {
                walk_section(m, keys, open, path, also_known, report);
                Ok(())
            }
            _ => Err(format!("must be a mapping (key: value pairs), got {got}")),
        },
    }
}

/// A list whose non-string items are reported and removed.
fn check_str_list(value: &mut Value, path: &str, report: &mut Report) -> Result<(), String> {
    let Value::Array(items) = value else {
        return Err(format!(
            "must be a list of strings, got {}",
            describe_value(value)
        ));
    };
    let mut kept = Vec::with_capacity(items.len());
    for (i, item) in items.drain(..).enumerate() {
        match item {
            Value::String(_) => kept.push(item),
            Value::Number(n) => kept.push(Value::from(n.to_string())),
            other => report.issues.push(ConfigIssue {
                path: format!("{path}[{i}]"),
                message: format!("must be a string, got {}", describe_value(&other)),
            }),
        }
    }
    *items = kept;
    Ok(())
}
