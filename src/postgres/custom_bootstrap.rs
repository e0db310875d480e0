//! Custom bootstrap (`bootstrap.method: <name>` with `bootstrap.<name>.command`): the
//! command fills the data directory (e.g. restores a backup), then PostgreSQL starts with
//! the method's `recovery_conf` (recovery settings + recovery.signal), recovers, promotes
//! itself, and only then becomes the new cluster's primary, as upstream does.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::error::{PgError, Result};
use super::process::{command_path, log_tail, run};
use super::settings::{PgSettings, dir_empty};
use super::types::ConfigRole;
use super::{Postgres, conf, files};
use crate::config::BootstrapConfig;

/// Keys of the method's section that are ours, not the command's.
const RESERVED: &[&str] = &[
    "command",
    "no_params",
    "keep_existing_recovery_conf",
    "recovery_conf",
    "scope",
    "datadir",
];

/// A custom bootstrap method, read from `bootstrap`.
#[derive(Debug, Clone, PartialEq)]
pub struct CustomBootstrap {
    pub method: String,
    pub command: String,
    /// The section's other keys, passed as `--key=value`.
    pub options: Vec<(String, String)>,
    pub no_params: bool,
    pub recovery: RecoveryConf,
}

/// What the recovery configuration of the restored data directory becomes.
#[derive(Debug, Clone, PartialEq)]
pub enum RecoveryConf {
    /// `recovery_conf`: these settings, with recovery.signal (standby.signal when
    /// `standby_mode` is on).
    Write(BTreeMap<String, String>),
    /// `keep_existing_recovery_conf`: signal files and settings the restore left stay.
    Keep,
    /// Neither: no recovery at all, the restored data starts as a primary.
    Remove,
}

/// How the files are written while a custom bootstrap's data recovers.
#[derive(Debug, Clone, PartialEq)]
pub struct BootstrapRecovery {
    pub recovery: RecoveryConf,
    /// pg_hba.conf lines (a trust line for our own connection first: the restored
    /// cluster's superuser password is not known until we set it).
    pub pg_hba: Vec<String>,
}

/// The custom method configured in `bootstrap`, if any (upstream: `method` is not
/// `initdb` and its section has a `command`; otherwise initdb runs).
pub fn from_config(b: &BootstrapConfig) -> Option<CustomBootstrap> {
    let method = b.method.as_deref().filter(|m| *m != "initdb")?;
    let section = b.extra.get(method)?.as_object()?;
    let command = section.get("command")?.as_str()?.to_string();
    let flag = |k: &str| {
        section
            .get(k)
            .is_some_and(|v| crate::config::pg_params::parse_bool(v).unwrap_or(false))
    };
    let recovery = match section.get("recovery_conf").and_then(Value::as_object) {
        Some(m) => RecoveryConf::Write(
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), scalar(v)?)))
                .collect(),
        ),
        None if flag("keep_existing_recovery_conf") => RecoveryConf::Keep,
        None => RecoveryConf::Remove,
    };
    Some(CustomBootstrap {
        method: method.to_string(),
        command,
        options: section
            .iter()
            .filter(|(k, _)| !RESERVED.contains(&k.as_str()))
            .filter_map(|(k, v)| Some((k.clone(), scalar(v)?)))
            .collect(),
        no_params: flag("no_params"),
        recovery,
    })
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Bool(true) => Some("True".into()),
        Value::Bool(false) => Some("False".into()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

impl CustomBootstrap {
    /// The command, `--scope --datadir` (unless `no_params`), then the options.
    pub fn argv(&self, scope: &str, datadir: &str) -> Vec<String> {
        let mut argv = conf::split_command(&self.command);
        if !self.no_params {
            argv.push(format!("--scope={scope}"));
            argv.push(format!("--datadir={datadir}"));
        }
        argv.extend(self.options.iter().map(|(k, v)| format!("--{k}={v}")));
        argv
    }
}

/// A trust line for the connection we make to our own server.
pub fn trust_line(s: &PgSettings) -> String {
    let t = s.local_target();
    let user = if t
        .user
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        t.user.clone()
    } else {
        format!("\"{}\"", t.user.replace('"', "\"\""))
    };
    if t.host.starts_with('/') {
        format!("local all {user} trust")
    } else if let Ok(ip) = t.host.parse::<std::net::IpAddr>() {
        let bits = if ip.is_ipv4() { 32 } else { 128 };
        format!("host all {user} {ip}/{bits} trust")
    } else {
        format!("host all {user} {} trust", t.host)
    }
}

/// Recovery settings as they go into postgresql.conf (standby_mode only picks the signal).
pub fn render_recovery_block(settings: &BTreeMap<String, String>) -> String {
    let mut out = String::from("\n# recovery_conf of the custom bootstrap method\n");
    for (k, v) in settings
        .iter()
        .filter(|(k, _)| k.as_str() != "standby_mode")
    {
        out.push_str(&format!("{k} = '{}'\n", conf::escape_conf_value(v)));
    }
    out
}

/// Does `standby_mode` ask for a standby (standby.signal) rather than targeted recovery?
pub fn wants_standby(settings: &BTreeMap<String, String>) -> bool {
    settings
        .get("standby_mode")
        .and_then(|v| crate::config::pg_params::parse_bool(&Value::from(v.as_str())))
        .unwrap_or(false)
}

