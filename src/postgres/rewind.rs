//! Timeline divergence against the leader, single-user crash recovery, pg_rewind.
//!
//! The leader's timeline and history come over a physical replication connection
//! (IDENTIFY_SYSTEM / TIMELINE_HISTORY). tokio-postgres cannot open one (no
//! `replication` startup parameter), so we run `psql "replication=true ..."`.

use std::process::Stdio;
use std::time::Duration;

use crate::config::Authentication;

use super::Postgres;
use super::conf;
use super::controldata;
use super::error::{PgError, Result, tail};
use super::files;
use super::lifecycle::LONG_JOB;
use super::process::{self, command, run};
use super::settings::{ConnTarget, PgSettings};
use super::sql;
use super::types::{ConfigRole, UpstreamConn, format_lsn, parse_lsn};

/// Is our history compatible with the leader's?
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Divergence {
    NotDiverged,
    Diverged {
        reason: String,
    },
    /// Could not tell (leader unreachable, local state unclean, ...).
    Unknown(String),
}

/// Where our WAL ends, as upstream reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalPosition {
    /// Replica (replayed up to `lsn`) vs former primary (checkpoint at `lsn`).
    pub in_recovery: bool,
    pub timeline: u32,
    pub lsn: u64,
}

/// Position from pg_controldata of a stopped, cleanly shut down cluster.
pub fn local_position(c: &super::types::ControlData) -> Option<LocalPosition> {
    let state = c.cluster_state.as_str();
    if matches!(state, "shut down in recovery" | "in archive recovery")
        && c.min_recovery_lsn != 0
        && c.min_recovery_timeline != 0
    {
        return Some(LocalPosition {
            in_recovery: true,
            timeline: c.min_recovery_timeline,
            lsn: c.min_recovery_lsn,
        });
    }
    // A replica with no minimum recovery point was a primary when it went down.
    if matches!(
        state,
        "shut down" | "shut down in recovery" | "in archive recovery"
    ) {
        return Some(LocalPosition {
            in_recovery: false,
            timeline: c.timeline,
            lsn: c.checkpoint_lsn,
        });
    }
    None
}

/// `parent_tli \t switchpoint \t reason` lines of a .history file.
pub fn parse_history(text: &str) -> Vec<(u32, u64)> {
    text.lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let tli = parts.next()?.parse().ok()?;
            let lsn = parse_lsn(parts.next()?)?;
            Some((tli, lsn))
        })
        .collect()
}

/// Upstream's rule: find where our timeline ended in the leader's history; we diverged
/// when our WAL goes past that switch point. `checkpoint_end` (end of the local shutdown
/// checkpoint record, 0 if unknown) lets a cleanly stopped former primary whose last
/// record is exactly the switch point follow without rewind.
pub fn divergence_from_history(
    history: &[(u32, u64)],
    local: LocalPosition,
    checkpoint_end: impl FnOnce() -> u64,
) -> Divergence {
    for &(parent, switchpoint) in history {
        if parent == local.timeline {
            let at = format!(
                "local timeline {} lsn {}, leader switched off it at {}",
                local.timeline,
                format_lsn(local.lsn),
                format_lsn(switchpoint)
            );
            let diverged = if local.in_recovery {
                local.lsn > switchpoint
            } else {
                local.lsn >= switchpoint || switchpoint != checkpoint_end()
            };
            return if diverged {
                Divergence::Diverged { reason: at }
            } else {
                Divergence::NotDiverged
            };
        }
        if parent > local.timeline {
            break;
        }
    }
    Divergence::Diverged {
        reason: format!(
            "local timeline {} is not in the leader's history",
            local.timeline
        ),
    }
}

/// Parse the end LSN of a record from pg_waldump's complaint about the record after it.
pub fn parse_waldump_end(stderr: &str, start: u64) -> Option<u64> {
    let pattern = format!(
        "error in WAL record at {}: invalid record length at ",
        format_lsn(start)
    );
    let line = stderr.lines().find(|l| l.contains(&pattern))?;
    let rest = &line[line.find(&pattern)? + pattern.len()..];
    parse_lsn(rest.split(':').next()?)
}

