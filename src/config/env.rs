//! The `PATRONI_*` environment overlay, as upstream's `_build_environment_configuration`:
//! a pure function of the variables given, so tests never touch the process environment.
//!
//! Environment values take precedence over the file. `PATRONI_CONFIGURATION` (the whole YAML
//! document) is handled by `load`, not here: when it is used, no other variable applies.

use super::dynamic::deep_merge_patch;
use super::pg_params::{parse_bool, parse_int};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};

/// Holds the entire configuration when no file is given.
pub const CONFIGURATION_VAR: &str = "PATRONI_CONFIGURATION";
const PREFIX: &str = "PATRONI_";

/// libpq connection settings accepted for `postgresql.authentication.*` from the environment.
pub const AUTH_PARAMS: &[&str] = &[
    "username",
    "password",
    "sslmode",
    "sslcert",
    "sslkey",
    "sslpassword",
    "sslrootcert",
    "sslcrl",
    "sslcrldir",
    "gssencmode",
    "channel_binding",
    "sslnegotiation",
];

/// `PATRONI_<SECTION>_<SUFFIX>` suffixes that go into a DCS (or citus) section.
const DCS_SUFFIXES: &[&str] = &[
    "HOST",
    "HOSTS",
    "PORT",
    "USE_PROXIES",
    "PROTOCOL",
    "SRV",
    "SRV_SUFFIX",
    "URL",
    "PROXY",
    "CACERT",
    "CERT",
    "KEY",
    "VERIFY",
    "TOKEN",
    "CHECKS",
    "DC",
    "CONSISTENCY",
    "REGISTER_SERVICE",
    "SERVICE_CHECK_INTERVAL",
    "SERVICE_CHECK_TLS_SERVER_NAME",
    "SERVICE_TAGS",
    "NAMESPACE",
    "CONTEXT",
    "USE_ENDPOINTS",
    "SCOPE_LABEL",
    "ROLE_LABEL",
    "POD_IP",
    "PORTS",
    "LABELS",
    "BYPASS_API_SERVICE",
    "RETRIABLE_HTTP_CODES",
    "KEY_PASSWORD",
    "USE_SSL",
    "SET_ACLS",
    "GROUP",
    "DATABASE",
    "LEADER_LABEL_VALUE",
    "FOLLOWER_LABEL_VALUE",
    "STANDBY_LEADER_LABEL_VALUE",
    "TMP_ROLE_LABEL",
    "AUTH_DATA",
    "BOOTSTRAP_LABELS",
];

/// Reads variables once each, like upstream's `os.environ.pop`.
struct Env<'a> {
    vars: &'a BTreeMap<String, String>,
    used: BTreeSet<String>,
}

impl Env<'_> {
    /// The non-empty value of `PATRONI_<NAME>` (name upper-cased), marking it consumed.
    fn pop(&mut self, name: &str) -> Option<String> {
        let key = format!("{PREFIX}{}", name.to_ascii_uppercase());
        let v = self.vars.get(&key)?;
        self.used.insert(key);
        (!v.is_empty()).then(|| v.clone())
    }
}

fn section<'a>(ret: &'a mut Map<String, Value>, name: &str) -> &'a mut Map<String, Value> {
    let entry = ret
        .entry(name.to_string())
        .or_insert_with(|| Value::Object(Map::new()));
    if !entry.is_object() {
        *entry = Value::Object(Map::new());
    }
    entry.as_object_mut().expect("just made an object")
}

/// Upstream's `_parse_list`: `a,b` is read as the YAML list `[a,b]`.
pub fn parse_list(value: &str) -> Option<Value> {
    let t = value.trim();
    let text = if t.starts_with('-') || t.contains('[') {
        value.to_string()
    } else {
        format!("[{value}]")
    };
    serde_yaml_ng::from_str::<Value>(&text)
        .ok()
        .filter(Value::is_array)
}

/// Upstream's `_parse_dict`: `k: v` is read as the YAML mapping `{k: v}`.
pub fn parse_dict(value: &str) -> Option<Value> {
    let text = if value.trim().starts_with('{') {
        value.to_string()
    } else {
        format!("{{{value}}}")
    };
    serde_yaml_ng::from_str::<Value>(&text)
        .ok()
        .filter(Value::is_object)
}

