//! Patroni's REST API (axum). Read endpoints answer only from the `NodeStatus` the HA loop
//! publishes on a watch channel: no SQL and no DCS round trip inside a request, so a slow
//! PostgreSQL or DCS never stalls a load-balancer health check. Write endpoints are
//! compare-and-set DCS writes (switchover, /config) or commands to the HA loop (restart,
//! reinitialize); all of them pass the access guard (allowlist, client certificate, Basic
//! auth) first.

mod access;
mod body;
mod candidates;
mod cluster;
mod dynconfig;
mod error;
mod failsafe;
mod health;
mod metrics;
mod node_ops;
mod probes;
mod query;
mod schedule;
mod status_json;
mod switchover;
mod tls;

pub use access::{ClientInfo, Network};
pub use body::MAX_BODY;
pub use candidates::failover_limitation;
pub use cluster::{cluster_as_json, conn_host_port};
pub use error::ApiError;
pub use health::{HEALTH_PATHS, HealthCheck, check_status};
pub use metrics::render as render_metrics;
pub use node_ops::postgres_version_to_int;
pub use probes::{is_alive, readiness_failure};
pub use query::{QueryParams, parse_bytes};
pub use schedule::{isoformat, parse_schedule};
pub use status_json::{PatroniInfo, PatroniStatus, Replication, Xlog, patroni_status};
pub use tls::{TlsAcceptor, TlsError, TlsListener, tls_acceptor};

use crate::config::Config;
use crate::status::NodeStatus;
use axum::Router;
use axum::extract::State;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
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
    /// The local configuration as last (re-)read: `restapi.authentication`, `allowlist`,
    /// `allowlist_include_members`, `verify_client` are taken from here on every unsafe
    /// request, so a reload changes them at once. `None`: no access checks (tests).
    pub config: Option<watch::Receiver<Arc<Config>>>,
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

    fn dcs(&self) -> Result<Arc<dyn crate::dcs::Dcs>, ApiError> {
        self.api
            .dcs
            .clone()
            .ok_or_else(|| ApiError::Unavailable("this node has no DCS connection".into()))
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
        .route(
            "/config",
            get(cluster::get_config)
                .patch(dynconfig::patch_config)
                .put(dynconfig::put_config),
        )
        .route("/reload", post(dynconfig::post_reload))
        .route(
            "/failsafe",
            get(failsafe::get_failsafe).post(failsafe::post_failsafe),
        )
        .route("/metrics", get(metrics::get_metrics))
        .route(
            "/switchover",
            post(switchover::post_switchover).delete(switchover::delete_switchover),
        )
        .route("/failover", post(switchover::post_failover))
        .route(
            "/restart",
            post(node_ops::post_restart).delete(node_ops::delete_restart),
        )
        .route("/reinitialize", post(node_ops::post_reinitialize))
        .fallback(fallback)
        .layer(axum::middleware::from_fn_with_state(
            ctx.clone(),
            access::guard,
        ))
        // Bodies are read with our own limit (`body::MAX_BODY`) and message.
        .layer(axum::extract::DefaultBodyLimit::max(body::MAX_BODY))
        .with_state(ctx)
}

/// Serve plain HTTP on `listener` until `shutdown` completes (in-flight requests finish
/// first).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(state).into_make_service_with_connect_info::<ClientInfo>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Serve HTTPS: TLS handshakes with `acceptor` (see `tls_acceptor`), then the same router.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    acceptor: TlsAcceptor,
    state: ApiState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = TlsListener::new(listener, acceptor)?;
    let app = router(state).into_make_service_with_connect_info::<ClientInfo>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn get_patroni(State(ctx): State<Ctx>) -> axum::Json<PatroniStatus> {
    axum::Json(patroni_status(&ctx.snapshot()))
}

/// GET/HEAD/OPTIONS of any other path is a health check chosen by the path's words, as
/// upstream does; other methods on unknown paths are not implemented.
async fn fallback(
    State(ctx): State<Ctx>,
    method: Method,
    uri: axum::http::Uri,
    query: health::RawQuery,
) -> Response {
    if matches!(method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return health::health_handler(State(ctx), method, uri, query).await;
    }
    (
        StatusCode::NOT_IMPLEMENTED,
        format!("Unsupported method ({method})"),
    )
        .into_response()
}
