//! POST /switchover, POST /failover, DELETE /switchover: upstream's validation and
//! messages, the `failover` key written, and the wait for the result (a fake HA task moves
//! the leader key the way the real loops would).

mod api_common;

use api_common::*;
use axum::http::Method;
use serde_json::{Value, json};
use std::time::Duration;

/// pg0 leads; pg1 is a healthy replica with a live API; pg2's API is unreachable.
async fn healthy_cluster() -> Env {
    let mut env = Env::new();
    env.live_peer("pg1", replica_status("pg1"), "{}").await;
    env
}

fn failover_key(env: &Env) -> Option<Value> {
    env.raw("failover")
        .map(|v| serde_json::from_str(&v).unwrap())
}

async fn post(env: &Env, path: &str, body: &str) -> Reply {
    call(Method::POST, path).body(body).send(&env.app()).await
}

#[tokio::test]
async fn refused_requests_write_nothing() {
    let env = healthy_cluster().await;
    let cases: &[(&str, &str, u16, &str)] = &[
        (
            "/switchover",
            r#"{"candidate":"pg1"}"#,
            400,
            "Switchover could be performed only from a specific leader",
        ),
        (
            "/failover",
            r#"{"leader":"pg0"}"#,
            400,
            "Failover could be performed only to a specific candidate",
        ),
        (
            "/failover",
            r#"{"candidate":"pg1","scheduled_at":"2099-01-01T00:00+00"}"#,
            400,
            "Failover can't be scheduled",
        ),
        (
            "/switchover",
            r#"{"leader":"pg0","candidate":"pg0"}"#,
            400,
            "Switchover target and source are the same",
        ),
        (
            "/switchover",
            r#"{"leader":"pg1","candidate":"pg2"}"#,
            412,
            "leader name does not match",
        ),
        (
            "/switchover",
            r#"{"leader":"pg0","candidate":"pg9"}"#,
            412,
            "candidate does not exists",
        ),
        (
            "/switchover",
            r#"{"leader":"pg0","candidate":"pg2"}"#,
            412,
            "switchover is not possible: no good candidates have been found",
        ),
        (
            "/failover",
            r#"{"candidate":"pg2"}"#,
            412,
            "failover is not possible: no good candidates have been found",
        ),
        (
            "/switchover",
            r#"{"leader":"pg0","scheduled_at":"2099-01-01T00:00"}"#,
            400,
            "Timezone information is mandatory for the scheduled switchover",
        ),
        (
            "/switchover",
            r#"{"leader":"pg0","scheduled_at":"2001-01-01T00:00+00"}"#,
            422,
            "Cannot schedule switchover in the past",
        ),
        (
            "/switchover",
            r#"{"leader":"pg0","scheduled_at":"next tuesday"}"#,
            422,
            "Unable to parse scheduled timestamp",
        ),
        (
            "/switchover",
            r#"{"leader":"pg0","candidate":5}"#,
            400,
            "candidate must be a string",
        ),
        (
            "/switchover",
            r#"{"leader":"pg0","candidat":"pg1"}"#,
            400,
            "unknown member \"candidat\"",
        ),
        ("/switchover", r#"["pg0"]"#, 400, "must be a JSON object"),
        ("/switchover", r#"{"leader":"pg0""#, 400, "not valid JSON"),
    ];
    for (path, body, code, text) in cases {
        let r = post(&env, path, body).await;
        assert_eq!(r.status.as_u16(), *code, "{path} {body}: {}", r.text());
        assert!(r.text().contains(text), "{path} {body}: {:?}", r.text());
    }
    assert_eq!(failover_key(&env), None);
}

#[tokio::test]
async fn nofailover_candidate_is_refused() {
    let mut env = healthy_cluster().await;
    let mut st = replica_status("pg2");
    st.tags.insert("nofailover".into(), json!(true));
    env.live_peer("pg2", st, r#"{"nofailover":true}"#).await;
    post(&env, "/switchover", r#"{"leader":"pg0","candidate":"pg2"}"#)
        .await
        .expect(412, "no good candidates");
    let mut st = replica_status("pg2");
    st.tags.insert("failover_priority".into(), json!(0));
    env.live_peer("pg2", st, r#"{"failover_priority":0}"#).await;
    post(&env, "/failover", r#"{"candidate":"pg2"}"#)
        .await
        .expect(412, "no good candidates");
    assert_eq!(failover_key(&env), None);
}

#[tokio::test]
async fn paused_cluster_rules() {
    let env = healthy_cluster().await;
    env.store.put_raw(
        &key("config"),
        r#"{"ttl":30,"loop_wait":10,"retry_timeout":10,"pause":true}"#,
    );
    post(
        &env,
        "/switchover",
        r#"{"leader":"pg0","candidate":"pg1","scheduled_at":"2099-01-01T00:00+00"}"#,
    )
    .await
    .expect(400, "Can't schedule switchover in the paused state");
    post(&env, "/switchover", r#"{"leader":"pg0"}"#)
        .await
        .expect(
            400,
            "Switchover is possible only to a specific candidate in a paused state",
        );
    assert_eq!(failover_key(&env), None);
}

#[tokio::test]
async fn synchronous_mode_needs_a_sync_candidate() {
    let env = healthy_cluster().await;
    env.store.put_raw(
        &key("config"),
        r#"{"ttl":30,"loop_wait":10,"retry_timeout":10,"synchronous_mode":true}"#,
    );
    env.store
        .put_raw(&key("sync"), r#"{"leader":"pg0","sync_standby":"pg2"}"#);
    post(&env, "/switchover", r#"{"leader":"pg0","candidate":"pg1"}"#)
        .await
        .expect(412, "candidate name does not match with sync_standby");
    // pg2 is the sync standby but unreachable.
    post(&env, "/switchover", r#"{"leader":"pg0"}"#)
        .await
        .expect(
            412,
            "switchover is not possible: no good candidates have been found",
        );
    env.store
        .put_raw(&key("sync"), r#"{"leader":"pg0","sync_standby":null}"#);
    post(&env, "/switchover", r#"{"leader":"pg0"}"#)
        .await
        .expect(412, "switchover is not possible: can not find sync_standby");
    assert_eq!(failover_key(&env), None);
}

#[tokio::test]
async fn scheduled_switchover_is_written_and_can_be_deleted() {
    let env = healthy_cluster().await;
    let app = env.app();
    call(Method::DELETE, "/switchover")
        .send(&app)
        .await
        .expect(404, "no switchover is scheduled");
    post(
        &env,
        "/switchover",
        r#"{"leader":"pg0","candidate":"pg1","scheduled_at":"2099-09-24T12:00+02"}"#,
    )
    .await
    .expect(202, "Switchover scheduled");
    assert_eq!(
        failover_key(&env),
        Some(json!({"leader":"pg0","member":"pg1","scheduled_at":"2099-09-24T12:00:00+02:00"}))
    );
    call(Method::DELETE, "/switchover")
        .send(&app)
        .await
        .expect(200, "scheduled switchover deleted");
    assert_eq!(failover_key(&env), Some(json!({})));
    call(Method::DELETE, "/switchover")
        .send(&app)
        .await
        .expect(404, "no switchover is scheduled");
}

/// What the fake HA loops do with the `failover` key.
#[derive(Clone, Copy)]
enum Outcome {
    /// The named member (or `fallback` when none is named) takes the leader key.
    Promote { fallback: &'static str },
    /// The leader drops the request without a change of leader.
    Abandon,
}

fn fake_ha(env: &Env, outcome: Outcome) -> tokio::task::JoinHandle<Option<Value>> {
    let store = env.store.clone();
    tokio::spawn(async move {
        for _ in 0..400 {
            tokio::time::sleep(Duration::from_millis(25)).await;
            let Some((v, _, _)) = store.get_raw(&key("failover")) else {
                continue;
            };
            let f: Value = serde_json::from_str(&v).unwrap();
            if f.as_object().is_none_or(|o| o.is_empty()) {
                continue;
            }
            if let Outcome::Promote { fallback } = outcome {
                let to = f["member"].as_str().unwrap_or(fallback).to_string();
                store.put_raw(&key("leader"), &to);
            }
            store.put_raw(&key("failover"), "{}");
            return Some(f);
        }
        None
    })
}

#[tokio::test]
async fn immediate_switchover_waits_for_the_new_leader() {
    let env = healthy_cluster().await;
    let ha = fake_ha(&env, Outcome::Promote { fallback: "pg1" });
    post(&env, "/switchover", r#"{"leader":"pg0","candidate":"pg1"}"#)
        .await
        .expect(200, "Successfully switched over to \"pg1\"");
    assert_eq!(
        ha.await.unwrap(),
        Some(json!({"leader":"pg0","member":"pg1"}))
    );
}

#[tokio::test]
async fn switchover_without_candidate_goes_to_any_healthy_member() {
    let env = healthy_cluster().await;
    let ha = fake_ha(&env, Outcome::Promote { fallback: "pg1" });
    post(&env, "/switchover", r#"{"leader":"pg0"}"#)
        .await
        .expect(200, "Successfully switched over to \"pg1\"");
    assert_eq!(ha.await.unwrap(), Some(json!({"leader":"pg0"})));
}

#[tokio::test]
async fn switchover_to_someone_else_is_reported() {
    let env = healthy_cluster().await;
    let store = env.store.clone();
    let ha = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(25)).await;
            if store.get_raw(&key("failover")).is_some() {
                store.put_raw(&key("leader"), "pg2");
                return;
            }
        }
    });
    post(&env, "/switchover", r#"{"leader":"pg0","candidate":"pg1"}"#)
        .await
        .expect(200, "Switched over to \"pg2\" instead of \"pg1\"");
    ha.await.unwrap();
}

#[tokio::test]
async fn failover_works_without_a_leader() {
    let env = healthy_cluster().await;
    env.store.delete_raw(&key("leader"));
    let ha = fake_ha(&env, Outcome::Promote { fallback: "pg1" });
    // "member" is upstream's older spelling of "candidate".
    post(&env, "/failover", r#"{"member":"pg1"}"#)
        .await
        .expect(200, "Successfully failed over to \"pg1\"");
    assert_eq!(ha.await.unwrap(), Some(json!({"member":"pg1"})));
}

#[tokio::test]
async fn failover_with_leader_is_a_switchover() {
    let env = healthy_cluster().await;
    let ha = fake_ha(&env, Outcome::Promote { fallback: "pg1" });
    post(&env, "/failover", r#"{"leader":"pg0","candidate":"pg1"}"#)
        .await
        .expect(200, "Successfully switched over to \"pg1\"");
    ha.await.unwrap();
}

#[tokio::test]
async fn abandoned_switchover_is_503() {
    let env = healthy_cluster().await;
    let ha = fake_ha(&env, Outcome::Abandon);
    post(&env, "/switchover", r#"{"leader":"pg0","candidate":"pg1"}"#)
        .await
        .expect(503, "Switchover failed");
    ha.await.unwrap();
    assert_eq!(env.raw("leader").as_deref(), Some("pg0"));
}

#[tokio::test]
async fn switchover_without_dcs_is_503() {
    let env = healthy_cluster().await;
    let app = patroni::api::router(patroni::api::ApiState {
        dcs: None,
        ..env.state.clone()
    });
    call(Method::POST, "/switchover")
        .body(r#"{"leader":"pg0"}"#)
        .send(&app)
        .await
        .expect(503, "no DCS connection");
}