fn set_section_values(env: &mut Env, ret: &mut Map<String, Value>, sect: &str, params: &[&str]) {
    for p in params {
        if let Some(v) = env.pop(&format!("{sect}_{p}")) {
            section(ret, sect).insert(p.to_string(), Value::from(v));
        }
    }
}

/// Re-types values read as strings: `conv` returns None to drop an unparsable value.
fn convert(
    ret: &mut Map<String, Value>,
    sect: &str,
    key: &str,
    conv: impl Fn(&str) -> Option<Value>,
) {
    let Some(Value::Object(m)) = ret.get_mut(sect) else {
        return;
    };
    let Some(Value::String(s)) = m.remove(key) else {
        return;
    };
    if let Some(v) = conv(&s) {
        m.insert(key.to_string(), v);
    }
}

fn auth(env: &mut Env, name: &str, params: &[&str]) -> Map<String, Value> {
    params
        .iter()
        .filter_map(|p| {
            env.pop(&format!("{name}_{p}"))
                .map(|v| (p.to_string(), Value::from(v)))
        })
        .collect()
}

fn local_sections(env: &mut Env, ret: &mut Map<String, Value>) {
    for p in ["name", "namespace", "scope"] {
        if let Some(v) = env.pop(p) {
            ret.insert(p.to_string(), Value::from(v));
        }
    }
    set_section_values(
        env,
        ret,
        "restapi",
        &[
            "listen",
            "connect_address",
            "certfile",
            "keyfile",
            "keyfile_password",
            "cafile",
            "ciphers",
            "verify_client",
            "http_extra_headers",
            "https_extra_headers",
            "allowlist",
            "allowlist_include_members",
            "request_queue_size",
            "server_tokens",
        ],
    );
    set_section_values(
        env,
        ret,
        "ctl",
        &[
            "insecure",
            "cacert",
            "certfile",
            "keyfile",
            "keyfile_password",
        ],
    );
    set_section_values(
        env,
        ret,
        "postgresql",
        &[
            "listen",
            "connect_address",
            "proxy_address",
            "config_dir",
            "data_dir",
            "pgpass",
            "bin_dir",
        ],
    );
    set_section_values(
        env,
        ret,
        "log",
        &[
            "type",
            "level",
            "traceback_level",
            "format",
            "dateformat",
            "static_fields",
            "max_queue_size",
            "dir",
            "mode",
            "file_size",
            "file_num",
            "loggers",
            "deduplicate_heartbeat_logs",
        ],
    );
    set_section_values(
        env,
        ret,
        "raft",
        &[
            "data_dir",
            "self_addr",
            "partner_addrs",
            "password",
            "bind_addr",
        ],
    );
    for bin in [
        "pg_ctl",
        "initdb",
        "pg_controldata",
        "pg_basebackup",
        "postgres",
        "pg_isready",
        "pg_rewind",
    ] {
        if let Some(v) = env.pop(&format!("POSTGRESQL_BIN_{bin}")) {
            let pg = section(ret, "postgresql");
            section(pg, "bin_name").insert(bin.to_string(), Value::from(v));
        }
    }
}

fn retype_local(ret: &mut Map<String, Value>) {
    let to_bool = |s: &str| parse_bool(&Value::from(s)).map(Value::Bool);
    let to_int = |s: &str| parse_int(&Value::from(s)).map(Value::from);
    convert(ret, "restapi", "allowlist_include_members", to_bool);
    convert(ret, "ctl", "insecure", to_bool);
    convert(ret, "log", "deduplicate_heartbeat_logs", to_bool);
    convert(ret, "restapi", "request_queue_size", to_int);
    for k in ["max_queue_size", "file_size", "file_num", "mode"] {
        convert(ret, "log", k, to_int);
    }
    convert(ret, "raft", "partner_addrs", parse_list);
    convert(ret, "restapi", "allowlist", parse_list);
    // A log format without `%(field)s` placeholders is a list of field names.
    convert(ret, "log", "format", |s| {
        let has_placeholder = s.contains("%(") && s[s.find("%(").unwrap_or(0)..].contains(')');
        if has_placeholder {
            Some(Value::from(s))
        } else {
            parse_list(s).or_else(|| Some(Value::from(s)))
        }
    });
    for (sect, key) in [
        ("restapi", "http_extra_headers"),
        ("restapi", "https_extra_headers"),
        ("log", "static_fields"),
        ("log", "loggers"),
    ] {
        convert(ret, sect, key, parse_dict);
    }
}

