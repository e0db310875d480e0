//! An in-process stand-in for a Consul agent: the documented HTTP API subset Patroni uses
//! (KV with `cas`/`acquire`/`recurse`, blocking queries on `index`, sessions with TTL,
//! `behavior` and lock-delay, agent service registration, ACL token check).
//!
//! No Consul binary can be installed on this machine (not in Debian, no registry package
//! ships it), so the backend is tested against this fixture. It follows Consul's
//! documented semantics, including its 2x TTL multiplier before a session is invalidated.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use base64::Engine;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

#[derive(Debug, Clone)]
pub struct Entry {
    pub value: Vec<u8>,
    pub create_index: i64,
    pub modify_index: i64,
    pub lock_index: i64,
    pub session: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Session {
    pub name: String,
    pub ttl: Duration,
    pub behavior: String,
    pub lock_delay: Duration,
    pub expires: Option<Instant>,
}

#[derive(Debug, Default)]
pub struct Data {
    index: i64,
    /// Highest index of any KV change, deletes included (Consul's table index).
    kv_index: i64,
    pub kv: BTreeMap<String, Entry>,
    pub sessions: HashMap<String, Session>,
    lock_delays: HashMap<String, Instant>,
    pub services: BTreeMap<String, Value>,
}

impl Data {
    fn bump(&mut self) -> i64 {
        self.index += 1;
        self.kv_index = self.index;
        self.index
    }

    fn put(&mut self, key: &str, value: Vec<u8>, session: Option<String>) {
        let idx = self.bump();
        let e = self.kv.entry(key.to_string()).or_insert(Entry {
            value: Vec::new(),
            create_index: idx,
            modify_index: idx,
            lock_index: 0,
            session: None,
        });
        if session.is_some() && e.session != session {
            e.lock_index += 1;
        }
        e.value = value;
        e.modify_index = idx;
        if session.is_some() {
            e.session = session;
        }
    }

    fn delete(&mut self, key: &str) -> bool {
        if self.kv.remove(key).is_some() {
            self.bump();
            true
        } else {
            false
        }
    }

    /// Invalidate expired sessions: their keys are deleted or released, with lock-delay.
    fn expire_sessions(&mut self, now: Instant) -> bool {
        let expired: Vec<String> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.expires.is_some_and(|e| e <= now))
            .map(|(id, _)| id.clone())
            .collect();
        for id in &expired {
            self.invalidate(id, now);
        }
        !expired.is_empty()
    }

    fn invalidate(&mut self, id: &str, now: Instant) {
        let Some(s) = self.sessions.remove(id) else {
            return;
        };
        let held: Vec<String> = self
            .kv
            .iter()
            .filter(|(_, e)| e.session.as_deref() == Some(id))
            .map(|(k, _)| k.clone())
            .collect();
        for k in held {
            self.lock_delays.insert(k.clone(), now + s.lock_delay);
            if s.behavior == "delete" {
                self.delete(&k);
            } else {
                let idx = self.bump();
                if let Some(e) = self.kv.get_mut(&k) {
                    e.session = None;
                    e.modify_index = idx;
                }
            }
        }
    }
}

struct Shared {
    data: Mutex<Data>,
    changed: Notify,
    down: AtomicBool,
    token: Option<String>,
    session_ttl_min: Duration,
    next_id: AtomicU64,
}

type St = Arc<Shared>;

pub struct ConsulFixture {
    pub port: u16,
    shared: St,
    server: Mutex<Option<JoinHandle<()>>>,
    reaper: JoinHandle<()>,
}

