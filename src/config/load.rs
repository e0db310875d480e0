//! Loading the local configuration: the YAML file (or a directory of them, merged in name
//! order, or `PATRONI_CONFIGURATION`), the `PATRONI_*` overlay, normalisation, type checks
//! and warnings about keys that are unknown or have no effect.

use super::Config;
use super::dynamic::{deep_merge_patch, is_known_dynamic_key};
use super::env::{CONFIGURATION_VAR, apply_env, environment_overlay};
use super::pg_params::{controlled, split_listen};
use super::schema::{OTHER_DCS, walk_root};
use super::validate::ConfigIssue;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{origin}: invalid YAML at line {line}, column {column}: {message}")]
    Syntax {
        origin: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{origin} must contain a YAML mapping of settings")]
    NotAMapping { origin: String },
    #[error("no configuration: give a configuration file or set {CONFIGURATION_VAR}")]
    Missing,
    #[error("invalid configuration:\n{}", format_issues(.0))]
    Invalid(Vec<ConfigIssue>),
}

fn format_issues(issues: &[ConfigIssue]) -> String {
    issues
        .iter()
        .map(|i| format!("  {i}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl ConfigError {
    /// The error as issues for `validate_file` (a syntax error becomes one issue).
    pub fn into_issues(self) -> Vec<ConfigIssue> {
        match self {
            ConfigError::Invalid(issues) => issues,
            other => vec![ConfigIssue {
                path: String::new(),
                message: other.to_string(),
            }],
        }
    }
}

/// A loaded configuration and what the operator should hear about it.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<String>,
}

/// The `PATRONI_*` variables of this process, for `load`.
pub fn process_env() -> BTreeMap<String, String> {
    std::env::vars()
        .filter(|(k, _)| k.starts_with("PATRONI"))
        .collect()
}

/// Loads `path` (a file or a directory of `.yml`/`.yaml` files) with the overlay from `env`.
/// Without a path, `PATRONI_CONFIGURATION` from `env` is the whole configuration (no other
/// variable applies then, as upstream); failing that, the variables alone are.
/// Type problems are fatal here; `validate_file` reports them together with the rest.
pub fn load(path: Option<&Path>, env: &BTreeMap<String, String>) -> Result<Loaded, ConfigError> {
    let (loaded, issues) = load_lenient(path, env)?;
    if issues.is_empty() {
        Ok(loaded)
    } else {
        Err(ConfigError::Invalid(issues))
    }
}

/// Loads YAML text without any environment overlay (deterministic; for tests and tools).
pub fn load_str(yaml: &str) -> Result<Config, ConfigError> {
    let raw = parse_yaml(yaml, "configuration")?;
    finish(raw).and_then(|(l, issues)| {
        if issues.is_empty() {
            Ok(l.config)
        } else {
            Err(ConfigError::Invalid(issues))
        }
    })
}

/// Loads a file with the overlay from this process's `PATRONI_*` variables.
pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
    load(Some(path), &process_env()).map(|l| l.config)
}

/// Like `load`, but type problems are returned beside a best-effort configuration (the bad
/// values replaced by defaults) so that validation can report everything at once.
pub fn load_lenient(
    path: Option<&Path>,
    env: &BTreeMap<String, String>,
) -> Result<(Loaded, Vec<ConfigIssue>), ConfigError> {
    let raw = match path {
        Some(p) => apply_env(read_path(p)?, env),
        None => match env.get(CONFIGURATION_VAR).filter(|s| !s.trim().is_empty()) {
            Some(text) => parse_yaml(text, CONFIGURATION_VAR)?,
            None => {
                let only_env = environment_overlay(env, &[]);
                if only_env.is_empty() {
                    return Err(ConfigError::Missing);
                }
                Value::Object(only_env)
            }
        },
    };
    finish(raw)
}

fn read_file(p: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
        path: p.display().to_string(),
        source,
    })
}

