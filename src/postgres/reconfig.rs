//! Applying new settings to a running server: rewrite the files and reload, and tell which
//! changes only a restart can apply (command-line GUCs, `pg_settings.pending_restart`).

use std::collections::BTreeMap;

use super::error::Result;
use super::types::ConfigRole;
use super::{PgSettings, Postgres, conf, files, process};

/// What `apply_settings` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reconfigured {
    /// Same settings as before: nothing touched.
    Unchanged,
    /// Stored; the files follow at the next write_config / start (server not running).
    Stored,
    /// Files rewritten and the postmaster sent SIGHUP.
    Reloaded,
}

/// A parameter whose new value needs a restart (upstream's `pending_restart_reason`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartReason {
    pub old_value: String,
    pub new_value: String,
}

impl Postgres {
    pub(super) fn remember_role(&self, role: &ConfigRole) {
        *self.last_role.write().unwrap_or_else(|e| e.into_inner()) = Some(role.clone());
    }

    /// Adopt new settings (local file re-read, dynamic config changed). A running server
    /// gets its files rewritten for the role it already has, then a reload.
    pub fn apply_settings(&self, new: PgSettings) -> Result<Reconfigured> {
        if *self.settings() == new {
            return Ok(Reconfigured::Unchanged);
        }
        self.set_settings(new);
        if self.postmaster_pid().is_none() {
            return Ok(Reconfigured::Stored);
        }
        let remembered = self
            .last_role
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let role = remembered.unwrap_or_else(|| self.role_from_files());
        files::write_config_with(&self.settings(), &role, self.boot().as_ref())?;
        self.reload()?;
        Ok(Reconfigured::Reloaded)
    }

    /// The role the server is configured for: as last written, else as the files say.
    pub fn config_role(&self) -> ConfigRole {
        let remembered = self
            .last_role
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        remembered.unwrap_or_else(|| self.role_from_files())
    }

    /// The role the files on disk describe (a server we adopted at daemon start):
    /// standby.signal and the primary_conninfo host/port we wrote earlier.
    fn role_from_files(&self) -> ConfigRole {
        let s = self.settings();
        if !s.data_file(conf::STANDBY_SIGNAL).exists() {
            return ConfigRole::Primary;
        }
        let upstream = files::read_to_string_opt(&s.config_file(conf::POSTGRESQL_CONF))
            .and_then(|t| conf::configured_primary(&t))
            .map(|(host, port)| super::types::UpstreamConn {
                host,
                port,
                member: String::new(),
            });
        ConfigRole::Standby {
            upstream,
            slot_name: None,
        }
    }

    /// Parameters whose configured value differs from what the server runs with and that
    /// a reload cannot change. `sql_pending` is `pg_settings.pending_restart` (name ->
    /// running value); command-line GUCs are compared with `postmaster.opts`.
    pub fn pending_restart_reason(
        &self,
        sql_pending: &BTreeMap<String, String>,
    ) -> BTreeMap<String, RestartReason> {
        let s = self.settings();
        let wanted = s.server_parameters();
        let mut out = BTreeMap::new();
        for (name, running) in sql_pending {
            if conf::is_recovery_param(name) {
                continue;
            }
            out.insert(
                name.clone(),
                RestartReason {
                    old_value: running.clone(),
                    new_value: wanted.get(name).cloned().unwrap_or_default(),
                },
            );
        }
        if process::live_postmaster(&s.data_dir()).is_none() {
            return out;
        }
        let Some(opts) = files::read_to_string_opt(&s.data_dir().join("postmaster.opts")) else {
            return out;
        };
        let started = parse_postmaster_opts(&opts);
        for (name, value) in &wanted {
            if !conf::is_cmdline_param(name) {
                continue;
            }
            match started.get(name) {
                Some(old) if old != value => {
                    out.insert(
                        name.clone(),
                        RestartReason {
                            old_value: old.clone(),
                            new_value: value.clone(),
                        },
                    );
                }
                _ => {}
            }
        }
        out
    }
}

/// `--name=value` options of the command line PostgreSQL records in `postmaster.opts`
/// (`/usr/lib/.../postgres "-D" "/data" "--port=5432" ...`).
pub fn parse_postmaster_opts(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = text.trim();
    while let Some(start) = rest.find('"') {
        let after = &rest[start + 1..];
        let Some(end) = after.find('"') else { break };
        let token = &after[..end];
        if let Some((k, v)) = token.strip_prefix("--").and_then(|t| t.split_once('=')) {
            out.insert(k.replace('-', "_"), v.to_string());
        }
        rest = &after[end + 1..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postmaster_opts_are_parsed() {
        let t = "/usr/lib/postgresql/15/bin/postgres \"-D\" \"/d\" \"--config-file=/d/postgresql.conf\" \"--max_connections=100\" \"--cluster_name=my cluster\"\n";
        let m = parse_postmaster_opts(t);
        assert_eq!(m["max_connections"], "100");
        assert_eq!(m["cluster_name"], "my cluster");
        assert_eq!(m["config_file"], "/d/postgresql.conf");
        assert!(!m.contains_key("D"));
    }
}