impl ConsulFixture {
    /// Start on a free loopback port. `token`: require this ACL token on every request.
    /// `session_ttl_min` as the agent option of that name (Consul's default is 10 s).
    pub async fn start(token: Option<&str>, session_ttl_min: Duration) -> ConsulFixture {
        let shared = Arc::new(Shared {
            data: Mutex::new(Data::default()),
            changed: Notify::new(),
            down: AtomicBool::new(false),
            token: token.map(str::to_string),
            session_ttl_min,
            next_id: AtomicU64::new(1),
        });
        let reaper = {
            let s = shared.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    if s.lock().expire_sessions(Instant::now()) {
                        s.changed.notify_waiters();
                    }
                }
            })
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let f = ConsulFixture {
            port,
            shared,
            server: Mutex::new(None),
            reaper,
        };
        f.serve(listener);
        f
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        self.shared.down.store(false, Ordering::SeqCst);
        let app = router(self.shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        *self.server.lock().unwrap() = Some(task);
    }

    /// Refuse new connections and fail requests on open ones (the agent went away).
    pub fn stop(&self) {
        self.shared.down.store(true, Ordering::SeqCst);
        if let Some(t) = self.server.lock().unwrap().take() {
            t.abort();
        }
    }

    /// Serve again on the same port with the same state (sessions kept ticking meanwhile).
    /// Must be called from within the test's tokio runtime.
    pub fn restart(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let std_listener = loop {
            match std::net::TcpListener::bind(("127.0.0.1", self.port)) {
                Ok(l) => break l,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(e) => panic!("cannot re-bind port {}: {e}", self.port),
            }
        };
        std_listener.set_nonblocking(true).unwrap();
        let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
        self.serve(listener);
    }

    pub fn data(&self) -> MutexGuard<'_, Data> {
        self.shared.lock()
    }

    pub fn put_raw(&self, key: &str, value: &str) {
        self.shared.lock().put(key, value.as_bytes().to_vec(), None);
        self.shared.changed.notify_waiters();
    }

    pub fn get_raw(&self, key: &str) -> Option<String> {
        let d = self.shared.lock();
        d.kv.get(key)
            .map(|e| String::from_utf8_lossy(&e.value).into_owned())
    }

    pub fn delete_raw(&self, key: &str) {
        self.shared.lock().delete(key);
        self.shared.changed.notify_waiters();
    }
}

impl Drop for ConsulFixture {
    fn drop(&mut self) {
        self.stop();
        self.reaper.abort();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Data> {
        self.data.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn router(st: St) -> Router {
    Router::new()
        .route("/v1/kv/{*key}", get(kv_get).put(kv_put).delete(kv_delete))
        .route("/v1/session/create", put(session_create))
        .route("/v1/session/renew/{id}", put(session_renew))
        .route("/v1/session/destroy/{id}", put(session_destroy))
        .route("/v1/agent/service/register", put(service_register))
        .route(
            "/v1/agent/service/deregister/{*id}",
            put(service_deregister),
        )
        .route("/v1/agent/services", get(services))
        .layer(axum::middleware::from_fn_with_state(st.clone(), gate))
        .with_state(st)
}

/// Outage and ACL check in front of every handler.
async fn gate(
    State(st): State<St>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if st.down.load(Ordering::SeqCst) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [("connection", "close")],
            "agent is shutting down",
        )
            .into_response();
    }
    if let Some(t) = &st.token {
        let given = req
            .headers()
            .get("X-Consul-Token")
            .and_then(|v| v.to_str().ok());
        if given != Some(t.as_str()) {
            return (StatusCode::FORBIDDEN, "Permission denied").into_response();
        }
    }
    next.run(req).await
}

type Q = Query<HashMap<String, String>>;

fn entry_json(key: &str, e: &Entry) -> Value {
    let mut v = json!({
        "Key": key,
        "CreateIndex": e.create_index,
        "ModifyIndex": e.modify_index,
        "LockIndex": e.lock_index,
        "Flags": 0,
        "Value": if e.value.is_empty() { Value::Null } else {
            Value::from(base64::engine::general_purpose::STANDARD.encode(&e.value))
        },
    });
    if let Some(s) = &e.session {
        v["Session"] = Value::from(s.clone());
    }
    v
}

/// The answer to a KV read and the index it reflects.
fn kv_read(d: &Data, key: &str, recurse: bool) -> (Vec<Value>, i64) {
    if recurse {
        let items: Vec<Value> =
            d.kv.range(key.to_string()..)
                .take_while(|(k, _)| k.starts_with(key))
                .map(|(k, e)| entry_json(k, e))
                .collect();
        (items, d.kv_index.max(1))
    } else {
        match d.kv.get(key) {
            Some(e) => (vec![entry_json(key, e)], e.modify_index),
            None => (Vec::new(), d.kv_index.max(1)),
        }
    }
}

/// Go duration strings as Consul accepts them: `10s`, `1.5s`, `500ms`, `2m`.
fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic())?);
    let n: f64 = num.parse().ok()?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    Some(Duration::from_secs_f64(secs))
}