impl Postgres {
    /// Compare our WAL position with the leader's timeline history.
    pub async fn check_timeline_divergence(&self, from: &UpstreamConn) -> Result<Divergence> {
        let s = self.settings();
        let local = match self.current_position(&s).await? {
            Ok(p) => p,
            Err(why) => return Ok(Divergence::Unknown(why)),
        };
        let target = s.remote_target(&from.host, from.port, &s.replication());
        let leader_tli = match replication_command(&s, &target, "IDENTIFY_SYSTEM").await {
            Ok(row) => match row.get(1).and_then(|t| t.parse::<u32>().ok()) {
                Some(t) => t,
                None => {
                    return Ok(Divergence::Unknown(format!(
                        "bad IDENTIFY_SYSTEM answer {row:?}"
                    )));
                }
            },
            Err(e) => return Ok(Divergence::Unknown(e.to_string())),
        };
        tracing::info!(
            "local timeline={} lsn={}, primary timeline={leader_tli}",
            local.timeline,
            format_lsn(local.lsn)
        );
        if local.timeline > leader_tli {
            let reason = format!(
                "local timeline {} is ahead of the leader's {leader_tli}",
                local.timeline
            );
            return Ok(Divergence::Diverged { reason });
        }
        if local.timeline == leader_tli {
            return Ok(Divergence::NotDiverged);
        }
        let history =
            match replication_command(&s, &target, &format!("TIMELINE_HISTORY {leader_tli}")).await
            {
                Ok(row) if row.len() >= 2 => parse_history(&decode_content(&row[1])),
                Ok(row) => {
                    return Ok(Divergence::Unknown(format!(
                        "bad TIMELINE_HISTORY answer {row:?}"
                    )));
                }
                Err(e) => return Ok(Divergence::Unknown(e.to_string())),
            };
        // The checkpoint-end refinement only applies to a stopped former primary.
        let stopped = process::live_postmaster(&s.data_dir()).is_none();
        let end = if local.in_recovery || !stopped {
            0
        } else {
            checkpoint_end(&s, local).await
        };
        Ok(divergence_from_history(&history, local, || end))
    }

    /// Outer Err: local facts unreadable; inner Err: why the position is not usable.
    async fn current_position(
        &self,
        s: &PgSettings,
    ) -> Result<std::result::Result<LocalPosition, String>> {
        if process::live_postmaster(&s.data_dir()).is_some() {
            let rows = self
                .query_timeout(sql::OBSERVE_SQL, Duration::from_secs(5))
                .await?;
            let o = sql::parse_observation(rows.first().map(Vec::as_slice).unwrap_or_default())?;
            // A replica: everything it received counts (max of received and replayed).
            let lsn = o.wal_lsn;
            return Ok(Ok(LocalPosition {
                in_recovery: o.in_recovery,
                timeline: o.timeline,
                lsn,
            }));
        }
        let c = controldata::from_map(&controldata::read_map(s).await?)?;
        Ok(local_position(&c).ok_or_else(|| {
            format!(
                "cluster state is '{}': crash recovery must run before the timeline check",
                c.cluster_state
            )
        }))
    }

    /// If the cluster was not shut down cleanly, run crash recovery in single-user mode
    /// (as upstream) so pg_controldata / pg_rewind see a clean shutdown.
    pub async fn ensure_clean_shutdown(&self) -> Result<()> {
        let s = self.settings();
        if let Some(pid) = process::live_postmaster(&s.data_dir()) {
            return Err(PgError::StillRunning { pid });
        }
        let c = controldata::from_map(&controldata::read_map(&s).await?)?;
        if matches!(
            c.cluster_state.as_str(),
            "shut down" | "shut down in recovery"
        ) {
            return Ok(());
        }
        tracing::info!(
            "cluster state is '{}': running crash recovery in single-user mode",
            c.cluster_state
        );
        files::remove_recovery_signals(&s)?;
        let mut cmd = command(&s, "postgres");
        cmd.arg("--single").arg("-D").arg(s.data_dir());
        cmd.args(postmaster_opts(&s))
            .args(["--archive_mode=on", "--archive_command=false"])
            .arg("template1");
        run(cmd, "postgres --single (crash recovery)", LONG_JOB)
            .await
            .map(|_| ())
    }

