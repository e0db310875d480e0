//! Commands that ask members to act through their REST API: reload, restart, reinit,
//! flush, pause/resume. Messages follow upstream; any refused request makes the exit code
//! non-zero after all members were tried.

use super::cli::{CtlRole, Group};
use super::members::{Global, timestamp};
use super::schedule::{check_pg_version, parse_scheduled};
use super::select::{confirm_members_action, select_members};
use super::{Ctl, CtlError, CtlResult, msg, prompt};
use crate::dcs::{Cluster, Dcs, Member, PgState};
use clap::Args;
use reqwest::Method;
use serde_json::{Map, Value, json};
use std::time::{Duration, Instant};

#[derive(Debug, Args)]
pub struct ReloadArgs {
    pub cluster_name: String,
    pub member_names: Vec<String>,
    #[command(flatten)]
    pub group: Group,
    /// Reload only members with this role
    #[arg(short = 'r', long, value_enum, default_value = "any")]
    pub role: CtlRole,
    /// Do not ask for confirmation at any point
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct RestartArgs {
    pub cluster_name: String,
    pub member_names: Vec<String>,
    #[command(flatten)]
    pub group: Group,
    /// Restart only members with this role
    #[arg(short = 'r', long, value_enum, default_value = "any")]
    pub role: CtlRole,
    /// Restart a single member only
    #[arg(long = "any")]
    pub p_any: bool,
    /// Timestamp of a scheduled restart in unambiguous format (e.g. ISO 8601)
    #[arg(long)]
    pub scheduled: Option<String>,
    /// Restart if the PostgreSQL version is less than provided (e.g. 9.5.2)
    #[arg(long = "pg-version")]
    pub version: Option<String>,
    /// Restart if pending
    #[arg(long)]
    pub pending: bool,
    /// Return error and fail over if necessary when restarting takes longer than this.
    #[arg(long)]
    pub timeout: Option<String>,
    /// Do not ask for confirmation at any point
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct ReinitArgs {
    pub cluster_name: String,
    pub member_names: Vec<String>,
    #[command(flatten)]
    pub group: Group,
    /// Do not ask for confirmation at any point
    #[arg(long)]
    pub force: bool,
    /// Get basebackup from leader
    #[arg(long)]
    pub from_leader: bool,
    /// Wait until reinitialization completes
    #[arg(long)]
    pub wait: bool,
}

#[derive(Debug, Args)]
pub struct FlushArgs {
    pub cluster_name: String,
    /// [MEMBER_NAMES]... followed by what to flush: restart or switchover
    #[arg(value_name = "[MEMBER_NAMES]... {restart|switchover}", required = true, num_args = 1..)]
    pub args: Vec<String>,
    #[command(flatten)]
    pub group: Group,
    /// Flush only members with this role
    #[arg(short = 'r', long, value_enum, default_value = "any")]
    pub role: CtlRole,
    /// Do not ask for confirmation at any point
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct PauseArgs {
    pub cluster_name: Option<String>,
    #[command(flatten)]
    pub group: Group,
    /// Wait until pause is applied (pause) or cleared (resume) on all nodes
    #[arg(long)]
    pub wait: bool,
}

/// Upstream's `check_response`: print Success/Failed; `false` when refused.
fn check_response(
    status: u16,
    body: &str,
    member: &str,
    action: &str,
    silent_success: bool,
) -> bool {
    if status >= 400 {
        println!("Failed: {action} for member {member}, status code={status}, ({body})");
        return false;
    }
    if !silent_success {
        println!("Success: {action} for member {member}");
    }
    true
}

fn finish(failed: bool) -> CtlResult<()> {
    if failed {
        Err(CtlError::Reported)
    } else {
        Ok(())
    }
}

pub async fn reload(ctl: &Ctl, a: ReloadArgs) -> CtlResult<()> {
    let (_, cluster) = ctl.existing_cluster(&a.cluster_name, &a.group).await?;
    let members = select_members(
        &cluster,
        &a.cluster_name,
        &a.member_names,
        a.role,
        a.force,
        "reload",
        true,
    )?;
    let mut failed = false;
    for m in members {
        let (status, body) = ctl.request(m, Method::POST, Some("reload"), None).await?;
        match status {
            200 => println!("No changes to apply on member {}", m.name),
            202 => println!(
                "Reload request received for member {} and will be processed within {} seconds",
                m.name,
                Global::of(&cluster).loop_wait()
            ),
            _ => {
                println!(
                    "Failed: reload for member {}, status code={status}, ({body})",
                    m.name
                );
                failed = true;
            }
        }
    }
    finish(failed)
}

pub async fn restart(ctl: &Ctl, a: RestartArgs) -> CtlResult<()> {
    let (_, cluster) = ctl.existing_cluster(&a.cluster_name, &a.group).await?;
    let mut members = select_members(
        &cluster,
        &a.cluster_name,
        &a.member_names,
        a.role,
        a.force,
        "restart",
        false,
    )?;
    let scheduled = match (&a.scheduled, a.force) {
        (None, false) => {
            let next = (chrono::Local::now() + chrono::Duration::hours(1)).format("%Y-%m-%dT%H:%M");
            Some(prompt::ask(
                &format!("When should the restart take place (e.g. {next}) "),
                Some("now"),
            )?)
        }
        (s, _) => s.clone(),
    };
    let scheduled_at = parse_scheduled(scheduled.as_deref())?;
    let mut content = Map::new();
    if a.pending {
        content.insert("restart_pending".into(), json!(true));
        // A scheduled restart re-checks at that time; now only filter immediate ones.
        if scheduled_at.is_none() {
            members.retain(|m| m.data.pending_restart == Some(true));
        }
    }
    if a.p_any {
        members = pick_random(members);
    }
    confirm_members_action(
        &members,
        a.force,
        "restart",
        scheduled_at.as_deref(),
        a.pending,
    )?;
    let version = match (&a.version, a.force) {
        (None, false) => Some(prompt::ask(
            "Restart if the PostgreSQL version is less than provided (e.g. 9.5.2) ",
            Some(""),
        )?),
        (v, _) => v.clone(),
    };
    if let Some(v) = version.filter(|v| !v.is_empty()) {
        check_pg_version(&v)?;
        content.insert("postgres_version".into(), json!(v));
    }
    if let Some(at) = &scheduled_at {
        if Global::of(&cluster).is_paused() {
            return Err(msg("Can't schedule restart in the paused state"));
        }
        content.insert("schedule".into(), json!(at));
    }
    if let Some(t) = &a.timeout {
        content.insert("timeout".into(), json!(t));
    }
    let body = Value::Object(content);
    let mut failed = false;
    for m in members {
        if scheduled_at.is_some() && a.force && m.data.scheduled_restart.is_some() {
            let (s, b) = ctl
                .request(m, Method::DELETE, Some("restart"), None)
                .await?;
            failed |= !check_response(s, &b, &m.name, "flush scheduled restart", true);
        }
        let (status, text) = ctl
            .request(m, Method::POST, Some("restart"), Some(&body))
            .await?;
        match status {
            200 => println!("Success: restart on member {}", m.name),
            202 => println!("Success: restart scheduled on member {}", m.name),
            409 => {
                println!(
                    "Failed: another restart is already scheduled on member {}",
                    m.name
                );
                failed = true;
            }
            _ => {
                println!(
                    "Failed: restart for member {}, status code={status}, ({text})",
                    m.name
                );
                failed = true;
            }
        }
    }
    finish(failed)
}

fn pick_random(mut members: Vec<&Member>) -> Vec<&Member> {
    if members.is_empty() {
        return members;
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as usize)
        .unwrap_or(0);
    let i = nanos % members.len();
    vec![members.swap_remove(i)]
}

pub async fn reinit(ctl: &Ctl, a: ReinitArgs) -> CtlResult<()> {
    let (_, cluster) = ctl.existing_cluster(&a.cluster_name, &a.group).await?;
    let members = select_members(
        &cluster,
        &a.cluster_name,
        &a.member_names,
        CtlRole::Replica,
        a.force,
        "reinitialize",
        true,
    )?;
    let mut waiting: Vec<&Member> = Vec::new();
    let mut failed = false;
    for m in members {
        let mut force = a.force;
        loop {
            let body = json!({"force": force, "from_leader": a.from_leader});
            let (status, text) = ctl
                .request(m, Method::POST, Some("reinitialize"), Some(&body))
                .await?;
            let started = check_response(status, &text, &m.name, "reinitialize", false);
            if !started
                && text.ends_with(" already in progress")
                && !a.force
                && prompt::confirm("Do you want to cancel it and reinitialize anyway?")?
            {
                force = true;
                continue;
            }
            failed |= !started;
            if started && a.wait {
                waiting.push(m);
            }
            break;
        }
    }
    wait_reinit(ctl, waiting).await?;
    finish(failed)
}

async fn wait_reinit(ctl: &Ctl, mut waiting: Vec<&Member>) -> CtlResult<()> {
    let mut last: Vec<String> = Vec::new();
    while !waiting.is_empty() {
        let names: Vec<String> = waiting.iter().map(|m| m.name.clone()).collect();
        if names != last {
            println!(
                "Waiting for reinitialize to complete on: {}",
                names.join(", ")
            );
            last = names;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut still = Vec::new();
        for m in waiting {
            let (_, body) = ctl.request(m, Method::GET, Some("patroni"), None).await?;
            let state = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v.get("state").and_then(Value::as_str).map(str::to_string));
            if state.as_deref() == Some(PgState::CreatingReplica.as_str()) {
                still.push(m);
            } else {
                println!("Reinitialize is completed on: {}", m.name);
            }
        }
        waiting = still;
    }
    Ok(())
}

/// Members with a REST API, the leader first (upstream's `get_all_members_leader_first`).
pub fn leader_first(cluster: &Cluster) -> Vec<&Member> {
    let leader = cluster.leader_member().filter(|l| l.data.api_url.is_some());
    let rest = cluster.members.iter().filter(|m| {
        m.data.api_url.is_some() && Some(m.name.as_str()) != leader.map(|l| l.name.as_str())
    });
    leader.into_iter().chain(rest).collect()
}

pub async fn flush(ctl: &Ctl, a: FlushArgs) -> CtlResult<()> {
    let (target, names) = a.args.split_last().expect("clap requires one value");
    let (dcs, cluster) = ctl.existing_cluster(&a.cluster_name, &a.group).await?;
    match target.as_str() {
        "restart" => {
            let mut failed = false;
            for m in select_members(
                &cluster,
                &a.cluster_name,
                names,
                a.role,
                a.force,
                "flush",
                true,
            )? {
                if m.data
                    .scheduled_restart
                    .as_ref()
                    .is_some_and(super::members::py_truthy)
                {
                    let (s, b) = ctl
                        .request(m, Method::DELETE, Some("restart"), None)
                        .await?;
                    failed |= !check_response(s, &b, &m.name, "flush scheduled restart", false);
                } else {
                    println!("No scheduled restart for member {}", m.name);
                }
            }
            finish(failed)
        }
        "switchover" => {
            let Some(f) = cluster
                .failover
                .as_ref()
                .filter(|f| f.scheduled_at.is_some())
            else {
                println!("No pending scheduled switchover");
                return Ok(());
            };
            for m in leader_first(&cluster) {
                match ctl
                    .request(m, Method::DELETE, Some("switchover"), None)
                    .await
                {
                    Ok((s @ (200 | 404), body)) => {
                        println!("{}: {body}", if s == 200 { "Success" } else { "Failed" });
                        return finish(s != 200);
                    }
                    Ok((s, body)) => {
                        println!("Failed: member={}, status_code={s}, ({body})", m.name)
                    }
                    Err(e) => eprintln!("{} - WARNING - {e}", timestamp(3)),
                }
            }
            println!(
                "{} Could not find any accessible member of cluster {}",
                timestamp(6),
                a.cluster_name
            );
            if !dcs.set_failover_value("{}", Some(f.version)).await? {
                return Err(msg(
                    "The scheduled switchover changed meanwhile; nothing was flushed",
                ));
            }
            Ok(())
        }
        other => Err(msg(format!(
            "Invalid value for '[MEMBER_NAMES]... {{restart|switchover}}': '{other}' is not one of 'restart', 'switchover'."
        ))),
    }
}

pub async fn toggle_pause(ctl: &Ctl, a: PauseArgs, paused: bool) -> CtlResult<()> {
    let scope = ctl.scope(a.cluster_name.as_deref())?;
    let (dcs, cluster) = ctl.existing_cluster(&scope, &a.group).await?;
    if Global::of(&cluster).is_paused() == paused {
        return Err(msg(format!(
            "Cluster is {} paused",
            if paused { "already" } else { "not" }
        )));
    }
    let word = if paused { "pause" } else { "resume" };
    let body = json!({"pause": if paused { json!(true) } else { Value::Null }});
    for m in leader_first(&cluster) {
        let (status, text) = match ctl
            .request(m, Method::PATCH, Some("config"), Some(&body))
            .await
        {
            Ok(r) => r,
            Err(e) => {
                eprintln!("{} - WARNING - {e}", timestamp(3));
                continue;
            }
        };
        if status != 200 {
            println!("Failed: {word} cluster management status code={status}, ({text})");
            return Err(CtlError::Reported);
        }
        if a.wait {
            return wait_pause(&dcs, paused, &cluster).await;
        }
        println!(
            "Success: cluster management is {}",
            if paused { "paused" } else { "resumed" }
        );
        return Ok(());
    }
    Err(msg("Can not find accessible cluster member"))
}

async fn wait_pause(dcs: &impl Dcs, paused: bool, old: &Cluster) -> CtlResult<()> {
    println!(
        "'{}' request sent, waiting until it is recognized by all nodes",
        if paused { "pause" } else { "resume" }
    );
    let watched: Vec<(&str, i64)> = old
        .members
        .iter()
        .filter(|m| m.data.api_url.is_some())
        .map(|m| (m.name.as_str(), m.version))
        .collect();
    let loop_wait = Global::of(old).loop_wait();
    let deadline = Instant::now() + Duration::from_secs(loop_wait + 1);
    loop {
        let cluster = dcs.get_cluster().await?;
        let pending: Vec<&crate::dcs::Member> = cluster
            .members
            .iter()
            .filter(|m| {
                watched.iter().any(|(n, _)| *n == m.name) && m.data.pause.unwrap_or(false) != paused
            })
            .collect();
        if pending.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            let remaining: Vec<&str> = pending
                .iter()
                .filter(|m| watched.iter().any(|(n, v)| *n == m.name && *v != m.version))
                .map(|m| m.name.as_str())
                .collect();
            if !remaining.is_empty() {
                println!(
                    "{} members didn't recognized pause state after {loop_wait} seconds",
                    remaining.join(", ")
                );
                return Err(CtlError::Reported);
            }
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    println!(
        "Success: cluster management is {}",
        if paused { "paused" } else { "resumed" }
    );
    Ok(())
}