/// A file, or every `.yml`/`.yaml` file of a directory merged in name order (later wins).
fn read_path(p: &Path) -> Result<Value, ConfigError> {
    if !p.is_dir() {
        return parse_yaml(&read_file(p)?, &p.display().to_string());
    }
    let entries = std::fs::read_dir(p).map_err(|source| ConfigError::Read {
        path: p.display().to_string(),
        source,
    })?;
    let mut files: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|f| f.is_file() && f.extension().is_some_and(|x| x == "yml" || x == "yaml"))
        .collect();
    files.sort();
    let mut merged = Map::new();
    for f in files {
        if let Value::Object(m) = parse_yaml(&read_file(&f)?, &f.display().to_string())? {
            deep_merge_patch(&mut merged, &m);
        }
    }
    Ok(Value::Object(merged))
}

fn parse_yaml(text: &str, origin: &str) -> Result<Value, ConfigError> {
    let v: Value = serde_yaml_ng::from_str(text).map_err(|e| {
        let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
        ConfigError::Syntax {
            origin: origin.to_string(),
            line,
            column,
            message: e.to_string(),
        }
    })?;
    match v {
        Value::Object(_) => Ok(v),
        Value::Null => Ok(Value::Object(Map::new())),
        _ => Err(ConfigError::NotAMapping {
            origin: origin.to_string(),
        }),
    }
}

/// Normalises, type-checks and deserializes a raw document.
fn finish(raw: Value) -> Result<(Loaded, Vec<ConfigIssue>), ConfigError> {
    let Value::Object(mut map) = raw else {
        return Err(ConfigError::NotAMapping {
            origin: "configuration".into(),
        });
    };
    let mut warnings = Vec::new();
    let known = also_known(&map);
    let report = walk_root(&mut map, &known);
    let mut issues = report.issues;
    warnings.extend(report.warnings);
    normalise(&mut map, &mut warnings);
    dedupe_post_bootstrap(&mut map, &mut issues);
    warnings.extend(ineffective_settings(&map));
    let config: Config = serde_json::from_value(Value::Object(map)).map_err(|e| {
        ConfigError::Invalid(vec![ConfigIssue {
            path: String::new(),
            message: format!("cannot be read: {e}"),
        }])
    })?;
    Ok((Loaded { config, warnings }, issues))
}

/// Keys that are legal beyond the fixed schema: custom replica methods and bootstrap method
/// sections, and dynamic settings written at the top level.
fn also_known(map: &Map<String, Value>) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    let methods = map
        .get("postgresql")
        .and_then(|p| p.get("create_replica_methods"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    out.insert("postgresql".to_string(), methods);
    if let Some(m) = map
        .get("bootstrap")
        .and_then(|b| b.get("method"))
        .and_then(Value::as_str)
    {
        out.insert("bootstrap".to_string(), vec![m.to_string()]);
    }
    let top: Vec<String> = map
        .keys()
        .filter(|k| is_known_dynamic_key(k) && k.as_str() != "postgresql")
        .cloned()
        .collect();
    out.insert(String::new(), top);
    out
}

fn section_mut<'a>(
    map: &'a mut Map<String, Value>,
    key: &str,
) -> Option<&'a mut Map<String, Value>> {
    map.get_mut(key).and_then(Value::as_object_mut)
}

/// `hosts` strings become lists, the namespace gets its slashes, and connect addresses
/// default the way upstream's runtime does.
fn normalise(map: &mut Map<String, Value>, warnings: &mut Vec<String>) {
    for dcs in ["etcd3", "etcd", "zookeeper", "exhibitor"] {
        if let Some(s) = section_mut(map, dcs)
            && let Some(Value::String(h)) = s.get("hosts")
        {
            let list: Vec<Value> = h
                .split(',')
                .map(|x| x.trim().trim_matches(['\'', '"']))
                .filter(|x| !x.is_empty())
                .map(Value::from)
                .collect();
            s.insert("hosts".into(), Value::Array(list));
        }
    }
    if let Some(Value::String(ns)) = map.get("namespace") {
        let trimmed = ns.trim_matches('/');
        let parts: Vec<&str> = trimmed.split('/').filter(|p| !p.is_empty()).collect();
        let ns = if parts.is_empty() {
            "/service/".to_string()
        } else {
            format!("/{}/", parts.join("/"))
        };
        map.insert("namespace".into(), Value::from(ns));
    }
    default_connect_address(map, "restapi", warnings);
    default_connect_address(map, "postgresql", warnings);
}

