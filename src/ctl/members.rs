//! The member table every command prints (`output_members`), the cluster document it is
//! built from, and upstream's member selection rules (roles, names, confirmations).

use super::cli::Format;
use super::table::{py_str, render, to_yaml};
use crate::dcs::{Cluster, Member};
use crate::postgres::types::format_lsn;
use serde_json::{Map, Value, json};

/// The dynamic settings the ctl looks at, read from the `config` key like upstream's
/// `global_config` (Python truthiness).
pub struct Global<'a>(Option<&'a Map<String, Value>>);

impl<'a> Global<'a> {
    pub fn of(cluster: &'a Cluster) -> Global<'a> {
        Global(cluster.config.as_ref().map(|c| &c.data))
    }
    fn get(&self, k: &str) -> Option<&'a Value> {
        self.0.and_then(|m| m.get(k))
    }
    pub fn is_paused(&self) -> bool {
        self.get("pause").is_some_and(py_truthy)
    }
    pub fn is_quorum(&self) -> bool {
        self.get("synchronous_mode").and_then(Value::as_str) == Some("quorum")
    }
    pub fn is_synchronous(&self) -> bool {
        self.is_quorum()
            || self
                .get("synchronous_mode")
                .is_some_and(|v| crate::dcs::tag_is_true(Some(v)))
    }
    pub fn is_standby_cluster(&self) -> bool {
        matches!(self.get("standby_cluster"), Some(Value::Object(sc))
            if ["host", "port", "restore_command"].iter().any(|k| sc.get(*k).is_some_and(py_truthy)))
    }
    pub fn loop_wait(&self) -> u64 {
        self.get("loop_wait").and_then(Value::as_u64).unwrap_or(10)
    }
}

pub fn py_truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

fn in_sync(cluster: &Cluster, name: &str) -> bool {
    cluster
        .sync
        .as_ref()
        .is_some_and(|s| s.members().iter().any(|m| m.eq_ignore_ascii_case(name)))
}

/// Upstream's `cluster_as_json`: members sorted by name with role, state, address, lag.
pub fn cluster_as_json(cluster: &Cluster) -> Map<String, Value> {
    let g = Global::of(cluster);
    let leader = cluster.leader_name();
    let cluster_lsn = cluster.status.optime.unwrap_or(0);
    let mut members = Vec::new();
    for m in &cluster.members {
        let is_leader = leader == Some(m.name.as_str());
        let role = if is_leader {
            if g.is_standby_cluster() {
                "standby_leader"
            } else {
                "leader"
            }
        } else if g.is_synchronous() && in_sync(cluster, &m.name) {
            if g.is_quorum() {
                "quorum_standby"
            } else {
                "sync_standby"
            }
        } else {
            "replica"
        };
        let d = &m.data;
        let state = match &d.replication_state {
            Some(rs) if role != "leader" && !rs.is_empty() => rs.clone(),
            _ => d.state.as_str().to_string(),
        };
        let mut out = Map::new();
        out.insert("name".into(), json!(m.name));
        out.insert("role".into(), json!(role));
        out.insert("state".into(), json!(state));
        out.insert("api_url".into(), json!(d.api_url));
        let (host, port) = conn_host_port(m);
        if let Some(h) = host {
            out.insert("host".into(), json!(h));
            out.insert("port".into(), json!(port));
        }
        let raw = serde_json::to_value(d).unwrap_or(Value::Null);
        for k in [
            "timeline",
            "pending_restart",
            "pending_restart_reason",
            "scheduled_restart",
            "tags",
        ] {
            if let Some(v) = raw.get(k) {
                out.insert(k.into(), v.clone());
            }
        }
        if !is_leader {
            for (prefix, lsn) in [
                ("receive_", d.receive_lsn),
                ("replay_", d.replay_lsn),
                ("", d.xlog_location),
            ] {
                let (l, lag) = match lsn {
                    None | Some(0) => (json!("unknown"), json!("unknown")),
                    Some(lsn) => (
                        json!(format_lsn(lsn)),
                        json!(cluster_lsn.saturating_sub(lsn)),
                    ),
                };
                out.insert(format!("{prefix}lsn"), l);
                out.insert(format!("{prefix}lag"), lag);
            }
        }
        members.push(Value::Object(out));
    }
    members.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    let mut ret = Map::new();
    ret.insert("members".into(), Value::Array(members));
    if g.is_paused() {
        ret.insert("pause".into(), json!(true));
    }
    if let Some(f) = &cluster.failover
        && let Some(at) = &f.scheduled_at
    {
        let mut sw = Map::new();
        sw.insert("at".into(), json!(at));
        if let Some(l) = &f.leader {
            sw.insert("from".into(), json!(l));
        }
        if let Some(c) = &f.member {
            sw.insert("to".into(), json!(c));
        }
        ret.insert("scheduled_switchover".into(), Value::Object(sw));
    }
    ret
}

