//! Logical and physical slot maintenance beyond creating member slots: permanent logical
//! slots on the primary, moving slot copies forward on replicas, and copying a logical
//! slot's on-disk state from the primary (PostgreSQL 15 has no failover slots).

use std::io::Write;
use std::time::Duration;

use super::Postgres;
use super::error::{PgError, Result, io_err};
use super::files::{chown, ensure_dir};
use super::sql::{connect, quote_literal, simple_rows};
use super::types::{UpstreamConn, format_lsn};

const SLOT_SQL_TIMEOUT: Duration = Duration::from_secs(10);

impl Postgres {
    /// Create a logical slot in its database (it must be created while connected to it).
    pub async fn create_logical_slot(
        &self,
        name: &str,
        database: &str,
        plugin: &str,
    ) -> Result<()> {
        let s = self.settings();
        let mut target = s.local_target();
        target.dbname = database.to_string();
        let client = connect(&target, "Patroni").await?;
        let sql = format!(
            "SELECT pg_catalog.pg_create_logical_replication_slot({}, {}) \
             WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_replication_slots WHERE slot_name = {})",
            quote_literal(name),
            quote_literal(plugin),
            quote_literal(name)
        );
        match tokio::time::timeout(SLOT_SQL_TIMEOUT, simple_rows(&client, &sql)).await {
            Ok(r) => r.map(|_| ()),
            Err(_) => Err(PgError::Sql(format!(
                "creating logical slot {name} timed out"
            ))),
        }
    }

    /// pg_replication_slot_advance each slot to its target (PostgreSQL clamps it to what
    /// this server has replayed). Failures are per slot.
    pub async fn advance_slots(&self, targets: &[(String, u64)]) -> Vec<(String, PgError)> {
        let mut errors = vec![];
        for (name, lsn) in targets {
            let sql = format!(
                "SELECT pg_catalog.pg_replication_slot_advance({}, {}::pg_lsn)",
                quote_literal(name),
                quote_literal(&format_lsn(*lsn))
            );
            if let Err(e) = self.query_timeout(&sql, SLOT_SQL_TIMEOUT).await {
                errors.push((name.clone(), e));
            }
        }
        errors
    }

    /// Read the slots' `state` files from `from` (pg_read_binary_file, as superuser) and
    /// write them into our pg_replslot. PostgreSQL loads them at its next start.
    pub async fn copy_logical_slots(&self, from: &UpstreamConn, names: &[String]) -> Result<()> {
        let s = self.settings();
        let target = s.remote_target(&from.host, from.port, &s.superuser());
        let client = connect(&target, "Patroni").await?;
        for name in names {
            let sql = format!(
                "SELECT pg_catalog.encode(pg_catalog.pg_read_binary_file('pg_replslot/' || {} || '/state'), 'hex')",
                quote_literal(name)
            );
            let rows =
                match tokio::time::timeout(SLOT_SQL_TIMEOUT, simple_rows(&client, &sql)).await {
                    Ok(r) => r?,
                    Err(_) => return Err(PgError::Sql(format!("reading slot {name} timed out"))),
                };
            let hex = rows
                .first()
                .and_then(|r| r.first().cloned().flatten())
                .ok_or_else(|| {
                    PgError::Sql(format!("slot {name} has no state file on the leader"))
                })?;
            let bytes = decode_hex(&hex)
                .ok_or_else(|| PgError::Sql(format!("slot {name}: unreadable state file")))?;
            let dir = s.data_file("pg_replslot").join(name);
            ensure_dir(&dir, s.run_as)?;
            let path = dir.join("state");
            let mut f = std::fs::File::create(&path).map_err(io_err(&path))?;
            f.write_all(&bytes).map_err(io_err(&path))?;
            f.sync_all().map_err(io_err(&path))?;
            chown(&path, s.run_as)?;
        }
        Ok(())
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn hex() {
        assert_eq!(super::decode_hex("00ff10"), Some(vec![0, 255, 16]));
        assert_eq!(super::decode_hex("0"), None);
    }
}
