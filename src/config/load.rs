//! Loading the local YAML file.
use super::Config;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid configuration:\n{0}")]
    Invalid(String),
}

pub fn load_str(yaml: &str) -> Result<Config, ConfigError> {
    serde_yaml_ng::from_str(yaml).map_err(|e| ConfigError::Invalid(e.to_string()))
}

pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
    let s = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    load_str(&s)
}