/// Host and port from `conn_url` (or legacy `conn_kwargs`); port defaults to 5432.
pub fn conn_host_port(m: &Member) -> (Option<String>, u16) {
    if let Some(Value::Object(kw)) = m.data.extra.get("conn_kwargs") {
        let host = kw.get("host").and_then(Value::as_str).map(str::to_string);
        let port = kw
            .get("port")
            .map(py_str)
            .and_then(|p| p.parse().ok())
            .unwrap_or(5432);
        return (host.filter(|h| !h.is_empty()), port);
    }
    let Some(url) = m.data.conn_url.as_deref() else {
        return (None, 5432);
    };
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, tail) = v6.split_once(']').unwrap_or((v6, ""));
        (h, tail.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    let port = port.and_then(|p| p.parse().ok()).unwrap_or(5432);
    ((!host.is_empty()).then(|| host.to_ascii_lowercase()), port)
}

/// `%Y-%m-%d %H:%M:%S.%f` cut to `precision` fractional digits (upstream's `timestamp`).
pub fn timestamp(precision: usize) -> String {
    let now = chrono::Local::now()
        .format("%Y-%m-%d %H:%M:%S.%6f")
        .to_string();
    if precision == 0 {
        now[..19].to_string()
    } else {
        now[..20 + precision.min(6)].to_string()
    }
}

/// Replicas hang under their `replicatefrom` parent, indented with `+ ` per level.
fn topology_sort(members: Vec<Map<String, Value>>) -> Vec<Map<String, Value>> {
    let role = |m: &Map<String, Value>| m["role"].as_str().unwrap_or("").to_string();
    let name = |m: &Map<String, Value>| m["name"].as_str().unwrap_or("").to_string();
    let leader = members
        .iter()
        .find(|m| role(m).ends_with("leader"))
        .map(name);
    let replicas: Vec<String> = members
        .iter()
        .filter(|m| !role(m).ends_with("leader"))
        .map(name)
        .collect();
    let mut children: std::collections::BTreeMap<Option<String>, Vec<Map<String, Value>>> =
        Default::default();
    let mut root = None;
    for m in members {
        if role(&m).ends_with("leader") {
            root.get_or_insert(m);
            continue;
        }
        let parent = m
            .get("tags")
            .and_then(|t| t.get("replicatefrom"))
            .and_then(Value::as_str);
        let parent = match parent {
            Some(p) if p != name(&m) && replicas.iter().any(|r| r == p) => Some(p.to_string()),
            _ => leader.clone(),
        };
        children.entry(parent).or_default().push(m);
    }
    let mut out = Vec::new();
    fn walk(
        level: usize,
        m: Option<Map<String, Value>>,
        key: Option<String>,
        children: &mut std::collections::BTreeMap<Option<String>, Vec<Map<String, Value>>>,
        out: &mut Vec<Map<String, Value>>,
    ) {
        if let Some(mut m) = m {
            if level > 0 {
                let n = m["name"].as_str().unwrap_or("").to_string();
                m.insert(
                    "name".into(),
                    json!(format!("{}+ {n}", " ".repeat((level - 1) * 2))),
                );
            }
            out.push(m);
        }
        for c in children.remove(&key).unwrap_or_default() {
            let k = c["name"].as_str().map(str::to_string);
            walk(level + 1, Some(c), k, children, out);
        }
    }
    walk(0, root, leader, &mut children, &mut out);
    out
}

