//! Bootstrap users, the post_bootstrap script, and physical replication slots.

use std::time::Duration;

use crate::config::{Authentication, Credentials};

use super::Postgres;
use super::conf;
use super::error::{PgError, Result};
use super::files;
use super::lifecycle::LONG_JOB;
use super::process::{command_path, run};
use super::sql::{REWIND_GRANTS, create_or_update_role_sql, quote_ident, quote_literal};

/// Keep passwords out of the server log while roles are created (as upstream).
const QUIET: &str = "SET log_statement TO none; SET log_min_duration_statement TO -1; \
                     SET log_min_error_statement TO 'log'";
const UNQUIET: &str =
    "RESET log_min_error_statement; RESET log_min_duration_statement; RESET log_statement";

fn username_or(c: &Credentials, default: &str) -> String {
    if c.username.is_empty() {
        default.to_string()
    } else {
        c.username.clone()
    }
}

impl Postgres {
    async fn role(&self, name: &str, password: Option<&str>, options: &[&str]) -> Result<()> {
        self.query(QUIET).await?;
        let res = self
            .query(&create_or_update_role_sql(name, password, options))
            .await;
        let reset = self.query(UNQUIET).await;
        res.and(reset).map(|_| ())
    }

    /// On a freshly bootstrapped primary: superuser password, replication user, and a
    /// dedicated rewind user with the function grants pg_rewind needs.
    pub async fn create_bootstrap_users(&self, auth: &Authentication) -> Result<()> {
        let su = username_or(&auth.superuser, "postgres");
        if let Some(pw) = &auth.superuser.password {
            self.role(&su, Some(pw), &["SUPERUSER"]).await?;
        }
        let repl = username_or(&auth.replication, "replicator");
        self.role(
            &repl,
            auth.replication.password.as_deref(),
            &["REPLICATION"],
        )
        .await?;
        if let Some(rw) = auth
            .rewind
            .as_ref()
            .filter(|r| !r.username.is_empty() && r.username != su)
        {
            self.role(&rw.username, rw.password.as_deref(), &[]).await?;
            for f in REWIND_GRANTS {
                let sql = format!(
                    "DO $patroni$ BEGIN SET local synchronous_commit = 'local'; \
                     GRANT EXECUTE ON function pg_catalog.{f} TO {}; END;$patroni$",
                    quote_ident(&rw.username)
                );
                self.query(&sql).await?;
            }
        }
        Ok(())
    }

    /// Run `bootstrap.post_bootstrap` with the local connection string as its last
    /// argument (no password in it: PGPASSFILE points at our pgpass).
    pub async fn run_post_bootstrap(&self, script: &str) -> Result<()> {
        let s = self.settings();
        let mut argv = conf::split_command(script);
        if argv.is_empty() {
            return Err(PgError::BadOption("post_bootstrap is empty".into()));
        }
        files::write_pgpass(&s)?;
        let t = s.local_target();
        let port = t.port.to_string();
        let url = conf::format_conninfo(&[
            ("dbname", &t.dbname),
            ("user", &t.user),
            ("host", &t.host),
            ("port", &port),
        ]);
        let program = argv.remove(0);
        // Relative script paths are relative to our working directory, not the child's.
        let program = if program.contains('/') {
            std::path::absolute(&program).unwrap_or_else(|_| program.clone().into())
        } else {
            program.into()
        };
        let mut cmd = command_path(&s, &program);
        cmd.args(&argv)
            .arg(&url)
            .env("PGPASSFILE", s.pgpass_path())
            .env(
                "PGOPTIONS",
                "-c synchronous_commit=local -c statement_timeout=0",
            );
        tracing::info!("running post_bootstrap {script}");
        run(cmd, "post_bootstrap script", LONG_JOB)
            .await
            .map(|_| ())
    }

    /// Create the physical replication slots that do not exist yet.
    /// Synchronous replication is managed with ALTER SYSTEM (postgresql.auto.conf), so it
    /// survives our own config rewrites and daemon restarts; `None` resets it.
    pub async fn set_synchronous_standby_names(&self, value: Option<&str>) -> Result<()> {
        let stmt = match value {
            Some(v) => format!(
                "ALTER SYSTEM SET synchronous_standby_names = '{}'",
                v.replace('\'', "''")
            ),
            None => "ALTER SYSTEM RESET synchronous_standby_names".to_string(),
        };
        // ALTER SYSTEM refuses to run in a (implicit) transaction block: two queries.
        self.query(&stmt).await?;
        self.query("SELECT pg_catalog.pg_reload_conf()").await?;
        Ok(())
    }

    pub async fn ensure_physical_slots(&self, names: &[String]) -> Result<()> {
        if names.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "SELECT pg_catalog.pg_create_physical_replication_slot(n, true) FROM (VALUES {}) v(n) \
             WHERE n NOT IN (SELECT slot_name FROM pg_catalog.pg_replication_slots)",
            values(names)
        );
        self.query_timeout(&sql, Duration::from_secs(10))
            .await
            .map(|_| ())
    }

    /// Drop the named slots that are not in use; returns the names still present
    /// (active, so left alone as upstream does).
    pub async fn drop_slots(&self, names: &[String]) -> Result<Vec<String>> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let list = names
            .iter()
            .map(|n| quote_literal(n))
            .collect::<Vec<_>>()
            .join(", ");
        let drop = format!(
            "SELECT pg_catalog.pg_drop_replication_slot(slot_name) FROM pg_catalog.pg_replication_slots \
             WHERE slot_name IN ({list}) AND NOT active"
        );
        self.query_timeout(&drop, Duration::from_secs(10)).await?;
        let left = format!(
            "SELECT slot_name FROM pg_catalog.pg_replication_slots WHERE slot_name IN ({list})"
        );
        let rows = self.query_timeout(&left, Duration::from_secs(10)).await?;
        Ok(rows
            .into_iter()
            .filter_map(|r| r.into_iter().next().flatten())
            .collect())
    }
}

fn values(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("({})", quote_literal(n)))
        .collect::<Vec<_>>()
        .join(", ")
}
