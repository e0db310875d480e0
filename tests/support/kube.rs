//! An in-process stand-in for the Kubernetes API server: the documented core/v1 REST
//! subset Patroni uses, for ConfigMaps, Endpoints and Pods in any namespace — list with
//! `labelSelector`/`fieldSelector`, get, create (409 AlreadyExists), JSON merge patch with
//! `metadata.resourceVersion` preconditions (409 Conflict), delete, delete-collection,
//! and `watch=1` streams replayed from a resourceVersion; bearer-token check.
//!
//! No API server can be run on this machine (no kube-apiserver/k3s/kind package), so the
//! backend is tested against this fixture.

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

type Key = (String, String, String);

#[derive(Default)]
struct Data {
    rv: i64,
    objects: BTreeMap<Key, Value>,
    /// (resourceVersion, namespace, kind, event type, object) for watches.
    events: Vec<(i64, String, String, &'static str, Value)>,
}

impl Data {
    fn record(&mut self, key: &Key, kind: &'static str, obj: Value) {
        self.events
            .push((self.rv, key.0.clone(), key.1.clone(), kind, obj));
        if self.events.len() > 2000 {
            self.events.drain(..1000);
        }
    }

    fn next_rv(&mut self) -> String {
        self.rv += 1;
        self.rv.to_string()
    }
}

struct Shared {
    data: Mutex<Data>,
    changed: Notify,
    down: AtomicBool,
    token: Option<String>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Data> {
        self.data.lock().unwrap_or_else(|p| p.into_inner())
    }
}

type St = Arc<Shared>;

pub struct KubeFixture {
    pub port: u16,
    shared: St,
    server: Mutex<Option<JoinHandle<()>>>,
}

impl KubeFixture {
    pub async fn start(token: Option<&str>) -> KubeFixture {
        let shared = Arc::new(Shared {
            data: Mutex::new(Data::default()),
            changed: Notify::new(),
            down: AtomicBool::new(false),
            token: token.map(str::to_string),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let f = KubeFixture {
            port,
            shared,
            server: Mutex::new(None),
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

    pub fn stop(&self) {
        self.shared.down.store(true, Ordering::SeqCst);
        self.shared.changed.notify_waiters();
        if let Some(t) = self.server.lock().unwrap().take() {
            t.abort();
        }
    }

    /// Serve again on the same port; must be called within the test's tokio runtime.
    pub fn restart(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let l = loop {
            match std::net::TcpListener::bind(("127.0.0.1", self.port)) {
                Ok(l) => break l,
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(e) => panic!("cannot re-bind port {}: {e}", self.port),
            }
        };
        l.set_nonblocking(true).unwrap();
        self.serve(tokio::net::TcpListener::from_std(l).unwrap());
    }

    /// What a StatefulSet would do: a pod named `name` with `labels`.
    pub fn add_pod(&self, ns: &str, name: &str, labels: &BTreeMap<String, String>) {
        let obj = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "status": {"podIP": "10.0.0.1"}});
        let key = (ns.to_string(), "pods".to_string(), name.to_string());
        let mut d = self.shared.lock();
        if !d.objects.contains_key(&key) {
            create_locked(&mut d, key, obj);
        }
    }

    pub fn object(&self, ns: &str, kind: &str, name: &str) -> Option<Value> {
        let key = (ns.to_string(), kind.to_string(), name.to_string());
        self.shared.lock().objects.get(&key).cloned()
    }

    /// Set (`Some`) or remove one annotation, creating the object with `labels` if needed.
    pub fn annotate(
        &self,
        ns: &str,
        kind: &str,
        name: &str,
        labels: &BTreeMap<String, String>,
        key: &str,
        value: Option<&str>,
    ) {
        let k = (ns.to_string(), kind.to_string(), name.to_string());
        let mut d = self.shared.lock();
        if !d.objects.contains_key(&k) {
            let obj = json!({"metadata": {"name": name, "namespace": ns, "labels": labels}});
            create_locked(&mut d, k.clone(), obj);
        }
        let patch = json!({"metadata": {"annotations": {key: value}}});
        let _ = patch_locked(&mut d, &k, &patch);
        drop(d);
        self.shared.changed.notify_waiters();
    }

    pub fn delete(&self, ns: &str, kind: &str, name: &str) {
        let k = (ns.to_string(), kind.to_string(), name.to_string());
        delete_locked(&mut self.shared.lock(), &k);
        self.shared.changed.notify_waiters();
    }
}

impl Drop for KubeFixture {
    fn drop(&mut self) {
        self.stop();
    }
}

fn router(st: St) -> Router {
    Router::new()
        .route(
            "/api/v1/namespaces/{ns}/{kind}",
            get(list_or_watch).post(create).delete(delete_collection),
        )
        .route(
            "/api/v1/namespaces/{ns}/{kind}/{name}",
            get(read).patch(patch).delete(delete_one),
        )
        .layer(axum::middleware::from_fn_with_state(st.clone(), gate))
        .with_state(st)
}

async fn gate(
    State(st): State<St>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if st.down.load(Ordering::SeqCst) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [("connection", "close")],
            "",
        )
            .into_response();
    }
    if let Some(t) = &st.token {
        let expected = format!("Bearer {t}");
        let given = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if given != Some(expected.as_str()) {
            return status(401, "Unauthorized", "Unauthorized");
        }
    }
    next.run(req).await
}

fn status(code: u16, reason: &str, message: &str) -> Response {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code});
    (StatusCode::from_u16(code).unwrap(), axum::Json(body)).into_response()
}

