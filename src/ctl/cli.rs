//! Command line: upstream's commands, options and help texts.

use super::{CtlResult, actions, edit, query, read, switchover};
use crate::ctl::Ctl;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "patronictl",
    about = "Command-line interface for interacting with Patroni.",
    disable_version_flag = true
)]
pub struct Cli {
    /// Configuration file [default: ~/.config/patroni/patronictl.yaml]
    #[arg(short = 'c', long = "config-file", env = "PATRONICTL_CONFIG_FILE")]
    pub config_file: Option<PathBuf>,
    /// The DCS connect url, e.g. etcd3://127.0.0.1:2379 (optionally /NAMESPACE)
    #[arg(short = 'd', long = "dcs-url", visible_alias = "dcs", env = "DCS_URL")]
    pub dcs_url: Option<String>,
    /// Allow connections to SSL sites without certs
    #[arg(short = 'k', long)]
    pub insecure: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// Role filter, as upstream spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CtlRole {
    Leader,
    Primary,
    #[value(name = "standby-leader")]
    StandbyLeader,
    Replica,
    Standby,
    Any,
}

impl CtlRole {
    pub fn as_str(self) -> &'static str {
        match self {
            CtlRole::Leader => "leader",
            CtlRole::Primary => "primary",
            CtlRole::StandbyLeader => "standby-leader",
            CtlRole::Replica => "replica",
            CtlRole::Standby => "standby",
            CtlRole::Any => "any",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Pretty,
    Tsv,
    Json,
    Yaml,
    Yml,
    /// Internal: `topology` (not selectable on the command line).
    #[value(skip)]
    Topology,
}

#[derive(Debug, Args, Clone)]
pub struct Group {
    /// Citus group
    #[arg(long)]
    pub group: Option<i64>,
}

#[derive(Debug, Args, Clone)]
pub struct Watch {
    /// Auto update the screen every 2 seconds
    #[arg(short = 'W')]
    pub w: bool,
    /// Auto update the screen every X seconds
    #[arg(short = 'w', long = "watch")]
    pub watch: Option<f64>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the Patroni members for a given Patroni
    List(ListArgs),
    /// Prints ASCII topology for given cluster
    Topology(TopologyArgs),
    /// Generate a dsn for the provided member, defaults to a dsn of the leader
    Dsn(DsnArgs),
    /// Query a Patroni PostgreSQL member
    Query(query::QueryArgs),
    /// Remove cluster from DCS
    Remove(RemoveArgs),
    /// Reload cluster member configuration
    Reload(actions::ReloadArgs),
    /// Restart cluster member
    Restart(actions::RestartArgs),
    /// Reinitialize cluster member
    Reinit(actions::ReinitArgs),
    /// Failover to a replica
    Failover(switchover::FailoverArgs),
    /// Switchover to a replica
    Switchover(switchover::SwitchoverArgs),
    /// Discard scheduled events
    Flush(actions::FlushArgs),
    /// Disable auto failover
    Pause(actions::PauseArgs),
    /// Resume auto failover
    Resume(actions::PauseArgs),
    /// Edit cluster configuration
    EditConfig(edit::EditArgs),
    /// Show cluster configuration
    ShowConfig(ClusterArg),
    /// Output version of patronictl command or a running Patroni instance
    Version(VersionArgs),
    /// Show the history of failovers/switchovers
    History(HistoryArgs),
    /// Demote cluster to a standby cluster
    DemoteCluster(switchover::DemoteArgs),
    /// Promote cluster, make it run standalone
    PromoteCluster(switchover::PromoteArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    pub cluster_names: Vec<String>,
    #[command(flatten)]
    pub group: Group,
    /// Show some extra information
    #[arg(short = 'e', long)]
    pub extended: bool,
    /// Print timestamp
    #[arg(short = 't', long = "timestamp")]
    pub ts: bool,
    /// Output format
    #[arg(short = 'f', long = "format", value_enum, default_value = "pretty")]
    pub fmt: Format,
    #[command(flatten)]
    pub watch: Watch,
}

#[derive(Debug, Args)]
pub struct TopologyArgs {
    pub cluster_names: Vec<String>,
    #[command(flatten)]
    pub group: Group,
    #[command(flatten)]
    pub watch: Watch,
}

#[derive(Debug, Args)]
pub struct DsnArgs {
    pub cluster_name: Option<String>,
    #[command(flatten)]
    pub group: Group,
    /// Give a dsn of any member with this role
    #[arg(short = 'r', long, value_enum)]
    pub role: Option<CtlRole>,
    /// Generate a dsn for this member
    #[arg(short = 'm', long)]
    pub member: Option<String>,
}

#[derive(Debug, Args)]
pub struct RemoveArgs {
    pub cluster_name: String,
    #[command(flatten)]
    pub group: Group,
    /// Output format
    #[arg(short = 'f', long = "format", value_enum, default_value = "pretty")]
    pub fmt: Format,
}

#[derive(Debug, Args)]
pub struct ClusterArg {
    pub cluster_name: Option<String>,
    #[command(flatten)]
    pub group: Group,
}

#[derive(Debug, Args)]
pub struct VersionArgs {
    pub cluster_name: Option<String>,
    pub member_names: Vec<String>,
    #[command(flatten)]
    pub group: Group,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    pub cluster_name: Option<String>,
    #[command(flatten)]
    pub group: Group,
    /// Output format
    #[arg(short = 'f', long = "format", value_enum, default_value = "pretty")]
    pub fmt: Format,
}

pub async fn dispatch(ctl: &Ctl, command: Command) -> CtlResult<()> {
    match command {
        Command::List(a) => read::list(ctl, a).await,
        Command::Topology(a) => read::topology(ctl, a).await,
        Command::Dsn(a) => read::dsn(ctl, a).await,
        Command::Query(a) => query::run(ctl, a).await,
        Command::Remove(a) => read::remove(ctl, a).await,
        Command::Reload(a) => actions::reload(ctl, a).await,
        Command::Restart(a) => actions::restart(ctl, a).await,
        Command::Reinit(a) => actions::reinit(ctl, a).await,
        Command::Failover(a) => switchover::failover(ctl, a).await,
        Command::Switchover(a) => switchover::switchover(ctl, a).await,
        Command::Flush(a) => actions::flush(ctl, a).await,
        Command::Pause(a) => actions::toggle_pause(ctl, a, true).await,
        Command::Resume(a) => actions::toggle_pause(ctl, a, false).await,
        Command::EditConfig(a) => edit::edit_config(ctl, a).await,
        Command::ShowConfig(a) => read::show_config(ctl, a).await,
        Command::Version(a) => read::version(ctl, a).await,
        Command::History(a) => read::history(ctl, a).await,
        Command::DemoteCluster(a) => switchover::demote_cluster(ctl, a).await,
        Command::PromoteCluster(a) => switchover::promote_cluster(ctl, a).await,
    }
}
