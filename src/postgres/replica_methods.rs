//! Creating a replica the way upstream's `create_replica` does: the methods listed in
//! `postgresql.create_replica_methods` are tried in order until one succeeds. `basebackup`
//! is the built-in pg_basebackup; any other name runs the `command` of its section
//! (`postgresql.<name>`) with the section's other keys as `--key=value`, followed by
//! `--scope --role=replica --datadir --connstring` unless `no_params` is set.

use std::path::PathBuf;

use serde_json::Value;

use super::error::{PgError, Result};
use super::process::{command_path, run};
use super::settings::dir_empty;
use super::types::{REMOTE_PRIMARY, UpstreamConn};
use super::{Postgres, conf, files};
use crate::config::PostgresqlConfig;

/// The built-in method's name.
pub const BASEBACKUP: &str = "basebackup";

/// pg_basebackup options Patroni sets itself or that would not give a usable replica
/// (upstream's list; refused when the configuration is validated).
pub const BASEBACKUP_NOT_ALLOWED: &[&str] = &[
    "pgdata",
    "format",
    "wal-method",
    "xlog-method",
    "gzip",
    "version",
    "compress",
    "dbname",
    "host",
    "port",
    "username",
    "password",
];

/// Keys of a custom method's section that steer us and are not passed with `no_params`.
const SPECIAL_KEYS: &[&str] = &["no_params", "no_master", "no_leader", "keep_data"];

#[derive(Debug, Clone, PartialEq)]
pub enum ReplicaMethod {
    /// pg_basebackup with the `postgresql.basebackup` options.
    Basebackup,
    Custom(CustomMethod),
}

/// A user-defined replica creation method.
#[derive(Debug, Clone, PartialEq)]
pub struct CustomMethod {
    pub name: String,
    /// The command line to run (the method name when the section has no `command`).
    pub command: String,
    /// The section's keys other than `command`, as upstream formats them.
    pub options: Vec<(String, String)>,
    /// Do not empty the data directory before running the command.
    pub keep_data: bool,
    /// May run when there is no member to clone from (restore from a backup).
    pub no_leader: bool,
    /// Do not add `--scope --role --datadir --connstring` (nor pass the special keys).
    pub no_params: bool,
}

impl ReplicaMethod {
    pub fn name(&self) -> &str {
        match self {
            ReplicaMethod::Basebackup => BASEBACKUP,
            ReplicaMethod::Custom(c) => &c.name,
        }
    }

    /// Upstream's `replica_method_can_work_without_replication_connection`.
    pub fn works_without_leader(&self) -> bool {
        matches!(self, ReplicaMethod::Custom(c) if c.no_leader)
    }
}

/// The methods to try, in order: `names` (a standby cluster's own list) or the local
/// `create_replica_methods`; `basebackup` alone when neither lists any.
pub fn plan(local: &PostgresqlConfig, names: Option<&[String]>) -> Vec<ReplicaMethod> {
    let names: Vec<String> = names
        .filter(|n| !n.is_empty())
        .map(<[String]>::to_vec)
        .or_else(|| local.create_replica_methods.clone())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| vec![BASEBACKUP.to_string()]);
    names
        .into_iter()
        .map(|name| {
            if name == BASEBACKUP {
                ReplicaMethod::Basebackup
            } else {
                let section = local.extra.get(&name);
                ReplicaMethod::Custom(custom(name, section))
            }
        })
        .collect()
}

/// Any method of the plan can run without a member to clone from.
pub fn any_works_without_leader(local: &PostgresqlConfig, names: Option<&[String]>) -> bool {
    plan(local, names)
        .iter()
        .any(ReplicaMethod::works_without_leader)
}