fn dcs_value(name: &str, suffix: &str, raw: &str) -> Option<Value> {
    if name == "CITUS" {
        return match suffix {
            "GROUP" => parse_int(&Value::from(raw)).map(Value::from),
            "DATABASE" => Some(Value::from(raw)),
            _ => None,
        };
    }
    match suffix {
        "PORT" => parse_int(&Value::from(raw)).map(Value::from),
        "HOSTS" | "PORTS" | "CHECKS" | "SERVICE_TAGS" | "RETRIABLE_HTTP_CODES" => parse_list(raw),
        "LABELS" | "SET_ACLS" | "AUTH_DATA" | "BOOTSTRAP_LABELS" => parse_dict(raw),
        "USE_PROXIES" | "REGISTER_SERVICE" | "USE_ENDPOINTS" | "BYPASS_API_SERVICE" | "VERIFY" => {
            parse_bool(&Value::from(raw)).map(Value::Bool)
        }
        _ => Some(Value::from(raw)),
    }
}

fn dcs_sections(env: &mut Env, ret: &mut Map<String, Value>) {
    let vars: Vec<(String, String)> = env
        .vars
        .iter()
        .filter(|(k, v)| k.starts_with(PREFIX) && !env.used.contains(*k) && !v.is_empty())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (key, raw) in vars {
        let rest = &key[PREFIX.len()..];
        let Some((name, suffix)) = rest.split_once('_') else {
            continue;
        };
        if name.is_empty() || !DCS_SUFFIXES.contains(&suffix) {
            continue;
        }
        env.used.insert(key.clone());
        if let Some(v) = dcs_value(name, suffix, &raw) {
            section(ret, &name.to_ascii_lowercase()).insert(suffix.to_ascii_lowercase(), v);
        }
    }
}

/// The configuration fragment the environment defines (upstream's environment configuration).
/// `file_sections` names top-level sections of the file; etcd credentials from the environment
/// are applied to an `etcd`/`etcd3` section defined there too (upstream only does so when
/// another variable of that section is set).
pub fn environment_overlay(
    env: &BTreeMap<String, String>,
    file_sections: &[&str],
) -> Map<String, Value> {
    // Legacy log variable names, used only when the new name is not set.
    let mut vars = env.clone();
    for (new, old) in [
        ("LOG_LEVEL", "LOGLEVEL"),
        ("LOG_FORMAT", "LOGFORMAT"),
        ("LOG_DATEFORMAT", "LOG_DATEFMT"),
    ] {
        if let Some(v) = vars
            .remove(&format!("{PREFIX}{old}"))
            .filter(|v| !v.is_empty())
        {
            vars.entry(format!("{PREFIX}{new}")).or_insert(v);
        }
    }
    let mut env = Env {
        vars: &vars,
        used: BTreeSet::new(),
    };
    let mut ret = Map::new();
    local_sections(&mut env, &mut ret);
    retype_local(&mut ret);
    for sect in ["ctl", "restapi"] {
        let a = auth(&mut env, sect, &AUTH_PARAMS[..2]);
        if !a.is_empty() {
            section(&mut ret, sect).insert("authentication".into(), Value::Object(a));
        }
    }
    let mut authentication = Map::new();
    for user in ["replication", "superuser", "rewind"] {
        let a = auth(&mut env, user, AUTH_PARAMS);
        if !a.is_empty() {
            authentication.insert(user.into(), Value::Object(a));
        }
    }
    if !authentication.is_empty() {
        section(&mut ret, "postgresql")
            .insert("authentication".into(), Value::Object(authentication));
    }
    dcs_sections(&mut env, &mut ret);
    for dcs in ["etcd", "etcd3"] {
        if ret.contains_key(dcs) || file_sections.contains(&dcs) {
            let a = auth(&mut env, dcs, &AUTH_PARAMS[..2]);
            if !a.is_empty() {
                section(&mut ret, dcs).extend(a);
            }
        }
    }
    ret
}

