//! What the caller tells the PostgreSQL layer: member identity, the local `postgresql:`
//! section, and the effective GUCs / hba lines (computed by the caller from local and
//! dynamic configuration). Derived paths and addresses live here, in one place.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::config::{Credentials, PostgresqlConfig};

use super::conf;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct PgSettings {
    /// Member name: application_name of our connections and of primary_conninfo.
    pub name: String,
    /// Cluster scope: PostgreSQL's `cluster_name` (as upstream).
    pub scope: String,
    pub local: PostgresqlConfig,
    /// Effective GUCs. `listen_addresses` and `port` are derived from `local.listen` and
    /// `cluster_name` from `scope`, overriding entries here (as upstream does).
    pub parameters: BTreeMap<String, String>,
    /// Effective pg_hba.conf lines; empty keeps the file initdb wrote.
    pub pg_hba: Vec<String>,
    pub use_slots: bool,
    /// The dynamic `standby_cluster` section, used when following the remote primary.
    pub standby_cluster: Option<StandbyClusterSettings>,
    /// Run every child process as this (uid, gid) and chown files we create to it.
    /// The daemon passes `None` (it already dropped privileges); tests running as root
    /// pass the `postgres` user.
    pub run_as: Option<(u32, u32)>,
}

/// Recovery settings of a standby cluster's leader (upstream's RemoteMember).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StandbyClusterSettings {
    /// Slot to use on the remote primary; `None`: stream without a slot (as upstream).
    pub primary_slot_name: Option<String>,
    /// restore_command, archive_cleanup_command, recovery_min_apply_delay when set.
    pub recovery: BTreeMap<String, String>,
    /// The section's own `create_replica_methods` (empty: the local list).
    pub create_replica_methods: Vec<String>,
}

/// Where to reach a server and as whom.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnTarget {
    /// Host name, IP, or a unix socket directory (starts with '/').
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub dbname: String,
}

impl ConnTarget {
    pub fn describe(&self) -> String {
        format!(
            "host={} port={} user={} dbname={}",
            self.host, self.port, self.user, self.dbname
        )
    }
}

impl PgSettings {
    pub fn data_dir(&self) -> PathBuf {
        std::path::absolute(&self.local.data_dir).unwrap_or_else(|_| self.local.data_dir.clone())
    }

    pub fn config_dir(&self) -> PathBuf {
        match &self.local.config_dir {
            Some(d) if !d.as_os_str().is_empty() => {
                std::path::absolute(d).unwrap_or_else(|_| d.clone())
            }
            _ => self.data_dir(),
        }
    }

    pub fn config_file(&self, name: &str) -> PathBuf {
        self.config_dir().join(name)
    }

    /// Path of a PostgreSQL program, honouring `bin_dir` and `bin_name` overrides.
    pub fn bin(&self, program: &str) -> PathBuf {
        let name = self
            .local
            .bin_name
            .as_ref()
            .and_then(|m| m.get(program))
            .and_then(|v| v.as_str())
            .unwrap_or(program);
        match &self.local.bin_dir {
            Some(d) if !d.as_os_str().is_empty() => d.join(name),
            _ => PathBuf::from(name),
        }
    }

    /// The passfile we write (upstream default: `~/pgpass`).
    pub fn pgpass_path(&self) -> PathBuf {
        if let Some(p) = &self.local.pgpass {
            return std::path::absolute(p).unwrap_or_else(|_| p.clone());
        }
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/tmp"));
        home.join("pgpass")
    }

    /// Effective server parameters including listen_addresses, port and cluster_name.
    pub fn server_parameters(&self) -> BTreeMap<String, String> {
        let mut p = self.parameters.clone();
        if !self.local.listen.is_empty() {
            let (addrs, port) = conf::split_listen(&self.local.listen);
            p.insert("listen_addresses".into(), addrs);
            p.insert("port".into(), port.to_string());
        }
        if !self.scope.is_empty() {
            p.insert("cluster_name".into(), self.scope.clone());
        }
        p
    }

    pub fn port(&self) -> u16 {
        self.server_parameters()
            .get("port")
            .and_then(|p| p.parse().ok())
            .unwrap_or(5432)
    }

    pub fn superuser(&self) -> Credentials {
        let mut c = self.local.authentication.superuser.clone();
        if c.username.is_empty() {
            c.username = "postgres".into();
        }
        c
    }

    pub fn replication(&self) -> Credentials {
        let mut c = self.local.authentication.replication.clone();
        if c.username.is_empty() {
            c.username = "replicator".into();
        }
        c
    }

    /// Credentials for pg_rewind: the rewind user, else the superuser (as upstream).
    pub fn rewind_credentials(&self) -> Credentials {
        match &self.local.authentication.rewind {
            Some(r) if !r.username.is_empty() => r.clone(),
            _ => self.superuser(),
        }
    }

    /// How we connect to our own postmaster as superuser.
    pub fn local_target(&self) -> ConnTarget {
        let params = self.server_parameters();
        let tcp = conf::local_tcp_host(
            params
                .get("listen_addresses")
                .map(String::as_str)
                .unwrap_or(""),
        );
        let host = if self.local.use_unix_socket {
            params
                .get("unix_socket_directories")
                .and_then(|d| conf::unix_socket_dir(d))
                .unwrap_or_else(|| "/var/run/postgresql".into())
        } else {
            tcp
        };
        let su = self.superuser();
        ConnTarget {
            host,
            port: self.port(),
            user: su.username,
            password: su.password,
            dbname: "postgres".into(),
        }
    }

    /// Target on another member with the given credentials.
    pub fn remote_target(&self, host: &str, port: u16, creds: &Credentials) -> ConnTarget {
        ConnTarget {
            host: host.to_string(),
            port,
            user: creds.username.clone(),
            password: creds.password.clone(),
            dbname: "postgres".into(),
        }
    }

    pub fn postmaster_log(&self) -> PathBuf {
        self.data_dir().join("log").join("postmaster.log")
    }

    pub fn data_file(&self, name: &str) -> PathBuf {
        self.data_dir().join(name)
    }
}

/// True when `p` does not exist or is an empty directory.
pub fn dir_empty(p: &Path) -> bool {
    match std::fs::read_dir(p) {
        Ok(mut it) => it.next().is_none(),
        Err(_) => true,
    }
}