/// Equality-based selectors: `a=b,c=d` (labels) or `metadata.name=x` (fields).
fn matches(obj: &Value, q: &HashMap<String, String>) -> bool {
    let labels = &obj["metadata"]["labels"];
    let label_ok = q.get("labelSelector").is_none_or(|sel| {
        sel.split(',').filter(|s| !s.is_empty()).all(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            labels[k].as_str() == Some(v)
        })
    });
    let field_ok = q.get("fieldSelector").is_none_or(|sel| {
        sel.split(',').all(|kv| match kv.split_once('=') {
            Some(("metadata.name", v)) => obj["metadata"]["name"].as_str() == Some(v),
            _ => true,
        })
    });
    label_ok && field_ok
}

fn create_locked(d: &mut Data, key: Key, mut obj: Value) -> Value {
    let rv = d.next_rv();
    let m = &mut obj["metadata"];
    m["resourceVersion"] = Value::from(rv.clone());
    m["namespace"] = Value::from(key.0.clone());
    m["uid"] = Value::from(format!("uid-{rv}"));
    m["creationTimestamp"] = Value::from("2024-01-01T00:00:00Z");
    d.objects.insert(key.clone(), obj.clone());
    d.record(&key, "ADDED", obj.clone());
    obj
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let t = target.as_object_mut().expect("object");
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

fn patch_locked(d: &mut Data, key: &Key, patch: &Value) -> Result<Value, Box<Response>> {
    let Some(current) = d.objects.get(key).cloned() else {
        return Err(Box::new(status(
            404,
            "NotFound",
            &format!("{} {:?} not found", key.1, key.2),
        )));
    };
    if let Some(want) = patch["metadata"]["resourceVersion"].as_str()
        && current["metadata"]["resourceVersion"].as_str() != Some(want)
    {
        let msg = format!(
            "Operation cannot be fulfilled on {} {:?}: the object has been modified; \
             please apply your changes to the latest version and try again",
            key.1, key.2
        );
        return Err(Box::new(status(409, "Conflict", &msg)));
    }
    let mut obj = current;
    merge(&mut obj, patch);
    obj["metadata"]["resourceVersion"] = Value::from(d.next_rv());
    d.objects.insert(key.clone(), obj.clone());
    d.record(key, "MODIFIED", obj.clone());
    Ok(obj)
}

fn delete_locked(d: &mut Data, key: &Key) -> Option<Value> {
    let mut obj = d.objects.remove(key)?;
    obj["metadata"]["resourceVersion"] = Value::from(d.next_rv());
    d.record(key, "DELETED", obj.clone());
    Some(obj)
}

type Q = Query<HashMap<String, String>>;

async fn list_or_watch(
    State(st): State<St>,
    Path((ns, kind)): Path<(String, String)>,
    Query(q): Q,
) -> Response {
    if matches!(q.get("watch").map(String::as_str), Some("1" | "true")) {
        return watch(st, ns, kind, q);
    }
    let d = st.lock();
    let items: Vec<Value> = d
        .objects
        .iter()
        .filter(|((n, k, _), o)| *n == ns && *k == kind && matches(o, &q))
        .map(|(_, o)| o.clone())
        .collect();
    axum::Json(json!({"kind": "List", "apiVersion": "v1",
        "metadata": {"resourceVersion": d.rv.to_string()}, "items": items}))
    .into_response()
}

fn watch(st: St, ns: String, kind: String, q: HashMap<String, String>) -> Response {
    let mut from: i64 = q
        .get("resourceVersion")
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .unwrap_or(1800u64);
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
        loop {
            let notified = st.changed.notified();
            if st.down.load(Ordering::SeqCst) {
                return;
            }
            let lines: Vec<(i64, String)> = st
                .lock()
                .events
                .iter()
                .filter(|(rv, n, k, _, o)| *rv > from && *n == ns && *k == kind && matches(o, &q))
                .map(|(rv, _, _, t, o)| (*rv, format!("{}\n", json!({"type": t, "object": o}))))
                .collect();
            for (rv, line) in lines {
                from = rv;
                if tx.send(Bytes::from(line)).await.is_err() {
                    return;
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return;
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::convert::Infallible>(b), rx))
    });
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .unwrap()
}

