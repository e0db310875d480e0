//! The one atomic writer, and the config files we own: postgresql.conf (+ the base file),
//! pg_hba.conf, the pgpass file and standby.signal.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use super::conf::{self, ConninfoParams, RecoveryParams};
use super::custom_bootstrap::{self, BootstrapRecovery, RecoveryConf};
use super::error::{Result, io_err};
use super::settings::PgSettings;
use super::types::ConfigRole;

/// Write `content` to `path` via a temp file in the same directory + fsync + rename, so a
/// crash never leaves a half-written config. Owned by `owner`, with `mode`.
pub fn write_atomic(
    path: &Path,
    content: &str,
    mode: u32,
    owner: Option<(u32, u32)>,
) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let fname = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{fname}.tmp{}", std::process::id()));
    let res = (|| -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(content.as_bytes())?;
        f.sync_all()?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
        }
        std::fs::rename(&tmp, path)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res.map_err(io_err(path))
}

/// chown to the run_as user (no-op without one).
pub fn chown(path: &Path, owner: Option<(u32, u32)>) -> Result<()> {
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(io_err(path))?;
    }
    Ok(())
}

/// Create a directory (mode 0700) owned by the run_as user if missing.
pub fn ensure_dir(path: &Path, owner: Option<(u32, u32)>) -> Result<()> {
    if !path.exists() {
        std::fs::create_dir_all(path).map_err(io_err(path))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
            .map_err(io_err(path))?;
        chown(path, owner)?;
    }
    Ok(())
}

fn remove_if_exists(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err(path)(e)),
        _ => Ok(()),
    }
}

/// The pgpass file with entries for the replication, superuser and rewind users.
pub fn write_pgpass(s: &PgSettings) -> Result<()> {
    let (su, repl, rw) = (s.superuser(), s.replication(), s.rewind_credentials());
    let mut entries: Vec<(&str, &str)> = Vec::new();
    for c in [&repl, &su, &rw] {
        if let Some(pw) = &c.password {
            entries.push((&c.username, pw));
        }
    }
    let path = s.pgpass_path();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    write_atomic(&path, &conf::render_pgpass(&entries), 0o600, s.run_as)
}

/// Recovery settings for a standby role.
pub fn recovery_params(s: &PgSettings, role: &ConfigRole) -> Option<RecoveryParams> {
    let ConfigRole::Standby {
        upstream,
        slot_name,
    } = role
    else {
        return None;
    };
    let Some(up) = upstream else {
        return Some(RecoveryParams::default());
    };
    if up.member == super::types::REMOTE_PRIMARY {
        return Some(remote_recovery_params(s, up));
    }
    let repl = s.replication();
    let passfile = s.pgpass_path().to_string_lossy().into_owned();
    let ci = conf::primary_conninfo(&ConninfoParams {
        host: &up.host,
        port: up.port,
        user: &repl.username,
        passfile: &passfile,
        application_name: &s.name,
    });
    let slot = if s.use_slots {
        Some(
            slot_name
                .clone()
                .unwrap_or_else(|| conf::slot_name_from_member_name(&s.name)),
        )
    } else {
        None
    };
    Some(RecoveryParams {
        primary_conninfo: Some(ci),
        primary_slot_name: slot,
        ..Default::default()
    })
}

/// A standby cluster's leader: stream from `standby_cluster.host:port` (no conninfo when
/// only restore_command is configured), with `primary_slot_name` if given, and the
/// section's restore/cleanup/delay settings.
fn remote_recovery_params(s: &PgSettings, up: &super::types::UpstreamConn) -> RecoveryParams {
    let sc = s.standby_cluster.clone().unwrap_or_default();
    let repl = s.replication();
    let passfile = s.pgpass_path().to_string_lossy().into_owned();
    let primary_conninfo = (!up.host.is_empty()).then(|| {
        conf::primary_conninfo(&ConninfoParams {
            host: &up.host,
            port: up.port,
            user: &repl.username,
            passfile: &passfile,
            application_name: &s.name,
        })
    });
    RecoveryParams {
        primary_slot_name: sc
            .primary_slot_name
            .filter(|_| s.use_slots && primary_conninfo.is_some()),
        primary_conninfo,
        extra: sc.recovery,
    }
}

/// Name of the file our postgresql.conf includes. On first use the initdb-made
/// postgresql.conf becomes postgresql.base.conf (as upstream).
fn prepare_base_conf(s: &PgSettings) -> Result<String> {
    if let Some(custom) = &s.local.custom_conf {
        return Ok(custom.to_string_lossy().into_owned());
    }
    let base = s.config_file(conf::POSTGRESQL_BASE_CONF);
    let main = s.config_file(conf::POSTGRESQL_CONF);
    if !base.exists() {
        if main.exists() {
            std::fs::rename(&main, &base).map_err(io_err(&base))?;
        } else {
            // Nothing to keep: an empty base still satisfies the include.
            write_atomic(&base, "", 0o600, s.run_as)?;
        }
    }
    Ok(conf::POSTGRESQL_BASE_CONF.to_string())
}