async fn kv_get(State(st): State<St>, Path(key): Path<String>, Query(q): Q) -> Response {
    let recurse = q.contains_key("recurse");
    let min_index: i64 = q.get("index").and_then(|i| i.parse().ok()).unwrap_or(0);
    let wait = q
        .get("wait")
        .and_then(|w| parse_duration(w))
        .unwrap_or(Duration::from_secs(300))
        .min(Duration::from_secs(600));
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let notified = st.changed.notified();
        let (items, index) = kv_read(&st.lock(), &key, recurse);
        let now = tokio::time::Instant::now();
        if min_index == 0 || index > min_index || now >= deadline {
            let status = if items.is_empty() {
                StatusCode::NOT_FOUND
            } else {
                StatusCode::OK
            };
            let body = if items.is_empty() {
                String::new()
            } else {
                Value::Array(items).to_string()
            };
            return (status, [("X-Consul-Index", index.to_string())], body).into_response();
        }
        let _ = tokio::time::timeout_at(deadline, notified).await;
    }
}

async fn kv_put(
    State(st): State<St>,
    Path(key): Path<String>,
    Query(q): Q,
    body: Bytes,
) -> Response {
    let ok = {
        let mut d = st.lock();
        let now = Instant::now();
        if let Some(sid) = q.get("acquire") {
            if !d.sessions.contains_key(sid) {
                return (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("invalid session \"{sid}\""),
                )
                    .into_response();
            }
            let delayed = d.lock_delays.get(&key).is_some_and(|t| *t > now);
            let held_by_other =
                d.kv.get(&key)
                    .and_then(|e| e.session.as_ref())
                    .is_some_and(|s| s != sid);
            if delayed || held_by_other {
                false
            } else {
                d.put(&key, body.to_vec(), Some(sid.clone()));
                true
            }
        } else if let Some(cas) = q.get("cas").and_then(|c| c.parse::<i64>().ok()) {
            let current = d.kv.get(&key).map(|e| e.modify_index);
            let matches = if cas == 0 {
                current.is_none()
            } else {
                current == Some(cas)
            };
            if matches {
                d.put(&key, body.to_vec(), None);
            }
            matches
        } else {
            d.put(&key, body.to_vec(), None);
            true
        }
    };
    st.changed.notify_waiters();
    bool_answer(ok)
}

/// KV writes answer the JSON literal `true` or `false`.
fn bool_answer(b: bool) -> Response {
    (StatusCode::OK, if b { "true" } else { "false" }).into_response()
}

async fn kv_delete(State(st): State<St>, Path(key): Path<String>, Query(q): Q) -> Response {
    let ok = {
        let mut d = st.lock();
        if q.contains_key("recurse") {
            let keys: Vec<String> =
                d.kv.keys()
                    .filter(|k| k.starts_with(&key))
                    .cloned()
                    .collect();
            for k in keys {
                d.delete(&k);
            }
            true
        } else if let Some(cas) = q.get("cas").and_then(|c| c.parse::<i64>().ok()) {
            let matches = d.kv.get(&key).is_some_and(|e| e.modify_index == cas);
            if matches {
                d.delete(&key);
            }
            matches
        } else {
            d.delete(&key);
            true
        }
    };
    st.changed.notify_waiters();
    bool_answer(ok)
}

