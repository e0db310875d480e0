//! Upstream's member selection rules for actions: by role and names, with the member
//! table shown first, a prompt when no member was named, and the final confirmation.

use super::cli::CtlRole;
use super::members::print_members;
use super::{CtlError, CtlResult, msg, prompt};
use crate::dcs::{Cluster, Member, Role};

/// Members with `role` (upstream's `get_all_members`); leader roles check the leader's
/// own advertised role.
pub fn members_with_role(cluster: &Cluster, role: CtlRole) -> Vec<&Member> {
    let leader = cluster.leader_member();
    match role {
        CtlRole::Leader | CtlRole::Primary | CtlRole::StandbyLeader => {
            let Some(l) = leader else { return vec![] };
            let r = l.data.role;
            let primary = matches!(r, Role::Primary);
            let ok = role == CtlRole::Leader
                || (role == CtlRole::StandbyLeader && !primary)
                || (role == CtlRole::Primary && r != Role::StandbyLeader);
            if ok { vec![l] } else { vec![] }
        }
        CtlRole::Any => cluster.members.iter().collect(),
        CtlRole::Replica | CtlRole::Standby => {
            let ln = cluster.leader_name();
            cluster
                .members
                .iter()
                .filter(|m| Some(m.name.as_str()) != ln)
                .collect()
        }
    }
}

/// The first member matching `role` (default leader) or named `member`.
pub fn any_member<'a>(
    cluster: &'a Cluster,
    role: Option<CtlRole>,
    member: Option<&str>,
) -> CtlResult<Option<&'a Member>> {
    let role = match (role, member) {
        (Some(_), Some(_)) => {
            return Err(msg("--role and --member are mutually exclusive options"));
        }
        (_, Some(_)) => CtlRole::Any,
        (r, None) => r.unwrap_or(CtlRole::Leader),
    };
    Ok(members_with_role(cluster, role)
        .into_iter()
        .find(|m| member.is_none_or(|n| m.name == n)))
}

/// Upstream's `get_members`: filter by role and names, show the table, prompt for a member
/// when none was named, and (optionally) confirm.
pub fn select_members<'a>(
    cluster: &'a Cluster,
    cluster_name: &str,
    names: &[String],
    role: CtlRole,
    force: bool,
    action: &str,
    ask_confirmation: bool,
) -> CtlResult<Vec<&'a Member>> {
    let members = members_with_role(cluster, role);
    let candidates: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
    // Upstream always has a role here, so the table is always shown.
    if names.is_empty() && candidates.is_empty() {
        return Err(msg(format!(
            "{cluster_name} cluster doesn't have any members"
        )));
    }
    print_members(cluster, cluster_name);
    let mut chosen: Vec<String> = if !names.is_empty() {
        for n in names {
            if cluster.member(n).is_none() {
                return Err(msg(format!("{n} is not a member of cluster")));
            }
        }
        let c: Vec<String> = names
            .iter()
            .filter(|n| candidates.contains(&n.as_str()))
            .cloned()
            .collect();
        if c.is_empty() {
            return Err(msg(format!("No {} among provided members", role.as_str())));
        }
        c
    } else if action != "reinitialize" {
        candidates.iter().map(|s| s.to_string()).collect()
    } else {
        vec![]
    };
    if chosen.is_empty() && !force {
        let q = format!(
            "Which member do you want to {action} [{}]?",
            candidates.join(", ")
        );
        chosen = vec![prompt::ask(&q, Some(""))?];
    }
    for n in &chosen {
        if !candidates.contains(&n.as_str()) {
            return Err(msg(format!("{n} is not a member of cluster")));
        }
    }
    let selected: Vec<&Member> = members
        .into_iter()
        .filter(|m| chosen.contains(&m.name))
        .collect();
    if ask_confirmation {
        confirm_members_action(&selected, force, action, None, false)?;
    }
    Ok(selected)
}

pub fn confirm_members_action(
    members: &[&Member],
    force: bool,
    action: &str,
    scheduled_at: Option<&str>,
    pending: bool,
) -> CtlResult<()> {
    if force {
        return Ok(());
    }
    let names = members
        .iter()
        .map(|m| m.name.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let (q, abort) = match scheduled_at {
        Some(_) if pending => (
            "The nodes needing a restart will be identified at the scheduled time, and might be different from the ones showing pending restart right now. Is this fine?".to_string(),
            format!("Aborted scheduled {action}"),
        ),
        Some(at) => (
            format!("Are you sure you want to schedule {action} of members {names} at {at}?"),
            format!("Aborted scheduled {action}"),
        ),
        None => (format!("Are you sure you want to {action} members {names}?"), format!("Aborted {action}")),
    };
    if prompt::confirm(&q)? {
        Ok(())
    } else {
        Err(CtlError::Msg(abort))
    }
}