/// Write every file we own for `role`.
pub fn write_config(s: &PgSettings, role: &ConfigRole) -> Result<()> {
    write_config_with(s, role, None)
}

/// Like `write_config`; while a custom bootstrap's data recovers, `boot` decides the
/// recovery settings, the signal files and pg_hba.conf.
pub fn write_config_with(
    s: &PgSettings,
    role: &ConfigRole,
    boot: Option<&BootstrapRecovery>,
) -> Result<()> {
    ensure_dir(&s.config_dir(), s.run_as)?;
    let include = prepare_base_conf(s)?;
    let mut params = s.server_parameters();
    let dir = s.config_dir();
    params
        .entry("hba_file".into())
        .or_insert_with(|| dir.join(conf::PG_HBA_CONF).to_string_lossy().into_owned());
    params
        .entry("ident_file".into())
        .or_insert_with(|| dir.join(conf::PG_IDENT_CONF).to_string_lossy().into_owned());
    let recovery = match boot {
        Some(_) => None,
        None => recovery_params(s, role),
    };
    let mut text = conf::render_postgresql_conf(&include, &params, recovery.as_ref());
    if let Some(RecoveryConf::Write(settings)) = boot.map(|b| &b.recovery) {
        text.push_str(&custom_bootstrap::render_recovery_block(settings));
    }
    write_atomic(
        &s.config_file(conf::POSTGRESQL_CONF),
        &text,
        0o600,
        s.run_as,
    )?;
    let hba = boot.map(|b| &b.pg_hba).unwrap_or(&s.pg_hba);
    if !hba.is_empty() {
        write_atomic(
            &s.config_file(conf::PG_HBA_CONF),
            &conf::render_lines(hba),
            0o600,
            s.run_as,
        )?;
    }
    if let Some(ident) = s.local.pg_ident.as_ref().filter(|l| !l.is_empty()) {
        write_atomic(
            &s.config_file(conf::PG_IDENT_CONF),
            &conf::render_lines(ident),
            0o600,
            s.run_as,
        )?;
    } else if !s.config_file(conf::PG_IDENT_CONF).exists() {
        write_atomic(&s.config_file(conf::PG_IDENT_CONF), "", 0o600, s.run_as)?;
    }
    write_pgpass(s)?;
    if let Some(b) = boot {
        return write_bootstrap_signals(s, &b.recovery);
    }
    let signal = s.data_file(conf::STANDBY_SIGNAL);
    match role {
        ConfigRole::Standby { .. } => write_atomic(&signal, "", 0o600, s.run_as)?,
        ConfigRole::Primary => remove_if_exists(&signal)?,
    }
    // recovery.signal would make a primary run targeted recovery: never ours.
    remove_if_exists(&s.data_file(conf::RECOVERY_SIGNAL))
}

/// The signal files of a custom bootstrap's recovery (upstream's write_recovery_conf).
fn write_bootstrap_signals(s: &PgSettings, recovery: &RecoveryConf) -> Result<()> {
    let (standby, rec) = (
        s.data_file(conf::STANDBY_SIGNAL),
        s.data_file(conf::RECOVERY_SIGNAL),
    );
    match recovery {
        RecoveryConf::Write(m) if custom_bootstrap::wants_standby(m) => {
            write_atomic(&standby, "", 0o600, s.run_as)?;
            remove_if_exists(&rec)
        }
        RecoveryConf::Write(_) => {
            write_atomic(&rec, "", 0o600, s.run_as)?;
            remove_if_exists(&standby)
        }
        RecoveryConf::Keep => Ok(()),
        RecoveryConf::Remove => remove_recovery_signals(s),
    }
}

/// Remove standby.signal / recovery.signal (before single-user crash recovery).
pub fn remove_recovery_signals(s: &PgSettings) -> Result<()> {
    remove_if_exists(&s.data_file(conf::STANDBY_SIGNAL))?;
    remove_if_exists(&s.data_file(conf::RECOVERY_SIGNAL))
}

/// Empty the data directory (keep the directory itself, mode 0700, owned by run_as) so
/// initdb / pg_basebackup can fill it even when its parent is not writable for them.
pub fn clear_data_dir(s: &PgSettings) -> Result<()> {
    let dir = s.data_dir();
    if dir.exists() {
        for entry in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            let p = entry.path();
            let ft = entry.file_type().map_err(io_err(&p))?;
            if ft.is_dir() {
                std::fs::remove_dir_all(&p).map_err(io_err(&p))?;
            } else {
                std::fs::remove_file(&p).map_err(io_err(&p))?;
            }
        }
    }
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(io_err(&dir))?;
    chown(&dir, s.run_as)
}

pub fn read_to_string_opt(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}
