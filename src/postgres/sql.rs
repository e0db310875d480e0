//! SQL connections (cached for the local server), quoting, and the observation query.

use std::time::Duration;

use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

use super::error::{PgError, Result};
use super::settings::ConnTarget;
use super::types::{ReplicationConn, SlotInfo, SqlObservation, WalReceiver, parse_lsn};

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Open a connection; the connection task runs in the background until the client drops.
pub async fn connect(t: &ConnTarget, application_name: &str) -> Result<Client> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(&t.host)
        .port(t.port)
        .user(&t.user)
        .dbname(&t.dbname)
        .application_name(application_name)
        .connect_timeout(CONNECT_TIMEOUT);
    if let Some(pw) = &t.password {
        cfg.password(pw);
    }
    let fut = cfg.connect(NoTls);
    let (client, conn) =
        match tokio::time::timeout(CONNECT_TIMEOUT + Duration::from_secs(1), fut).await {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => {
                return Err(PgError::Connect {
                    target: t.describe(),
                    reason: describe(&e),
                });
            }
            Err(_) => {
                return Err(PgError::Connect {
                    target: t.describe(),
                    reason: "connect timed out".into(),
                });
            }
        };
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// A DBA-readable message, with the server's SQLSTATE text when there is one.
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => e.to_string(),
    }
}

/// True when the server answered but is not ready yet (starting up / shutting down /
/// recovering without hot standby).
pub fn is_not_ready(e: &PgError) -> bool {
    matches!(e, PgError::Connect { reason, .. } if reason.contains("starting up")
        || reason.contains("shutting down") || reason.contains("not yet accepting")
        || reason.contains("not accepting connections") || reason.contains("in recovery mode"))
}

/// Rows of a simple query as text cells.
pub async fn simple_rows(c: &Client, sql: &str) -> Result<Vec<Vec<Option<String>>>> {
    let msgs = c
        .simple_query(sql)
        .await
        .map_err(|e| PgError::Sql(describe(&e)))?;
    Ok(msgs
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
            }
            _ => None,
        })
        .collect())
}

/// SQL identifier quoting: always double-quoted, inner quotes doubled.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// SQL literal quoting; uses E'' form when backslashes are present.
pub fn quote_literal(s: &str) -> String {
    let body = s.replace('\'', "''");
    if body.contains('\\') {
        format!("E'{}'", body.replace('\\', "\\\\"))
    } else {
        format!("'{body}'")
    }
}

/// One round trip: every fact the HA loop needs, as text/json columns.
pub const OBSERVE_SQL: &str = "SELECT r.rec::text,
 CASE WHEN r.rec THEN NULL ELSE ('x' || pg_catalog.substr(pg_catalog.pg_walfile_name(
   pg_catalog.pg_current_wal_lsn()), 1, 8))::bit(32)::int END::text,
 (SELECT timeline_id FROM pg_catalog.pg_control_checkpoint())::text,
 CASE WHEN r.rec THEN NULL ELSE pg_catalog.pg_current_wal_lsn() END::text,
 pg_catalog.pg_last_wal_receive_lsn()::text,
 pg_catalog.pg_last_wal_replay_lsn()::text,
 CASE WHEN r.rec THEN pg_catalog.pg_is_wal_replay_paused() ELSE false END::text,
 pg_catalog.to_json(pg_catalog.pg_last_xact_replay_timestamp())#>>'{}',
 pg_catalog.current_setting('server_version_num'),
 (SELECT system_identifier FROM pg_catalog.pg_control_system())::text,
 pg_catalog.to_json(pg_catalog.pg_postmaster_start_time())#>>'{}',
 (SELECT pg_catalog.json_build_object('status', status, 'sender_host', sender_host,
   'sender_port', sender_port, 'slot_name', slot_name, 'received_tli', received_tli)
   FROM pg_catalog.pg_stat_wal_receiver LIMIT 1)::text,
 (SELECT pg_catalog.json_agg(pg_catalog.json_build_object('usename', usename,
   'application_name', application_name, 'client_addr', pg_catalog.host(client_addr),
   'state', state, 'sync_state', sync_state, 'sync_priority', sync_priority,
   'write_lsn', write_lsn::text, 'flush_lsn', flush_lsn::text, 'replay_lsn', replay_lsn::text))
   FROM pg_catalog.pg_stat_replication)::text,
 (SELECT pg_catalog.json_agg(pg_catalog.json_build_object('name', slot_name,
   'slot_type', slot_type, 'active', active, 'restart_lsn', restart_lsn::text,
   'plugin', plugin, 'database', database, 'confirmed_flush_lsn', confirmed_flush_lsn::text))
   FROM pg_catalog.pg_replication_slots)::text,
 (SELECT pg_catalog.json_object_agg(name, setting) FROM pg_catalog.pg_settings
   WHERE pending_restart)::text,
 pg_catalog.current_setting('synchronous_standby_names')
