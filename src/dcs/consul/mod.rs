//! Consul backend (HTTP API), with upstream's key layout and locking:
//! keys under `<namespace>/<scope>/` (no leading slash); one session per member
//! (TTL = ttl/2, because Consul only invalidates a session after twice its TTL;
//! behavior `delete`, so an expired member's keys vanish); the leader and member keys
//! are held with `?acquire=<session>`; `config`/`failover`/`sync` writes use
//! `?cas=<ModifyIndex>`; the leader watch is a blocking query (`?index=`).
//!
//! Unreachable agent -> `Err`, lost lock or compare -> `Ok(false)`.

mod http;
pub mod service;

use super::{DcsError, DcsResult, Status, keys};
use crate::config::ConsulConfig;
use base64::Engine;
use http::{Http, OpError, Req, Resp};
use reqwest::Method;
use serde_json::{Value, json};
use service::{ServiceAction, ServiceSettings};
use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;
use tokio::time::Instant;

/// `touch_member` skips the session renewal when one happened this recently.
const RENEW_REUSE: Duration = Duration::from_secs(1);
/// Consul's default `session_ttl_min`, used when the agent refuses our TTL.
const CONSUL_MIN_SESSION_TTL: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct Settings {
    ttl: Duration,
    retry_timeout: Duration,
    /// Session TTL forced up to the agent's minimum after a refusal.
    min_session_ttl: Option<Duration>,
}

#[derive(Debug, Default)]
struct SessionState {
    id: Option<String>,
    renewed: Option<Instant>,
}

/// One member's handle on a Consul cluster.
pub struct ConsulDcs {
    http: Http,
    /// `service/batman/`
    prefix: String,
    name: String,
    scope: String,
    consistency: Option<&'static str>,
    checks: Vec<String>,
    settings: Mutex<Settings>,
    /// Held across renew/create so concurrent callers share one session.
    session: tokio::sync::Mutex<SessionState>,
    /// Leader (ModifyIndex, name) pairs seen lately, so the watch can tell a holder
    /// re-attaching its key to a new session from a change of leader.
    seen_leaders: Mutex<VecDeque<(i64, String)>>,
    service: Option<ServiceSettings>,
    /// Last registration call that succeeded (`None`: none yet, or the last one failed).
    service_applied: Mutex<Option<ServiceAction>>,
}

