//! REST API against published `NodeStatus` values: every endpoint for each node situation
//! (primary with lock, streaming replica, noloadbalance replica, stopped, unlocked cluster,
//! paused, standby leader, sync standby, demoting), via `router().oneshot()`, plus one test
//! over a real socket with `serve`.

use axum::body::{Body, to_bytes};
use axum::http::{Method, Request, StatusCode};
use patroni::api::{ApiState, router, serve};
use patroni::config::DynamicConfig;
use patroni::dcs::{Cluster, PgState, RawNode, Role};
use patroni::postgres::types::{ReplicationConn, SqlObservation, WalReceiver};
use patroni::status::NodeStatus;
use serde_json::{Map, Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tower::ServiceExt;

const LEADER_OPTIME: u64 = 0x3000060;

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn node(key: &str, value: &str) -> RawNode {
    RawNode {
        key: key.into(),
        value: value.into(),
        version: 5,
        session: None,
    }
}

/// A three-member cluster snapshot; `leader` None = unlocked.
fn cluster(leader: Option<&str>, extra: &[(&str, &str)]) -> Arc<Cluster> {
    let mut nodes = vec![
        node("initialize", "7301"),
        node(
            "config",
            r#"{"ttl":30,"loop_wait":10,"postgresql":{"use_pg_rewind":true}}"#,
        ),
        node(
            "history",
            r#"[[1,25165984,"no recovery target specified","2024-01-01T00:00:00+00:00","pg0"]]"#,
        ),
        node("status", &format!(r#"{{"optime":{LEADER_OPTIME}}}"#)),
        node(
            "members/pg0",
            r#"{"conn_url":"postgres://127.0.0.1:5432/postgres","api_url":"http://127.0.0.1:8008/patroni","state":"running","role":"primary","version":"4.1.0","xlog_location":50331744,"timeline":2}"#,
        ),
        node(
            "members/pg1",
            r#"{"conn_url":"postgres://127.0.0.1:5433/postgres","api_url":"http://127.0.0.1:8009/patroni","state":"running","role":"replica","xlog_location":50331648,"receive_lsn":50331648,"replay_lsn":50331000,"replication_state":"streaming","timeline":2,"tags":{"dc":"east"}}"#,
        ),
        node(
            "members/pg2",
            r#"{"conn_url":"postgres://127.0.0.1:5434/postgres","api_url":"http://127.0.0.1:8010/patroni","state":"stopped","role":"replica"}"#,
        ),
    ];
    if let Some(l) = leader {
        nodes.push(node("leader", l));
    }
    nodes.extend(extra.iter().map(|(k, v)| node(k, v)));
    Arc::new(Cluster::from_nodes(&nodes))
}

fn base(name: &str) -> NodeStatus {
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

fn primary_sql() -> SqlObservation {
    SqlObservation {
        in_recovery: false,
        timeline: 2,
        wal_lsn: LEADER_OPTIME,
        server_version: 150004,
        system_identifier: "7301".into(),
        postmaster_start_time: "2024-08-28 19:39:26.352526+00:00".into(),
        replication: vec![ReplicationConn {
            usename: "replicator".into(),
            application_name: "pg1".into(),
            client_addr: Some("127.0.0.1".into()),
            state: "streaming".into(),
            sync_state: "async".into(),
            sync_priority: 0,
            write_lsn: Some(LEADER_OPTIME),
            flush_lsn: Some(LEADER_OPTIME),
            replay_lsn: Some(LEADER_OPTIME),
        }],
        ..Default::default()
    }
}

fn replica_sql(replayed: u64) -> SqlObservation {
    SqlObservation {
        in_recovery: true,
        timeline: 2,
        wal_lsn: replayed,
        receive_lsn: Some(replayed),
        replay_lsn: Some(replayed),
        replay_timestamp: Some("2024-08-28 19:40:00.000000+00:00".into()),
        server_version: 150004,
        system_identifier: "7301".into(),
        postmaster_start_time: "2024-08-28 19:39:26.352526+00:00".into(),
        wal_receiver: Some(WalReceiver {
            status: "streaming".into(),
            sender_host: Some("127.0.0.1".into()),
            sender_port: Some(5432),
            slot_name: Some("pg1".into()),
        }),
        ..Default::default()
    }
}

fn primary_with_lock() -> NodeStatus {
    NodeStatus {
        role: Role::Primary,
        pg: Some(primary_sql()),
        has_lock: true,
        cluster: Some(cluster(Some("pg0"), &[])),
        ..base("pg0")
    }
}

/// Streaming replica 1000 bytes behind the leader's optime.
fn replica_streaming() -> NodeStatus {
    let mut tags = Map::new();
    tags.insert("dc".into(), json!("east"));
    tags.insert("clonefrom".into(), json!(true));
    NodeStatus {
        role: Role::Replica,
        pg: Some(replica_sql(LEADER_OPTIME - 1000)),
        cluster: Some(cluster(Some("pg0"), &[])),
        tags,
        ..base("pg1")
    }
}

fn replica_noloadbalance() -> NodeStatus {
    let mut st = replica_streaming();
    st.tags.insert("noloadbalance".into(), json!(true));
    st
}

fn stopped() -> NodeStatus {
    NodeStatus {
        role: Role::Replica,
        state: PgState::Stopped,
        pg: None,
        cluster: Some(cluster(Some("pg0"), &[])),
        ..base("pg2")
    }
}

fn unlocked() -> NodeStatus {
    NodeStatus {
        cluster: Some(cluster(None, &[])),
        cluster_unlocked: true,
        ..replica_streaming()
    }
}

fn paused_primary() -> NodeStatus {
    let mut st = primary_with_lock();
    st.dynamic.pause = true;
    st
}

fn state_of(st: NodeStatus) -> ApiState {
    let (_tx, rx) = watch::channel(Arc::new(st));
    ApiState {
        status: rx,
        dcs: None,
        wake: Arc::new(Notify::new()),
        commands: None,
        reloader: None,
        config: None,
    }
}

struct Reply {
    status: StatusCode,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

async fn call(st: &NodeStatus, method: Method, uri: &str) -> Reply {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::empty())
        .expect("request");
    let resp = router(state_of(st.clone()))
        .oneshot(req)
        .await
        .expect("infallible");
    let status = resp.status();
    let body = to_bytes(resp.into_body(), 1 << 20)
        .await
        .expect("body")
        .to_vec();
    Reply { status, body }
}

async fn get(st: &NodeStatus, uri: &str) -> Reply {
    call(st, Method::GET, uri).await
}

/// GET/HEAD/OPTIONS must agree on the code; HEAD/OPTIONS carry no body, GET carries the
/// status document.
async fn assert_check(st: &NodeStatus, uri: &str, expected: u16) {
    let g = get(st, uri).await;
    assert_eq!(
        g.status.as_u16(),
        expected,
        "GET {uri}: {}",
        String::from_utf8_lossy(&g.body)
    );
    assert!(
        g.json().get("patroni").is_some(),
        "GET {uri} body: {}",
        g.json()
    );
    for m in [Method::HEAD, Method::OPTIONS] {
        let r = call(st, m.clone(), uri).await;
        assert_eq!(r.status.as_u16(), expected, "{m} {uri}");
        assert!(r.body.is_empty(), "{m} {uri} has a body");
    }
}

async fn assert_checks(st: &NodeStatus, table: &[(&str, u16)]) {
    for (uri, code) in table {
        assert_check(st, uri, *code).await;
    }
}

async fn assert_probe(st: &NodeStatus, uri: &str, expected: u16) {
    for m in [Method::GET, Method::HEAD, Method::OPTIONS] {
        let r = call(st, m.clone(), uri).await;
        assert_eq!(r.status.as_u16(), expected, "{m} {uri}");
        assert!(r.body.is_empty(), "{m} {uri} has a body");
    }
}

#[tokio::test]
async fn primary_with_lock_passes_write_checks() {
    let st = primary_with_lock();
    assert_checks(
        &st,
        &[
            ("/", 200),
            ("/primary", 200),
            ("/master", 200),
            ("/read-write", 200),
            ("/leader", 200),
            ("/standby-leader", 503),
            ("/standby_leader", 503),
            ("/replica", 503),
            ("/read-only", 200),
            ("/health", 200),
            ("/async", 503),
            ("/sync", 503),
            ("/read-only-sync", 200),
            // Tags are ignored for the leader checks.
            ("/primary?tag_dc=nowhere", 200),
            ("/read-only?tag_dc=nowhere", 503),
        ],
    )
    .await;
    assert_probe(&st, "/readiness", 200).await;
    assert_probe(&st, "/liveness", 200).await;

    let j = get(&st, "/patroni").await.json();
    assert_eq!(j["state"], "running");
    assert_eq!(j["role"], "primary");
    assert_eq!(j["server_version"], 150004);
    assert_eq!(j["xlog"], json!({"location": LEADER_OPTIME}));
    assert_eq!(j["timeline"], 2);
    assert_eq!(
        j["postmaster_start_time"],
        "2024-08-28 19:39:26.352526+00:00"
    );
    assert_eq!(
        j["replication"],
        json!([{"usename": "replicator", "application_name": "pg1", "client_addr": "127.0.0.1",
                "state": "streaming", "sync_state": "async", "sync_priority": 0}])
    );
    assert_eq!(j["database_system_identifier"], "7301");
    assert_eq!(
        j["patroni"],
        json!({"version": patroni::PATRONI_VERSION, "scope": "demo", "name": "pg0"})
    );
    assert!(j["dcs_last_seen"].as_i64().unwrap() > 0);
    for absent in [
        "cluster_unlocked",
        "pause",
        "tags",
        "pending_restart",
        "watchdog_failed",
        "replication_state",
    ] {
        assert!(j.get(absent).is_none(), "{absent} present: {j}");
    }
}

#[tokio::test]
async fn streaming_replica_passes_read_checks() {
    let st = replica_streaming();
    assert_checks(
        &st,
        &[
            ("/", 503),
            ("/primary", 503),
            ("/leader", 503),
            ("/standby-leader", 503),
            ("/replica", 200),
            ("/read-only", 200),
            ("/health", 200),
            ("/async", 200),
            ("/asynchronous", 200),
            ("/sync", 503),
            ("/read-only-sync", 503),
            ("/replica?lag=1GB", 200),
            ("/replica?lag=1024kB", 200),
            ("/replica?lag=1000", 200),
            ("/replica?lag=999", 503),
            ("/replica?lag=", 200),
            ("/replica?lag=bogus", 200),
            ("/read-only?lag=16kB", 200),
            ("/read-only?lag=10", 503),
            ("/replica?tag_dc=east", 200),
            ("/replica?tag_dc=west", 503),
            ("/replica?tag_clonefrom=true", 200),
            ("/replica?tag_rack=1", 503),
            ("/replica?tag_dc=east&lag=1MB", 200),
            ("/replica?replication_state=streaming", 200),
            ("/replica?replication_state=in%20archive%20recovery", 503),
        ],
    )
    .await;
    assert_probe(&st, "/readiness", 200).await;
    assert_probe(&st, "/readiness?lag=999", 503).await;
    assert_probe(&st, "/readiness?lag=1000&mode=write", 200).await;
    assert_probe(&st, "/liveness", 200).await;

    let j = get(&st, "/patroni").await.json();
    assert_eq!(j["role"], "replica");
    assert_eq!(j["replication_state"], "streaming");
    assert_eq!(
        j["xlog"],
        json!({"received_location": LEADER_OPTIME - 1000, "replayed_location": LEADER_OPTIME - 1000,
               "replayed_timestamp": "2024-08-28 19:40:00.000000+00:00", "paused": false})
    );
    assert_eq!(j["tags"], json!({"dc": "east", "clonefrom": true}));
    assert!(j.get("replication").is_none());
    assert!(j.get("cluster_unlocked").is_none());
    assert!(j.get("sync_standby").is_none());
}

#[tokio::test]
async fn noloadbalance_replica_is_not_a_read_target() {
    let st = replica_noloadbalance();
    assert_checks(
        &st,
        &[
            ("/replica", 503),
            ("/read-only", 503),
            ("/async", 503),
            ("/health", 200),
            ("/primary", 503),
        ],
    )
    .await;
    // Readiness is about replication, not load balancing.
    assert_probe(&st, "/readiness", 200).await;
    assert_eq!(
        get(&st, "/patroni").await.json()["tags"]["noloadbalance"],
        true
    );
}

#[tokio::test]
async fn stopped_node_fails_every_check() {
    let st = stopped();
    assert_checks(
        &st,
        &[
            ("/", 503),
            ("/leader", 503),
            ("/replica", 503),
            ("/read-only", 503),
            ("/health", 503),
        ],
    )
    .await;
    assert_probe(&st, "/readiness", 503).await;
    // The loop itself is fine.
    assert_probe(&st, "/liveness", 200).await;
    let r = get(&st, "/patroni").await;
    assert_eq!(r.status, StatusCode::OK);
    let j = r.json();
    assert_eq!(j["state"], "stopped");
    assert_eq!(j["role"], "replica");
    for absent in [
        "xlog",
        "timeline",
        "server_version",
        "postmaster_start_time",
    ] {
        assert!(j.get(absent).is_none(), "{absent} present: {j}");
    }
}

#[tokio::test]
async fn running_but_unqueryable_reports_unknown_state() {
    let mut st = replica_streaming();
    st.pg = None;
    assert_checks(&st, &[("/health", 503), ("/replica", 503)]).await;
    assert_eq!(get(&st, "/patroni").await.json()["state"], "unknown");
}

#[tokio::test]
async fn unlocked_cluster_replica_still_serves_reads() {
    let st = unlocked();
    assert_checks(
        &st,
        &[
            ("/replica", 200),
            ("/read-only", 200),
            ("/leader", 503),
            ("/primary", 503),
            ("/health", 200),
        ],
    )
    .await;
    let j = get(&st, "/patroni").await.json();
    assert_eq!(j["cluster_unlocked"], true);
    let c = get(&st, "/cluster").await.json();
    assert!(
        c["members"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["role"] == "replica")
    );
}

#[tokio::test]
async fn paused_cluster_is_reported_and_keeps_liveness() {
    let mut st = paused_primary();
    st.last_cycle_at = Some(now() - 10_000);
    assert_checks(
        &st,
        &[("/primary", 200), ("/leader", 200), ("/replica", 503)],
    )
    .await;
    assert_probe(&st, "/liveness", 200).await;
    assert_eq!(get(&st, "/patroni").await.json()["pause"], true);
    assert_eq!(get(&st, "/cluster").await.json()["pause"], true);

    // Paused without any DCS view: PostgreSQL's own role decides.
    let mut no_dcs = paused_primary();
    no_dcs.cluster = None;
    no_dcs.has_lock = false;
    assert_checks(&no_dcs, &[("/primary", 200), ("/leader", 200)]).await;
    no_dcs.dynamic.pause = false;
    assert_checks(&no_dcs, &[("/primary", 503), ("/leader", 503)]).await;
}

#[tokio::test]
async fn liveness_fails_when_the_loop_is_stuck() {
    let mut st = primary_with_lock();
    // Primary: next_run (last + loop_wait 10) + ttl 30 must be in the future.
    st.last_cycle_at = Some(now() - 45);
    assert_probe(&st, "/liveness", 503).await;
    // A replica gets 2*ttl.
    let mut rep = replica_streaming();
    rep.last_cycle_at = Some(now() - 45);
    assert_probe(&rep, "/liveness", 200).await;
    rep.last_cycle_at = Some(now() - 75);
    assert_probe(&rep, "/liveness", 503).await;
    // Before the first cycle the API start time counts.
    rep.last_cycle_at = None;
    assert_probe(&rep, "/liveness", 200).await;
}

#[tokio::test]
async fn demoting_primary_fails_primary_check_before_pg_ctl() {
    let mut st = primary_with_lock();
    st.role = Role::Demoted;
    assert_checks(
        &st,
        &[
            ("/primary", 503),
            ("/leader", 200),
            ("/replica", 503),
            ("/read-only", 503),
        ],
    )
    .await;
    assert_eq!(get(&st, "/patroni").await.json()["role"], "demoted");
}

#[tokio::test]
async fn standby_leader_checks() {
    let mut st = replica_streaming();
    st.role = Role::StandbyLeader;
    st.has_lock = true;
    st.dynamic.standby_cluster = Some(
        json!({"host": "10.0.0.1", "port": 5432})
            .as_object()
            .unwrap()
            .clone(),
    );
    assert_checks(
        &st,
        &[
            ("/standby-leader", 200),
            ("/standby_leader", 200),
            ("/leader", 200),
            ("/primary", 503),
            ("/replica", 503),
            ("/read-only", 200),
        ],
    )
    .await;
    assert_eq!(get(&st, "/patroni").await.json()["role"], "standby_leader");
    let mut cl = st.clone();
    cl.name = "pg1".into();
    let c = get(&cl, "/cluster").await.json();
    assert_eq!(c["members"][0]["role"], "standby_leader");
}

#[tokio::test]
async fn sync_standby_checks() {
    let mut st = replica_streaming();
    st.dynamic.synchronous_mode = json!(true);
    st.cluster = Some(cluster(
        Some("pg0"),
        &[("sync", r#"{"leader":"pg0","sync_standby":"pg1"}"#)],
    ));
    assert_checks(
        &st,
        &[
            ("/sync", 200),
            ("/synchronous", 200),
            ("/read-only-sync", 200),
            ("/async", 503),
            ("/quorum", 503),
            ("/replica", 200),
        ],
    )
    .await;
    assert_eq!(get(&st, "/patroni").await.json()["sync_standby"], true);
    let c = get(&st, "/cluster").await.json();
    assert_eq!(c["members"][1]["role"], "sync_standby");

    st.dynamic.synchronous_mode = json!("quorum");
    assert_checks(
        &st,
        &[("/quorum", 200), ("/read-only-quorum", 200), ("/sync", 503)],
    )
    .await;
    assert_eq!(get(&st, "/patroni").await.json()["quorum_standby"], true);
}

#[tokio::test]
async fn patroni_optional_fields() {
    let mut st = replica_streaming();
    st.pending_restart = true;
    st.pending_restart_reason.insert(
        "max_connections".into(),
        json!({"old_value": "100", "new_value": "200"}),
    );
    st.watchdog_failed = true;
    let j = get(&st, "/patroni").await.json();
    assert_eq!(j["pending_restart"], true);
    assert_eq!(
        j["pending_restart_reason"]["max_connections"]["new_value"],
        "200"
    );
    assert_eq!(j["watchdog_failed"], true);
}

#[tokio::test]
async fn cluster_endpoint_matches_cluster_as_json() {
    let mut st = primary_with_lock();
    st.cluster = Some(cluster(
        Some("pg0"),
        &[(
            "failover",
            r#"{"leader":"pg0","member":"pg1","scheduled_at":"2030-01-01T00:00:00+00:00"}"#,
        )],
    ));
    let r = get(&st, "/cluster").await;
    assert_eq!(r.status, StatusCode::OK);
    let c = r.json();
    assert_eq!(c["scope"], "demo");
    assert!(c.get("pause").is_none());
    assert_eq!(
        c["scheduled_switchover"],
        json!({"at": "2030-01-01T00:00:00+00:00", "from": "pg0", "to": "pg1"})
    );
    let m = c["members"].as_array().unwrap();
    assert_eq!(m.len(), 3);
    assert_eq!(
        m[0],
        json!({"name": "pg0", "role": "leader", "state": "running",
               "api_url": "http://127.0.0.1:8008/patroni", "host": "127.0.0.1", "port": 5432,
               "timeline": 2})
    );
    assert_eq!(m[1]["role"], "replica");
    assert_eq!(m[1]["state"], "streaming");
    assert_eq!(m[1]["port"], 5433);
    assert_eq!(m[1]["tags"], json!({"dc": "east"}));
    assert_eq!(m[1]["lsn"], "0/3000000");
    assert_eq!(m[1]["lag"], LEADER_OPTIME - 0x3000000);
    assert_eq!(m[1]["receive_lag"], LEADER_OPTIME - 0x3000000);
    assert_eq!(m[1]["replay_lsn"], "0/2FFFD78");
    assert_eq!(m[1]["replay_lag"], LEADER_OPTIME - 50331000);
    assert_eq!(m[2]["state"], "stopped");
    assert_eq!(m[2]["lag"], "unknown");
    assert_eq!(m[2]["lsn"], "unknown");
    assert_eq!(m[2]["receive_lsn"], "unknown");

    let mut none = primary_with_lock();
    none.cluster = None;
    assert_eq!(
        get(&none, "/cluster").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

#[tokio::test]
async fn history_and_config() {
    let st = primary_with_lock();
    let h = get(&st, "/history").await;
    assert_eq!(h.status, StatusCode::OK);
    assert_eq!(
        h.json(),
        json!([[
            1,
            25165984,
            "no recovery target specified",
            "2024-01-01T00:00:00+00:00",
            "pg0"
        ]])
    );
    let c = get(&st, "/config").await;
    assert_eq!(c.status, StatusCode::OK);
    assert_eq!(
        c.json(),
        json!({"ttl": 30, "loop_wait": 10, "postgresql": {"use_pg_rewind": true}})
    );

    let mut bare = primary_with_lock();
    bare.cluster = Some(Arc::new(Cluster::default()));
    assert_eq!(get(&bare, "/history").await.json(), json!([]));
    assert_eq!(get(&bare, "/config").await.status, StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn metrics_in_prometheus_format() {
    let r = get(&primary_with_lock(), "/metrics").await;
    assert_eq!(r.status, StatusCode::OK);
    let text = String::from_utf8(r.body).unwrap();
    let labels = r#"{scope="demo",name="pg0"}"#;
    for line in [
        format!("patroni_primary{labels} 1"),
        format!("patroni_replica{labels} 0"),
        format!("patroni_xlog_location{labels} {LEADER_OPTIME}"),
        format!("patroni_postgres_running{labels} 1"),
        format!("patroni_postgres_server_version{labels} 150004"),
        format!("patroni_postgres_timeline{labels} 2"),
        format!("patroni_postgres_state{labels} 5"),
        format!("patroni_version{labels} 040100"),
        format!("patroni_postmaster_start_time{labels} 1724873966.352526"),
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
}

#[tokio::test]
async fn unknown_paths_and_methods() {
    let st = primary_with_lock();
    // Upstream answers any other GET with a health check picked by words in the path.
    let r = get(&st, "/nonexistent").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.json()["role"], "primary");
    assert_eq!(
        get(&st, "/replica/extra").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(get(&st, "/primary/extra").await.status, StatusCode::OK);
    assert_eq!(get(&st, "/leader-check").await.status, StatusCode::OK);
    assert_eq!(
        call(&st, Method::OPTIONS, "/whatever").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        call(&st, Method::DELETE, "/patroni").await.status,
        StatusCode::METHOD_NOT_ALLOWED
    );
    assert_eq!(
        call(&st, Method::POST, "/nonexistent").await.status,
        StatusCode::NOT_IMPLEMENTED
    );
}

#[tokio::test]
async fn router_sees_newly_published_status() {
    let (tx, rx) = watch::channel(Arc::new(replica_streaming()));
    let app = router(ApiState {
        status: rx,
        dcs: None,
        wake: Arc::new(Notify::new()),
        commands: None,
        reloader: None,
        config: None,
    });
    let req = |uri: &str| Request::get(uri).body(Body::empty()).unwrap();
    let r = app.clone().oneshot(req("/primary")).await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    tx.send(Arc::new(primary_with_lock())).unwrap();
    let r = app.oneshot(req("/primary")).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn serve_answers_real_http_and_shuts_down() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, state_of(primary_with_lock()), async {
        let _ = stop_rx.await;
    }));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let url = |p: &str| format!("http://{addr}{p}");

    let r = http.get(url("/patroni")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let j: Value = r.json().await.unwrap();
    assert_eq!(j["role"], "primary");
    assert_eq!(j["patroni"]["name"], "pg0");

    let r = http
        .request(reqwest::Method::OPTIONS, url("/primary"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.bytes().await.unwrap().is_empty());
    let r = http.head(url("/replica")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 503);
    let r = http.get(url("/replica?lag=1MB")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 503);
    assert_eq!(r.json::<Value>().await.unwrap()["role"], "primary");
    assert_eq!(
        http.get(url("/nope"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        503
    );

    stop_tx.send(()).unwrap();
    let done = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("server stops after shutdown")
        .expect("server task did not panic");
    assert!(done.is_ok(), "{done:?}");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener still open after shutdown"
    );
}

/// A small Prometheus text-format (0.0.4) checker: every sample belongs to a family
/// announced by `# HELP` and `# TYPE` (gauge/counter) before it, names and label names are
/// valid, label values are quoted, values are numbers, no family is declared twice.
fn check_prometheus(text: &str) -> std::collections::BTreeMap<String, (String, f64)> {
    use std::collections::{BTreeMap, BTreeSet};
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.chars().enumerate().all(|(i, c)| {
                c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
            })
    };
    let mut help = BTreeSet::new();
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = BTreeMap::new();
    assert!(text.ends_with('\n'), "exposition must end with a newline");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap();
            assert!(
                valid_name(name) && help.insert(name.to_string()),
                "HELP {line}"
            );
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(matches!(kind, "gauge" | "counter"), "{line}");
            assert!(help.contains(name), "TYPE before HELP: {line}");
            assert!(
                types.insert(name.into(), kind.into()).is_none(),
                "twice: {line}"
            );
        } else if line.starts_with('#') {
            continue;
        } else {
            let (series, value) = line.rsplit_once(' ').expect("sample has a value");
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("value in {line}"));
            let (name, labels) = series.split_once('{').expect("samples carry labels");
            let labels = labels.strip_suffix('}').expect("closing brace");
            assert!(valid_name(name), "{line}");
            let kind = types
                .get(name)
                .unwrap_or_else(|| panic!("no TYPE for {line}"));
            for pair in labels.split(',') {
                let (k, v) = pair.split_once('=').expect("label=value");
                assert!(valid_name(k), "{line}");
                assert!(
                    v.len() >= 2 && v.starts_with('"') && v.ends_with('"'),
                    "{line}"
                );
            }
            assert!(
                labels.contains("scope=\"demo\"") && labels.contains("name="),
                "{line}"
            );
            assert!(
                samples
                    .insert(name.to_string(), (kind.clone(), value))
                    .is_none()
            );
        }
    }
    assert_eq!(help.len(), types.len());
    samples
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text_for_every_situation() {
    let required = [
        ("patroni_version", "gauge"),
        ("patroni_postgres_running", "gauge"),
        ("patroni_postmaster_start_time", "gauge"),
        ("patroni_primary", "gauge"),
        ("patroni_xlog_location", "counter"),
        ("patroni_standby_leader", "gauge"),
        ("patroni_replica", "gauge"),
        ("patroni_sync_standby", "gauge"),
        ("patroni_quorum_standby", "gauge"),
        ("patroni_xlog_received_location", "counter"),
        ("patroni_xlog_replayed_location", "counter"),
        ("patroni_xlog_replayed_timestamp", "gauge"),
        ("patroni_xlog_paused", "gauge"),
        ("patroni_postgres_server_version", "gauge"),
        ("patroni_cluster_unlocked", "gauge"),
        ("patroni_failsafe_mode_is_active", "gauge"),
        ("patroni_postgres_timeline", "counter"),
        ("patroni_dcs_last_seen", "gauge"),
        ("patroni_pending_restart", "gauge"),
        ("patroni_is_paused", "gauge"),
        ("patroni_postgres_state", "gauge"),
    ];
    for (what, st) in [
        ("primary", primary_with_lock()),
        ("replica", replica_streaming()),
        ("stopped", stopped()),
        ("paused", paused_primary()),
        ("unlocked", unlocked()),
    ] {
        let r = get(&st, "/metrics").await;
        assert_eq!(r.status, StatusCode::OK);
        let text = String::from_utf8(r.body).unwrap();
        let samples = check_prometheus(&text);
        for (name, kind) in required {
            let (k, _) = samples
                .get(name)
                .unwrap_or_else(|| panic!("{what}: {name} missing in\n{text}"));
            assert_eq!(k, kind, "{what}: {name}");
        }
        let v = |n: &str| samples[n].1;
        match what {
            "primary" => {
                assert_eq!((v("patroni_primary"), v("patroni_replica")), (1.0, 0.0));
                assert_eq!(v("patroni_postgres_streaming"), 0.0);
            }
            "replica" => {
                assert_eq!((v("patroni_primary"), v("patroni_replica")), (0.0, 1.0));
                assert_eq!(v("patroni_postgres_streaming"), 1.0);
                assert!(v("patroni_xlog_replayed_location") > 0.0);
            }
            "stopped" => {
                assert_eq!(v("patroni_postgres_running"), 0.0);
                assert_eq!(v("patroni_postgres_state"), 12.0);
            }
            "paused" => assert_eq!(v("patroni_is_paused"), 1.0),
            _ => assert_eq!(v("patroni_cluster_unlocked"), 1.0),
        }
    }
}