FROM (SELECT pg_catalog.pg_is_in_recovery() AS rec) r";

fn json(cell: &Option<String>) -> serde_json::Value {
    cell.as_deref()
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or(serde_json::Value::Null)
}

fn jstr(v: &serde_json::Value, k: &str) -> Option<String> {
    v.get(k).and_then(|x| x.as_str()).map(str::to_string)
}

fn jlsn(v: &serde_json::Value, k: &str) -> Option<u64> {
    v.get(k).and_then(|x| x.as_str()).and_then(parse_lsn)
}

fn parse_receiver(v: &serde_json::Value) -> Option<(WalReceiver, Option<u32>)> {
    if v.is_null() {
        return None;
    }
    let rx = WalReceiver {
        status: jstr(v, "status").unwrap_or_default(),
        sender_host: jstr(v, "sender_host"),
        sender_port: v
            .get("sender_port")
            .and_then(|p| p.as_u64())
            .map(|p| p as u16),
        slot_name: jstr(v, "slot_name"),
    };
    Some((
        rx,
        v.get("received_tli")
            .and_then(|t| t.as_u64())
            .map(|t| t as u32),
    ))
}

fn parse_replication(v: &serde_json::Value) -> Vec<ReplicationConn> {
    let Some(items) = v.as_array() else {
        return Vec::new();
    };
    items
        .iter()
        .map(|r| ReplicationConn {
            usename: jstr(r, "usename").unwrap_or_default(),
            application_name: jstr(r, "application_name").unwrap_or_default(),
            client_addr: jstr(r, "client_addr"),
            state: jstr(r, "state").unwrap_or_default(),
            sync_state: jstr(r, "sync_state").unwrap_or_default(),
            sync_priority: r.get("sync_priority").and_then(|p| p.as_i64()).unwrap_or(0) as i32,
            write_lsn: jlsn(r, "write_lsn"),
            flush_lsn: jlsn(r, "flush_lsn"),
            replay_lsn: jlsn(r, "replay_lsn"),
        })
        .collect()
}

fn parse_slots(v: &serde_json::Value) -> Vec<SlotInfo> {
    let Some(items) = v.as_array() else {
        return Vec::new();
    };
    items
        .iter()
        .map(|s| SlotInfo {
            name: jstr(s, "name").unwrap_or_default(),
            slot_type: jstr(s, "slot_type").unwrap_or_default(),
            active: s.get("active").and_then(|a| a.as_bool()).unwrap_or(false),
            restart_lsn: jlsn(s, "restart_lsn"),
            plugin: jstr(s, "plugin"),
            database: jstr(s, "database"),
            confirmed_flush_lsn: jlsn(s, "confirmed_flush_lsn"),
        })
        .collect()
}

/// Turn the observation row into typed facts.
pub fn parse_observation(row: &[Option<String>]) -> Result<SqlObservation> {
    let bad = |what: &str| PgError::Parse {
        what: "observation query".into(),
        detail: what.into(),
    };
    if row.len() < 16 {
        return Err(bad("too few columns"));
    }
    let cell = |i: usize| row[i].as_deref();
    let num = |i: usize| cell(i).and_then(|s| s.parse::<u32>().ok());
    let in_recovery = cell(0) == Some("true");
    let receiver = parse_receiver(&json(&row[11]));
    let receive_lsn = cell(4).and_then(parse_lsn);
    let replay_lsn = cell(5).and_then(parse_lsn);
    let (timeline, wal_lsn) = if in_recovery {
        let tli = receiver.as_ref().and_then(|r| r.1).or(num(2)).unwrap_or(0);
        (tli, receive_lsn.unwrap_or(0).max(replay_lsn.unwrap_or(0)))
    } else {
        (
            num(1).ok_or_else(|| bad("timeline"))?,
            cell(3).and_then(parse_lsn).ok_or_else(|| bad("wal lsn"))?,
        )
    };
    let pending = json(&row[14]);
    Ok(SqlObservation {
        in_recovery,
        timeline,
        wal_lsn,
        receive_lsn,
        replay_lsn,
        replay_paused: cell(6) == Some("true"),
        replay_timestamp: cell(7).map(str::to_string),
        server_version: num(8).unwrap_or(0),
        system_identifier: cell(9).unwrap_or_default().to_string(),
        postmaster_start_time: cell(10).unwrap_or_default().to_string(),
        wal_receiver: receiver.map(|r| r.0),
        replication: parse_replication(&json(&row[12])),
        slots: parse_slots(&json(&row[13])),
        pending_restart: pending
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default(),
        synchronous_standby_names: cell(15).unwrap_or_default().to_string(),
    })
}

