//! Patroni's REST API (axum). Read endpoints answer only from the `NodeStatus` the HA loop
//! publishes on a watch channel: no SQL and no DCS round trip inside a request, so a slow
//! PostgreSQL or DCS never stalls a load-balancer health check.

mod cluster;
mod error;
mod health;
mod metrics;
mod probes;
mod query;
mod status_json;

pub use cluster::{cluster_as_json, conn_host_port};
pub use error::ApiError;
pub use health::{HEALTH_PATHS, HealthCheck, check_status};
pub use metrics::render as render_metrics;
pub use probes::{is_alive, readiness_failure};
pub use query::{QueryParams, parse_bytes};
pub use status_json::{PatroniInfo, PatroniStatus, Replication, Xlog, patroni_status};

use crate::status::NodeStatus;
use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::{Notify, watch};

/// What the API needs from the rest of the daemon.
#[derive(Clone)]
pub struct ApiState {
    /// Latest status published by the HA loop.
    pub status: watch::Receiver<Arc<NodeStatus>>,
    /// For write endpoints (switchover, PATCH /config): compare-and-set writes to the DCS.
    pub dcs: Option<Arc<dyn crate::dcs::Dcs>>,
    /// Wakes the HA loop early after a write endpoint changed something.
    pub wake: Arc<Notify>,
    /// Restart / reinitialize requests for the HA loop (see `command.rs`).
    pub commands: Option<crate::command::CommandSender>,
    /// POST /reload: re-read the local configuration file.
    pub reloader: Option<crate::reload::ConfigReloader>,
}

/// Handler state: the caller's `ApiState` plus when this router was built (stands in for
/// the last HA cycle in `/liveness` until the first cycle completes).
#[derive(Clone)]
pub(crate) struct Ctx {
    api: ApiState,
    started_at: i64,
}

impl Ctx {
    /// The current status; cloning the `Arc` releases the watch lock immediately.
    fn snapshot(&self) -> Arc<NodeStatus> {
        self.api.status.borrow().clone()
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

pub fn router(state: ApiState) -> Router {
    let ctx = Ctx {
        api: state,
        started_at: now(),
    };
    let mut r = Router::new();
    for (path, _) in HEALTH_PATHS {
        // `get` also serves HEAD; both HEAD and OPTIONS get the status line only.
        r = r.route(
            path,
            get(health::health_handler).options(health::health_handler),
        );
    }
    r.route("/liveness", get(probes::liveness).options(probes::liveness))
        .route(
            "/readiness",
            get(probes::readiness).options(probes::readiness),
        )
        .route("/patroni", get(get_patroni))
        .route("/cluster", get(cluster::get_cluster))
        .route("/history", get(cluster::get_history))
        .route("/config", get(cluster::get_config))
        .route("/metrics", get(metrics::get_metrics))
        .fallback(not_found)
        .with_state(ctx)
}

/// Serve the API on `listener` until `shutdown` completes (in-flight requests finish first).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn get_patroni(State(ctx): State<Ctx>) -> axum::Json<PatroniStatus> {
    axum::Json(patroni_status(&ctx.snapshot()))
}

async fn not_found() -> Response {
    ApiError::NotFound("not found".into()).into_response()
}