async fn create(
    State(st): State<St>,
    Path((ns, kind)): Path<(String, String)>,
    axum::Json(obj): axum::Json<Value>,
) -> Response {
    let Some(name) = obj["metadata"]["name"].as_str().map(str::to_string) else {
        return status(422, "Invalid", "metadata.name: Required value");
    };
    let key = (ns, kind, name);
    let created = {
        let mut d = st.lock();
        if d.objects.contains_key(&key) {
            let msg = format!("{} {:?} already exists", key.1, key.2);
            return status(409, "AlreadyExists", &msg);
        }
        create_locked(&mut d, key, obj)
    };
    st.changed.notify_waiters();
    (StatusCode::CREATED, axum::Json(created)).into_response()
}

async fn read(
    State(st): State<St>,
    Path((ns, kind, name)): Path<(String, String, String)>,
) -> Response {
    match st.lock().objects.get(&(ns, kind.clone(), name.clone())) {
        Some(o) => axum::Json(o.clone()).into_response(),
        None => status(404, "NotFound", &format!("{kind} {name:?} not found")),
    }
}

async fn patch(
    State(st): State<St>,
    Path((ns, kind, name)): Path<(String, String, String)>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let ct = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct.starts_with("application/merge-patch+json")
        && !ct.starts_with("application/strategic-merge-patch+json")
    {
        return status(
            415,
            "UnsupportedMediaType",
            &format!(
                "the body of the request was in an unknown format - accepted media types include: application/merge-patch+json; got {ct:?}"
            ),
        );
    }
    let Ok(p) = serde_json::from_slice::<Value>(&body) else {
        return status(400, "BadRequest", "invalid JSON");
    };
    let result = patch_locked(&mut st.lock(), &(ns, kind, name), &p);
    st.changed.notify_waiters();
    match result {
        Ok(o) => axum::Json(o).into_response(),
        Err(r) => *r,
    }
}

async fn delete_one(
    State(st): State<St>,
    Path((ns, kind, name)): Path<(String, String, String)>,
) -> Response {
    let gone = delete_locked(&mut st.lock(), &(ns, kind.clone(), name.clone()));
    st.changed.notify_waiters();
    match gone {
        Some(o) => axum::Json(o).into_response(),
        None => status(404, "NotFound", &format!("{kind} {name:?} not found")),
    }
}

async fn delete_collection(
    State(st): State<St>,
    Path((ns, kind)): Path<(String, String)>,
    Query(q): Q,
) -> Response {
    {
        let mut d = st.lock();
        let keys: Vec<Key> = d
            .objects
            .iter()
            .filter(|((n, k, _), o)| *n == ns && *k == kind && matches(o, &q))
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            delete_locked(&mut d, &k);
        }
    }
    st.changed.notify_waiters();
    axum::Json(json!({"kind": "Status", "apiVersion": "v1", "status": "Success"})).into_response()
}
