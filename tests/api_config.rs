//! PATCH/PUT /config, POST /reload and GET /failsafe against the in-memory DCS.

mod api_common;

use api_common::*;
use async_trait::async_trait;
use axum::http::Method;
use patroni::api::{ApiState, router};
use patroni::dcs::mem::MemDcs;
use patroni::dcs::{Cluster, Dcs, DcsResult, MemberData, Status};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

async fn woke(env: &Env) -> bool {
    tokio::time::timeout(Duration::from_secs(1), env.wake.notified())
        .await
        .is_ok()
}

#[tokio::test]
async fn patch_merges_and_null_deletes() {
    let env = Env::new();
    let r = call(Method::PATCH, "/config")
        .body(r#"{"loop_wait":5,"postgresql":{"parameters":{"max_connections":null,"shared_buffers":"256MB"}},"pause":true}"#)
        .send(&env.app())
        .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text());
    let want = json!({"ttl":30,"loop_wait":5,"retry_timeout":10,"pause":true,
        "postgresql":{"parameters":{"work_mem":"4MB","shared_buffers":"256MB"}}});
    assert_eq!(r.json(), want);
    let stored: Value = serde_json::from_str(&env.raw("config").unwrap()).unwrap();
    assert_eq!(stored, want);
    assert!(
        woke(&env).await,
        "the HA loop is woken after a config change"
    );
}

