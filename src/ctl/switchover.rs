//! switchover / failover (POST to the leader, or to the candidate when there is no leader;
//! the `failover` key is written directly when no REST API answers), and
//! demote-cluster / promote-cluster (PATCH `standby_cluster` on the leader, then watch).

use super::cli::Group;
use super::members::{Global, format_members, print_members, timestamp};
use super::schedule::parse_scheduled;
use super::{Ctl, CtlError, CtlResult, msg, prompt};
use crate::dcs::{Cluster, Dcs, PgState, Role};
use clap::Args;
use reqwest::Method;
use serde_json::{Map, Value, json};
use std::time::Duration;

#[derive(Debug, Args)]
pub struct FailoverArgs {
    pub cluster_name: Option<String>,
    #[command(flatten)]
    pub group: Group,
    /// The name of the candidate
    #[arg(long)]
    pub candidate: Option<String>,
    /// Do not ask for confirmation at any point
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct SwitchoverArgs {
    pub cluster_name: Option<String>,
    #[command(flatten)]
    pub group: Group,
    /// The name of the current leader
    #[arg(long, visible_alias = "primary")]
    pub leader: Option<String>,
    /// The name of the candidate
    #[arg(long)]
    pub candidate: Option<String>,
    /// Timestamp of a scheduled switchover in unambiguous format (e.g. ISO 8601)
    #[arg(long)]
    pub scheduled: Option<String>,
    /// Do not ask for confirmation at any point
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct DemoteArgs {
    pub cluster_name: Option<String>,
    /// Do not ask for confirmation at any point
    #[arg(long)]
    pub force: bool,
    /// Address of the remote node
    #[arg(long)]
    pub host: Option<String>,
    /// Port of the remote node
    #[arg(long)]
    pub port: Option<u16>,
    /// Command to restore WAL records from the remote primary
    #[arg(long)]
    pub restore_command: Option<String>,
    /// Name of the slot on the remote node to use for replication
    #[arg(long)]
    pub primary_slot_name: Option<String>,
}

#[derive(Debug, Args)]
pub struct PromoteArgs {
    pub cluster_name: Option<String>,
    /// Do not ask for confirmation at any point
    #[arg(long)]
    pub force: bool,
}

pub async fn failover(ctl: &Ctl, a: FailoverArgs) -> CtlResult<()> {
    let req = Request {
        action: "failover",
        candidate: a.candidate,
        force: a.force,
        leader: None,
        scheduled: None,
    };
    run(ctl, a.cluster_name.as_deref(), &a.group, req).await
}

pub async fn switchover(ctl: &Ctl, a: SwitchoverArgs) -> CtlResult<()> {
    let req = Request {
        action: "switchover",
        candidate: a.candidate,
        force: a.force,
        leader: a.leader,
        scheduled: a.scheduled,
    };
    run(ctl, a.cluster_name.as_deref(), &a.group, req).await
}

struct Request {
    action: &'static str,
    candidate: Option<String>,
    force: bool,
    leader: Option<String>,
    scheduled: Option<String>,
}

/// The sync standbys (or, with `check_leader`, the sync leader) include `name`.
fn sync_matches(cluster: &Cluster, name: &str) -> bool {
    cluster.sync.as_ref().is_some_and(|s| {
        s.members().iter().any(|m| m.eq_ignore_ascii_case(name))
            || s.leader
                .as_deref()
                .is_some_and(|l| l.eq_ignore_ascii_case(name))
    })
}

/// Checks and prompts in upstream's order; returns the request body and the leader name.
fn prepare(
    cluster: &Cluster,
    name: &str,
    r: &mut Request,
) -> CtlResult<(Map<String, Value>, Option<String>)> {
    let g = Global::of(cluster);
    let leader = cluster.leader_name().map(str::to_string);
    if r.action == "switchover" {
        let Some(l) = &leader else {
            return Err(msg("This cluster has no leader"));
        };
        let chosen = match (&r.leader, r.force) {
            (Some(x), _) => x.clone(),
            (None, true) => l.clone(),
            (None, false) => prompt::ask(
                if g.is_standby_cluster() {
                    "Standby Leader"
                } else {
                    "Primary"
                },
                Some(l),
            )?,
        };
        if &chosen != l {
            return Err(msg(format!(
                "Member {chosen} is not the leader of cluster {name}"
            )));
        }
        r.leader = Some(chosen);
    }
    let mut candidates: Vec<&str> = cluster
        .members
        .iter()
        .filter(|m| Some(&m.name) != leader.as_ref() && !m.data.nofailover())
        .map(|m| m.name.as_str())
        .collect();
    candidates.sort();
    if candidates.is_empty() {
        return Err(msg(format!("No candidates found to {} to", r.action)));
    }
    if r.candidate.is_none() && !r.force {
        let list = candidates
            .iter()
            .map(|c| format!("'{c}'"))
            .collect::<Vec<_>>()
            .join(", ");
        r.candidate = Some(prompt::ask(&format!("Candidate [{list}]"), Some(""))?);
    }
    let candidate = r.candidate.clone().filter(|c| !c.is_empty());
    if r.action == "failover" && candidate.is_none() {
        return Err(msg(
            "Failover could be performed only to a specific candidate",
        ));
    }
    if let Some(c) = &candidate
        && !candidates.contains(&c.as_str())
    {
        if Some(c) == leader.as_ref() {
            return Err(msg(format!(
                "Member {c} is already the leader of cluster {name}"
            )));
        }
        return Err(msg(format!(
            "Member {c} does not exist in cluster {name} or is tagged as nofailover"
        )));
    }
    if let Some(c) = &candidate
        && !r.force
        && r.action == "failover"
        && g.is_synchronous()
        && cluster
            .sync
            .as_ref()
            .is_some_and(|s| !s.members().is_empty())
        && !sync_matches(cluster, c)
        && !prompt::confirm(&format!(
            "Are you sure you want to failover to the asynchronous node {c}?"
        ))?
    {
        return Err(msg(format!("Aborting {}", r.action)));
    }
    schedule_and_confirm(cluster, name, r, leader.as_deref())
}

/// The switchover time (prompted), the request body, and the final confirmation.
fn schedule_and_confirm(
    cluster: &Cluster,
    name: &str,
    r: &mut Request,
    leader: Option<&str>,
) -> CtlResult<(Map<String, Value>, Option<String>)> {
    let g = Global::of(cluster);
    let mut scheduled_at = None;
    if r.action == "switchover" {
        if r.scheduled.is_none() && !r.force {
            let next = (chrono::Local::now() + chrono::Duration::hours(1)).format("%Y-%m-%dT%H:%M");
            r.scheduled = Some(prompt::ask(
                &format!("When should the switchover take place (e.g. {next} ) "),
                Some("now"),
            )?);
        }
        scheduled_at = parse_scheduled(r.scheduled.as_deref())?;
        if scheduled_at.is_some() && g.is_paused() {
            return Err(msg("Can't schedule switchover in the paused state"));
        }
    }
    let mut body = Map::new();
    body.insert("candidate".into(), json!(r.candidate));
    if r.action == "switchover" {
        body.insert("leader".into(), json!(r.leader));
    }
    if let Some(at) = &scheduled_at {
        body.insert("scheduled_at".into(), json!(at));
    }
    if !r.force {
        let demote = leader
            .map(|l| format!(", demoting current leader {l}"))
            .unwrap_or_default();
        let (q, abort) = match &scheduled_at {
            Some(at) => (
                format!(
                    "Are you sure you want to schedule switchover of cluster {name} at {at}{demote}?"
                ),
                format!("Aborting scheduled {}", r.action),
            ),
            None => (
                format!(
                    "Are you sure you want to {} cluster {name}{demote}?",
                    r.action
                ),
                format!("Aborting {}", r.action),
            ),
        };
        if !prompt::confirm(&q)? {
            return Err(msg(abort));
        }
    }
    Ok((body, scheduled_at))
}

async fn run(
    ctl: &Ctl,
    cluster_name: Option<&str>,
    group: &Group,
    mut r: Request,
) -> CtlResult<()> {
    let name = ctl.scope(cluster_name)?;
    let (dcs, mut cluster) = ctl.existing_cluster(&name, group).await?;
    println!("Current cluster topology");
    print_members(&cluster, &name);
    let (body, scheduled_at) = prepare(&cluster, &name, &mut r)?;
    let target = cluster
        .leader_member()
        .or_else(|| r.candidate.as_deref().and_then(|c| cluster.member(c)))
        .cloned();
    let body = Value::Object(body);
    let sent = match &target {
        Some(m) => send(ctl, m, r.action, &body).await,
        None => Err(msg("no member to send the request to")),
    };
    match sent {
        Ok((200 | 202, text)) => {
            println!("{} {text}", timestamp(6));
            cluster = dcs.get_cluster().await?;
        }
        Ok((status, text)) => {
            let action = format!("{}{}", r.action[..1].to_uppercase(), &r.action[1..]);
            println!("{action} failed, details: {status}, {text}");
            return Err(CtlError::Reported);
        }
        Err(e) => {
            eprintln!("{} - WARNING - {e}", timestamp(3));
            println!(
                "{} Could not {} using Patroni api, falling back to DCS",
                timestamp(6),
                r.action
            );
            let mut v = Map::new();
            if let Some(l) = r.leader.as_ref().filter(|l| !l.is_empty()) {
                v.insert("leader".into(), json!(l));
            }
            if let Some(c) = r.candidate.as_ref().filter(|c| !c.is_empty()) {
                v.insert("member".into(), json!(c));
            }
            if let Some(at) = scheduled_at {
                v.insert("scheduled_at".into(), json!(at));
            }
            dcs.set_failover_value(&Value::Object(v).to_string(), None)
                .await?;
        }
    }
    print_members(&cluster, &name);
    Ok(())
}

/// POST the action; an old server without /switchover gets /failover.
async fn send(
    ctl: &Ctl,
    m: &crate::dcs::Member,
    action: &str,
    body: &Value,
) -> CtlResult<(u16, String)> {
    let (status, text) = ctl
        .request(m, Method::POST, Some(action), Some(body))
        .await?;
    if status == 501
        && action == "switchover"
        && text.contains("Server does not support this operation")
    {
        return ctl
            .request(m, Method::POST, Some("failover"), Some(body))
            .await;
    }
    Ok((status, text))
}

pub async fn demote_cluster(ctl: &Ctl, a: DemoteArgs) -> CtlResult<()> {
    if a.host.is_none() && a.port.is_none() && a.restore_command.is_none() {
        return Err(msg(
            "At least --host, --port or --restore-command should be specified",
        ));
    }
    let mut sc = Map::new();
    let pairs = [
        ("host", a.host.map(Value::from)),
        ("port", a.port.map(Value::from)),
        ("primary_slot_name", a.primary_slot_name.map(Value::from)),
        ("restore_command", a.restore_command.map(Value::from)),
    ];
    for (k, v) in pairs {
        if let Some(v) = v.filter(|v| v.as_str() != Some("")) {
            sc.insert(k.into(), v);
        }
    }
    change_cluster_role(ctl, a.cluster_name.as_deref(), a.force, Some(sc)).await
}

pub async fn promote_cluster(ctl: &Ctl, a: PromoteArgs) -> CtlResult<()> {
    change_cluster_role(ctl, a.cluster_name.as_deref(), a.force, None).await
}

async fn change_cluster_role(
    ctl: &Ctl,
    name: Option<&str>,
    force: bool,
    standby: Option<Map<String, Value>>,
) -> CtlResult<()> {
    let name = ctl.scope(name)?;
    let demote = standby.is_some();
    let verb = if demote { "demot" } else { "promot" };
    let target = if demote {
        Role::StandbyLeader
    } else {
        Role::Primary
    };
    let (dcs, cluster) = ctl.existing_cluster(&name, &Group { group: None }).await?;
    let Some(leader) = cluster.leader_member().cloned() else {
        return Err(msg(format!(
            "Cluster has no leader, {verb}ion is not possible"
        )));
    };
    if leader.data.role == target {
        return Err(msg("Cluster is already in the required state"));
    }
    println!("Current cluster topology");
    print_members(&cluster, &name);
    if !force && !prompt::confirm(&format!("Are you sure you want to {verb}e {name} cluster?"))? {
        return Err(msg(format!("Aborted cluster {verb}ion")));
    }
    let body = json!({"standby_cluster": standby.map(Value::Object).unwrap_or(Value::Null)});
    let fail = |why: String| msg(format!("Failed to {verb}e {name} cluster: {why}"));
    let (status, text) = ctl
        .request(&leader, Method::PATCH, Some("config"), Some(&body))
        .await
        .map_err(|e| fail(e.to_string()))?;
    if status != 200 {
        return Err(fail(format!(
            "/config PATCH status code={status}, ({text})"
        )));
    }
    let mut cluster;
    loop {
        cluster = dcs.get_cluster().await?;
        let now = chrono::Local::now().format("%Y-%m-%d %H:%M:%S");
        let l = cluster.leader_member();
        let (role, state) = (l.map(|m| m.data.role), l.map(|m| m.data.state.clone()));
        let old_state = cluster.member(&leader.name).map(|m| m.data.state.clone());
        if role == Some(target)
            && state == Some(PgState::Running)
            && (!demote || old_state == Some(PgState::Running))
        {
            println!("{now} cluster is successfully {verb}ed");
            break;
        }
        let show = |r: Option<Role>| r.map(Role::as_str).unwrap_or("None");
        let mut line = format!(
            "{now} cluster is unlocked: {}, leader role: {}, leader state: {}",
            if cluster.is_unlocked() {
                "True"
            } else {
                "False"
            },
            show(role),
            state.as_ref().map(PgState::as_str).unwrap_or("None")
        );
        if demote
            && l.is_some_and(|m| m.name != leader.name)
            && let Some(s) = &old_state
        {
            line += &format!(", previous leader state: '{}'", s.as_str());
        }
        println!("{line}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    println!(
        "{}",
        format_members(&cluster, &name, false, super::cli::Format::Pretty)
    );
    Ok(())
}
