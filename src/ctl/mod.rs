//! `patronictl`: the operator command line, compatible with upstream's (same config file,
//! options, prompts, messages and output formats). It reads the cluster straight from the
//! DCS and asks members to act through their REST API.

pub mod actions;
pub mod cli;
pub mod context;
pub mod edit;
pub mod members;
pub mod prompt;
pub mod query;
pub mod read;
pub mod schedule;
pub mod select;
pub mod switchover;
pub mod table;

pub use cli::Cli;
pub use context::Ctl;

use crate::dcs::DcsError;

/// Everything that ends a command. `Display` is the one line the operator sees after
/// `Error: ` (upstream's click convention); `Reported` was already printed.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// Upstream's own wording (e.g. "This cluster has no leader").
    #[error("{0}")]
    Msg(String),
    #[error("{0}")]
    Dcs(#[from] DcsError),
    #[error("cannot reach the REST API of member {member} at {url}: {why}")]
    Unreachable {
        member: String,
        url: String,
        why: String,
    },
    /// The user answered no / closed stdin.
    #[error("Aborted!")]
    Aborted,
    /// A failure already described on stdout (upstream's "Failed: ..." lines).
    #[error("")]
    Reported,
}

pub type CtlResult<T> = Result<T, CtlError>;

pub fn msg(s: impl Into<String>) -> CtlError {
    CtlError::Msg(s.into())
}

/// Run one parsed command line; the binary maps the error to stderr + exit code.
pub async fn run(cli: Cli) -> CtlResult<()> {
    let ctl = Ctl::from_cli(&cli)?;
    cli::dispatch(&ctl, cli.command).await
}
