//! The distributed configuration store: one trait, a typed cluster snapshot, and the
//! key layout shared by every backend.
//!
//! Backends only move raw key/value nodes; parsing into typed values lives here
//! (`Cluster::from_nodes`) so every store tolerates bad JSON the same way.

pub mod consul;
pub mod etcd2;
pub mod etcd3;
pub mod exhibitor;
pub mod keys;
pub mod kubernetes;
pub mod mem;
mod types;
pub mod zookeeper;

pub use types::*;

use async_trait::async_trait;
use std::time::Duration;

/// "Store unreachable" is an `Err`; "lost a compare-and-set" is `Ok(false)`.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum DcsError {
    #[error("DCS is not reachable: {0}")]
    Unreachable(String),
    #[error("DCS operation timed out after {0:?}")]
    Timeout(Duration),
    #[error("DCS rejected the request: {0}")]
    Rejected(String),
}

pub type DcsResult<T> = Result<T, DcsError>;

/// One raw key read from the store, path relative to `/<namespace>/<scope>/`.
#[derive(Debug, Clone, PartialEq)]
pub struct RawNode {
    pub key: String,
    pub value: String,
    /// Store-specific modification version (etcd mod_revision), used for compare-and-set.
    pub version: i64,
    /// Lease/session id the key is attached to, if any.
    pub session: Option<i64>,
}

/// Upstream's DCS operations. Every backend (etcd v3, etcd v2, Consul, ZooKeeper,
/// Kubernetes, in-memory) implements this; the HA core never sees the store type.
///
/// A backend instance belongs to one member: `name` and the current `ttl` are its state,
/// so "our" leader key and member key are implicit.
#[async_trait]
pub trait Dcs: Send + Sync + 'static {
    /// The member name this handle acts for.
    fn member_name(&self) -> &str;

    /// Read the whole cluster once (linearizable).
    async fn get_cluster(&self) -> DcsResult<Cluster>;

    /// Change the TTL used for the leader and member keys from the next write on.
    async fn set_ttl(&self, ttl: Duration);

    /// Retry budget for a single DCS operation.
    async fn set_retry_timeout(&self, retry_timeout: Duration);

    /// Create the leader key with our name if absent (attached to our lease/TTL).
    /// `Ok(false)`: somebody else holds it.
    async fn attempt_to_acquire_leader(&self) -> DcsResult<bool>;

    /// Refresh our leader key (and lease) only if its value is still our name; also
    /// writes `status` (optime, slots) when given. `Ok(false)`: we no longer hold it.
    async fn update_leader(&self, status: Option<&Status>) -> DcsResult<bool>;

    /// Delete the leader key only if it is still ours; writes `status` first when given
    /// (last checkpoint LSN on clean shutdown).
    async fn delete_leader(&self, status: Option<&Status>) -> DcsResult<bool>;

    /// Write our `members/<name>` key (with our TTL/lease).
    async fn touch_member(&self, data: &MemberData) -> DcsResult<bool>;

    /// Remove our member key (clean shutdown keeps it; used by tests / ctl remove).
    async fn delete_member(&self, name: &str) -> DcsResult<bool>;

    /// `create_new`: create `initialize` if absent (the bootstrap race, `Ok(false)` = lost);
    /// otherwise overwrite it with the system identifier.
    async fn initialize(&self, create_new: bool, sysid: &str) -> DcsResult<bool>;

    /// Delete the `initialize` key after a failed bootstrap.
    async fn cancel_initialization(&self) -> DcsResult<bool>;

    /// Write `config`; with `version`, only if it still has that version.
    async fn set_config_value(&self, value: &str, version: Option<i64>) -> DcsResult<bool>;

    /// Write `failover`; with `version`, only if it still has that version.
    async fn set_failover_value(&self, value: &str, version: Option<i64>) -> DcsResult<bool>;

    /// Write `history` (JSON array of timelines).
    async fn set_history_value(&self, value: &str) -> DcsResult<bool>;

    /// Write `sync`; with `version`, only if it still has that version.
    async fn set_sync_state_value(&self, value: &str, version: Option<i64>) -> DcsResult<bool>;

    /// Delete `sync`; with `version`, only if it still has that version.
    async fn delete_sync_state(&self, version: Option<i64>) -> DcsResult<bool>;

    /// Write `status` (optime and slots) without touching the leader key.
    async fn write_status(&self, status: &Status) -> DcsResult<bool>;

    /// Write `failsafe` (member name -> api_url).
    async fn write_failsafe(&self, value: &str) -> DcsResult<bool>;

    /// Delete every key of this cluster (`patronictl remove`).
    async fn delete_cluster(&self) -> DcsResult<bool>;

    /// Wait until the leader key changes from `leader_version` (or disappears), or
    /// `timeout` passes. `Ok(true)` = something changed, `Ok(false)` = timed out.
    async fn watch_leader(&self, leader_version: Option<i64>, timeout: Duration)
    -> DcsResult<bool>;
}