    /// Rewind our stopped data directory from the leader `from`, then leave it configured
    /// as a standby of `from` (standby.signal written).
    pub async fn rewind(&self, from: &UpstreamConn, auth: &Authentication) -> Result<()> {
        let s = self.settings();
        self.ensure_clean_shutdown().await?;
        let creds = match &auth.rewind {
            Some(r) if !r.username.is_empty() => r.clone(),
            _ => auth.superuser.clone(),
        };
        let target = s.remote_target(&from.host, from.port, &creds);
        let is_superuser = auth
            .rewind
            .as_ref()
            .is_none_or(|r| r.username.is_empty() || r.username == auth.superuser.username);
        let fail = |reason: String| PgError::Rewind {
            member: from.member.clone(),
            reason,
        };
        leader_checkpointed(&target, is_superuser)
            .await
            .map_err(fail)?;
        let port = from.port.to_string();
        let dsn = conf::format_conninfo(&[
            ("user", &target.user),
            ("host", &target.host),
            ("port", &port),
            ("dbname", "postgres"),
        ]);
        let mut cmd = command(&s, "pg_rewind");
        if s.parameters
            .get("restore_command")
            .is_some_and(|c| !c.is_empty())
        {
            cmd.arg("--restore-target-wal");
            if s.config_dir() != s.data_dir() {
                cmd.arg(format!(
                    "--config-file={}",
                    s.config_file(conf::POSTGRESQL_CONF).display()
                ));
            }
        }
        cmd.arg(format!("--target-pgdata={}", s.data_dir().display()))
            .arg(format!("--source-server={dsn}"))
            .env("LANG", "C")
            .env("LC_ALL", "C")
            .env("PGOPTIONS", "-c statement_timeout=0");
        if let Some(pw) = &creds.password {
            cmd.env("PGPASSWORD", pw);
        }
        tracing::info!("running pg_rewind from {} ({dsn})", from.member);
        run(cmd, "pg_rewind", LONG_JOB)
            .await
            .map_err(|e| fail(e.to_string()))?;
        // pg_rewind copied the leader's config files; make the next start a standby.
        files::write_config(
            &s,
            &ConfigRole::Standby {
                upstream: Some(from.clone()),
                slot_name: None,
            },
        )
    }
}

/// `--name=value` options the postmaster last ran with (from postmaster.opts).
fn postmaster_opts(s: &PgSettings) -> Vec<String> {
    let Some(text) = files::read_to_string_opt(&s.data_file("postmaster.opts")) else {
        return Vec::new();
    };
    text.trim_end()
        .split("\" \"")
        .map(|o| o.trim_matches(|c| c == '"' || c == '\n'))
        .filter(|o| o.starts_with("--") && o.contains('='))
        .map(str::to_string)
        .collect()
}

