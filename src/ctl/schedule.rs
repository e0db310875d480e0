//! `--scheduled` timestamps and `--pg-version` values, checked before anything is sent.

use super::{CtlResult, msg};
use chrono::{DateTime, FixedOffset, Local, NaiveDateTime, TimeZone};

/// `None` for absent/empty/"now"; otherwise the time in ISO 8601 with an offset (a value
/// without one is local time, as upstream assumes).
pub fn parse_scheduled(s: Option<&str>) -> CtlResult<Option<String>> {
    let Some(s) = s.map(str::trim).filter(|s| !s.is_empty() && *s != "now") else {
        return Ok(None);
    };
    let bad = || {
        msg(format!(
            "Unable to parse scheduled timestamp ({s}). It should be in an unambiguous format (e.g. ISO 8601)"
        ))
    };
    let t = s.replacen(' ', "T", 1);
    if let Ok(dt) = DateTime::parse_from_rfc3339(&t) {
        return Ok(Some(iso(dt)));
    }
    for f in ["%Y-%m-%dT%H:%M:%S%.f%#z", "%Y-%m-%dT%H:%M%#z"] {
        if let Ok(dt) = DateTime::parse_from_str(&t, f) {
            return Ok(Some(iso(dt)));
        }
    }
    for f in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M"] {
        if let Ok(n) = NaiveDateTime::parse_from_str(&t, f) {
            let local = Local.from_local_datetime(&n).earliest().ok_or_else(bad)?;
            return Ok(Some(iso(local.fixed_offset())));
        }
    }
    Err(bad())
}

/// Python's `isoformat()`: microseconds only when non-zero.
fn iso(dt: DateTime<FixedOffset>) -> String {
    if dt.timestamp_subsec_micros() == 0 {
        dt.format("%Y-%m-%dT%H:%M:%S%:z").to_string()
    } else {
        dt.format("%Y-%m-%dT%H:%M:%S%.6f%:z").to_string()
    }
}

/// Upstream's check of `--pg-version`: X.Y (X >= 10) or X.Y.Z.
pub fn check_pg_version(v: &str) -> CtlResult<()> {
    let parts: Result<Vec<u32>, _> = v.split('.').map(str::parse::<u32>).collect();
    let parts = parts.map_err(|_| msg(format!("Invalid PostgreSQL version: {v}")))?;
    if parts.len() < 2 || parts.len() > 3 || (parts.len() == 2 && parts[0] < 10) {
        return Err(msg(format!(
            "Invalid PostgreSQL version format: X.Y or X.Y.Z is accepted: {v}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules() {
        assert_eq!(parse_scheduled(None).unwrap(), None);
        assert_eq!(parse_scheduled(Some("now")).unwrap(), None);
        assert_eq!(
            parse_scheduled(Some("2030-05-29T04:32:31+02:00"))
                .unwrap()
                .as_deref(),
            Some("2030-05-29T04:32:31+02:00")
        );
        assert_eq!(
            parse_scheduled(Some("2030-05-29 04:32Z"))
                .unwrap()
                .as_deref(),
            Some("2030-05-29T04:32:00+00:00")
        );
        assert!(parse_scheduled(Some("2030-05-29T04:32")).unwrap().is_some());
        assert!(parse_scheduled(Some("tomorrow")).is_err());
    }

    #[test]
    fn pg_versions() {
        assert!(check_pg_version("9.6.2").is_ok());
        assert!(check_pg_version("15.4").is_ok());
        assert!(check_pg_version("9.6").is_err());
        assert!(
            check_pg_version("a.b")
                .unwrap_err()
                .to_string()
                .contains("Invalid PostgreSQL version: a.b")
        );
    }
}
