//! Errors of the PostgreSQL layer. Failed commands keep the tail of their output so the
//! log says why (a DBA reads these).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("could not run {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("{program} failed ({status}): {tail}")]
    CommandFailed {
        program: String,
        status: String,
        tail: String,
    },
    #[error("{what} did not finish within {secs} s: {tail}")]
    Timeout {
        what: String,
        secs: u64,
        tail: String,
    },
    #[error("postgres did not start: {reason}; log tail: {tail}")]
    StartFailed { reason: String, tail: String },
    #[error("postgres is already running with pid {pid}")]
    AlreadyRunning { pid: u32 },
    #[error("postgres is not running")]
    NotRunning,
    #[error("postgres is still running (pid {pid}); stop it first")]
    StillRunning { pid: u32 },
    #[error("data directory {0} is not empty")]
    DataDirNotEmpty(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot connect to postgres at {target}: {reason}")]
    Connect { target: String, reason: String },
    #[error("query failed: {0}")]
    Sql(String),
    #[error("invalid option: {0}")]
    BadOption(String),
    #[error("cannot rewind from {member}: {reason}")]
    Rewind { member: String, reason: String },
    #[error("unexpected output from {what}: {detail}")]
    Parse { what: String, detail: String },
}

pub type Result<T> = std::result::Result<T, PgError>;

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> PgError {
    let path = path.into();
    move |source| PgError::Io { path, source }
}

/// Last `max_lines` lines (at most ~2000 chars) of a process output, for error messages.
pub fn tail(text: &str, max_lines: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(max_lines);
    let joined = lines[start..].join(" | ");
    if joined.len() > 2000 {
        let cut = joined.len() - 2000;
        let cut = (cut..joined.len())
            .find(|i| joined.is_char_boundary(*i))
            .unwrap_or(cut);
        format!("...{}", &joined[cut..])
    } else {
        joined
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn tail_keeps_last_lines() {
        assert_eq!(super::tail("a\n\nb\nc\n", 2), "b | c");
        assert!(super::tail(&"x".repeat(5000), 3).starts_with("..."));
    }
}