/// The leader must be a primary whose pg_control already shows its new timeline
/// (a checkpoint after promote); with superuser credentials we run that checkpoint.
async fn leader_checkpointed(
    target: &ConnTarget,
    is_superuser: bool,
) -> std::result::Result<(), String> {
    let client = sql::connect(target, "Patroni")
        .await
        .map_err(|e| e.to_string())?;
    let q = "SELECT pg_catalog.pg_is_in_recovery(), ('x' || pg_catalog.substr(pg_catalog.pg_walfile_name(\
             pg_catalog.pg_current_wal_lsn()), 1, 8))::bit(32)::int = timeline_id \
             FROM pg_catalog.pg_control_checkpoint()";
    let q = format!("SET statement_timeout = 5000; {q}");
    // In recovery pg_current_wal_lsn() errors out: ask that first.
    let rec = sql::simple_rows(&client, "SELECT pg_catalog.pg_is_in_recovery()")
        .await
        .map_err(|e| e.to_string())?;
    if rec.first().and_then(|r| r[0].as_deref()) != Some("f") {
        return Err("leader is still in recovery".into());
    }
    let rows = sql::simple_rows(&client, &q)
        .await
        .map_err(|e| e.to_string())?;
    if rows
        .first()
        .and_then(|r| r.get(1).cloned().flatten())
        .as_deref()
        == Some("t")
    {
        return Ok(());
    }
    if !is_superuser {
        return Err("leader has not run a checkpoint since promotion yet".into());
    }
    sql::simple_rows(&client, "SET statement_timeout = 0; CHECKPOINT")
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// TIMELINE_HISTORY content is text or bytea (hex) depending on the server version.
fn decode_content(s: &str) -> String {
    let Some(hex) = s.strip_prefix("\\x") else {
        return s.to_string();
    };
    let bytes: Vec<u8> = (0..hex.len() / 2)
        .filter_map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok())
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

const FIELD_SEP: &str = "\u{1f}";

/// Run one replication command with psql over a physical replication connection; the
/// first row's fields.
async fn replication_command(
    s: &PgSettings,
    t: &ConnTarget,
    command_text: &str,
) -> Result<Vec<String>> {
    let port = t.port.to_string();
    let dsn = conf::format_conninfo(&[
        ("host", &t.host),
        ("port", &port),
        ("user", &t.user),
        ("dbname", "postgres"),
        ("replication", "true"),
        ("connect_timeout", "3"),
        ("application_name", "Patroni"),
    ]);
    let mut cmd = command(s, "psql");
    cmd.args(["-X", "-A", "-t", "-F", FIELD_SEP, "-c", command_text])
        .arg(&dsn)
        .env("PGPASSFILE", s.pgpass_path());
    if let Some(pw) = &t.password {
        cmd.env("PGPASSWORD", pw);
    }
    let out = run(
        cmd,
        &format!("psql {command_text}"),
        Duration::from_secs(15),
    )
    .await?;
    let text = out.stdout.trim_end_matches('\n');
    if text.is_empty() {
        return Err(PgError::Parse {
            what: command_text.into(),
            detail: "no rows".into(),
        });
    }
    Ok(text.split(FIELD_SEP).map(str::to_string).collect())
}

/// End of the local checkpoint record (0 when pg_waldump cannot tell).
async fn checkpoint_end(s: &PgSettings, local: LocalPosition) -> u64 {
    let mut cmd = command(s, "pg_waldump");
    cmd.arg("-p")
        .arg(s.data_dir().join("pg_wal"))
        .args([
            "-t",
            &local.timeline.to_string(),
            "-s",
            &format_lsn(local.lsn),
            "-n",
            "2",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("LC_ALL", "C");
    // pg_waldump exits non-zero by design here (it fails to read the second record).
    let out = match cmd.output().await {
        Ok(o) => o,
        Err(e) => {
            tracing::error!("cannot run pg_waldump: {e}");
            return 0;
        }
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    parse_waldump_end(&stderr, local.lsn).unwrap_or_else(|| {
        tracing::error!("cannot parse pg_waldump output: {}", tail(&stderr, 3));
        0
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::types::ControlData;

    const HIST: &str = "1\t0/3000148\tno recovery target specified\n\n2\t0/5000000\tno recovery target specified\n";

    fn pos(in_recovery: bool, timeline: u32, lsn: u64) -> LocalPosition {
        LocalPosition {
            in_recovery,
            timeline,
            lsn,
        }
    }

    #[test]
    fn history_parses() {
        assert_eq!(parse_history(HIST), vec![(1, 0x3000148), (2, 0x5000000)]);
    }

    #[test]
    fn replica_behind_switchpoint_is_fine_ahead_diverged() {
        let h = parse_history(HIST);
        assert_eq!(
            divergence_from_history(&h, pos(true, 1, 0x3000100), || 0),
            Divergence::NotDiverged
        );
        assert_eq!(
            divergence_from_history(&h, pos(true, 1, 0x3000148), || 0),
            Divergence::NotDiverged
        );
        assert!(matches!(
            divergence_from_history(&h, pos(true, 1, 0x3000200), || 0),
            Divergence::Diverged { .. }
        ));
        assert!(matches!(
            divergence_from_history(&h, pos(true, 7, 0x1), || 0),
            Divergence::Diverged { .. }
        ));
    }

    #[test]
    fn former_primary_needs_checkpoint_end_at_switchpoint() {
        let h = parse_history(HIST);
        assert_eq!(
            divergence_from_history(&h, pos(false, 2, 0x4FFFF80), || 0x5000000),
            Divergence::NotDiverged
        );
        assert!(matches!(
            divergence_from_history(&h, pos(false, 2, 0x4FFFF80), || 0),
            Divergence::Diverged { .. }
        ));
        assert!(matches!(
            divergence_from_history(&h, pos(false, 2, 0x5000000), || 0x5000000),
            Divergence::Diverged { .. }
        ));
    }

    #[test]
    fn controldata_positions() {
        let mut c = ControlData {
            cluster_state: "shut down in recovery".into(),
            timeline: 1,
            checkpoint_lsn: 10,
            min_recovery_timeline: 2,
            min_recovery_lsn: 20,
            ..Default::default()
        };
        assert_eq!(local_position(&c), Some(pos(true, 2, 20)));
        c.min_recovery_lsn = 0;
        assert_eq!(local_position(&c), Some(pos(false, 1, 10)));
        c.cluster_state = "in production".into();
        assert_eq!(local_position(&c), None);
    }

    #[test]
    fn waldump_end_and_hex_content() {
        let err = "pg_waldump: error: error in WAL record at 0/3000060: invalid record length at 0/30000D8: wanted 24, got 0";
        assert_eq!(parse_waldump_end(err, 0x3000060), Some(0x30000D8));
        assert_eq!(parse_waldump_end(err, 0x3000000), None);
        assert_eq!(decode_content("\\x310a"), "1\n");
        assert_eq!(decode_content("1\t0/1"), "1\t0/1");
    }
}
