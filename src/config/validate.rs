//! `--validate-config`: every problem in a configuration at once, each with its YAML path.

use super::dynamic_check::validate_dynamic_map;
use super::load::{Loaded, load_lenient};
use super::{Config, Credentials, Etcd3Config, ExhibitorConfig, ZooKeeperConfig};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::Path;

/// One problem, at a YAML path such as `postgresql.authentication.superuser.username`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// `a.b` (or `b` at the root).
pub fn join_path(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

/// A value as a DBA would read it in a message: `"ten"`, `3.5`, `a list`.
pub fn describe_value(v: &Value) -> String {
    match v {
        Value::Null => "nothing".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("{s:?}"),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "a mapping".into(),
    }
}

/// Binaries Patroni runs from `bin_dir` (pg_rewind is only needed with use_pg_rewind).
const REQUIRED_BINARIES: &[&str] = &[
    "pg_ctl",
    "initdb",
    "pg_controldata",
    "pg_basebackup",
    "postgres",
    "pg_isready",
];
/// initdb options Patroni sets itself.
const INITDB_NOT_ALLOWED: &[&str] = &["pgdata", "nosync", "pwfile", "sync-only", "version"];

struct Issues(Vec<ConfigIssue>);

impl Issues {
    fn add(&mut self, path: &str, message: impl Into<String>) {
        self.0.push(ConfigIssue {
            path: path.to_string(),
            message: message.into(),
        });
    }
}

/// Every semantic problem in `cfg` (type problems are found while loading).
pub fn validate(cfg: &Config) -> Vec<ConfigIssue> {
    let mut out = Issues(Vec::new());
    if cfg.name.trim().is_empty() {
        out.add(
            "name",
            "is required: a name for this member, unique in the cluster",
        );
    }
    if cfg.scope.trim().is_empty() {
        out.add(
            "scope",
            "is required: the cluster name, the same on every member",
        );
    }
    check_restapi(cfg, &mut out);
    check_postgresql(cfg, &mut out);
    check_dcs(cfg, &mut out);
    check_bootstrap(cfg, &mut out);
    out.0.extend(super::methods_check::check_methods(cfg));
    let local_dynamic: Map<String, Value> = cfg
        .extra
        .iter()
        .filter(|(k, _)| super::dynamic::is_known_dynamic_key(k) && k.as_str() != "postgresql")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    out.0.extend(validate_dynamic_map(&local_dynamic, ""));
    check_watchdog(&cfg.watchdog, &mut out);
    out.0
}

/// `host:port` with a numeric port; returns the host. `multi` allows `h1,h2:port`.
fn host_port(s: &str) -> Result<&str, String> {
    let Some((host, port)) = s.trim().rsplit_once(':') else {
        return Err(format!("must be host:port, got {s:?}"));
    };
    match port.parse::<u32>() {
        Ok(p) if (1..=65535).contains(&p) && !host.is_empty() => Ok(host),
        _ => Err(format!(
            "must be host:port with a port between 1 and 65535, got {s:?}"
        )),
    }
}

fn check_listen(value: &str, path: &str, out: &mut Issues) {
    if value.trim().is_empty() {
        out.add(
            path,
            "is required: the address:port to listen on, e.g. 0.0.0.0:5432",
        );
    } else if let Err(e) = host_port(value) {
        out.add(path, e);
    }
}

fn check_connect(value: &str, path: &str, out: &mut Issues) {
    if value.trim().is_empty() {
        out.add(
            path,
            "is required: the address:port other members and clients connect to",
        );
        return;
    }
    match host_port(value) {
        Err(e) => out.add(path, e),
        Ok(host) if ["0.0.0.0", "*", "::", "[::]"].contains(&host) => out.add(
            path,
            format!(
                "{value:?} is a wildcard address nobody can connect to; give this host's address"
            ),
        ),
        Ok(_) => {}
    }
}

fn check_restapi(cfg: &Config, out: &mut Issues) {
    check_listen(&cfg.restapi.listen, "restapi.listen", out);
    check_connect(&cfg.restapi.connect_address, "restapi.connect_address", out);
    if let Some(v) = &cfg.restapi.verify_client
        && !["none", "optional", "required"].contains(&v.as_str())
    {
        out.add(
            "restapi.verify_client",
            format!("must be none, optional or required, got {v:?}"),
        );
    }
    if let Some(a) = &cfg.restapi.authentication {
        check_credentials(a, "restapi.authentication", true, out);
    }
}

fn check_credentials(c: &Credentials, path: &str, need_password: bool, out: &mut Issues) {
    if c.username.trim().is_empty() {
        out.add(&format!("{path}.username"), "is required");
    }
    if need_password && c.password.is_none() {
        out.add(&format!("{path}.password"), "is required");
    }
}

fn check_postgresql(cfg: &Config, out: &mut Issues) {
    let pg = &cfg.postgresql;
    if pg.listen.trim().is_empty() {
        check_listen("", "postgresql.listen", out);
    } else if let Err(e) = host_port(&pg.listen) {
        out.add("postgresql.listen", e);
    }
    check_connect(&pg.connect_address, "postgresql.connect_address", out);
    if let Some(p) = &pg.proxy_address {
        check_connect(p, "postgresql.proxy_address", out);
    }
    if pg.data_dir.as_os_str().is_empty() {
        out.add(
            "postgresql.data_dir",
            "is required: where the PostgreSQL data directory is (or will be created)",
        );
    } else if pg.data_dir.exists() && !pg.data_dir.is_dir() {
        out.add(
            "postgresql.data_dir",
            format!("{} exists but is not a directory", pg.data_dir.display()),
        );
    }
    let auth = &pg.authentication;
    check_credentials(
        &auth.superuser,
        "postgresql.authentication.superuser",
        false,
        out,
    );
    check_credentials(
        &auth.replication,
        "postgresql.authentication.replication",
        false,
        out,
    );
    if let Some(r) = &auth.rewind {
        check_credentials(r, "postgresql.authentication.rewind", false, out);
    }
    if pg.pg_ctl_timeout == 0 {
        out.add("postgresql.pg_ctl_timeout", "must be at least 1 second");
    }
    check_bin_dir(cfg, out);
}

/// The binary name to look for, honouring `postgresql.bin_name` overrides.
fn binary_name(cfg: &Config, bin: &str) -> String {
    cfg.postgresql
        .bin_name
        .as_ref()
        .and_then(|m| m.get(bin))
        .and_then(Value::as_str)
        .unwrap_or(bin)
        .to_string()
}

fn check_bin_dir(cfg: &Config, out: &mut Issues) {
    use std::os::unix::fs::PermissionsExt;
    let Some(dir) = cfg
        .postgresql
        .bin_dir
        .as_ref()
        .filter(|d| !d.as_os_str().is_empty())
    else {
        return; // the binaries are looked up in PATH
    };
    let path = "postgresql.bin_dir";
    if !dir.exists() {
        out.add(path, format!("directory {} does not exist", dir.display()));
        return;
    }
    if !dir.is_dir() {
        out.add(path, format!("{} is not a directory", dir.display()));
        return;
    }
    let mut wanted: Vec<&str> = REQUIRED_BINARIES.to_vec();
    if cfg.postgresql.use_pg_rewind == Some(true) {
        wanted.push("pg_rewind");
    }
    for bin in wanted {
        let name = binary_name(cfg, bin);
        let exe = dir.join(&name);
        let ok = std::fs::metadata(&exe)
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
        if !ok {
            out.add(
                path,
                format!("{} does not contain the executable {name}", dir.display()),
            );
        }
    }
}

fn check_etcd_section(e: &Etcd3Config, path: &str, out: &mut Issues) {
    let has_srv = e.extra.get("srv").is_some_and(|v| v.is_string());
    let has_proxy = e.extra.get("proxy").is_some_and(|v| v.is_string());
    if e.endpoints().is_empty() && !has_srv && !has_proxy {
        out.add(
            path,
            "needs one of host, hosts, url, proxy or srv to find the etcd cluster",
        );
    }
    if let Some(h) = &e.host
        && let Err(m) = host_port(h)
    {
        out.add(&format!("{path}.host"), m);
    }
    if let Some(Value::Array(hosts)) = &e.hosts {
        for (i, h) in hosts.iter().enumerate() {
            if let Some(Err(m)) = h
                .as_str()
                .map(|s| host_port(s.split("://").last().unwrap_or(s)))
            {
                out.add(&format!("{path}.hosts[{i}]"), m);
            }
        }
    }
    if let Some(p) = &e.protocol
        && p != "http"
        && p != "https"
    {
        out.add(
            &format!("{path}.protocol"),
            format!("must be http or https, got {p:?}"),
        );
    }
    if let Some(u) = &e.url
        && !(u.starts_with("http://") || u.starts_with("https://"))
    {
        out.add(
            &format!("{path}.url"),
            format!("must start with http:// or https://, got {u:?}"),
        );
    }
}

fn check_dcs(cfg: &Config, out: &mut Issues) {
    if let Some(e) = &cfg.etcd3 {
        check_etcd_section(e, "etcd3", out);
        return;
    }
    if let Some(c) = &cfg.consul {
        out.0.extend(c.issues("consul"));
        return;
    }
    if let Some(k) = &cfg.kubernetes {
        out.0.extend(k.issues("kubernetes"));
        return;
    }
    if let Some(e) = &cfg.etcd {
        check_etcd_section(e, "etcd", out);
        return;
    }
    if let Some(e) = &cfg.exhibitor {
        check_exhibitor_section(e, out);
        return;
    }
    if let Some(z) = &cfg.zookeeper {
        check_zookeeper_section(z, out);
        return;
    }
    let other: Vec<&str> = super::schema::OTHER_DCS
        .iter()
        .copied()
        .filter(|k| cfg.extra.contains_key(*k))
        .collect();
    if let Some(first) = other.first() {
        out.add(
            first,
            format!("{first} is not supported yet; configure an `etcd3:` section instead"),
        );
    } else {
        out.add(
            "etcd3",
            "no DCS is configured: add an `etcd3:` section with the etcd hosts",
        );
    }
}

fn check_zookeeper_section(z: &ZooKeeperConfig, out: &mut Issues) {
    let hosts = z.host_list();
    if hosts.is_empty() {
        out.add("zookeeper.hosts", "needs at least one ZooKeeper host:port");
    }
    for (i, h) in hosts.iter().enumerate() {
        if let Err(m) = host_port(h) {
            out.add(&format!("zookeeper.hosts[{i}]"), m);
        }
    }
    if z.use_ssl() {
        out.add(
            "zookeeper.use_ssl",
            "TLS connections to ZooKeeper are not supported by this build; \
             use a plaintext listener (or a TLS-terminating proxy)",
        );
    }
    for (scheme, cred) in z.auth_data.iter().flatten() {
        if !cred.is_string() {
            out.add(
                &format!("zookeeper.auth_data.{scheme}"),
                "must be a string credential (e.g. user:password for digest)",
            );
        }
    }
    for (principal, perms) in z.set_acls.iter().flatten() {
        if crate::dcs::zookeeper::parse_permissions(perms).is_none() {
            out.add(
                &format!("zookeeper.set_acls.{principal}"),
                "must be a list of CREATE, READ, WRITE, DELETE, ADMIN or ALL",
            );
        }
    }
}

fn check_exhibitor_section(e: &ExhibitorConfig, out: &mut Issues) {
    if e.host_list().is_empty() {
        out.add("exhibitor.hosts", "needs at least one Exhibitor host");
    }
    if e.port.is_none() {
        out.add("exhibitor.port", "the Exhibitor REST port is required");
    }
    if e.poll_interval == Some(0) {
        out.add("exhibitor.poll_interval", "must be at least 1 second");
    }
}

fn check_bootstrap(cfg: &Config, out: &mut Issues) {
    out.0
        .extend(validate_dynamic_map(&cfg.bootstrap.dcs, "bootstrap.dcs"));
    for (i, opt) in cfg.bootstrap.initdb.iter().enumerate() {
        let path = format!("bootstrap.initdb[{i}]");
        if let Err(m) = super::methods_check::check_tool_option(opt, INITDB_NOT_ALLOWED) {
            out.add(&path, m);
        }
    }
}

fn check_watchdog(w: &Map<String, Value>, out: &mut Issues) {
    if let Some(mode) = w.get("mode") {
        let ok = matches!(mode, Value::Bool(false))
            || mode
                .as_str()
                .is_some_and(|m| ["off", "automatic", "required"].contains(&m));
        if !ok {
            out.add(
                "watchdog.mode",
                format!(
                    "must be off, automatic or required, got {}",
                    describe_value(mode)
                ),
            );
        }
    }
}

/// Load + validate: `Ok` only when there is nothing to report. Invalid YAML is one issue
/// naming the line and column.
pub fn validate_file(
    path: &Path,
    env: &BTreeMap<String, String>,
) -> Result<Loaded, Vec<ConfigIssue>> {
    validate_file_or_env(Some(path), env)
}

/// Like `validate_file`, with `None` meaning "PATRONI_CONFIGURATION / environment only".
pub fn validate_file_or_env(
    path: Option<&Path>,
    env: &BTreeMap<String, String>,
) -> Result<Loaded, Vec<ConfigIssue>> {
    let (loaded, mut issues) = load_lenient(path, env).map_err(|e| e.into_issues())?;
    issues.extend(validate(&loaded.config));
    if issues.is_empty() {
        Ok(loaded)
    } else {
        Err(issues)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn good() -> Value {
        json!({
            "name": "n1", "scope": "s",
            "restapi": {"listen": "127.0.0.1:8008", "connect_address": "127.0.0.1:8008"},
            "etcd3": {"hosts": ["127.0.0.1:2379"]},
            "postgresql": {"listen": "127.0.0.1:5432", "connect_address": "127.0.0.1:5432", "data_dir": "/tmp/nonexistent-pgdata",
                "authentication": {"superuser": {"username": "postgres"}, "replication": {"username": "rep"}}}
        })
    }

    fn issues_after(patch: Value) -> Vec<String> {
        let mut v = good().as_object().cloned().unwrap();
        crate::config::deep_merge_patch(&mut v, patch.as_object().unwrap());
        let cfg: Config = serde_json::from_value(Value::Object(v)).unwrap();
        let mut p: Vec<String> = validate(&cfg).into_iter().map(|i| i.path).collect();
        p.sort();
        p
    }

    #[test]
    fn validate_table() {
        let cases: Vec<(Value, Vec<&str>)> = vec![
            (json!({}), vec![]),
            (json!({"name": "", "scope": " "}), vec!["name", "scope"]),
            (
                json!({"restapi": {"listen": "8008", "connect_address": "0.0.0.0:8008"}}),
                vec!["restapi.connect_address", "restapi.listen"],
            ),
            (
                json!({"restapi": {"authentication": {"username": "u"}}}),
                vec!["restapi.authentication.password"],
            ),
            (
                json!({"restapi": {"verify_client": "sometimes"}}),
                vec!["restapi.verify_client"],
            ),
            (
                json!({"postgresql": {"listen": "h:99999", "connect_address": "", "data_dir": ""}}),
                vec![
                    "postgresql.connect_address",
                    "postgresql.data_dir",
                    "postgresql.listen",
                ],
            ),
            (
                json!({"postgresql": {"authentication": {"superuser": {"username": ""}, "replication": null}}}),
                vec![
                    "postgresql.authentication.replication.username",
                    "postgresql.authentication.superuser.username",
                ],
            ),
            (
                json!({"postgresql": {"bin_dir": "/nonexistent/bin"}}),
                vec!["postgresql.bin_dir"],
            ),
            (
                json!({"postgresql": {"bin_dir": "/usr/lib/postgresql/15/bin"}}),
                vec![],
            ),
            (
                json!({"postgresql": {"bin_dir": "/usr/lib/postgresql/15/bin", "bin_name": {"pg_ctl": "nope"}}}),
                vec!["postgresql.bin_dir"],
            ),
            (json!({"etcd3": null}), vec!["etcd3"]),
            (json!({"etcd3": null, "etcd": {"host": "h:2379"}}), vec![]),
            (json!({"etcd3": null, "etcd": {"hosts": []}}), vec!["etcd"]),
            (
                json!({"etcd3": null, "zookeeper": {"hosts": ["a:2181", "b"]}}),
                vec![],
            ),
            (
                json!({"etcd3": null, "zookeeper": {"hosts": ["a:x"], "use_ssl": true,
                    "set_acls": {"CN=p": ["READ", "FLY"]}, "auth_data": {"digest": 1}}}),
                vec![
                    "zookeeper.auth_data.digest",
                    "zookeeper.hosts[0]",
                    "zookeeper.set_acls.CN=p",
                    "zookeeper.use_ssl",
                ],
            ),
            (
                json!({"etcd3": null, "exhibitor": {"hosts": "e1,e2", "port": 8181}}),
                vec![],
            ),
            (
                json!({"etcd3": null, "exhibitor": {"hosts": [], "poll_interval": 0}}),
                vec![
                    "exhibitor.hosts",
                    "exhibitor.poll_interval",
                    "exhibitor.port",
                ],
            ),
            (json!({"etcd3": null, "consul": {"host": "h:8500"}}), vec![]),
            (
                json!({"etcd3": null, "consul": {"host": "h:0", "consistency": "x"}}),
                vec!["consul.consistency", "consul.host"],
            ),
            (
                json!({"etcd3": null, "kubernetes": {"labels": {"app": "pg"}}}),
                vec![],
            ),
            (
                json!({"etcd3": null, "kubernetes": {"use_endpoints": true, "ports": [{"port": 0}]}}),
                vec!["kubernetes.pod_ip", "kubernetes.ports"],
            ),
            (
                json!({"etcd3": {"hosts": ["nohost"], "protocol": "ftp", "url": "h:1"}}),
                vec!["etcd3.hosts[0]", "etcd3.protocol", "etcd3.url"],
            ),
            (
                json!({"etcd3": {"hosts": null, "srv": "example.org"}}),
                vec![],
            ),
            (json!({"etcd": {"host": "h:2379"}}), vec![]),
            (
                json!({"bootstrap": {"dcs": {"loop_wait": "ten", "ttl": 5}}}),
                vec!["bootstrap.dcs.loop_wait", "bootstrap.dcs.ttl"],
            ),
            (
                json!({"bootstrap": {"initdb": ["data-checksums", {"encoding": "UTF8"}, {"a": 1, "b": 2}, ["x"], "--nosync", "pgdata", {"locale": {"x": 1}}]}}),
                vec![
                    "bootstrap.initdb[2]",
                    "bootstrap.initdb[3]",
                    "bootstrap.initdb[4]",
                    "bootstrap.initdb[5]",
                    "bootstrap.initdb[6]",
                ],
            ),
            (json!({"loop_wait": "ten"}), vec!["loop_wait"]),
            (
                json!({"watchdog": {"mode": "sometimes"}}),
                vec!["watchdog.mode"],
            ),
            (json!({"watchdog": {"mode": false}}), vec![]),
        ];
        for (patch, want) in cases {
            assert_eq!(issues_after(patch.clone()), want, "{patch}");
        }
    }

    #[test]
    fn messages_read_well() {
        let mut v = good();
        v["bootstrap"] = json!({"dcs": {"loop_wait": "ten"}});
        let cfg: Config = serde_json::from_value(v).unwrap();
        let msgs: Vec<String> = validate(&cfg).iter().map(ToString::to_string).collect();
        assert_eq!(
            msgs,
            ["bootstrap.dcs.loop_wait: must be an integer number of seconds, got \"ten\""]
        );
        assert_eq!(
            ConfigIssue {
                path: String::new(),
                message: "m".into()
            }
            .to_string(),
            "m"
        );
    }
}