impl Postgres {
    /// Run the method's command into the empty data directory, start PostgreSQL with the
    /// recovery configuration, and wait until recovery ended and it is a primary.
    pub async fn custom_bootstrap(&self, cb: &CustomBootstrap, timeout: Duration) -> Result<()> {
        let s = self.settings();
        let dd = s.data_dir();
        if !dir_empty(&dd) {
            return Err(PgError::DataDirNotEmpty(dd));
        }
        files::clear_data_dir(&s)?;
        let argv = cb.argv(&s.scope, &dd.to_string_lossy());
        let (program, args) = argv.split_first().ok_or_else(|| {
            PgError::BadOption(format!("bootstrap.{}.command is empty", cb.method))
        })?;
        tracing::info!("running custom bootstrap script: {}", cb.command);
        let mut cmd = command_path(&s, &super::replica_methods::program_path(program));
        cmd.args(args);
        run(cmd, "custom bootstrap script", super::lifecycle::LONG_JOB).await?;
        // A trigger file left by the backup would promote before recovery is done.
        let trigger = dd.join("promote");
        if trigger.exists() {
            std::fs::remove_file(&trigger).map_err(super::error::io_err(&trigger))?;
        }
        let mut pg_hba = vec![trust_line(&s)];
        pg_hba.extend(s.pg_hba.iter().cloned());
        self.set_boot(Some(BootstrapRecovery {
            recovery: cb.recovery.clone(),
            pg_hba,
        }));
        match self.start(&ConfigRole::Primary, timeout).await {
            Ok(_) => {}
            // Still replaying WAL: keep waiting below as long as it runs.
            Err(PgError::Timeout { .. }) if self.postmaster_pid().is_some() => {}
            Err(e) => return Err(e),
        }
        self.wait_for_end_of_recovery().await
    }

    /// The custom bootstrap is complete (users created): the files a primary has (our
    /// pg_hba.conf, no recovery settings or signal files), then a reload.
    pub fn finish_custom_bootstrap(&self) -> Result<()> {
        self.set_boot(None);
        self.write_config(&ConfigRole::Primary)?;
        self.reload()
    }

    /// Forget a custom bootstrap that failed (the data directory is removed next).
    pub fn abandon_custom_bootstrap(&self) {
        self.set_boot(None);
    }

    async fn wait_for_end_of_recovery(&self) -> Result<()> {
        let log = self.settings().postmaster_log();
        let mut last_note = Instant::now();
        loop {
            if self.postmaster_pid().is_none() {
                return Err(PgError::StartFailed {
                    reason: "postgres exited during recovery after the custom bootstrap".into(),
                    tail: log_tail(&log),
                });
            }
            if let Ok(rows) = self.query("SELECT pg_catalog.pg_is_in_recovery()").await
                && rows.first().and_then(|r| r[0].as_deref()) == Some("f")
            {
                tracing::info!(
                    "recovery after the custom bootstrap ended; the server is a primary"
                );
                return Ok(());
            }
            if last_note.elapsed() > Duration::from_secs(30) {
                tracing::info!("waiting for end of recovery after bootstrap");
                last_note = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn boot(v: Value) -> Option<CustomBootstrap> {
        from_config(&serde_json::from_value(v).unwrap())
    }

    #[test]
    fn initdb_or_a_section_without_command_is_not_custom() {
        assert_eq!(boot(json!({})), None);
        assert_eq!(
            boot(json!({"method": "initdb", "initdb": ["data-checksums"]})),
            None
        );
        assert_eq!(
            boot(json!({"method": "restore", "restore": {"no_params": true}})),
            None
        );
    }

    #[test]
    fn command_gets_scope_datadir_then_options() {
        let cb = boot(json!({"method": "barman", "barman": {
            "command": "patroni_barman --api-url https://b:7480 recover",
            "keep_existing_recovery_conf": true,
            "barman-server": "my_server",
            "scope": "ignored",
        }}))
        .unwrap();
        assert_eq!(cb.recovery, RecoveryConf::Keep);
        assert_eq!(
            cb.argv("sc", "/d"),
            [
                "patroni_barman",
                "--api-url",
                "https://b:7480",
                "recover",
                "--scope=sc",
                "--datadir=/d",
                "--barman-server=my_server",
            ]
        );
        let cb = boot(json!({"method": "m", "m": {"command": "c", "no_params": "yes"}})).unwrap();
        assert_eq!(cb.argv("sc", "/d"), ["c"]);
        assert_eq!(cb.recovery, RecoveryConf::Remove);
    }

    #[test]
    fn recovery_conf_is_written_verbatim_and_standby_mode_picks_the_signal() {
        let cb = boot(
            json!({"method": "m", "m": {"command": "c", "recovery_conf": {
            "restore_command": "cp /a/%f %p", "recovery_target_action": "promote",
            "standby_mode": "off"}}}),
        )
        .unwrap();
        let RecoveryConf::Write(m) = &cb.recovery else {
            panic!("{:?}", cb.recovery)
        };
        assert!(!wants_standby(m));
        let text = render_recovery_block(m);
        assert!(text.contains("restore_command = 'cp /a/%f %p'\n"), "{text}");
        assert!(
            text.contains("recovery_target_action = 'promote'\n"),
            "{text}"
        );
        assert!(!text.contains("standby_mode"), "{text}");
        let on: BTreeMap<String, String> = [("standby_mode".into(), "on".into())].into();
        assert!(wants_standby(&on));
    }
}