fn custom(name: String, section: Option<&Value>) -> CustomMethod {
    let empty = serde_json::Map::new();
    let section = section.and_then(Value::as_object).unwrap_or(&empty);
    let flag = |k: &str| section.get(k).is_some_and(truthy);
    let command = section
        .get("command")
        .map(py_str)
        .unwrap_or_else(|| name.clone());
    CustomMethod {
        command,
        options: section
            .iter()
            .filter(|(k, _)| k.as_str() != "command")
            .map(|(k, v)| (k.clone(), py_str(v)))
            .collect(),
        keep_data: flag("keep_data"),
        no_leader: flag("no_leader") || flag("no_master"),
        no_params: flag("no_params"),
        name,
    }
}

impl CustomMethod {
    /// The full argument vector: the split command, the options, then (without
    /// `no_params`) the cluster facts; a user key of the same name is overridden in place.
    pub fn argv(&self, scope: &str, datadir: &str, connstring: &str) -> Vec<String> {
        let mut opts: Vec<(String, String)> = self.options.clone();
        if self.no_params {
            opts.retain(|(k, _)| !SPECIAL_KEYS.contains(&k.as_str()));
        } else {
            for (k, v) in [
                ("scope", scope),
                ("role", "replica"),
                ("datadir", datadir),
                ("connstring", connstring),
            ] {
                match opts.iter_mut().find(|(name, _)| name == k) {
                    Some(slot) => slot.1 = v.to_string(),
                    None => opts.push((k.to_string(), v.to_string())),
                }
            }
        }
        let mut argv = conf::split_command(&self.command);
        argv.extend(opts.into_iter().map(|(k, v)| format!("--{k}={v}")));
        argv
    }
}

/// A relative path is relative to our working directory, not the child's (which may be
/// `/` when it runs as another user); a bare name is looked up in PATH.
pub fn program_path(program: &str) -> PathBuf {
    if program.contains('/') {
        std::path::absolute(program).unwrap_or_else(|_| program.into())
    } else {
        program.into()
    }
}