#[tokio::test]
async fn patch_that_changes_nothing_does_not_write() {
    let env = Env::new();
    let before = env.store.get_raw(&key("config")).unwrap();
    let r = call(Method::PATCH, "/config")
        .body(r#"{"ttl":30}"#)
        .send(&env.app())
        .await;
    assert_eq!(r.status.as_u16(), 200);
    assert_eq!(env.store.get_raw(&key("config")).unwrap(), before);
}

#[tokio::test]
async fn patch_with_invalid_values_is_refused_and_stored_config_untouched() {
    let env = Env::new();
    let before = env.store.get_raw(&key("config")).unwrap();
    for (body, mentions) in [
        (r#"{"ttl":"abc"}"#, "ttl"),
        (r#"{"loop_wait":40}"#, "loop_wait"),
        (r#"{"synchronous_mode":"sometimes"}"#, "synchronous_mode"),
        (
            r#"{"postgresql":{"parameters":{"max_connections":"lots"}}}"#,
            "max_connections",
        ),
    ] {
        let r = call(Method::PATCH, "/config")
            .body(body)
            .send(&env.app())
            .await;
        r.expect(400, mentions);
        assert!(r.text().contains("nothing was changed"), "{}", r.text());
    }
    assert_eq!(env.store.get_raw(&key("config")).unwrap(), before);
}

#[tokio::test]
async fn malformed_bodies_get_clear_4xx() {
    let env = Env::new();
    let app = env.app();
    let cases: Vec<(Option<String>, u16, &str)> = vec![
        (Some("{not json".into()), 400, "not valid JSON"),
        (Some("[1,2]".into()), 400, "must be a JSON object"),
        (Some("\"x\"".into()), 400, "must be a JSON object"),
        (Some("{}".into()), 400, "empty JSON object"),
        (Some("".into()), 400, "empty"),
        (
            Some(format!("{{\"x\":\"{}\"}}", "a".repeat(2 << 20))),
            413,
            "larger than",
        ),
    ];
    for (body, code, text) in cases {
        let mut c = call(Method::PATCH, "/config");
        if let Some(b) = &body {
            c = c.body(b);
        }
        c.send(&app).await.expect(code, text);
    }
    // No body and no Content-Length at all: upstream's 411.
    call(Method::PATCH, "/config")
        .send(&app)
        .await
        .expect(411, "Content-Length");
    call(Method::PUT, "/config")
        .send(&app)
        .await
        .expect(411, "Content-Length");
    assert_eq!(env.raw("config").unwrap(), CONFIG);
}

#[tokio::test]
async fn patch_without_stored_config_is_503() {
    let env = Env::new();
    env.store.delete_raw(&key("config"));
    call(Method::PATCH, "/config")
        .body(r#"{"ttl":40}"#)
        .send(&env.app())
        .await
        .expect(503, "not stored");
    assert!(env.raw("config").is_none());
}

/// ttl 6 is below upstream's floor: refused unless the same configuration carries
/// `allow_short_ttl: true` (then accepted, down to the short floors and no further).
#[tokio::test]
async fn patch_short_ttl_needs_allow_short_ttl() {
    use patroni::config::{ALLOW_SHORT_TTL, SHORT_FLOORS, UPSTREAM_FLOORS};
    let env = Env::new();
    let app = env.app();
    let before = env.raw("config").unwrap();
    let short = format!(
        r#"{{"ttl":{},"loop_wait":{},"retry_timeout":{}}}"#,
        SHORT_FLOORS.ttl, SHORT_FLOORS.loop_wait, SHORT_FLOORS.retry_timeout
    );
    let r = call(Method::PATCH, "/config").body(&short).send(&app).await;
    r.expect(
        400,
        &format!("ttl: must be at least {} seconds", UPSTREAM_FLOORS.ttl),
    );
    assert!(r.text().contains(ALLOW_SHORT_TTL), "{}", r.text());
    assert_eq!(env.raw("config").unwrap(), before, "nothing stored");

    let allowed = format!(
        r#"{{"ttl":{},"loop_wait":{},"retry_timeout":{},"{ALLOW_SHORT_TTL}":true}}"#,
        SHORT_FLOORS.ttl, SHORT_FLOORS.loop_wait, SHORT_FLOORS.retry_timeout
    );
    let r = call(Method::PATCH, "/config")
        .body(&allowed)
        .send(&app)
        .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text());
    let stored: Value = serde_json::from_str(&env.raw("config").unwrap()).unwrap();
    assert_eq!(stored["ttl"], json!(SHORT_FLOORS.ttl));
    assert_eq!(stored[ALLOW_SHORT_TTL], json!(true));

    // Below the short floors, or dropping the key while ttl is short: refused.
    for body in [
        format!(r#"{{"ttl":{}}}"#, SHORT_FLOORS.ttl - 1),
        format!(r#"{{"{ALLOW_SHORT_TTL}":null}}"#),
    ] {
        call(Method::PATCH, "/config")
            .body(&body)
            .send(&app)
            .await
            .expect(400, "ttl");
    }
    let after: Value = serde_json::from_str(&env.raw("config").unwrap()).unwrap();
    assert_eq!(after, stored);
}

#[tokio::test]
async fn put_replaces_and_validates() {
    let env = Env::new();
    let app = env.app();
    let new = r#"{"ttl":20,"loop_wait":5,"retry_timeout":5,"postgresql":{"use_pg_rewind":true}}"#;
    let r = call(Method::PUT, "/config").body(new).send(&app).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text());
    let stored: Value = serde_json::from_str(&env.raw("config").unwrap()).unwrap();
    assert_eq!(stored, serde_json::from_str::<Value>(new).unwrap());
    call(Method::PUT, "/config")
        .body(r#"{"ttl":5}"#)
        .send(&app)
        .await
        .expect(400, "ttl");
    assert_eq!(
        stored,
        serde_json::from_str::<Value>(&env.raw("config").unwrap()).unwrap()
    );
}

/// A DCS that lets another writer change `config` between our read and our write.
struct RacingDcs(Arc<MemDcs>);

#[async_trait]
impl Dcs for RacingDcs {
    fn member_name(&self) -> &str {
        self.0.member_name()
    }
    async fn get_cluster(&self) -> DcsResult<Cluster> {
        let c = self.0.get_cluster().await;
        self.0.store().put_raw(
            &key("config"),
            r#"{"ttl":30,"loop_wait":10,"retry_timeout":10,"by":"someone else"}"#,
        );
        c
    }
    async fn set_ttl(&self, ttl: Duration) {
        self.0.set_ttl(ttl).await
    }
    async fn set_retry_timeout(&self, t: Duration) {
        self.0.set_retry_timeout(t).await
    }
    async fn attempt_to_acquire_leader(&self) -> DcsResult<bool> {
        self.0.attempt_to_acquire_leader().await
    }
    async fn update_leader(&self, s: Option<&Status>) -> DcsResult<bool> {
        self.0.update_leader(s).await
    }
    async fn delete_leader(&self, s: Option<&Status>) -> DcsResult<bool> {
        self.0.delete_leader(s).await
    }
    async fn touch_member(&self, d: &MemberData) -> DcsResult<bool> {
        self.0.touch_member(d).await
    }
    async fn delete_member(&self, n: &str) -> DcsResult<bool> {
        self.0.delete_member(n).await
    }
    async fn initialize(&self, c: bool, s: &str) -> DcsResult<bool> {
        self.0.initialize(c, s).await
    }
    async fn cancel_initialization(&self) -> DcsResult<bool> {
        self.0.cancel_initialization().await
    }
    async fn set_config_value(&self, v: &str, ver: Option<i64>) -> DcsResult<bool> {
        self.0.set_config_value(v, ver).await
    }
    async fn set_failover_value(&self, v: &str, ver: Option<i64>) -> DcsResult<bool> {
        self.0.set_failover_value(v, ver).await
    }
    async fn set_history_value(&self, v: &str) -> DcsResult<bool> {
        self.0.set_history_value(v).await
    }
    async fn set_sync_state_value(&self, v: &str, ver: Option<i64>) -> DcsResult<bool> {
        self.0.set_sync_state_value(v, ver).await
    }
    async fn delete_sync_state(&self, ver: Option<i64>) -> DcsResult<bool> {
        self.0.delete_sync_state(ver).await
    }
    async fn write_status(&self, s: &Status) -> DcsResult<bool> {
        self.0.write_status(s).await
    }
    async fn write_failsafe(&self, v: &str) -> DcsResult<bool> {
        self.0.write_failsafe(v).await
    }
    async fn delete_cluster(&self) -> DcsResult<bool> {
        self.0.delete_cluster().await
    }
    async fn watch_leader(&self, v: Option<i64>, t: Duration) -> DcsResult<bool> {
        self.0.watch_leader(v, t).await
    }
}

#[tokio::test]
async fn patch_that_loses_the_compare_and_set_is_409() {
    let env = Env::new();
    let state = ApiState {
        dcs: Some(Arc::new(RacingDcs(env.dcs.clone()))),
        ..env.state.clone()
    };
    call(Method::PATCH, "/config")
        .body(r#"{"loop_wait":5}"#)
        .send(&router(state))
        .await
        .expect(409, "changed by someone else");
    // The concurrent writer's value survives.
    assert!(env.raw("config").unwrap().contains("someone else"));
}

#[tokio::test]
async fn dcs_outage_is_503() {
    let env = Env::new();
    env.store.set_unreachable(true);
    call(Method::PATCH, "/config")
        .body(r#"{"loop_wait":5}"#)
        .send(&env.app())
        .await
        .expect(503, "DCS");
}

fn write_config(dir: &std::path::Path, extra: &str) -> std::path::PathBuf {
    let data = dir.join("data");
    let path = dir.join("patroni.yml");
    std::fs::write(
        &path,
        format!(
            "name: pg0\nscope: demo\nrestapi:\n  listen: 127.0.0.1:8008\n  connect_address: 127.0.0.1:8008\n\
             etcd3:\n  hosts: 127.0.0.1:2379\npostgresql:\n  listen: 127.0.0.1:5432\n  connect_address: 127.0.0.1:5432\n\
             \x20 data_dir: {}\n  bin_dir: /usr/lib/postgresql/15/bin\n  authentication:\n    superuser:\n      username: postgres\n      password: topsecret\n\
             \x20   replication:\n      username: rep\n      password: alsosecret\n{extra}",
            data.display()
        ),
    )
    .unwrap();
    path
}

#[tokio::test]
async fn reload_rereads_the_file_or_names_the_problems() {
    let env = Env::new();
    call(Method::POST, "/reload")
        .send(&env.app())
        .await
        .expect(503, "cannot reload");

    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), "tags:\n  nofailover: true\n");
    let (tx, mut rx) = tokio::sync::watch::channel(Arc::new(patroni::config::Config::default()));
    let reloader =
        patroni::reload::ConfigReloader::new(Some(path.clone()), Arc::new(tx), env.wake.clone());
    let app = router(ApiState {
        reloader: Some(reloader),
        ..env.state.clone()
    });
    call(Method::POST, "/reload")
        .send(&app)
        .await
        .expect(202, "reload scheduled");
    assert!(rx.has_changed().unwrap());
    assert_eq!(rx.borrow_and_update().name, "pg0");

    write_config(dir.path(), "restapi_typo: [\n");
    let r = call(Method::POST, "/reload").send(&app).await;
    r.expect(500, "invalid YAML at line");
    write_config(
        dir.path(),
        "postgresql_typo: 1\npostgresql:\n  pg_ctl_timeout: soon\n",
    );
    let r = call(Method::POST, "/reload").send(&app).await;
    r.expect(500, "postgresql.pg_ctl_timeout: must be an integer");
    assert!(
        r.text().contains("running configuration stays"),
        "{}",
        r.text()
    );
    assert!(!r.text().contains("topsecret") && !r.text().contains("alsosecret"));
    assert!(
        !rx.has_changed().unwrap(),
        "an invalid file changes nothing"
    );
}

#[tokio::test]
async fn failsafe_endpoint() {
    let env = Env::new();
    call(Method::GET, "/failsafe")
        .send(&env.app())
        .await
        .expect(502, "failsafe");
    env.store.put_raw(
        &key("failsafe"),
        r#"{"pg0":"http://127.0.0.1:8008/patroni"}"#,
    );
    let mut st = primary_status();
    st.dynamic.failsafe_mode = true;
    env.publish(st);
    let r = call(Method::GET, "/failsafe").send(&env.app()).await;
    assert_eq!(r.status.as_u16(), 200);
    assert_eq!(r.json(), json!({"pg0":"http://127.0.0.1:8008/patroni"}));
}
