//! Commands that only read: list, topology, dsn, show-config, version, history; and
//! remove, which deletes the cluster's keys after three confirmations.

use super::cli::{
    ClusterArg, DsnArgs, Format, HistoryArgs, ListArgs, RemoveArgs, TopologyArgs, VersionArgs,
    Watch,
};
use super::members::{conn_host_port, format_members, timestamp};
use super::select::any_member;
use super::table::{py_str, render, to_yaml};
use super::{Ctl, CtlResult, msg, prompt};
use crate::dcs::Dcs;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// Upstream's `watching`: run once, then every `-w` seconds (2 with `-W`) until killed.
pub async fn watching<F, Fut>(w: &Watch, clear: bool, mut body: F) -> CtlResult<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = CtlResult<()>>,
{
    let every = match (w.watch, w.w) {
        (Some(s), _) if s > 0.0 => Some(Duration::from_secs_f64(s)),
        (_, true) => Some(Duration::from_secs(2)),
        _ => None,
    };
    loop {
        let started = Instant::now();
        if every.is_some() && clear {
            print!("\x1b[2J\x1b[1;1H");
        }
        body().await?;
        let Some(every) = every else { return Ok(()) };
        tokio::time::sleep(every.saturating_sub(started.elapsed())).await;
    }
}

pub async fn list(ctl: &Ctl, a: ListArgs) -> CtlResult<()> {
    let names = if a.cluster_names.is_empty() {
        match ctl.scope(None) {
            Ok(s) => vec![s],
            Err(_) => {
                eprintln!(
                    "{} - WARNING - Listing members: No cluster names were provided",
                    timestamp(3)
                );
                return Ok(());
            }
        }
    } else {
        a.cluster_names.clone()
    };
    list_clusters(ctl, &names, &a.group, a.extended, a.fmt, &a.watch, a.ts).await
}

async fn list_clusters(
    ctl: &Ctl,
    names: &[String],
    group: &super::cli::Group,
    extended: bool,
    fmt: Format,
    watch: &Watch,
    ts: bool,
) -> CtlResult<()> {
    watching(watch, true, || async {
        if ts {
            println!("{}", timestamp(0));
        }
        for name in names {
            let (_, cluster) = ctl.cluster(name, group).await?;
            println!("{}", format_members(&cluster, name, extended, fmt));
        }
        Ok(())
    })
    .await
}

pub async fn topology(ctl: &Ctl, a: TopologyArgs) -> CtlResult<()> {
    let names = if a.cluster_names.is_empty() {
        vec![ctl.scope(None)?]
    } else {
        a.cluster_names.clone()
    };
    list_clusters(
        ctl,
        &names,
        &a.group,
        false,
        Format::Topology,
        &a.watch,
        false,
    )
    .await
}

pub async fn dsn(ctl: &Ctl, a: DsnArgs) -> CtlResult<()> {
    let scope = ctl.scope(a.cluster_name.as_deref())?;
    let (_, cluster) = ctl.existing_cluster(&scope, &a.group).await?;
    let m = any_member(&cluster, a.role, a.member.as_deref())?
        .ok_or_else(|| msg("Can not find a suitable member"))?;
    let (host, port) = conn_host_port(m);
    let host = host.ok_or_else(|| msg(format!("Member {} has no connection address", m.name)))?;
    println!("host={host} port={port}");
    Ok(())
}

pub async fn show_config(ctl: &Ctl, a: ClusterArg) -> CtlResult<()> {
    let scope = ctl.scope(a.cluster_name.as_deref())?;
    let (_, cluster) = ctl.existing_cluster(&scope, &a.group).await?;
    if let Some(cfg) = &cluster.config {
        println!("{}", to_yaml(&Value::Object(cfg.data.clone()), false));
    }
    Ok(())
}

pub async fn history(ctl: &Ctl, a: HistoryArgs) -> CtlResult<()> {
    let scope = ctl.scope(a.cluster_name.as_deref())?;
    let (_, cluster) = ctl.existing_cluster(&scope, &a.group).await?;
    let columns: Vec<String> = ["TL", "LSN", "Reason", "Timestamp", "New Leader"]
        .map(String::from)
        .to_vec();
    let rows: Vec<Vec<Value>> = cluster
        .history
        .iter()
        .flat_map(|h| &h.lines)
        .map(|l| {
            vec![
                json!(l.timeline),
                json!(l.lsn),
                json!(l.reason),
                json!(l.timestamp.clone().unwrap_or_default()),
                json!(l.new_leader.clone().unwrap_or_default()),
            ]
        })
        .collect();
    println!(
        "{}",
        render(
            &columns,
            &rows,
            &[("TL", 'r'), ("LSN", 'r')],
            a.fmt,
            "",
            "\t"
        )
    );
    Ok(())
}

pub async fn version(ctl: &Ctl, a: VersionArgs) -> CtlResult<()> {
    println!("patronictl version {}", crate::PATRONI_VERSION);
    let Some(scope) = a.cluster_name else {
        return Ok(());
    };
    println!();
    let (_, cluster) = ctl.existing_cluster(&scope, &a.group).await?;
    for m in &cluster.members {
        if m.data.api_url.is_none()
            || !(a.member_names.is_empty() || a.member_names.contains(&m.name))
        {
            continue;
        }
        let got = ctl
            .request(m, reqwest::Method::GET, None, None)
            .await
            .and_then(|(_, body)| {
                serde_json::from_str::<Value>(&body)
                    .map_err(|e| msg(format!("invalid JSON from the REST API: {e}")))
            });
        match got {
            Ok(data) => {
                let v = data
                    .get("patroni")
                    .and_then(|p| p.get("version"))
                    .map(py_str)
                    .unwrap_or("None".into());
                let pg = data
                    .get("server_version")
                    .and_then(Value::as_u64)
                    .filter(|v| *v > 0);
                let pg = pg
                    .map(|n| format!(" PostgreSQL {}", format_pg_version(n)))
                    .unwrap_or_default();
                println!("{}: Patroni {v}{pg}", m.name);
            }
            Err(e) => println!("{}: failed to get version: {e}", m.name),
        }
    }
    Ok(())
}

pub fn format_pg_version(v: u64) -> String {
    if v < 100000 {
        format!("{}.{}.{}", v / 10000, v / 100 % 100, v % 100)
    } else {
        format!("{}.{}", v / 10000, v % 100)
    }
}

pub async fn remove(ctl: &Ctl, a: RemoveArgs) -> CtlResult<()> {
    let (dcs, cluster) = ctl.existing_cluster(&a.cluster_name, &a.group).await?;
    println!(
        "{}",
        format_members(&cluster, &a.cluster_name, false, a.fmt)
    );
    let name = prompt::ask("Please confirm the cluster name to remove", None)?;
    if name != a.cluster_name {
        return Err(msg("Cluster names specified do not match"));
    }
    const AWARE: &str = "Yes I am aware";
    let typed = prompt::ask(
        &format!(
            "You are about to remove all information in DCS for {}, please type: \"{AWARE}\"",
            a.cluster_name
        ),
        None,
    )?;
    if typed != AWARE {
        return Err(msg(format!("You did not exactly type \"{AWARE}\"")));
    }
    if let Some(leader) = cluster.leader_name() {
        let l = prompt::ask(
            "This cluster currently is healthy. Please specify the leader name to continue",
            None,
        )?;
        if l != leader {
            return Err(msg("You did not specify the current leader of the cluster"));
        }
    }
    dcs.delete_cluster().await?;
    Ok(())
}