/// `CREATE ROLE` or `ALTER ROLE` (when it exists) with the options, in one DO block.
pub fn create_or_update_role_sql(name: &str, password: Option<&str>, options: &[&str]) -> String {
    let mut opts: Vec<String> = options.iter().map(|o| o.to_uppercase()).collect();
    if !opts.iter().any(|o| o == "LOGIN" || o == "NOLOGIN") {
        opts.push("LOGIN".into());
    }
    if let Some(pw) = password {
        opts.push(format!("PASSWORD {}", quote_literal(pw)));
    }
    let opts = opts.join(" ");
    let ident = quote_ident(name);
    // The DO body is dollar-quoted; pick a tag that the name/password cannot close.
    let mut n = 0;
    let tag = loop {
        let tag = if n == 0 {
            "$patroni$".to_string()
        } else {
            format!("$patroni{n}$")
        };
        if !name.contains(&tag) && !password.is_some_and(|p| p.contains(&tag)) {
            break tag;
        }
        n += 1;
    };
    format!(
        "DO {tag}\nBEGIN\n    SET local synchronous_commit = 'local';\n    \
         PERFORM * FROM pg_catalog.pg_authid WHERE rolname = {lit};\n    IF FOUND THEN\n        \
         ALTER ROLE {ident} WITH {opts};\n    ELSE\n        CREATE ROLE {ident} WITH {opts};\n    \
         END IF;\nEND;{tag}",
        lit = quote_literal(name)
    )
}

/// Functions pg_rewind needs, granted to a dedicated rewind user (as upstream).
pub const REWIND_GRANTS: &[&str] = &[
    "pg_ls_dir(text, boolean, boolean)",
    "pg_stat_file(text, boolean)",
    "pg_read_binary_file(text)",
    "pg_read_binary_file(text, bigint, bigint, boolean)",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal("a\\b"), "E'a\\\\b'");
    }

    #[test]
    fn role_sql_adds_login_and_password() {
        let sql = create_or_update_role_sql("rep'l", Some("p'w"), &["replication"]);
        assert!(sql.contains("ALTER ROLE \"rep'l\" WITH REPLICATION LOGIN PASSWORD 'p''w';"));
        assert!(sql.contains("rolname = 'rep''l'"));
        assert!(sql.starts_with("DO $patroni$"));
        let sql = create_or_update_role_sql("x", Some("a$patroni$b"), &["NOLOGIN"]);
        assert!(sql.starts_with("DO $patroni1$") && !sql.contains(" LOGIN"));
    }

    #[test]
    fn observation_row_parses_replica() {
        let mut row: Vec<Option<String>> = vec![None; 16];
        row[0] = Some("true".into());
        row[2] = Some("1".into());
        row[4] = Some("0/5000000".into());
        row[5] = Some("0/4000000".into());
        row[6] = Some("false".into());
        row[8] = Some("150004".into());
        row[9] = Some("7301".into());
        row[11] = Some(
            r#"{"status":"streaming","sender_host":"127.0.0.1","sender_port":5432,"slot_name":"n1","received_tli":3}"#
                .into(),
        );
        row[13] = Some(
            r#"[{"name":"n2","slot_type":"physical","active":true,"restart_lsn":"0/10"}]"#.into(),
        );
        row[14] = Some(r#"{"shared_buffers":"16384"}"#.into());
        let o = parse_observation(&row).unwrap();
        assert!(o.in_recovery);
        assert_eq!(
            (o.timeline, o.wal_lsn, o.server_version),
            (3, 0x5000000, 150004)
        );
        assert_eq!(o.wal_receiver.unwrap().sender_port, Some(5432));
        assert_eq!(o.slots[0].restart_lsn, Some(0x10));
        assert_eq!(o.pending_restart["shared_buffers"], "16384");
        row[0] = Some("false".into());
        assert!(
            parse_observation(&row).is_err(),
            "a primary row needs its timeline and lsn"
        );
    }
}
