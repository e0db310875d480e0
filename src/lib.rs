//! A Rust re-implementation of Patroni: PostgreSQL high availability on a DCS.

pub mod api;
pub mod callbacks;
pub mod command;
pub mod config;
pub mod ctl;
pub mod dcs;
pub mod executor;
pub mod fence;
pub mod ha;
mod jobs;
pub mod postgres;
pub mod reload;
pub mod runtime;
pub mod status;
pub mod watchdog;

/// The Patroni version we advertise in member keys and /patroni. Upstream peers gate
/// behaviour on it (dotted ints), so we advertise a value >= the upstream we coexist with.
pub const PATRONI_VERSION: &str = "4.1.0";