const BASE_COLUMNS: [&str; 10] = [
    "Cluster",
    "Member",
    "Host",
    "Role",
    "State",
    "TL",
    "Receive LSN",
    "Receive Lag",
    "Replay LSN",
    "Replay Lag",
];
const OPTIONAL_COLUMNS: [&str; 4] = [
    "Pending restart",
    "Pending restart reason",
    "Scheduled restart",
    "Tags",
];

fn key_of(column: &str) -> String {
    column.to_lowercase().replace(' ', "_")
}

/// Upstream's member table (`list`, `topology`, and the preview before actions).
pub fn format_members(cluster: &Cluster, name: &str, extended: bool, fmt: Format) -> String {
    let cj = cluster_as_json(cluster);
    let members: Vec<Map<String, Value>> = cj["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m.as_object().cloned())
        .collect();
    let with_host: Vec<&Map<String, Value>> =
        members.iter().filter(|m| m.contains_key("host")).collect();
    let mut columns: Vec<String> = BASE_COLUMNS.iter().map(|s| s.to_string()).collect();
    for c in OPTIONAL_COLUMNS {
        if extended
            || with_host
                .iter()
                .any(|m| m.get(&key_of(c)).is_some_and(py_truthy))
        {
            columns.push(c.to_string());
        }
    }
    let hosts: std::collections::BTreeSet<&str> = with_host
        .iter()
        .filter_map(|m| m["host"].as_str())
        .collect();
    let append_port = with_host
        .iter()
        .any(|m| m.get("port").and_then(Value::as_u64) != Some(5432))
        || hosts.len() < with_host.len();
    let ordered = if fmt == Format::Topology {
        topology_sort(members)
    } else {
        members
    };
    let rows: Vec<Vec<Value>> = ordered
        .into_iter()
        .map(|m| member_row(m, name, fmt, append_port, &columns))
        .collect();
    let initialize = match cluster.initialize.as_deref() {
        None => "uninitialized",
        Some("") => "initializing",
        Some(s) => s,
    };
    let title = format!(" Cluster: {name} ({initialize}) ");
    let pretty = matches!(fmt, Format::Pretty | Format::Topology);
    let mut shown = columns.clone();
    if pretty {
        for c in shown
            .iter_mut()
            .filter(|c| *c == "Receive Lag" || *c == "Replay Lag")
        {
            *c = "Lag".into();
        }
    }
    let align = [
        ("Receive LSN", 'r'),
        ("Replay LSN", 'r'),
        ("Lag", 'r'),
        ("TL", 'r'),
    ];
    // Pretty tables carry the cluster name in the border instead of a column.
    let mut out = if pretty {
        let rows: Vec<Vec<Value>> = rows.into_iter().map(|r| r[1..].to_vec()).collect();
        render(&shown[1..], &rows, &align, fmt, &title, "\t")
    } else {
        render(&shown, &rows, &align, fmt, &title, "\t")
    };
    if pretty {
        for info in service_info(&cj) {
            out.push_str("\n ");
            out.push_str(&info.replace('\n', "\n "));
        }
    }
    out
}

fn lag_mb(v: Option<&Value>) -> Value {
    match v {
        Some(Value::Number(n)) => {
            json!((n.as_f64().unwrap_or(0.0) / 1024.0 / 1024.0).round() as i64)
        }
        Some(Value::String(s)) if s == "unknown" => json!(""),
        Some(v) => v.clone(),
        None => json!(""),
    }
}

fn member_row(
    mut m: Map<String, Value>,
    cluster: &str,
    fmt: Format,
    append_port: bool,
    columns: &[String],
) -> Vec<Value> {
    let pretty = matches!(fmt, Format::Pretty | Format::Topology);
    let reason = match m.get("pending_restart_reason") {
        Some(Value::Object(r)) => r
            .iter()
            .map(|(k, v)| {
                let full = format!(
                    "{k}: {}->{}",
                    py_str(&v["old_value"]),
                    py_str(&v["new_value"])
                );
                if pretty && full.chars().count() > 50 {
                    format!("{k}: [hidden - too long]")
                } else {
                    full
                }
            })
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    };
    let role = m["role"].as_str().unwrap_or("").replace('_', " ");
    let role = title_case(&role);
    let mut host = m
        .get("host")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if append_port
        && !host.is_empty()
        && let Some(p) = m.get("port")
    {
        host = format!("{host}:{}", py_str(p));
    }
    let receive_lag = lag_mb(m.get("receive_lag"));
    let replay_lag = lag_mb(m.get("replay_lag"));
    let lsn = |k: &str| match m.get(k) {
        Some(Value::String(s)) if s == "unknown" => json!(""),
        Some(v) => v.clone(),
        None => json!(""),
    };
    let (receive_lsn, replay_lsn) = (lsn("receive_lsn"), lsn("replay_lsn"));
    let scheduled = m
        .get("scheduled_restart")
        .and_then(Value::as_object)
        .map(|s| {
            let mut v = s.get("schedule").map(py_str).unwrap_or_default();
            if let Some(pv) = s.get("postgres_version") {
                v += &format!(" if version < {}", py_str(pv));
            }
            json!(v)
        });
    let tags = m.get("tags").filter(|t| py_truthy(t)).map(|t| {
        if matches!(fmt, Format::Json | Format::Yaml | Format::Yml) {
            t.clone()
        } else {
            json!(to_yaml(t, !matches!(fmt, Format::Pretty)).trim())
        }
    });
    let pending = if m.get("pending_restart").is_some_and(py_truthy) {
        "*"
    } else {
        ""
    };
    let tl = m.get("timeline").cloned().unwrap_or(json!(""));
    for (k, v) in [
        ("cluster", json!(cluster)),
        ("member", m["name"].clone()),
        ("host", json!(host)),
        ("tl", tl),
        ("role", json!(role)),
        ("receive_lag", receive_lag),
        ("replay_lag", replay_lag),
        ("receive_lsn", receive_lsn),
        ("replay_lsn", replay_lsn),
        ("pending_restart", json!(pending)),
        ("pending_restart_reason", json!(reason)),
    ] {
        m.insert(k.into(), v);
    }
    match scheduled {
        Some(s) => m.insert("scheduled_restart".into(), s),
        None => m.remove("scheduled_restart"),
    };
    match tags {
        Some(t) => m.insert("tags".into(), t),
        None => m.insert("tags".into(), json!("")),
    };
    columns
        .iter()
        .map(|c| m.get(&key_of(c)).cloned().unwrap_or(json!("")))
        .collect()
}

fn title_case(s: &str) -> String {
    s.split(' ')
        .map(|w| {
            let mut c = w.chars();
            match c.next() {
                Some(f) => f
                    .to_uppercase()
                    .chain(c.flat_map(|x| x.to_lowercase()))
                    .collect(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn service_info(cj: &Map<String, Value>) -> Vec<String> {
    let mut out = Vec::new();
    if cj.get("pause").is_some_and(py_truthy) {
        out.push("Maintenance mode: on".to_string());
    }
    if let Some(sw) = cj.get("scheduled_switchover") {
        let mut info = format!("Switchover scheduled at: {}", py_str(&sw["at"]));
        for k in ["from", "to"] {
            if let Some(v) = sw.get(k) {
                info += &format!("\n{k:>24}: {}", py_str(v));
            }
        }
        out.push(info);
    }
    out
}

pub fn print_members(cluster: &Cluster, name: &str) {
    println!("{}", format_members(cluster, name, false, Format::Pretty));
}