/// Without `connect_address`, upstream connects to the listen address; we fill it in unless
/// that address is a wildcard (then validation asks for it).
fn default_connect_address(map: &mut Map<String, Value>, sect: &str, warnings: &mut Vec<String>) {
    let Some(s) = section_mut(map, sect) else {
        return;
    };
    if s.get("connect_address")
        .and_then(Value::as_str)
        .is_some_and(|c| !c.is_empty())
    {
        return;
    }
    let Some(listen) = s.get("listen").and_then(Value::as_str) else {
        return;
    };
    let (hosts, port) = split_listen(listen);
    let host = hosts.split(',').next().unwrap_or("").trim().to_string();
    if host.is_empty() || ["0.0.0.0", "*", "::"].contains(&host.as_str()) {
        return;
    }
    let addr = format!("{host}:{port}");
    warnings.push(format!(
        "{sect}.connect_address is not set; using {addr} from {sect}.listen"
    ));
    s.insert("connect_address".into(), Value::from(addr));
}

/// `post_init` is the old name of `post_bootstrap`; both at once cannot be honoured.
fn dedupe_post_bootstrap(map: &mut Map<String, Value>, issues: &mut Vec<ConfigIssue>) {
    let Some(b) = section_mut(map, "bootstrap") else {
        return;
    };
    if b.contains_key("post_bootstrap") && b.remove("post_init").is_some() {
        issues.push(ConfigIssue {
            path: "bootstrap.post_init".into(),
            message: "give either post_bootstrap or post_init (its old name), not both".into(),
        });
    }
}