/// The file's configuration with the environment overlay applied (environment wins).
pub fn apply_env(yaml: Value, env: &BTreeMap<String, String>) -> Value {
    let mut base = match yaml {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    let sections: Vec<&str> = base.keys().map(String::as_str).collect();
    let overlay = environment_overlay(env, &sections);
    deep_merge_patch(&mut base, &overlay);
    Value::Object(base)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn overlay_table() {
        let cases: &[(&[(&str, &str)], Value)] = &[
            (
                &[("PATRONI_NAME", "n1"), ("PATRONI_SCOPE", "s")],
                json!({"name": "n1", "scope": "s"}),
            ),
            (&[("PATRONI_NAME", "")], json!({})),
            (
                &[
                    ("PATRONI_RESTAPI_LISTEN", "0.0.0.0:8008"),
                    ("PATRONI_RESTAPI_USERNAME", "u"),
                    ("PATRONI_RESTAPI_PASSWORD", "p"),
                ],
                json!({"restapi": {"listen": "0.0.0.0:8008", "authentication": {"username": "u", "password": "p"}}}),
            ),
            (
                &[
                    ("PATRONI_POSTGRESQL_DATA_DIR", "/d"),
                    ("PATRONI_POSTGRESQL_BIN_PG_CTL", "pgctl15"),
                ],
                json!({"postgresql": {"data_dir": "/d", "bin_name": {"pg_ctl": "pgctl15"}}}),
            ),
            (
                &[
                    ("PATRONI_SUPERUSER_USERNAME", "pg"),
                    ("PATRONI_REWIND_SSLMODE", "require"),
                ],
                json!({"postgresql": {"authentication": {"superuser": {"username": "pg"}, "rewind": {"sslmode": "require"}}}}),
            ),
            (
                &[
                    ("PATRONI_ETCD3_HOSTS", "'h1:2379','h2:2379'"),
                    ("PATRONI_ETCD3_USERNAME", "e"),
                    ("PATRONI_ETCD3_PROTOCOL", "https"),
                ],
                json!({"etcd3": {"hosts": ["h1:2379", "h2:2379"], "username": "e", "protocol": "https"}}),
            ),
            (
                &[
                    ("PATRONI_CONSUL_HOST", "c:8500"),
                    ("PATRONI_CONSUL_TOKEN", "t0k"),
                    ("PATRONI_CONSUL_VERIFY", "off"),
                    ("PATRONI_CONSUL_REGISTER_SERVICE", "on"),
                    ("PATRONI_CONSUL_SERVICE_TAGS", "a,b"),
                    ("PATRONI_CONSUL_CHECKS", "serfHealth"),
                    ("PATRONI_CONSUL_CONSISTENCY", "stale"),
                ],
                json!({"consul": {"host": "c:8500", "token": "t0k", "verify": false,
                    "register_service": true, "service_tags": ["a", "b"],
                    "checks": ["serfHealth"], "consistency": "stale"}}),
            ),
            (
                &[
                    ("PATRONI_KUBERNETES_NAMESPACE", "db"),
                    (
                        "PATRONI_KUBERNETES_LABELS",
                        "{application: patroni, team: x}",
                    ),
                    ("PATRONI_KUBERNETES_USE_ENDPOINTS", "true"),
                    ("PATRONI_KUBERNETES_POD_IP", "10.0.0.5"),
                    (
                        "PATRONI_KUBERNETES_PORTS",
                        "[{\"name\": \"postgresql\", \"port\": 5432}]",
                    ),
                    ("PATRONI_KUBERNETES_ROLE_LABEL", "spilo-role"),
                    ("PATRONI_KUBERNETES_BYPASS_API_SERVICE", "false"),
                ],
                json!({"kubernetes": {"namespace": "db", "labels": {"application": "patroni", "team": "x"},
                    "use_endpoints": true, "pod_ip": "10.0.0.5",
                    "ports": [{"name": "postgresql", "port": 5432}], "role_label": "spilo-role",
                    "bypass_api_service": false}}),
            ),
            (
                &[
                    ("PATRONI_ETCD_HOST", "h:2379"),
                    ("PATRONI_ETCD_PASSWORD", "pw"),
                ],
                json!({"etcd": {"host": "h:2379", "password": "pw"}}),
            ),
            (
                &[
                    ("PATRONI_ZOOKEEPER_HOSTS", "'zk1:2181','zk2:2181'"),
                    ("PATRONI_ZOOKEEPER_USE_SSL", "false"),
                    ("PATRONI_ZOOKEEPER_VERIFY", "false"),
                    ("PATRONI_ZOOKEEPER_AUTH_DATA", "digest: 'u:p'"),
                    ("PATRONI_ZOOKEEPER_SET_ACLS", "CN=p: [READ]"),
                ],
                json!({"zookeeper": {"hosts": ["zk1:2181", "zk2:2181"], "use_ssl": "false",
                    "verify": false, "auth_data": {"digest": "u:p"}, "set_acls": {"CN=p": ["READ"]}}}),
            ),
            (
                &[
                    ("PATRONI_EXHIBITOR_HOSTS", "'e1','e2'"),
                    ("PATRONI_EXHIBITOR_PORT", "8181"),
                ],
                json!({"exhibitor": {"hosts": ["e1", "e2"], "port": 8181}}),
            ),
            (
                &[
                    ("PATRONI_LOGLEVEL", "DEBUG"),
                    ("PATRONI_LOG_FILE_NUM", "4"),
                    ("PATRONI_LOG_LOGGERS", "patroni.postmaster: WARNING"),
                ],
                json!({"log": {"level": "DEBUG", "file_num": 4, "loggers": {"patroni.postmaster": "WARNING"}}}),
            ),
            (
                &[("PATRONI_LOGLEVEL", "DEBUG"), ("PATRONI_LOG_LEVEL", "INFO")],
                json!({"log": {"level": "INFO"}}),
            ),
            (
                &[
                    ("PATRONI_CTL_INSECURE", "on"),
                    ("PATRONI_CTL_USERNAME", "c"),
                ],
                json!({"ctl": {"insecure": true, "authentication": {"username": "c"}}}),
            ),
            (
                &[
                    ("PATRONI_CITUS_GROUP", "1"),
                    ("PATRONI_CITUS_DATABASE", "citus"),
                    ("PATRONI_CITUS_HOST", "x"),
                ],
                json!({"citus": {"group": 1, "database": "citus"}}),
            ),
            (
                &[
                    ("PATRONI_RESTAPI_ALLOWLIST", "10.0.0.0/8,127.0.0.1"),
                    ("PATRONI_RESTAPI_REQUEST_QUEUE_SIZE", "7"),
                ],
                json!({"restapi": {"allowlist": ["10.0.0.0/8", "127.0.0.1"], "request_queue_size": 7}}),
            ),
            (
                &[("OTHER_NAME", "x"), ("PATRONI_SOMETHING", "y")],
                json!({}),
            ),
        ];
        for (vars, want) in cases {
            let got = Value::Object(environment_overlay(&env(vars), &[]));
            assert_eq!(&got, want, "env {vars:?}");
        }
    }

    #[test]
    fn env_overrides_file_and_keeps_the_rest() {
        let file = json!({"name": "file", "etcd3": {"hosts": "a:1"}, "postgresql": {"listen": "x:1", "data_dir": "/f"}});
        let got = apply_env(
            file,
            &env(&[
                ("PATRONI_NAME", "env"),
                ("PATRONI_POSTGRESQL_DATA_DIR", "/e"),
                ("PATRONI_ETCD3_PASSWORD", "pw"),
            ]),
        );
        assert_eq!(
            got,
            json!({"name": "env", "etcd3": {"hosts": "a:1", "password": "pw"}, "postgresql": {"listen": "x:1", "data_dir": "/e"}})
        );
    }

    #[test]
    fn list_and_dict_parsing() {
        assert_eq!(parse_list("a:1,b:2"), Some(json!(["a:1", "b:2"])));
        assert_eq!(parse_list("[a, b]"), Some(json!(["a", "b"])));
        assert_eq!(parse_list("{x"), None);
        assert_eq!(parse_dict("a: 1"), Some(json!({"a": 1})));
    }
}