impl ConsulDcs {
    /// Build the client; no request is made, so this succeeds while Consul is down.
    pub fn new(
        cfg: &ConsulConfig,
        namespace: &str,
        scope: &str,
        name: &str,
        ttl: Duration,
        retry_timeout: Duration,
    ) -> Result<ConsulDcs, DcsError> {
        let ep = cfg
            .endpoint()
            .map_err(|m| DcsError::Rejected(format!("consul: {m}")))?;
        if ep.scheme == "https" {
            return Err(DcsError::Rejected(
                "consul: https is not supported by this build; reach the local agent over http"
                    .into(),
            ));
        }
        let base = reqwest::Url::parse(&ep.base_url())
            .map_err(|e| DcsError::Rejected(format!("consul: bad address: {e}")))?;
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| DcsError::Rejected(format!("consul: HTTP client: {e}")))?;
        let consistency = match cfg.consistency.as_deref() {
            Some("consistent") => Some("consistent"),
            Some("stale") => Some("stale"),
            _ => None,
        };
        let service = cfg.register_service().then(|| {
            let service_name = service::service_name(scope);
            if service_name != scope {
                tracing::warn!(
                    "Using {service_name} as consul service name instead of scope name {scope}"
                );
            }
            let mut tags = cfg.service_tags.clone().unwrap_or_default();
            tags.sort();
            ServiceSettings {
                name: service_name,
                id: format!("{scope}/{name}"),
                tags,
                check_interval: cfg
                    .service_check_interval
                    .clone()
                    .unwrap_or_else(|| "5s".into()),
                tls_server_name: cfg.service_check_tls_server_name.clone(),
            }
        });
        Ok(ConsulDcs {
            http: Http::new(client, base, cfg.token.clone(), cfg.dc.clone()),
            prefix: keys::cluster_prefix(namespace, scope)
                .trim_start_matches('/')
                .to_string(),
            name: name.to_string(),
            scope: scope.to_string(),
            consistency,
            checks: cfg.checks.clone().unwrap_or_default(),
            settings: Mutex::new(Settings {
                ttl,
                retry_timeout,
                min_session_ttl: None,
            }),
            session: tokio::sync::Mutex::new(SessionState::default()),
            seen_leaders: Mutex::new(VecDeque::new()),
            service,
            service_applied: Mutex::new(None),
        })
    }

    /// The Consul session our leader and member keys are held by, if one was created.
    pub async fn session_id(&self) -> Option<String> {
        self.session.lock().await.id.clone()
    }

    fn settings(&self) -> MutexGuard<'_, Settings> {
        self.settings.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn deadline(&self) -> (Instant, Duration) {
        let budget = self.settings().retry_timeout;
        // As upstream: one read may take a third of the budget, leaving room to retry.
        (
            Instant::now() + budget,
            (budget / 3).max(Duration::from_millis(500)),
        )
    }

    fn key(&self, rel: &str) -> String {
        format!("{}{rel}", self.prefix)
    }

    async fn call(&self, what: &str, req: Req<'_>, deadline: Instant) -> Result<Resp, OpError> {
        let per_attempt = (self.settings().retry_timeout / 3).max(Duration::from_millis(500));
        self.http.call(what, req, deadline, per_attempt).await
    }

    /// `PUT /v1/kv/<key>` with optional query (`cas`, `acquire`); `Ok(false)` = refused.
    async fn kv_put(
        &self,
        rel: &str,
        value: &str,
        query: &[(&'static str, String)],
        deadline: Instant,
    ) -> Result<bool, OpError> {
        let key = self.key(rel);
        let mut path = vec!["v1", "kv"];
        path.extend(key.split('/'));
        let mut req = Req::new(Method::PUT, path).body(value.to_string());
        for (k, v) in query {
            req = req.query(k, v.clone());
        }
        Ok(self.call(rel, req, deadline).await?.is_true())
    }

    async fn kv_delete(
        &self,
        rel: &str,
        query: &[(&'static str, String)],
        deadline: Instant,
    ) -> Result<bool, OpError> {
        let key = self.key(rel);
        let mut path = vec!["v1", "kv"];
        path.extend(key.split('/'));
        let mut req = Req::new(Method::DELETE, path);
        for (k, v) in query {
            req = req.query(k, v.clone());
        }
        Ok(self.call(rel, req, deadline).await?.is_true())
    }

    /// One key, read with `consistent` (leader decisions must not act on stale data).
    async fn kv_get(&self, rel: &str, deadline: Instant) -> Result<Option<KvEntry>, OpError> {
        let key = self.key(rel);
        let mut path = vec!["v1", "kv"];
        path.extend(key.split('/'));
        let req = Req::new(Method::GET, path).query("consistent", "");
        let resp = self.call(rel, req, deadline).await?;
        Ok(parse_entries(&resp)?.into_iter().next())
    }

    async fn put_simple(&self, rel: &str, value: &str, version: Option<i64>) -> DcsResult<bool> {
        let (deadline, _) = self.deadline();
        let query: Vec<(&str, String)> = version
            .map(|v| ("cas", v.to_string()))
            .into_iter()
            .collect();
        Ok(self.kv_put(rel, value, &query, deadline).await?)
    }

    fn session_ttl(&self) -> Duration {
        let s = self.settings();
        let half = s.ttl / 2;
        s.min_session_ttl.map_or(half, |m| half.max(m))
    }

    /// Renew our session (or create one if it is gone). Without `force`, a session renewed
    /// within the last second is reused as is.
    async fn refresh_session(&self, force: bool, deadline: Instant) -> Result<String, OpError> {
        let mut st = self.session.lock().await;
        if let Some(id) = st.id.clone() {
            if !force && st.renewed.is_some_and(|t| t.elapsed() < RENEW_REUSE) {
                return Ok(id);
            }
            let req = Req::new(Method::PUT, vec!["v1", "session", "renew", &id]);
            let resp = self.call("session renew", req, deadline).await?;
            if resp.status == 200 {
                st.renewed = Some(Instant::now());
                return Ok(id);
            }
            tracing::warn!("Consul session {id} is gone, creating a new one");
            st.id = None;
        }
        let id = self.create_session(deadline).await?;
        st.id = Some(id.clone());
        st.renewed = Some(Instant::now());
        Ok(id)
    }

    async fn create_session(&self, deadline: Instant) -> Result<String, OpError> {
        for _ in 0..2 {
            let body = json!({
                "Name": format!("{}-{}", self.scope, self.name),
                "TTL": format!("{}s", self.session_ttl().as_secs_f64()),
                // Upstream asks for (almost) no lock-delay so a new leader can take over at once.
                "LockDelay": "1ms",
                "Behavior": "delete",
                "Checks": self.checks,
            });
            let req = Req::new(Method::PUT, vec!["v1", "session", "create"]).body(body.to_string());
            match self.call("session create", req, deadline).await {
                Ok(r) if r.status == 200 => {
                    let v: Value = serde_json::from_str(&r.body).unwrap_or(Value::Null);
                    return v["ID"].as_str().map(str::to_string).ok_or_else(|| {
                        OpError::Dcs(DcsError::Rejected(format!(
                            "consul session create: unexpected answer {:?}",
                            r.body
                        )))
                    });
                }
                Ok(r) => {
                    return Err(OpError::Dcs(DcsError::Rejected(format!(
                        "consul session create: HTTP {} {}",
                        r.status, r.body
                    ))));
                }
                Err(OpError::InvalidSessionTtl(m)) => {
                    tracing::warn!(
                        "Consul refused session TTL {:?} ({m}); using its minimum {:?}",
                        self.session_ttl(),
                        CONSUL_MIN_SESSION_TTL
                    );
                    self.settings().min_session_ttl = Some(CONSUL_MIN_SESSION_TTL);
                }
                Err(e) => return Err(e),
            }
        }
        Err(OpError::InvalidSessionTtl(format!(
            "TTL {:?}",
            self.session_ttl()
        )))
    }

    async fn forget_session(&self, id: &str) {
        let mut st = self.session.lock().await;
        if st.id.as_deref() == Some(id) {
            *st = SessionState::default();
        }
    }

    /// Run `op` with our session; if Consul says the session is invalid (it expired
    /// between renewal and use), create a new one and try once more.
    async fn with_session<T, F, Fut>(&self, force: bool, deadline: Instant, op: F) -> DcsResult<T>
    where
        F: Fn(String) -> Fut,
        Fut: std::future::Future<Output = Result<T, OpError>>,
    {
        let id = self.refresh_session(force, deadline).await?;
        match op(id.clone()).await {
            Err(OpError::InvalidSession) => {
                tracing::error!("Our session disappeared from Consul, creating a new one");
                self.forget_session(&id).await;
                let id = self.refresh_session(true, deadline).await?;
                Ok(op(id).await?)
            }
            other => Ok(other?),
        }
    }

    fn remember_leader(&self, version: i64, name: &str) {
        let mut seen = self.seen_leaders.lock().unwrap_or_else(|p| p.into_inner());
        if !seen.iter().any(|(v, _)| *v == version) {
            seen.push_back((version, name.to_string()));
            if seen.len() > 16 {
                seen.pop_front();
            }
        }
    }

    fn leader_seen_at(&self, version: i64) -> Option<String> {
        let seen = self.seen_leaders.lock().unwrap_or_else(|p| p.into_inner());
        seen.iter()
            .find(|(v, _)| *v == version)
            .map(|(_, n)| n.clone())
    }
}

/// One element of a `GET /v1/kv/...` answer.
#[derive(Debug, Clone)]
struct KvEntry {
    key: String,
    value: String,
    modify_index: i64,
    session: Option<String>,
}

fn parse_entries(resp: &Resp) -> Result<Vec<KvEntry>, OpError> {
    if resp.status == 404 {
        return Ok(Vec::new());
    }
    let items: Vec<Value> = serde_json::from_str(&resp.body).map_err(|e| {
        OpError::Dcs(DcsError::Rejected(format!(
            "consul: unexpected KV answer ({e}): {:.80}",
            resp.body
        )))
    })?;
    Ok(items
        .iter()
        .filter_map(|i| {
            let raw = i["Value"].as_str().unwrap_or("");
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(raw)
                .unwrap_or_default();
            Some(KvEntry {
                key: i["Key"].as_str()?.to_string(),
                value: String::from_utf8_lossy(&bytes).into_owned(),
                modify_index: i["ModifyIndex"].as_i64().unwrap_or(0),
                session: i["Session"].as_str().map(str::to_string),
            })
        })
        .collect())
}

/// Consul sessions are UUIDs; the snapshot types carry an integer, so we take the UUID's
/// first 64 bits (unique enough to tell two sessions apart).
pub fn session_number(id: &str) -> i64 {
    let hex: String = id
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(16)
        .collect();
    match u64::from_str_radix(&hex, 16) {
        Ok(n) if hex.len() == 16 => n as i64,
        _ => id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        }) as i64,
    }
}

fn status_json(status: &Status) -> String {
    serde_json::to_string(status).unwrap_or_else(|_| "{}".into())
}

mod ops;
