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
