//! Upstream's `is_failover_possible`: before an immediate switchover/failover is written to
//! the DCS, check that somebody could actually take over, by asking the candidates' REST
//! APIs (`GET /patroni`) as the leader race would.

use crate::config::DynamicConfig;
use crate::dcs::{Cluster, Member};
use crate::ha::observation::PeerReply;
use std::time::Duration;

/// Upstream gives each peer 2 s in the leader race; the same budget here.
const PEER_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Switchover,
    Failover,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Switchover => "switchover",
            Action::Failover => "failover",
        }
    }
    pub fn title(self) -> &'static str {
        match self {
            Action::Switchover => "Switchover",
            Action::Failover => "Failover",
        }
    }
}

fn sync_matches(cluster: &Cluster, name: &str) -> bool {
    cluster
        .sync
        .as_ref()
        .is_some_and(|s| s.members().iter().any(|m| m.eq_ignore_ascii_case(name)))
}

fn strict_sync(dynamic: &DynamicConfig) -> bool {
    dynamic.synchronous_enabled() && !super::status_json::is_quorum_mode(dynamic)
}

/// The members that could take over, or upstream's sentence saying why there are none.
pub fn candidate_members<'a>(
    cluster: &'a Cluster,
    dynamic: &DynamicConfig,
    leader: Option<&str>,
    candidate: Option<&str>,
    action: Action,
) -> Result<Vec<&'a Member>, String> {
    if let Some(l) = leader
        && cluster.leader_name() != Some(l)
    {
        return Err("leader name does not match".into());
    }
    let a = action.as_str();
    if let Some(c) = candidate {
        if action == Action::Switchover && strict_sync(dynamic) && !sync_matches(cluster, c) {
            return Err("candidate name does not match with sync_standby".into());
        }
        let found: Vec<&Member> = cluster.members.iter().filter(|m| m.name == c).collect();
        if found.is_empty() {
            return Err("candidate does not exists".into());
        }
        return Ok(found);
    }
    if strict_sync(dynamic) {
        let found: Vec<&Member> = cluster
            .members
            .iter()
            .filter(|m| sync_matches(cluster, &m.name))
            .collect();
        if found.is_empty() {
            return Err(format!("{a} is not possible: can not find sync_standby"));
        }
        return Ok(found);
    }
    let current = cluster.leader_name();
    let found: Vec<&Member> = cluster
        .members
        .iter()
        .filter(|m| {
            current.is_none() || Some(m.name.as_str()) != current && m.data.api_url.is_some()
        })
        .collect();
    if found.is_empty() {
        return Err(format!(
            "{a} is not possible: cluster does not have members except leader"
        ));
    }
    Ok(found)
}

/// Why this member cannot promote (upstream's `failover_limitation`), `None` when it can.
pub fn failover_limitation(reply: Option<&PeerReply>) -> Option<&'static str> {
    let Some(r) = reply else {
        return Some("not reachable");
    };
    if r.nofailover || r.failover_priority <= 0 {
        return Some("not allowed to promote");
    }
    if r.watchdog_failed {
        return Some("not watchdog capable");
    }
    None
}

/// `None` when at least one of `members` answers and may promote.
pub async fn check_candidates(members: &[&Member], action: Action) -> Option<String> {
    let http = match reqwest::Client::builder().timeout(PEER_TIMEOUT).build() {
        Ok(c) => c,
        Err(e) => return Some(format!("{} is not possible: {e}", action.as_str())),
    };
    let futs = members.iter().map(|m| fetch_status(&http, m));
    let replies = futures::future::join_all(futs).await;
    if replies
        .iter()
        .any(|r| failover_limitation(r.as_ref()).is_none())
    {
        return None;
    }
    Some(format!(
        "{} is not possible: no good candidates have been found",
        action.as_str()
    ))
}

async fn fetch_status(http: &reqwest::Client, m: &Member) -> Option<PeerReply> {
    let url = format!("{}/patroni", m.api_base()?);
    let resp = http.get(&url).send().await.ok()?;
    let body: serde_json::Value = resp.json().await.ok()?;
    Some(crate::runtime::parse_peer(&body))
}
