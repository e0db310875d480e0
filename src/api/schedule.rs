//! `scheduled_at` / `schedule` timestamps of POST /switchover and POST /restart, read the way
//! upstream's `dateutil` parser reads the forms patronictl and people send
//! (`2019-09-24T12:00+00`, `2024-01-01 10:00:00+02:00`, `...Z`), with the time zone mandatory.

use super::error::ApiError;
use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime};

/// Parse `value` for `action` ("switchover", "restart") and require it in the future:
/// no time zone -> 400, unparsable or in the past -> 422, with upstream's sentences.
pub fn parse_schedule(
    value: &str,
    action: &str,
    now: DateTime<FixedOffset>,
) -> Result<DateTime<FixedOffset>, ApiError> {
    let unparsable = || {
        ApiError::Unprocessable(
            "Unable to parse scheduled timestamp. It should be in an unambiguous format, e.g. ISO 8601"
                .into(),
        )
    };
    let (naive, offset) = parse_parts(value).ok_or_else(unparsable)?;
    let Some(offset) = offset else {
        return Err(ApiError::BadRequest(format!(
            "Timezone information is mandatory for the scheduled {action}"
        )));
    };
    let at = naive
        .and_local_timezone(offset)
        .single()
        .ok_or_else(unparsable)?;
    if at < now {
        return Err(ApiError::Unprocessable(format!(
            "Cannot schedule {action} in the past"
        )));
    }
    Ok(at)
}

/// ISO-8601 as Python's `isoformat()` writes it (what upstream stores in the DCS).
pub fn isoformat(at: &DateTime<FixedOffset>) -> String {
    if at.timestamp_subsec_micros() == 0 {
        at.format("%Y-%m-%dT%H:%M:%S%:z").to_string()
    } else {
        at.format("%Y-%m-%dT%H:%M:%S%.6f%:z").to_string()
    }
}

/// Split into a naive date-time and an optional UTC offset.
fn parse_parts(value: &str) -> Option<(NaiveDateTime, Option<FixedOffset>)> {
    let s = value.trim();
    if s.len() < 10 || !s.is_char_boundary(10) {
        return None;
    }
    let date = NaiveDate::parse_from_str(&s[..10], "%Y-%m-%d").ok()?;
    let rest = s[10..].trim_start_matches(['T', 't', ' ']);
    if rest.is_empty() {
        return Some((date.and_time(NaiveTime::MIN), None));
    }
    let (time_text, offset) = split_offset(rest)?;
    let time = ["%H:%M:%S%.f", "%H:%M:%S", "%H:%M", "%H%M%S", "%H%M"]
        .iter()
        .find_map(|f| NaiveTime::parse_from_str(time_text.trim(), f).ok())?;
    Some((date.and_time(time), offset))
}

/// `12:00+00`, `12:00:00-05:30`, `12:00Z`, `12:00 UTC`: the time text and its offset.
fn split_offset(rest: &str) -> Option<(&str, Option<FixedOffset>)> {
    let trimmed = rest.trim_end();
    for utc in ["Z", "z", "UTC", "GMT"] {
        if let Some(t) = trimmed.strip_suffix(utc) {
            return Some((t, FixedOffset::east_opt(0)));
        }
    }
    let Some(pos) = trimmed.rfind(['+', '-']) else {
        return Some((trimmed, None));
    };
    let (time, tz) = trimmed.split_at(pos);
    let sign = if tz.starts_with('-') { -1 } else { 1 };
    let digits: String = tz[1..].chars().filter(|c| *c != ':').collect();
    if digits.is_empty() || digits.len() > 4 || !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let (h, m) = match digits.len() {
        1 | 2 => (digits.parse::<i32>().ok()?, 0),
        3 => (digits[..1].parse().ok()?, digits[1..].parse().ok()?),
        _ => (digits[..2].parse().ok()?, digits[2..].parse().ok()?),
    };
    if h > 23 || m > 59 {
        return None;
    }
    Some((time, FixedOffset::east_opt(sign * (h * 3600 + m * 60))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<FixedOffset> {
        DateTime::parse_from_rfc3339("2030-01-01T00:00:00+00:00").unwrap()
    }

    #[test]
    fn accepts_upstream_forms() {
        let ok = |s: &str| isoformat(&parse_schedule(s, "switchover", now()).unwrap());
        assert_eq!(ok("2031-09-24T12:00+00"), "2031-09-24T12:00:00+00:00");
        assert_eq!(ok("2031-09-24 12:00:00+02:00"), "2031-09-24T12:00:00+02:00");
        assert_eq!(
            ok("2031-09-24T12:00:00.5Z"),
            "2031-09-24T12:00:00.500000+00:00"
        );
        assert_eq!(ok("2031-09-24T12:00:00-0530"), "2031-09-24T12:00:00-05:30");
        assert_eq!(ok("2031-09-24 12:00 UTC"), "2031-09-24T12:00:00+00:00");
    }

    #[test]
    fn refuses_like_upstream() {
        let err = |s: &str| parse_schedule(s, "restart", now()).unwrap_err();
        assert_eq!(
            err("2031-09-24T12:00"),
            ApiError::BadRequest(
                "Timezone information is mandatory for the scheduled restart".into()
            )
        );
        assert_eq!(
            err("2020-01-01T00:00+00"),
            ApiError::Unprocessable("Cannot schedule restart in the past".into())
        );
        for junk in [
            "tomorrow",
            "",
            "2031-13-01T00:00+00",
            "2031-01-01T25:00+00",
            "2031-01-01T10:00+99",
        ] {
            assert!(matches!(err(junk), ApiError::Unprocessable(_)), "{junk}");
        }
    }
}