/// YAML truthiness of a flag (`1`, `true`, `"on"`...).
fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => crate::config::pg_params::parse_bool(v).unwrap_or(!s.is_empty()),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// A value as upstream puts it on the command line (Python's `str()`: `True`, `1`, text).
fn py_str(v: &Value) -> String {
    match v {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl Postgres {
    /// Create the replica's data directory with the configured methods, in order; `from`
    /// is the member to clone from (None: only `no_leader` methods can run). Returns the
    /// name of the method that worked; the last failure otherwise.
    pub async fn create_replica(&self, from: Option<&UpstreamConn>) -> Result<String> {
        let s = self.settings();
        let remote = from.is_some_and(|f| f.member == REMOTE_PRIMARY);
        let names = s
            .standby_cluster
            .as_ref()
            .filter(|_| remote)
            .map(|sc| sc.create_replica_methods.clone());
        let from = from.filter(|f| !f.host.is_empty());
        let mut methods = plan(&s.local, names.as_deref());
        if from.is_none() {
            methods.retain(ReplicaMethod::works_without_leader);
        }
        let mut last = PgError::BadOption(
            "no replica creation method works without a member to clone from".into(),
        );
        for m in methods {
            let r = match (&m, from) {
                (ReplicaMethod::Basebackup, Some(f)) => self.basebackup_into_clean(f).await,
                (ReplicaMethod::Custom(c), _) => self.run_custom_method(c, from).await,
                (ReplicaMethod::Basebackup, None) => continue,
            };
            match r {
                Ok(()) => {
                    tracing::info!("replica has been created using {}", m.name());
                    return Ok(m.name().to_string());
                }
                Err(e) => {
                    tracing::error!("error creating replica using method {}: {e}", m.name());
                    last = e;
                }
            }
        }
        Err(last)
    }

    async fn basebackup_into_clean(&self, from: &UpstreamConn) -> Result<()> {
        if !self.data_dir_empty() {
            self.remove_data_dir().await?;
        }
        self.basebackup(from).await
    }

    async fn run_custom_method(&self, m: &CustomMethod, from: Option<&UpstreamConn>) -> Result<()> {
        let s = self.settings();
        let dd = s.data_dir();
        if !dir_empty(&dd) {
            if m.keep_data {
                tracing::info!("leaving data directory uncleaned (keep_data of {})", m.name);
            } else {
                self.remove_data_dir().await?;
            }
        }
        files::ensure_dir(&dd, s.run_as)?;
        files::write_pgpass(&s)?;
        let connstring = from
            .map(|f| {
                let port = f.port.to_string();
                conf::format_conninfo(&[
                    ("dbname", "postgres"),
                    ("user", &s.replication().username),
                    ("host", &f.host),
                    ("port", &port),
                ])
            })
            .unwrap_or_default();
        let argv = m.argv(&s.scope, &dd.to_string_lossy(), &connstring);
        let Some((program, args)) = argv.split_first() else {
            return Err(PgError::BadOption(format!(
                "replica method {} has an empty command",
                m.name
            )));
        };
        tracing::info!("running replica method {}: {}", m.name, argv.join(" "));
        let mut cmd = command_path(&s, &program_path(program));
        cmd.args(args).env("PGPASSFILE", s.pgpass_path());
        run(cmd, &m.name, super::lifecycle::LONG_JOB)
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn local(v: Value) -> PostgresqlConfig {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn default_plan_is_basebackup() {
        assert_eq!(
            plan(&local(json!({})), None),
            vec![ReplicaMethod::Basebackup]
        );
        assert_eq!(
            plan(&local(json!({"create_replica_methods": []})), None),
            vec![ReplicaMethod::Basebackup]
        );
    }

    #[test]
    fn custom_methods_get_options_then_cluster_facts() {
        let cfg = local(json!({
            "create_replica_methods": ["wal_e", "basebackup"],
            "wal_e": {"command": "restore 'a b'", "envdir": "/e", "no_leader": 1, "use_iam": true},
        }));
        let p = plan(&cfg, None);
        assert_eq!(p[1], ReplicaMethod::Basebackup);
        let ReplicaMethod::Custom(m) = &p[0] else {
            panic!("custom expected")
        };
        assert!(m.no_leader && !m.keep_data && !m.no_params);
        assert!(p[0].works_without_leader() && !p[1].works_without_leader());
        assert_eq!(
            m.argv("sc", "/d", "host=h port=1"),
            [
                "restore",
                "a b",
                "--envdir=/e",
                "--no_leader=1",
                "--use_iam=True",
                "--scope=sc",
                "--role=replica",
                "--datadir=/d",
                "--connstring=host=h port=1",
            ]
        );
    }

    #[test]
    fn no_params_passes_only_the_user_options() {
        let cfg = local(json!({
            "create_replica_methods": ["pgbackrest"],
            "pgbackrest": {"command": "pgbackrest --delta restore", "keep_data": true,
                           "no_params": "on", "stanza": "main"},
        }));
        let ReplicaMethod::Custom(m) = &plan(&cfg, None)[0] else {
            panic!("custom expected")
        };
        assert!(m.keep_data && m.no_params && !m.no_leader);
        assert_eq!(
            m.argv("sc", "/d", ""),
            ["pgbackrest", "--delta", "restore", "--stanza=main"]
        );
    }

    #[test]
    fn a_method_without_section_runs_its_name_and_a_standby_cluster_list_wins() {
        let cfg = local(json!({"create_replica_methods": ["my_clone"]}));
        let ReplicaMethod::Custom(m) = &plan(&cfg, None)[0] else {
            panic!("custom expected")
        };
        assert_eq!(m.argv("s", "/d", "")[0], "my_clone");
        let remote = vec!["basebackup".to_string()];
        assert_eq!(plan(&cfg, Some(&remote)), vec![ReplicaMethod::Basebackup]);
        assert!(any_works_without_leader(
            &local(json!({"create_replica_methods": ["x"], "x": {"no_master": "true"}})),
            None
        ));
    }
}