/// Consul decodes JSON field names case-insensitively.
fn field<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    v.as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

async fn session_create(State(st): State<St>, body: Bytes) -> Response {
    let v: Value = serde_json::from_slice(&body).unwrap_or(json!({}));
    let text = |n: &str| {
        field(&v, n)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let ttl = match text("TTL").as_str() {
        "" => None,
        t => match parse_duration(t) {
            Some(d) if d >= st.session_ttl_min && d <= Duration::from_secs(86400) => Some(d),
            _ => {
                let msg = format!(
                    "Invalid Session TTL '{t}', must be between [{:?}=24h0m0s]",
                    st.session_ttl_min
                );
                return (StatusCode::INTERNAL_SERVER_ERROR, msg).into_response();
            }
        },
    };
    if let Some(checks) = field(&v, "Checks").and_then(Value::as_array)
        && let Some(c) = checks.iter().find(|c| c.as_str() != Some("serfHealth"))
    {
        let msg = format!("Missing check '{}' registration", c.as_str().unwrap_or("?"));
        return (StatusCode::INTERNAL_SERVER_ERROR, msg).into_response();
    }
    let behavior = match text("Behavior").as_str() {
        "" => "release".to_string(),
        b => b.to_string(),
    };
    let lock_delay = parse_duration(&text("LockDelay")).unwrap_or(Duration::from_secs(15));
    let n = st.next_id.fetch_add(1, Ordering::SeqCst);
    let id = format!(
        "{:08x}-{:04x}-4000-8000-{:012x}",
        std::process::id(),
        n & 0xffff,
        n
    );
    let session = Session {
        name: text("Name"),
        ttl: ttl.unwrap_or_default(),
        behavior,
        lock_delay,
        // Consul invalidates a session only after twice its TTL.
        expires: ttl.map(|t| Instant::now() + t * 2),
    };
    let mut d = st.lock();
    d.index += 1;
    d.sessions.insert(id.clone(), session);
    axum::Json(json!({ "ID": id })).into_response()
}

async fn session_renew(State(st): State<St>, Path(id): Path<String>) -> Response {
    let mut d = st.lock();
    match d.sessions.get_mut(&id) {
        Some(s) => {
            s.expires = (!s.ttl.is_zero()).then(|| Instant::now() + s.ttl * 2);
            let body = json!([{ "ID": id, "Name": s.name, "TTL": format!("{}s", s.ttl.as_secs_f64()),
                "Behavior": s.behavior }]);
            axum::Json(body).into_response()
        }
        None => (
            StatusCode::NOT_FOUND,
            format!("Session id '{id}' not found"),
        )
            .into_response(),
    }
}

async fn session_destroy(State(st): State<St>, Path(id): Path<String>) -> Response {
    st.lock().invalidate(&id, Instant::now());
    st.changed.notify_waiters();
    bool_answer(true)
}

async fn service_register(State(st): State<St>, body: Bytes) -> Response {
    let v: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("Request decode failed: {e}"),
            )
                .into_response();
        }
    };
    let id = field(&v, "ID")
        .or_else(|| field(&v, "Name"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    st.lock().services.insert(id, v);
    StatusCode::OK.into_response()
}

async fn service_deregister(State(st): State<St>, Path(id): Path<String>) -> Response {
    match st.lock().services.remove(&id) {
        Some(_) => StatusCode::OK.into_response(),
        None => (StatusCode::NOT_FOUND, format!("Unknown service ID {id:?}")).into_response(),
    }
}

async fn services(State(st): State<St>) -> Response {
    let d = st.lock();
    axum::Json(Value::Object(
        d.services
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    ))
    .into_response()
}
