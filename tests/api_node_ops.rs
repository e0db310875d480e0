//! POST/DELETE /restart and POST /reinitialize: checks from the published status, then a
//! `NodeCommand` to a fake HA loop whose reply becomes the response.

mod api_common;

use api_common::*;
use axum::http::Method;
use patroni::api::{ApiState, router};
use patroni::command::{CommandReply, NodeCommand};
use patroni::dcs::Role;

fn with_loop(
    env: &Env,
    answer: impl Fn(&NodeCommand) -> Option<CommandReply> + Send + 'static,
) -> (axum::Router, Seen) {
    let (tx, rx) = patroni::command::channel();
    let seen = fake_loop(rx, answer);
    let app = router(ApiState {
        commands: Some(tx),
        ..env.state.clone()
    });
    (app, seen)
}

fn done(msg: &str) -> Option<CommandReply> {
    Some(CommandReply::Done(msg.into()))
}

#[tokio::test]
async fn immediate_restart_is_handed_to_the_loop() {
    let env = Env::new();
    let (app, seen) = with_loop(&env, |c| match c {
        NodeCommand::Restart(..) => done("restarted successfully"),
        _ => None,
    });
    call(Method::POST, "/restart")
        .send(&app)
        .await
        .expect(200, "restarted successfully");
    call(Method::POST, "/restart")
        .body(r#"{"role":"master","postgres_version":"16.1","timeout":"2min"}"#)
        .send(&app)
        .await
        .expect(200, "restarted successfully");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen[1].contains("timeout: Some(120s)"), "{}", seen[1]);
    assert!(seen[1].contains("role: Some(\"primary\")"), "{}", seen[1]);
    assert!(
        seen[1].contains("postgres_version: Some(\"16.1\")"),
        "{}",
        seen[1]
    );
}

