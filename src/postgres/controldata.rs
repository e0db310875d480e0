//! pg_controldata: what the data directory says about itself, without a server.

use std::collections::BTreeMap;
use std::time::Duration;

use super::error::{PgError, Result};
use super::process;
use super::settings::{PgSettings, dir_empty};
use super::types::{ControlData, DataDirState, parse_lsn};

/// `key: value` lines of pg_controldata output.
pub fn parse_map(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// The facts the HA logic needs from the map.
pub fn from_map(m: &BTreeMap<String, String>) -> Result<ControlData> {
    let get = |k: &str| {
        m.get(k).cloned().ok_or_else(|| PgError::Parse {
            what: "pg_controldata".into(),
            detail: format!("no '{k}'"),
        })
    };
    let num = |k: &str| -> Result<u32> {
        get(k)?.parse().map_err(|_| PgError::Parse {
            what: "pg_controldata".into(),
            detail: format!("bad '{k}'"),
        })
    };
    let lsn = |k: &str| -> Result<u64> {
        parse_lsn(&get(k)?).ok_or_else(|| PgError::Parse {
            what: "pg_controldata".into(),
            detail: format!("bad '{k}'"),
        })
    };
    Ok(ControlData {
        system_identifier: get("Database system identifier")?,
        cluster_state: get("Database cluster state")?,
        timeline: num("Latest checkpoint's TimeLineID")?,
        checkpoint_lsn: lsn("Latest checkpoint location")?,
        min_recovery_timeline: num("Min recovery ending loc's timeline")?,
        min_recovery_lsn: lsn("Minimum recovery ending location")?,
    })
}

/// Settings a hot standby must run with at least the primary's values (as recorded in
/// pg_control), with their pg_controldata labels (upstream's `effective_configuration`).
pub const HOT_STANDBY_MINIMUMS: &[(&str, &str)] = &[
    ("max_connections", "max_connections setting"),
    ("max_prepared_transactions", "max_prepared_xacts setting"),
    ("max_locks_per_transaction", "max_locks_per_xact setting"),
    ("max_worker_processes", "max_worker_processes setting"),
    ("max_wal_senders", "max_wal_senders setting"),
];

/// A setting raised to pg_control's value for a start in recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaisedSetting {
    pub name: &'static str,
    pub configured: i64,
    pub control: i64,
}

/// Which of `params` are below the values pg_control records: starting in recovery with
/// them would stop PostgreSQL ("recovery aborted because of insufficient parameter
/// settings"). A missing parameter counts as PostgreSQL's default.
pub fn hot_standby_shortfalls(
    params: &BTreeMap<String, String>,
    control: &BTreeMap<String, String>,
) -> Vec<RaisedSetting> {
    HOT_STANDBY_MINIMUMS
        .iter()
        .filter_map(|(name, label)| {
            let control: i64 = control.get(*label)?.trim().parse().ok()?;
            let configured = params
                .get(*name)
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or_else(|| pg_default(name));
            (control > configured).then_some(RaisedSetting {
                name,
                configured,
                control,
            })
        })
        .collect()
}

fn pg_default(name: &str) -> i64 {
    match name {
        "max_connections" => 100,
        "max_locks_per_transaction" => 64,
        "max_worker_processes" => 8,
        "max_wal_senders" => 10,
        _ => 0,
    }
}

/// Raw pg_controldata output as a map (English labels: LC_ALL=C).
pub async fn read_map(s: &PgSettings) -> Result<BTreeMap<String, String>> {
    let mut cmd = process::command(s, "pg_controldata");
    cmd.arg("-D")
        .arg(s.data_dir())
        .env("LC_ALL", "C")
        .env("LANG", "C");
    let out = process::run(cmd, "pg_controldata", Duration::from_secs(30)).await?;
    Ok(parse_map(&out.stdout))
}

/// Classify the data directory.
pub async fn data_dir_state(s: &PgSettings) -> DataDirState {
    let dd = s.data_dir();
    if dir_empty(&dd) {
        return DataDirState::Empty;
    }
    if !dd.join("PG_VERSION").is_file() {
        return DataDirState::Invalid(format!("{} has no PG_VERSION", dd.display()));
    }
    match read_map(s).await.and_then(|m| from_map(&m)) {
        Ok(c) => DataDirState::Initialized(c),
        Err(e) => DataDirState::Invalid(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "pg_control version number:            1300
Database system identifier:           7301234567890123456
Database cluster state:               shut down in recovery
Latest checkpoint location:           0/3000060
Latest checkpoint's REDO location:    0/3000028
Latest checkpoint's TimeLineID:       2
Minimum recovery ending location:     0/30000D8
Min recovery ending loc's timeline:   2
wal_log_hints setting:                on
";

    #[test]
    fn standby_settings_below_pg_control_are_raised() {
        let params: BTreeMap<String, String> = [
            ("max_connections", "50"),
            ("max_wal_senders", "10"),
            ("max_worker_processes", "16"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let control = parse_map(
            "max_connections setting: 100\nmax_worker_processes setting: 8\n\
             max_wal_senders setting: 10\nmax_prepared_xacts setting: 5\n\
             max_locks_per_xact setting: 64\n",
        );
        assert_eq!(
            hot_standby_shortfalls(&params, &control),
            [
                RaisedSetting {
                    name: "max_connections",
                    configured: 50,
                    control: 100
                },
                RaisedSetting {
                    name: "max_prepared_transactions",
                    configured: 0,
                    control: 5
                },
            ]
        );
        assert!(hot_standby_shortfalls(&params, &BTreeMap::new()).is_empty());
    }

    #[test]
    fn parses_sample() {
        let m = parse_map(SAMPLE);
        assert_eq!(m["wal_log_hints setting"], "on");
        let c = from_map(&m).unwrap();
        assert_eq!(c.system_identifier, "7301234567890123456");
        assert_eq!(c.cluster_state, "shut down in recovery");
        assert_eq!((c.timeline, c.checkpoint_lsn), (2, 0x3000060));
        assert_eq!(
            (c.min_recovery_timeline, c.min_recovery_lsn),
            (2, 0x30000D8)
        );
        assert!(from_map(&parse_map("Database cluster state: x")).is_err());
    }
}
