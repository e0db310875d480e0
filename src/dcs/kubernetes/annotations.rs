//! Values as annotations: Kubernetes keeps `status`, `failover` and `sync` as several
//! string annotations instead of one JSON value; `null` removes an annotation in a patch.

use crate::dcs::{DcsError, DcsResult, Status};
use serde_json::{Map, Value};

pub(super) fn now_iso() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, false)
}

pub(super) fn ann(pairs: &[(&str, Option<String>)]) -> Map<String, Value> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone().map_or(Value::Null, Value::from)))
        .collect()
}

/// `status` as the leader object's annotations (`null` removes what is not there).
pub(super) fn status_annotations(s: &Status) -> Map<String, Value> {
    let json_or_null = |empty: bool, v: String| (!empty).then_some(v);
    ann(&[
        ("optime", s.optime.map(|o| o.to_string())),
        (
            "slots",
            json_or_null(
                s.slots.is_empty(),
                serde_json::to_string(&s.slots).unwrap_or_default(),
            ),
        ),
        (
            "retain_slots",
            json_or_null(
                s.retain_slots.is_empty(),
                serde_json::to_string(&s.retain_slots).unwrap_or_default(),
            ),
        ),
    ])
}

/// A `failover` value (JSON, or legacy `leader:member`) as annotations.
pub(super) fn failover_annotations(value: &str) -> DcsResult<Map<String, Value>> {
    let text = |v: &Value| match v {
        Value::Null => None,
        Value::String(s) if s.is_empty() => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    };
    match serde_json::from_str::<Value>(value) {
        Ok(Value::Object(m)) => Ok(ann(&[
            ("leader", m.get("leader").and_then(text)),
            ("member", m.get("member").and_then(text)),
            ("scheduled_at", m.get("scheduled_at").and_then(text)),
        ])),
        _ if value.contains(':') => {
            let (l, m) = value.split_once(':').unwrap_or_default();
            let some = |s: &str| (!s.trim().is_empty()).then(|| s.trim().to_string());
            Ok(ann(&[
                ("leader", some(l)),
                ("member", some(m)),
                ("scheduled_at", None),
            ]))
        }
        _ => Err(DcsError::Rejected(format!(
            "failover value is not JSON: {value:?}"
        ))),
    }
}

pub(super) fn sync_annotations(value: &str) -> DcsResult<Map<String, Value>> {
    let Ok(Value::Object(m)) = serde_json::from_str::<Value>(value) else {
        return Err(DcsError::Rejected(format!(
            "sync value is not a JSON object: {value:?}"
        )));
    };
    let text = |k: &str| match m.get(k) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => Some(other.to_string()),
    };
    Ok(ann(&[
        ("leader", text("leader")),
        ("sync_standby", text("sync_standby")),
        ("quorum", text("quorum")),
    ]))
}