#[tokio::test]
async fn scheduled_restart_and_its_cancellation() {
    let env = Env::new();
    let (app, seen) = with_loop(&env, |c| match c {
        NodeCommand::Restart(r, _) if r.schedule.is_some() => {
            Some(CommandReply::Accepted("Restart scheduled".into()))
        }
        NodeCommand::CancelScheduledRestart(_) => Some(CommandReply::Refused {
            status: 404,
            message: "no restarts are scheduled".into(),
        }),
        _ => None,
    });
    call(Method::POST, "/restart")
        .body(r#"{"schedule":"2099-01-01T10:00:00+01:00","restart_pending":true}"#)
        .send(&app)
        .await
        .expect(202, "Restart scheduled");
    call(Method::DELETE, "/restart")
        .send(&app)
        .await
        .expect(404, "no restarts are scheduled");
    let seen = seen.lock().unwrap().clone();
    assert!(seen[0].contains("2099-01-01T10:00:00+01:00"), "{}", seen[0]);
    assert!(seen[0].contains("restart_pending: true"), "{}", seen[0]);
    assert!(seen[1].starts_with("CancelScheduledRestart"), "{}", seen[1]);
}

#[tokio::test]
async fn restart_filters_are_validated_like_upstream() {
    let env = Env::new();
    let (app, seen) = with_loop(&env, |_| done("restarted successfully"));
    let cases: &[(&str, u16, &str)] = &[
        (
            r#"{"role":"leader"}"#,
            400,
            "PostgreSQL role should be either primary, standby_leader, or replica",
        ),
        (
            r#"{"postgres_version":"15"}"#,
            400,
            "Invalid PostgreSQL version format: X.Y or X.Y.Z is accepted: 15",
        ),
        (
            r#"{"postgres_version":"a.b"}"#,
            400,
            "Invalid PostgreSQL version: a.b",
        ),
        (
            r#"{"timeout":0}"#,
            400,
            "Timeout should be a positive number of seconds",
        ),
        (
            r#"{"timeout":"later"}"#,
            400,
            "Timeout should be a positive number of seconds",
        ),
        (
            r#"{"force":true}"#,
            400,
            "Unknown filter for the scheduled restart: force",
        ),
        (
            r#"{"restart_pending":"maybe"}"#,
            400,
            "restart_pending must be a boolean",
        ),
        (
            r#"{"schedule":"2001-01-01T00:00+00"}"#,
            422,
            "Cannot schedule restart in the past",
        ),
        (
            r#"{"schedule":"2099-01-01T00:00"}"#,
            400,
            "Timezone information is mandatory for the scheduled restart",
        ),
        (
            r#"{"schedule":42}"#,
            422,
            "Unable to parse scheduled timestamp",
        ),
        (r#"[1]"#, 400, "must be a JSON object"),
        // Conditions checked against the published status: pg0 is a primary on 15.4
        // without a pending restart.
        (
            r#"{"role":"replica"}"#,
            503,
            "restart conditions are not satisfied",
        ),
        (
            r#"{"postgres_version":"15.4"}"#,
            503,
            "restart conditions are not satisfied",
        ),
        (
            r#"{"restart_pending":true}"#,
            503,
            "restart conditions are not satisfied",
        ),
    ];
    for (body, code, text) in cases {
        let r = call(Method::POST, "/restart").body(body).send(&app).await;
        assert_eq!(r.status.as_u16(), *code, "{body}: {}", r.text());
        assert!(r.text().contains(text), "{body}: {:?}", r.text());
    }
    assert!(seen.lock().unwrap().is_empty(), "nothing reached the loop");

    let mut st = primary_status();
    st.dynamic.pause = true;
    env.publish(st);
    call(Method::POST, "/restart")
        .body(r#"{"schedule":"2099-01-01T00:00+00"}"#)
        .send(&app)
        .await
        .expect(500, "Can't schedule restart in the paused state");

    let mut st = primary_status();
    st.pending_restart = true;
    env.publish(st);
    call(Method::POST, "/restart")
        .body(r#"{"restart_pending":true,"role":"primary","postgres_version":"16.0"}"#)
        .send(&app)
        .await
        .expect(200, "restarted successfully");
}

#[tokio::test]
async fn loop_refusals_and_absence() {
    let env = Env::new();
    call(Method::POST, "/restart")
        .send(&env.app())
        .await
        .expect(503, "does not accept restart/reinitialize commands");
    let (app, _) = with_loop(&env, |_| {
        Some(CommandReply::Refused {
            status: 409,
            message: "Another restart is already scheduled".into(),
        })
    });
    call(Method::POST, "/restart")
        .send(&app)
        .await
        .expect(409, "Another restart is already scheduled");
    let (app, _) = with_loop(&env, |_| None);
    call(Method::POST, "/restart")
        .send(&app)
        .await
        .expect(503, "dropped the request without answering");
    // The loop is gone altogether.
    let (tx, rx) = patroni::command::channel();
    drop(rx);
    let app = router(ApiState {
        commands: Some(tx),
        ..env.state.clone()
    });
    call(Method::DELETE, "/restart")
        .send(&app)
        .await
        .expect(503, "not running");
}

#[tokio::test]
async fn reinitialize() {
    let env = Env::new();
    let (app, seen) = with_loop(&env, |c| match c {
        NodeCommand::Reinitialize(..) => done("reinitialize started"),
        _ => None,
    });
    // pg0 holds the lock.
    call(Method::POST, "/reinitialize")
        .send(&app)
        .await
        .expect(503, "I am the leader, can not reinitialize");
    let mut st = replica_status("pg1");
    st.role = Role::Replica;
    env.publish(st.clone());
    call(Method::POST, "/reinitialize")
        .body(r#"{"force":"on","from-leader":true}"#)
        .send(&app)
        .await
        .expect(200, "reinitialize started");
    call(Method::POST, "/reinitialize")
        .body(r#"{"from_leader":false}"#)
        .send(&app)
        .await
        .expect(200, "reinitialize started");
    call(Method::POST, "/reinitialize")
        .body(r#"{"forse":true}"#)
        .send(&app)
        .await
        .expect(400, "unknown member \"forse\"");
    call(Method::POST, "/reinitialize")
        .body(r#"{"force":"perhaps"}"#)
        .send(&app)
        .await
        .expect(400, "force must be a boolean");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(
        seen[0].contains("force: true, from_leader: true"),
        "{}",
        seen[0]
    );
    assert!(
        seen[1].contains("force: false, from_leader: false"),
        "{}",
        seen[1]
    );

    env.store.delete_raw(&key("leader"));
    env.publish(st);
    call(Method::POST, "/reinitialize")
        .send(&app)
        .await
        .expect(503, "Cluster has no leader, can not reinitialize");
}
