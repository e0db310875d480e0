//! Shared harness for the REST API write-side tests: an in-memory DCS seeded with a
//! three-member cluster, a published `NodeStatus`, live peer APIs for candidate checks, a
//! fake HA loop answering `NodeCommand`s, and request helpers over `router().oneshot()`.
#![allow(dead_code)]

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::ConnectInfo;
use axum::http::{Method, Request, StatusCode};
use patroni::api::{ApiState, ClientInfo, router, serve};
use patroni::command::{CommandReceiver, CommandReply, NodeCommand};
use patroni::config::{Config, DynamicConfig};
use patroni::dcs::mem::{MemDcs, MemStore};
use patroni::dcs::{Cluster, Dcs, PgState, Role};
use patroni::postgres::types::SqlObservation;
use patroni::status::NodeStatus;
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tower::ServiceExt;

pub const PREFIX: &str = "/service/demo/";
pub const CONFIG: &str = r#"{"ttl":30,"loop_wait":10,"retry_timeout":10,"postgresql":{"parameters":{"max_connections":100,"work_mem":"4MB"}}}"#;

pub fn key(k: &str) -> String {
    format!("{PREFIX}{k}")
}

pub struct Env {
    pub store: MemStore,
    pub dcs: Arc<MemDcs>,
    pub status: watch::Sender<Arc<NodeStatus>>,
    pub wake: Arc<Notify>,
    pub state: ApiState,
    /// Peer API servers (stopped on drop).
    peers: Vec<tokio::sync::oneshot::Sender<()>>,
}

impl Env {
    /// Node `pg0` (primary, holds the lock) in a cluster seeded with `CONFIG`, leader `pg0`,
    /// members pg0/pg1/pg2 whose api_urls point nowhere until `live_peer` replaces them.
    pub fn new() -> Env {
        let store = MemStore::new();
        store.put_raw(&key("initialize"), "7301");
        store.put_raw(&key("config"), CONFIG);
        store.put_raw(&key("leader"), "pg0");
        for (name, port) in [("pg0", 1), ("pg1", 2), ("pg2", 3)] {
            put_member(
                &store,
                name,
                &format!("http://127.0.0.1:{port}/patroni"),
                "{}",
            );
        }
        let dcs = Arc::new(MemDcs::new(
            store.clone(),
            "/service/",
            "demo",
            "pg0",
            Duration::from_secs(30),
        ));
        let (status, rx) = watch::channel(Arc::new(primary_status()));
        let wake = Arc::new(Notify::new());
        let state = ApiState {
            status: rx,
            dcs: Some(dcs.clone() as Arc<dyn Dcs>),
            wake: wake.clone(),
            commands: None,
            reloader: None,
            config: None,
        };
        let env = Env {
            store,
            dcs,
            status,
            wake,
            state,
            peers: Vec::new(),
        };
        env.refresh_snapshot_blocking();
        env
    }

    pub fn app(&self) -> Router {
        router(self.state.clone())
    }

    /// Publish a status with the current DCS contents as its cluster snapshot.
    pub fn publish(&self, mut st: NodeStatus) {
        st.cluster = Some(Arc::new(self.cluster_now()));
        self.status.send_replace(Arc::new(st));
    }

    fn refresh_snapshot_blocking(&self) {
        let st = (**self.status.borrow()).clone();
        self.publish(st);
    }

    pub fn cluster_now(&self) -> Cluster {
        let nodes: Vec<patroni::dcs::RawNode> = [
            "initialize",
            "config",
            "leader",
            "failover",
            "sync",
            "failsafe",
            "members/pg0",
            "members/pg1",
            "members/pg2",
        ]
        .iter()
        .filter_map(|k| {
            self.store
                .get_raw(&key(k))
                .map(|(value, version, session)| patroni::dcs::RawNode {
                    key: k.to_string(),
                    value,
                    version,
                    session,
                })
        })
        .collect();
        Cluster::from_nodes(&nodes)
    }

    pub fn raw(&self, k: &str) -> Option<String> {
        self.store.get_raw(&key(k)).map(|(v, _, _)| v)
    }

    /// Start a real API server for member `name` answering with `st`, and point the
    /// member key's api_url at it (with `tags` JSON object in the member key too).
    pub async fn live_peer(&mut self, name: &str, mut st: NodeStatus, tags: &str) {
        st.name = name.into();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (_stx, srx) = watch::channel(Arc::new(st));
        let peer_state = ApiState {
            status: srx,
            dcs: None,
            wake: Arc::new(Notify::new()),
            commands: None,
            reloader: None,
            config: None,
        };
        tokio::spawn(serve(listener, peer_state, async move {
            let _ = rx.await;
        }));
        self.peers.push(tx);
        put_member(&self.store, name, &format!("http://{addr}/patroni"), tags);
        self.refresh_snapshot_blocking();
    }
}