/// Settings that are legal but that Patroni ignores where they are written.
fn ineffective_settings(map: &Map<String, Value>) -> Vec<String> {
    let mut w = Vec::new();
    for k in map
        .keys()
        .filter(|k| is_known_dynamic_key(k) && k.as_str() != "postgresql")
    {
        w.push(format!(
            "{k} at the top level of the local configuration has no effect: it is read from the \
             dynamic configuration (bootstrap.dcs when the cluster is created, then patronictl edit-config)"
        ));
    }
    for k in OTHER_DCS.iter().filter(|k| map.contains_key(**k)) {
        w.push(format!(
            "{k}: this DCS is not supported yet; the section is ignored"
        ));
    }
    if map.contains_key("etcd") && map.contains_key("etcd3") {
        w.push("etcd: ignored because etcd3 is configured".into());
    }
    if let Some(pg) = map.get("postgresql").and_then(Value::as_object) {
        if pg.contains_key("use_slots") {
            w.push("postgresql.use_slots has no effect locally: replication slots are enabled or disabled cluster-wide in the dynamic configuration".into());
        }
        if let Some(Value::Object(params)) = pg.get("parameters") {
            for name in params.keys().filter(|n| controlled(n).is_some()) {
                w.push(format!(
                    "postgresql.parameters.{name} is ignored in the local configuration: it must be the \
                     same on every member, set it in bootstrap.dcs or with patronictl edit-config"
                ));
            }
        }
    }
    if let Some(Value::Object(dcs)) = map.get("bootstrap").and_then(|b| b.get("dcs")) {
        for k in dcs.keys().filter(|k| !is_known_dynamic_key(k)) {
            w.push(format!("unknown key bootstrap.dcs.{k}, kept and ignored"));
        }
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lenient(yaml: &str) -> (Loaded, Vec<ConfigIssue>) {
        finish(parse_yaml(yaml, "test").unwrap()).unwrap()
    }

    #[test]
    fn type_errors_become_issues_and_defaults_apply() {
        let (l, issues) = lenient(
            "name: n\npostgresql:\n  pg_ctl_timeout: soon\n  use_pg_rewind: maybe\n  pg_hba: [a, {b: 1}]\n\
             restapi: 5\ntags:\n  nofailover: perhaps\n  custom: 1\n",
        );
        let mut paths: Vec<&str> = issues.iter().map(|i| i.path.as_str()).collect();
        paths.sort();
        assert_eq!(
            paths,
            [
                "postgresql.pg_ctl_timeout",
                "postgresql.pg_hba[1]",
                "postgresql.use_pg_rewind",
                "restapi",
                "tags.nofailover"
            ]
        );
        assert_eq!(l.config.postgresql.pg_ctl_timeout, 60);
        assert_eq!(l.config.postgresql.pg_hba, Some(vec!["a".to_string()]));
        assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    }

    #[test]
    fn unknown_keys_are_warned_with_paths() {
        let (l, issues) = lenient(
            "name: n\nfoo: 1\nttl: 30\npostgresql:\n  bar: 2\n  create_replica_methods: [wal_e]\n  wal_e: {command: x}\n\
             restapi:\n  authentication: {username: u, password: 1234, realm: r}\nbootstrap:\n  method: mine\n  mine: {command: y}\n  dcs: {zzz: 1}\n",
        );
        assert!(issues.is_empty(), "{issues:?}");
        let w = l.warnings.join("\n");
        for needle in [
            "unknown key foo, kept and ignored",
            "unknown key postgresql.bar, kept and ignored",
            "unknown key restapi.authentication.realm",
            "unknown key bootstrap.dcs.zzz",
            "ttl at the top level",
        ] {
            assert!(w.contains(needle), "{needle} not in {w}");
        }
        assert!(!w.contains("wal_e") && !w.contains("bootstrap.mine"), "{w}");
        assert_eq!(l.config.extra.get("foo"), Some(&Value::from(1)));
        assert_eq!(
            l.config.restapi.authentication.unwrap().password.as_deref(),
            Some("1234")
        );
    }

    #[test]
    fn normalisation_table() {
        let cases = [
            ("namespace: service", "/service/"),
            ("namespace: /a//b", "/a/b/"),
            ("namespace: /", "/service/"),
            ("scope: x", "/service/"),
        ];
        for (yaml, ns) in cases {
            assert_eq!(lenient(yaml).0.config.namespace, ns, "{yaml}");
        }
        let (l, _) = lenient(
            "etcd3: {hosts: \"a:1, 'b:2',\"}\nrestapi: {listen: 10.0.0.1:8008}\npostgresql: {listen: '0.0.0.0:5432'}",
        );
        assert_eq!(
            l.config.etcd3.unwrap().hosts,
            Some(serde_json::json!(["a:1", "b:2"]))
        );
        assert_eq!(l.config.restapi.connect_address, "10.0.0.1:8008");
        assert_eq!(l.config.postgresql.connect_address, "");
    }

    #[test]
    fn syntax_error_has_line_and_column() {
        let e = parse_yaml("a: 1\nb: [\n", "f.yml").unwrap_err();
        match e {
            ConfigError::Syntax { line, column, .. } => {
                assert!(line >= 2 && column >= 1, "{line}:{column}")
            }
            other => panic!("{other}"),
        }
        assert!(matches!(
            parse_yaml("- a", "f"),
            Err(ConfigError::NotAMapping { .. })
        ));
    }

    #[test]
    fn both_post_bootstrap_names_is_an_issue() {
        let (l, issues) = lenient("bootstrap: {post_init: a, post_bootstrap: b}");
        assert_eq!(issues[0].path, "bootstrap.post_init");
        assert_eq!(l.config.bootstrap.post_bootstrap.as_deref(), Some("b"));
        let (l, issues) = lenient("bootstrap: {post_init: a}");
        assert!(issues.is_empty());
        assert_eq!(l.config.bootstrap.post_bootstrap.as_deref(), Some("a"));
    }
}
