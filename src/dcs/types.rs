//! Typed cluster snapshot. Every value carries the DCS version it was read at, and every
//! parser is tolerant: a value that is not what we expect is logged and treated as absent.

use super::{RawNode, keys};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Role a member advertises. Upstream < 4.0 wrote `master`; we read both, write `primary`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    #[serde(alias = "master")]
    Primary,
    Replica,
    StandbyLeader,
    Demoted,
    Promoted,
    #[default]
    Uninitialized,
    /// Sync replica roles as shown by /cluster and patronictl (not written to member keys).
    SyncStandby,
    QuorumStandby,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Replica => "replica",
            Role::StandbyLeader => "standby_leader",
            Role::Demoted => "demoted",
            Role::Promoted => "promoted",
            Role::Uninitialized => "uninitialized",
            Role::SyncStandby => "sync_standby",
            Role::QuorumStandby => "quorum_standby",
        }
    }
}

/// PostgreSQL state as upstream names it in member keys and /patroni.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum PgState {
    #[serde(rename = "running")]
    Running,
    #[serde(rename = "starting")]
    Starting,
    #[serde(rename = "stopping")]
    Stopping,
    #[default]
    #[serde(rename = "stopped")]
    Stopped,
    #[serde(rename = "crashed")]
    Crashed,
    #[serde(rename = "restarting")]
    Restarting,
    #[serde(rename = "restart failed")]
    RestartFailed,
    #[serde(rename = "start failed")]
    StartFailed,
    #[serde(rename = "stop failed")]
    StopFailed,
    #[serde(rename = "creating replica")]
    CreatingReplica,
    #[serde(rename = "initializing new cluster")]
    InitializingNewCluster,
    #[serde(rename = "initdb failed")]
    InitdbFailed,
    #[serde(rename = "running custom bootstrap script")]
    RunningCustomBootstrapScript,
    #[serde(rename = "custom bootstrap failed")]
    CustomBootstrapFailed,
    #[serde(rename = "starting after custom bootstrap")]
    StartingAfterCustomBootstrap,
    #[serde(rename = "rewinding")]
    Rewinding,
    /// A state string written by a newer/other implementation.
    #[serde(untagged)]
    Other(String),
}

impl PgState {
    pub fn as_str(&self) -> &str {
        match self {
            PgState::Running => "running",
            PgState::Starting => "starting",
            PgState::Stopping => "stopping",
            PgState::Stopped => "stopped",
            PgState::Crashed => "crashed",
            PgState::Restarting => "restarting",
            PgState::RestartFailed => "restart failed",
            PgState::StartFailed => "start failed",
            PgState::StopFailed => "stop failed",
            PgState::CreatingReplica => "creating replica",
            PgState::InitializingNewCluster => "initializing new cluster",
            PgState::InitdbFailed => "initdb failed",
            PgState::RunningCustomBootstrapScript => "running custom bootstrap script",
            PgState::CustomBootstrapFailed => "custom bootstrap failed",
            PgState::StartingAfterCustomBootstrap => "starting after custom bootstrap",
            PgState::Rewinding => "rewinding",
            PgState::Other(s) => s,
        }
    }
}

/// The JSON in `members/<name>`. Unknown fields survive a round trip via `extra`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct MemberData {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conn_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_url: Option<String>,
    #[serde(default)]
    pub state: PgState,
    #[serde(default)]
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xlog_location: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receive_lsn: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_lsn: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<u32>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub tags: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_restart: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_restart_reason: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_restart: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_after_promote: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<bool>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl MemberData {
    /// Tag lookups with upstream's truthiness (`true`, "true", "on", 1 ...).
    pub fn tag_bool(&self, tag: &str) -> bool {
        tag_is_true(self.tags.get(tag))
    }
    pub fn nofailover(&self) -> bool {
        self.tag_bool("nofailover")
            || matches!(self.tags.get("failover_priority"), Some(v) if v.as_i64() == Some(0))
    }
    pub fn failover_priority(&self) -> i64 {
        self.tags
            .get("failover_priority")
            .and_then(Value::as_i64)
            .unwrap_or(1)
    }
}