pub fn put_member(store: &MemStore, name: &str, api_url: &str, tags: &str) {
    let role = if name == "pg0" { "primary" } else { "replica" };
    store.put_raw(
        &key(&format!("members/{name}")),
        &format!(
            r#"{{"conn_url":"postgres://127.0.0.1:5432/postgres","api_url":"{api_url}","state":"running","role":"{role}","tags":{tags}}}"#
        ),
    );
}

pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

pub fn base_status(name: &str) -> NodeStatus {
    NodeStatus {
        name: name.into(),
        scope: "demo".into(),
        state: PgState::Running,
        database_system_identifier: Some("7301".into()),
        dcs_last_seen: Some(now()),
        dynamic: DynamicConfig::default(),
        loop_running: true,
        last_cycle_at: Some(now()),
        ..Default::default()
    }
}

pub fn primary_status() -> NodeStatus {
    NodeStatus {
        role: Role::Primary,
        has_lock: true,
        pg: Some(SqlObservation {
            in_recovery: false,
            timeline: 2,
            wal_lsn: 0x3000060,
            server_version: 150004,
            system_identifier: "7301".into(),
            postmaster_start_time: "2024-08-28 19:39:26.352526+00:00".into(),
            ..Default::default()
        }),
        ..base_status("pg0")
    }
}

pub fn replica_status(name: &str) -> NodeStatus {
    NodeStatus {
        role: Role::Replica,
        pg: Some(SqlObservation {
            in_recovery: true,
            timeline: 2,
            wal_lsn: 0x3000000,
            receive_lsn: Some(0x3000000),
            replay_lsn: Some(0x3000000),
            server_version: 150004,
            system_identifier: "7301".into(),
            postmaster_start_time: "2024-08-28 19:39:26.352526+00:00".into(),
            ..Default::default()
        }),
        ..base_status(name)
    }
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: axum::http::HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
    #[track_caller]
    pub fn expect(&self, code: u16, text_contains: &str) {
        assert_eq!(self.status.as_u16(), code, "body: {}", self.text());
        assert!(
            self.text().contains(text_contains),
            "expected {text_contains:?} in {:?}",
            self.text()
        );
    }
}

/// A request builder: method, uri, optional body, extra headers, optional client address.
pub struct Call {
    pub method: Method,
    pub uri: String,
    pub body: Option<String>,
    pub headers: Vec<(String, String)>,
    pub client: Option<ClientInfo>,
}

pub fn call(method: Method, uri: &str) -> Call {
    Call {
        method,
        uri: uri.into(),
        body: None,
        headers: Vec::new(),
        client: None,
    }
}

impl Call {
    pub fn body(mut self, b: &str) -> Call {
        self.body = Some(b.into());
        self
    }
    pub fn header(mut self, k: &str, v: &str) -> Call {
        self.headers.push((k.into(), v.into()));
        self
    }
    pub fn from(mut self, ip: &str, client_cert: bool) -> Call {
        self.client = Some(ClientInfo {
            addr: std::net::SocketAddr::new(ip.parse().unwrap(), 40000),
            client_cert,
        });
        self
    }
    pub async fn send(self, app: &Router) -> Reply {
        let mut b = Request::builder().method(self.method).uri(&self.uri);
        if let Some(body) = &self.body {
            b = b
                .header("content-type", "application/json")
                .header("content-length", body.len().to_string());
        }
        for (k, v) in &self.headers {
            b = b.header(k.as_str(), v.as_str());
        }
        let mut req = b
            .body(self.body.map(Body::from).unwrap_or_else(Body::empty))
            .unwrap();
        if let Some(c) = self.client {
            req.extensions_mut().insert(ConnectInfo(c));
        }
        let resp = app.clone().oneshot(req).await.expect("infallible");
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = to_bytes(resp.into_body(), 16 << 20).await.unwrap().to_vec();
        Reply {
            status,
            headers,
            body,
        }
    }
}

/// A fake HA loop: records every command and answers with `answer` (None = drop the
/// reply sender without answering).
pub type Seen = Arc<Mutex<Vec<String>>>;

pub fn fake_loop(
    mut rx: CommandReceiver,
    answer: impl Fn(&NodeCommand) -> Option<CommandReply> + Send + 'static,
) -> Seen {
    let seen: Seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Some(cmd) = rx.recv().await {
            log.lock().unwrap().push(format!("{cmd:?}"));
            let reply = answer(&cmd);
            let tx = match cmd {
                NodeCommand::Restart(_, tx) => tx,
                NodeCommand::CancelScheduledRestart(tx) => tx,
                NodeCommand::Reinitialize(_, tx) => tx,
                NodeCommand::FailsafeContact { .. } => continue,
            };
            if let Some(r) = reply {
                let _ = tx.send(r);
            }
        }
    });
    seen
}

/// A local configuration for the access guard.
pub fn local_config(restapi: Value) -> watch::Receiver<Arc<Config>> {
    let cfg: Config = serde_json::from_value(serde_json::json!({
        "name": "pg0", "scope": "demo", "restapi": restapi
    }))
    .expect("config");
    watch::channel(Arc::new(cfg)).1
}
