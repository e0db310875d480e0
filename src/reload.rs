//! Re-reading the local configuration (SIGHUP, POST /reload): read and validate the file
//! with the environment overlay again, and hand a valid result to the HA loop, which adopts
//! it at the start of its next cycle. An invalid file changes nothing.

use crate::config::Config;
use crate::config::validate::{ConfigIssue, validate_file_or_env};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::{Notify, watch};

#[derive(Clone)]
pub struct ConfigReloader {
    path: Option<PathBuf>,
    tx: Arc<watch::Sender<Arc<Config>>>,
    wake: Arc<Notify>,
}

impl ConfigReloader {
    pub fn new(
        path: Option<PathBuf>,
        tx: Arc<watch::Sender<Arc<Config>>>,
        wake: Arc<Notify>,
    ) -> ConfigReloader {
        ConfigReloader { path, tx, wake }
    }

    /// Read the configuration again. `Ok(warnings)` when it was handed to the loop (which
    /// runs a cycle at once); `Err(issues)` when it is invalid and the running one stays.
    pub fn reload(&self) -> Result<Vec<String>, Vec<ConfigIssue>> {
        let env = crate::config::load::process_env();
        let loaded = validate_file_or_env(self.path.as_deref(), &env)?;
        self.tx.send_replace(Arc::new(loaded.config));
        self.wake.notify_one();
        Ok(loaded.warnings)
    }
}

/// Changes of these settings need a daemon restart: the loop keeps the old value and says so.
pub fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut out = vec![];
    if old.name != new.name {
        out.push("name");
    }
    if old.scope != new.scope {
        out.push("scope");
    }
    if old.namespace != new.namespace {
        out.push("namespace");
    }
    if old.etcd3 != new.etcd3 {
        out.push("etcd3");
    }
    if old.restapi.listen != new.restapi.listen {
        out.push("restapi.listen");
    }
    if old.postgresql.data_dir != new.postgresql.data_dir {
        out.push("postgresql.data_dir");
    }
    out
}
