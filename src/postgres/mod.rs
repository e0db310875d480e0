//! Everything that touches the local PostgreSQL: observation (one SQL round trip),
//! processes (initdb, pg_ctl, pg_basebackup, pg_rewind), and config files.
//!
//! `Postgres` is the only owner of those side effects. Settings are swapped atomically
//! (`set_settings`) when dynamic configuration changes; every method works on a snapshot.

pub mod conf;
pub mod controldata;
pub mod custom_bootstrap;
pub mod error;
pub mod files;
pub mod process;
pub mod replica_methods;
pub mod settings;
pub mod sql;
pub mod stop_plan;
pub mod types;

mod admin;
mod lifecycle;
mod reconfig;
mod rewind;
mod slots;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio_postgres::Client;

pub use conf::{CMDLINE_PARAMS, slot_name_from_member_name};
pub use error::{PgError, Result};
pub use process::wait_for_exit;
pub use reconfig::{Reconfigured, RestartReason, parse_postmaster_opts};
pub use rewind::Divergence;
pub use settings::{ConnTarget, PgSettings};
pub use types::*;

/// Time budget for the per-cycle observation query.
const OBSERVE_TIMEOUT: Duration = Duration::from_secs(5);

/// The local PostgreSQL instance.
pub struct Postgres {
    settings: RwLock<Arc<PgSettings>>,
    /// Cached superuser connection to the local server, with the target it was made for.
    conn: tokio::sync::Mutex<Option<(ConnTarget, Client)>>,
    /// The role the config files were last written for, so a settings change can rewrite
    /// them without changing what the server is (a standby stays a standby).
    last_role: RwLock<Option<ConfigRole>>,
    /// A custom bootstrap's restored data is recovering: how its files are written.
    boot: RwLock<Option<custom_bootstrap::BootstrapRecovery>>,
}

impl Postgres {
    pub fn new(cfg: PgSettings) -> Postgres {
        Postgres {
            settings: RwLock::new(Arc::new(cfg)),
            conn: tokio::sync::Mutex::new(None),
            last_role: RwLock::new(None),
            boot: RwLock::new(None),
        }
    }

    fn set_boot(&self, boot: Option<custom_bootstrap::BootstrapRecovery>) {
        *self.boot.write().unwrap_or_else(|e| e.into_inner()) = boot;
    }

    fn boot(&self) -> Option<custom_bootstrap::BootstrapRecovery> {
        self.boot.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A snapshot of the current settings.
    pub fn settings(&self) -> Arc<PgSettings> {
        self.settings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replace the settings (dynamic configuration changed). Files are rewritten by the
    /// next `write_config` / `start`; the cached connection follows a new address.
    pub fn set_settings(&self, cfg: PgSettings) {
        *self.settings.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(cfg);
    }

    /// Everything about the local PostgreSQL right now. Never fails: problems are data.
    pub async fn observe(&self) -> PgObservation {
        let s = self.settings();
        let data_dir = controldata::data_dir_state(&s).await;
        let postmaster_pid = process::live_postmaster(&s.data_dir());
        let configured_primary = files::read_to_string_opt(&s.config_file(conf::POSTGRESQL_CONF))
            .and_then(|t| conf::configured_primary(&t));
        let standby_signal = s.data_file(conf::STANDBY_SIGNAL).exists();
        let (sql, sql_error) = if postmaster_pid.is_some() {
            match self.observe_sql().await {
                Ok(o) => (Some(o), None),
                Err(e) => (None, Some(e.to_string())),
            }
        } else {
            self.drop_connection().await;
            (None, None)
        };
        PgObservation {
            data_dir,
            postmaster_pid,
            sql,
            configured_primary,
            standby_signal,
            sql_error,
        }
    }

    async fn observe_sql(&self) -> Result<SqlObservation> {
        let rows = self
            .query_timeout(sql::OBSERVE_SQL, OBSERVE_TIMEOUT)
            .await?;
        let row = rows
            .first()
            .ok_or_else(|| PgError::Sql("observation query returned no row".into()))?;
        sql::parse_observation(row)
    }

    /// Run SQL (simple protocol, may hold several statements) on the local server as
    /// superuser; rows as text cells. For tests, patronictl and one-off admin commands.
    pub async fn query(&self, sql: &str) -> Result<Vec<Vec<Option<String>>>> {
        self.query_timeout(sql, Duration::from_secs(30)).await
    }

    /// Like `query` with an explicit time budget. A timed-out or failed connection is
    /// dropped so the next call reconnects.
    pub async fn query_timeout(
        &self,
        sql: &str,
        timeout: Duration,
    ) -> Result<Vec<Vec<Option<String>>>> {
        let target = self.settings().local_target();
        let mut guard = self.conn.lock().await;
        let reusable = matches!(&*guard, Some((t, c)) if *t == target && !c.is_closed());
        if !reusable {
            *guard = None;
            let client = sql::connect(&target, "Patroni").await?;
            *guard = Some((target, client));
        }
        let (_, client) = guard.as_ref().expect("connected above");
        let res = match tokio::time::timeout(timeout, sql::simple_rows(client, sql)).await {
            Ok(r) => r,
            Err(_) => Err(PgError::Timeout {
                what: "query".into(),
                secs: timeout.as_secs(),
                tail: sql_head(sql),
            }),
        };
        if res.is_err() && (client.is_closed() || matches!(res, Err(PgError::Timeout { .. }))) {
            *guard = None;
        }
        res
    }

    /// Forget the cached connection (after stop, or when the server went away).
    pub async fn drop_connection(&self) {
        *self.conn.lock().await = None;
    }

    /// Raw pg_controldata output as `label -> value`.
    pub async fn controldata(&self) -> Result<std::collections::BTreeMap<String, String>> {
        controldata::read_map(&self.settings()).await
    }

    /// PID of a live postmaster owning our data directory.
    pub fn postmaster_pid(&self) -> Option<u32> {
        process::live_postmaster(&self.settings().data_dir())
    }
}

fn sql_head(sql: &str) -> String {
    sql.chars().take(60).collect()
}

/// Build the PostgreSQL layer's settings from the local file and the dynamic config:
/// effective GUCs (upstream's merge rules) and hba lines (local wins over dynamic).
pub fn settings_from_config(
    cfg: &crate::config::Config,
    dynamic: &crate::config::DynamicConfig,
) -> PgSettings {
    let pg_hba = cfg
        .postgresql
        .pg_hba
        .clone()
        .or_else(|| dynamic.postgresql.pg_hba.clone())
        .or_else(|| cfg.bootstrap.pg_hba.clone())
        .unwrap_or_default();
    PgSettings {
        name: cfg.name.clone(),
        scope: cfg.scope.clone(),
        local: cfg.postgresql.clone(),
        parameters: crate::config::pg_params::effective_pg_parameters(cfg, dynamic),
        pg_hba,
        use_slots: dynamic.postgresql.use_slots,
        standby_cluster: dynamic
            .standby_cluster
            .as_ref()
            .and_then(crate::ha::standby::StandbyCluster::from_map)
            .map(|sc| sc.pg_settings()),
        run_as: None,
    }
}