pub fn tag_is_true(v: Option<&Value>) -> bool {
    match v {
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_i64().is_some_and(|n| n != 0),
        Some(Value::String(s)) => {
            matches!(
                s.to_ascii_lowercase().as_str(),
                "true" | "on" | "yes" | "1" | "y"
            )
        }
        _ => false,
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub name: String,
    pub version: i64,
    pub session: Option<i64>,
    pub data: MemberData,
}

impl Member {
    /// `api_url` with its path replaced, as peers and patronictl derive REST URLs.
    pub fn api_base(&self) -> Option<String> {
        let url = self.data.api_url.as_deref()?;
        let scheme_end = url.find("://").map(|i| i + 3).unwrap_or(0);
        let path_start = url[scheme_end..]
            .find('/')
            .map(|i| i + scheme_end)
            .unwrap_or(url.len());
        Some(url[..path_start].to_string())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Leader {
    pub name: String,
    pub version: i64,
    pub session: Option<i64>,
}

/// `failover` key: a requested switchover (leader set) or failover (member only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Failover {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_at: Option<String>,
    #[serde(skip)]
    pub version: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct SyncState {
    #[serde(default)]
    pub leader: Option<String>,
    #[serde(default)]
    pub sync_standby: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quorum: Option<u32>,
    #[serde(skip)]
    pub version: i64,
}

impl SyncState {
    pub fn members(&self) -> Vec<String> {
        self.sync_standby
            .as_deref()
            .map(|s| {
                s.split(',')
                    .map(|m| m.trim().to_string())
                    .filter(|m| !m.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// One line of `history`: `[timeline, switch_lsn, reason, promoted_at?, promoted_by?]`.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryEntry {
    pub timeline: u32,
    pub lsn: u64,
    pub reason: String,
    pub timestamp: Option<String>,
    pub new_leader: Option<String>,
}

impl HistoryEntry {
    pub fn to_json(&self) -> Value {
        let mut v = vec![
            Value::from(self.timeline),
            Value::from(self.lsn),
            Value::from(self.reason.clone()),
        ];
        if let Some(ts) = &self.timestamp {
            v.push(Value::from(ts.clone()));
            if let Some(l) = &self.new_leader {
                v.push(Value::from(l.clone()));
            }
        }
        Value::Array(v)
    }

    fn from_json(v: &Value) -> Option<Self> {
        let a = v.as_array()?;
        Some(HistoryEntry {
            timeline: a.first()?.as_u64()? as u32,
            lsn: a.get(1)?.as_u64()?,
            reason: a
                .get(2)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            timestamp: a.get(3).and_then(Value::as_str).map(str::to_string),
            new_leader: a.get(4).and_then(Value::as_str).map(str::to_string),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct History {
    pub version: i64,
    pub lines: Vec<HistoryEntry>,
}

impl History {
    pub fn to_json_string(&self) -> String {
        Value::Array(self.lines.iter().map(HistoryEntry::to_json).collect()).to_string()
    }
}

/// `status` key: leader optime plus permanent slot positions.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Status {
    #[serde(default)]
    pub optime: Option<u64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub slots: BTreeMap<String, u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retain_slots: Vec<String>,
}

/// `config` key: the raw dynamic configuration plus its version for compare-and-set.
/// Interpretation (defaults, validation) lives in `crate::config::dynamic`.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    pub version: i64,
    pub data: Map<String, Value>,
}

/// Immutable snapshot of the cluster as read at one point in time.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Cluster {
    /// `None`: key absent; `Some("")`: bootstrap race won but no sysid yet.
    pub initialize: Option<String>,
    pub config: Option<ClusterConfig>,
    pub leader: Option<Leader>,
    pub status: Status,
    pub members: Vec<Member>,
    pub failover: Option<Failover>,
    pub sync: Option<SyncState>,
    pub history: Option<History>,
    pub failsafe: Option<BTreeMap<String, String>>,
    /// Keys that were present but could not be parsed (for logging by the caller).
    pub parse_warnings: Vec<String>,
}

impl Cluster {
    pub fn is_unlocked(&self) -> bool {
        self.leader.is_none()
    }
    pub fn member(&self, name: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.name == name)
    }
    pub fn leader_member(&self) -> Option<&Member> {
        self.leader.as_ref().and_then(|l| self.member(&l.name))
    }
    pub fn leader_name(&self) -> Option<&str> {
        self.leader.as_ref().map(|l| l.name.as_str())
    }
    /// Timeline of the newest history line + 1, as upstream computes the cluster timeline.
    pub fn timeline(&self) -> Option<u32> {
        match &self.history {
            Some(h) if !h.lines.is_empty() => {
                h.lines.iter().map(|l| l.timeline).max().map(|t| t + 1)
            }
            _ => None,
        }
    }

    /// Build a snapshot from raw nodes (paths relative to the cluster prefix).
    pub fn from_nodes(nodes: &[RawNode]) -> Cluster {
        let mut c = Cluster::default();
        let mut legacy_optime: Option<u64> = None;
        for n in nodes {
            match n.key.as_str() {
                keys::INITIALIZE => c.initialize = Some(n.value.clone()),
                keys::CONFIG => match serde_json::from_str::<Value>(&n.value) {
                    Ok(Value::Object(data)) => {
                        c.config = Some(ClusterConfig {
                            version: n.version,
                            data,
                        })
                    }
                    _ => {
                        c.parse_warnings
                            .push(format!("config: not a JSON object: {:?}", clip(&n.value)));
                        c.config = Some(ClusterConfig {
                            version: n.version,
                            data: Map::new(),
                        });
                    }
                },
                keys::LEADER if !n.value.is_empty() => {
                    c.leader = Some(Leader {
                        name: n.value.clone(),
                        version: n.version,
                        session: n.session,
                    })
                }
                keys::FAILOVER => c.failover = parse_failover(n, &mut c.parse_warnings),
                keys::SYNC => match serde_json::from_str::<SyncState>(&n.value) {
                    Ok(mut s) => {
                        s.version = n.version;
                        c.sync = Some(s)
                    }
                    Err(_) => {
                        c.parse_warnings
                            .push(format!("sync: unparsable: {:?}", clip(&n.value)));
                        c.sync = Some(SyncState {
                            version: n.version,
                            ..Default::default()
                        });
                    }
                },
                keys::HISTORY => {
                    let lines = match serde_json::from_str::<Value>(&n.value) {
                        Ok(Value::Array(a)) => {
                            a.iter().filter_map(HistoryEntry::from_json).collect()
                        }
                        _ => {
                            c.parse_warnings
                                .push(format!("history: unparsable: {:?}", clip(&n.value)));
                            Vec::new()
                        }
                    };
                    c.history = Some(History {
                        version: n.version,
                        lines,
                    });
                }
                keys::STATUS => match serde_json::from_str::<Value>(&n.value) {
                    Ok(Value::Number(num)) => c.status.optime = num.as_u64(),
                    Ok(v @ Value::Object(_)) => {
                        c.status = serde_json::from_value(v).unwrap_or_else(|_| {
                            c.parse_warnings
                                .push(format!("status: unparsable: {:?}", clip(&n.value)));
                            Status::default()
                        })
                    }
                    _ => c
                        .parse_warnings
                        .push(format!("status: unparsable: {:?}", clip(&n.value))),
                },
                keys::LEADER_OPTIME => legacy_optime = n.value.trim().parse().ok(),
                keys::FAILSAFE => {
                    match serde_json::from_str::<BTreeMap<String, String>>(&n.value) {
                        Ok(m) => c.failsafe = Some(m),
                        Err(_) => c
                            .parse_warnings
                            .push(format!("failsafe: unparsable: {:?}", clip(&n.value))),
                    }
                }
                k if k.starts_with(keys::MEMBERS) => {
                    let name = &k[keys::MEMBERS.len()..];
                    if name.is_empty() || name.contains('/') {
                        continue;
                    }
                    let data = match serde_json::from_str::<MemberData>(&n.value) {
                        Ok(d) => d,
                        Err(e) => {
                            c.parse_warnings.push(format!(
                                "members/{name}: unparsable ({e}): {:?}",
                                clip(&n.value)
                            ));
                            MemberData::default()
                        }
                    };
                    c.members.push(Member {
                        name: name.to_string(),
                        version: n.version,
                        session: n.session,
                        data,
                    });
                }
                _ => {}
            }
        }
        if c.status.optime.is_none() {
            c.status.optime = legacy_optime;
        }
        c.members.sort_by(|a, b| a.name.cmp(&b.name));
        c
    }
}

fn parse_failover(n: &RawNode, warnings: &mut Vec<String>) -> Option<Failover> {
    match serde_json::from_str::<Value>(&n.value) {
        Ok(v @ Value::Object(_)) => match serde_json::from_value::<Failover>(v) {
            Ok(mut f) => {
                f.version = n.version;
                Some(f)
            }
            Err(_) => {
                warnings.push(format!("failover: unparsable: {:?}", clip(&n.value)));
                None
            }
        },
        _ if n.value.contains(':') => {
            // Legacy "leader:candidate" text.
            let (l, m) = n.value.split_once(':').unwrap_or_default();
            let nonempty = |s: &str| (!s.trim().is_empty()).then(|| s.trim().to_string());
            Some(Failover {
                leader: nonempty(l),
                member: nonempty(m),
                scheduled_at: None,
                version: n.version,
            })
        }
        _ if n.value.trim().is_empty() => None,
        _ => {
            warnings.push(format!("failover: unparsable: {:?}", clip(&n.value)));
            None
        }
    }
}

fn clip(s: &str) -> String {
    s.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(key: &str, value: &str) -> RawNode {
        RawNode {
            key: key.into(),
            value: value.into(),
            version: 7,
            session: None,
        }
    }

    #[test]
    fn parses_upstream_values() {
        let c = Cluster::from_nodes(&[
            node("initialize", "7301"),
            node("leader", "pg0"),
            node("config", r#"{"ttl":30,"loop_wait":10}"#),
            node(
                "history",
                r#"[[1,25165984,"no recovery target specified","2024-01-01T00:00:00+00:00","pg0"]]"#,
            ),
            node("status", r#"{"optime":67108960,"slots":{"pg1":67108960}}"#),
            node("failover", r#"{"leader":"pg0","member":"pg1"}"#),
            node("sync", r#"{"leader":"pg0","sync_standby":"pg1,pg2"}"#),
            node(
                "members/pg0",
                r#"{"conn_url":"postgres://127.0.0.1:5432/postgres","api_url":"http://127.0.0.1:8008/patroni","state":"running","role":"master","version":"4.1.0","xlog_location":67108960,"timeline":2,"foo":1}"#,
            ),
        ]);
        assert_eq!(c.initialize.as_deref(), Some("7301"));
        assert_eq!(c.leader_name(), Some("pg0"));
        assert_eq!(c.timeline(), Some(2));
        assert_eq!(c.status.optime, Some(67108960));
        assert_eq!(c.status.slots.get("pg1"), Some(&67108960));
        assert_eq!(c.failover.as_ref().unwrap().member.as_deref(), Some("pg1"));
        assert_eq!(c.sync.as_ref().unwrap().members(), vec!["pg1", "pg2"]);
        let m = c.member("pg0").unwrap();
        assert_eq!(m.data.role, Role::Primary);
        assert_eq!(m.data.state, PgState::Running);
        assert_eq!(m.api_base().as_deref(), Some("http://127.0.0.1:8008"));
        assert_eq!(m.data.extra.get("foo"), Some(&Value::from(1)));
        assert!(c.parse_warnings.is_empty());
        // Round trip keeps unknown fields and writes `primary`.
        let s = serde_json::to_string(&m.data).unwrap();
        assert!(
            s.contains(r#""role":"primary""#) && s.contains(r#""foo":1"#),
            "{s}"
        );
    }

    #[test]
    fn garbage_is_tolerated() {
        let c = Cluster::from_nodes(&[
            node("config", "not json"),
            node("history", "{"),
            node("status", "[1,2]"),
            node("failover", "???"),
            node("sync", "42"),
            node("members/pg1", "<xml/>"),
            node(
                "members/pg2",
                r#"{"role":"wizard","state":"dancing","timeline":"x"}"#,
            ),
            node("optime/leader", "123"),
        ]);
        assert_eq!(c.config.as_ref().unwrap().data.len(), 0);
        assert_eq!(c.history.as_ref().unwrap().lines.len(), 0);
        assert_eq!(c.status.optime, Some(123));
        assert!(c.failover.is_none());
        assert_eq!(c.members.len(), 2);
        assert!(c.parse_warnings.len() >= 6, "{:?}", c.parse_warnings);
    }

    #[test]
    fn legacy_failover_text() {
        let c = Cluster::from_nodes(&[node("failover", "pg0:pg1")]);
        let f = c.failover.unwrap();
        assert_eq!(
            (f.leader.as_deref(), f.member.as_deref()),
            (Some("pg0"), Some("pg1"))
        );
    }
}
