//! The PostgreSQL layer on real PostgreSQL 15: bootstrap, replicas, promote, rewind,
//! stop modes, crash detection and observation of stopped/empty directories.

mod support;

use std::time::Duration;

use patroni::postgres::{ConfigRole, DataDirState, Divergence, StopMode, wait_for_exit};
use support::postgres::{PgNode, REPLICATION, eventually_async, test_auth};

const START: Duration = Duration::from_secs(30);

fn standby_of(leader: &PgNode) -> ConfigRole {
    ConfigRole::Standby {
        upstream: Some(leader.upstream()),
        slot_name: None,
    }
}

/// initdb + start as primary + bootstrap users.
async fn bootstrap_primary(node: &PgNode) -> u32 {
    node.pg
        .initdb(&[
            serde_json::json!({"encoding": "UTF8"}),
            serde_json::json!("data-checksums"),
        ])
        .await
        .unwrap();
    let pid = node.pg.start(&ConfigRole::Primary, START).await.unwrap();
    node.pg.create_bootstrap_users(&test_auth()).await.unwrap();
    pid
}

/// basebackup from `leader` and start as its standby.
async fn make_replica(node: &PgNode, leader: &PgNode) {
    node.pg.basebackup(&leader.upstream()).await.unwrap();
    node.pg.start(&standby_of(leader), START).await.unwrap();
}

async fn wait_streaming(node: &PgNode, leader_port: u16) {
    eventually_async(
        Duration::from_secs(20),
        "replica streams from its leader",
        || async {
            let o = node.pg.observe().await;
            let rx = o.sql?.wal_receiver?;
            (rx.status == "streaming" && rx.sender_port == Some(leader_port)).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn observe_empty_stopped_and_invalid_dirs() {
    let node = PgNode::new("n0");
    let o = node.pg.observe().await;
    assert_eq!(o.data_dir, DataDirState::Empty);
    assert!(
        !o.is_running() && o.sql.is_none() && o.configured_primary.is_none() && !o.standby_signal
    );
    assert!(node.pg.data_dir_empty());

    node.pg.initdb(&[]).await.unwrap();
    let o = node.pg.observe().await;
    let DataDirState::Initialized(c) = &o.data_dir else {
        panic!("initialized expected: {:?}", o.data_dir)
    };
    assert_eq!((c.cluster_state.as_str(), c.timeline), ("shut down", 1));
    assert!(!o.is_running() && o.sql.is_none());
    assert!(o.system_identifier().is_some_and(|s| s.len() > 10));

    // initdb on a non-empty directory is refused, not destructive.
    assert!(node.pg.initdb(&[]).await.is_err());

    node.pg.remove_data_dir().await.unwrap();
    assert!(node.pg.data_dir_empty());
    std::fs::write(node.data_dir().join("junk"), "x").unwrap();
    assert!(matches!(
        node.pg.observe().await.data_dir,
        DataDirState::Invalid(_)
    ));
}

#[tokio::test]
async fn primary_replica_promote_and_rewind() {
    let a = PgNode::new("node-a");
    let b = PgNode::new("node-b");

    // Primary: observation has the primary facts.
    let pid = bootstrap_primary(&a).await;
    let o = a.pg.observe().await;
    assert_eq!(o.postmaster_pid, Some(pid));
    let sql = o
        .sql
        .clone()
        .unwrap_or_else(|| panic!("sql observation: {:?}", o.sql_error));
    assert!(!sql.in_recovery);
    assert_eq!(sql.timeline, 1);
    assert!(sql.wal_lsn > 0 && sql.server_version >= 150000);
    assert_eq!(Some(sql.system_identifier.as_str()), o.system_identifier());
    assert!(!o.standby_signal && o.configured_primary.is_none());
    a.pg.ensure_physical_slots(&["node_b".to_string()])
        .await
        .unwrap();

    // Replica: basebackup, start as standby, stream through the slot.
    make_replica(&b, &a).await;
    wait_streaming(&b, a.port).await;
    let ob = b.pg.observe().await;
    assert!(ob.standby_signal);
    assert_eq!(
        ob.configured_primary,
        Some(("127.0.0.1".to_string(), a.port))
    );
    let bsql = ob.sql.unwrap();
    assert!(bsql.in_recovery);
    assert_eq!(
        bsql.wal_receiver.unwrap().slot_name.as_deref(),
        Some("node_b")
    );
    let oa = eventually_async(Duration::from_secs(10), "primary sees node-b", || async {
        let s = a.pg.observe().await.sql?;
        s.replication
            .iter()
            .any(|r| r.application_name == "node-b" && r.usename == REPLICATION.0)
            .then_some(s)
    })
    .await;
    assert!(
        oa.slots
            .iter()
            .any(|s| s.name == "node_b" && s.active && s.slot_type == "physical")
    );
    assert_eq!(
        b.pg.check_timeline_divergence(&a.upstream()).await.unwrap(),
        Divergence::NotDiverged
    );

    // Divergence: b stops first, a writes WAL b never sees, then a crashes.
    a.pg.query("CREATE TABLE t(x int); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    eventually_async(Duration::from_secs(10), "table replicated", || async {
        b.value("SELECT count(*) FROM t").await.filter(|c| c == "1")
    })
    .await;
    b.pg.stop(StopMode::Fast, START).await.unwrap();
    a.pg.query("INSERT INTO t SELECT generate_series(1, 1000)")
        .await
        .unwrap();
    let exited = tokio::spawn(wait_for_exit(pid));
    a.kill9();
    tokio::time::timeout(Duration::from_secs(5), exited)
        .await
        .expect("wait_for_exit fires on kill -9")
        .unwrap();
    let oa = a.pg.observe().await;
    assert!(!oa.is_running() && oa.sql.is_none());

    // b becomes the new primary on timeline 2 and writes.
    b.pg.start(
        &ConfigRole::Standby {
            upstream: None,
            slot_name: None,
        },
        START,
    )
    .await
    .unwrap();
    b.pg.promote(START).await.unwrap();
    b.pg.query("INSERT INTO t VALUES (2)").await.unwrap();
    b.pg.checkpoint().await.unwrap();
    let ob = b.pg.observe().await;
    assert!(!ob.standby_signal);
    let bsql = ob.sql.unwrap();
    assert!(!bsql.in_recovery && bsql.timeline == 2);
    b.pg.ensure_physical_slots(&["node_a".to_string()])
        .await
        .unwrap();

    // a: crash recovery, divergence detected, rewind, follow b.
    assert!(matches!(
        a.pg.check_timeline_divergence(&b.upstream()).await.unwrap(),
        Divergence::Unknown(_)
    ));
    a.pg.ensure_clean_shutdown().await.unwrap();
    let d = a.pg.check_timeline_divergence(&b.upstream()).await.unwrap();
    assert!(matches!(d, Divergence::Diverged { .. }), "{d:?}");
    a.pg.rewind(&b.upstream(), &test_auth()).await.unwrap();
    a.pg.start(&standby_of(&b), START).await.unwrap();
    wait_streaming(&a, b.port).await;
    eventually_async(
        Duration::from_secs(10),
        "rewound node has the new primary's rows",
        || async {
            a.value("SELECT string_agg(x::text, ',' ORDER BY x) FROM t")
                .await
                .filter(|v| v == "1,2")
        },
    )
    .await;
    assert_eq!(a.pg.observe().await.sql.unwrap().timeline, 2);
    assert_eq!(
        a.pg.check_timeline_divergence(&b.upstream()).await.unwrap(),
        Divergence::NotDiverged
    );
}

#[tokio::test]
async fn stop_modes_restart_reload_slots_and_post_bootstrap() {
    let n = PgNode::new("n1");
    bootstrap_primary(&n).await;
    let script = format!(
        "/bin/sh -c '{}/psql \"$0\" -c \"CREATE TABLE boot(x int)\"'",
        support::PG_BIN
    );
    n.pg.run_post_bootstrap(&script).await.unwrap();
    assert_eq!(
        n.value("SELECT count(*) FROM boot").await.as_deref(),
        Some("0")
    );
    assert!(n.pg.run_post_bootstrap("/bin/false").await.is_err());

    // The rewind user got its grants and can log in over TCP with its password.
    let grants = n.value("SELECT has_function_privilege('rewinder', 'pg_catalog.pg_ls_dir(text, boolean, boolean)', 'EXECUTE')").await;
    assert_eq!(grants.as_deref(), Some("t"));

    n.pg.ensure_physical_slots(&["s1".into(), "s2".into()])
        .await
        .unwrap();
    n.pg.ensure_physical_slots(&["s1".into()]).await.unwrap();
    assert_eq!(
        n.pg.drop_slots(&["s1".into(), "nope".into()])
            .await
            .unwrap(),
        Vec::<String>::new()
    );
    let slots: Vec<String> =
        n.pg.observe()
            .await
            .sql
            .unwrap()
            .slots
            .into_iter()
            .map(|s| s.name)
            .collect();
    assert_eq!(slots, vec!["s2".to_string()]);

    // A reload with unchanged settings leaves nothing pending; changed postmaster GUCs
    // (also command-line ones) are pending until the restart.
    n.pg.reload().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        n.pg.observe().await.sql.unwrap().pending_restart,
        Default::default()
    );
    let mut s = (*n.pg.settings()).clone();
    s.parameters.insert("max_connections".into(), "31".into());
    s.parameters.insert("shared_buffers".into(), "24MB".into());
    n.pg.set_settings(s);
    n.pg.write_config(&ConfigRole::Primary).unwrap();
    n.pg.reload().unwrap();
    let pending = eventually_async(
        Duration::from_secs(10),
        "shared_buffers pending restart",
        || async {
            let p = n.pg.observe().await.sql?.pending_restart;
            p.contains_key("shared_buffers").then_some(p)
        },
    )
    .await;
    assert!(pending.contains_key("max_connections"), "{pending:?}");

    let pid1 = n.pg.restart(&ConfigRole::Primary, START).await.unwrap();
    assert_eq!(
        n.value("SHOW shared_buffers").await.as_deref(),
        Some("24MB")
    );
    assert_eq!(n.value("SHOW max_connections").await.as_deref(), Some("31"));
    assert_eq!(
        n.value("SHOW cluster_name").await.as_deref(),
        Some("pgtest")
    );

    n.pg.stop(StopMode::Smart, START).await.unwrap();
    assert!(n.pg.postmaster_pid().is_none());
    let pid2 = n.pg.start(&ConfigRole::Primary, START).await.unwrap();
    assert_ne!(pid1, pid2);
    assert!(matches!(
        n.pg.start(&ConfigRole::Primary, START).await,
        Err(patroni::postgres::PgError::AlreadyRunning { .. })
    ));
    n.pg.stop(StopMode::Immediate, START).await.unwrap();
    let DataDirState::Initialized(c) = n.pg.observe().await.data_dir else {
        panic!("initialized")
    };
    assert_eq!(
        c.cluster_state, "in production",
        "immediate stop leaves crash recovery to do"
    );
    n.pg.ensure_clean_shutdown().await.unwrap();
    let DataDirState::Initialized(c) = n.pg.observe().await.data_dir else {
        panic!("initialized")
    };
    assert_eq!(c.cluster_state, "shut down");
    n.pg.start(&ConfigRole::Primary, START).await.unwrap();
    n.pg.stop(StopMode::Fast, START).await.unwrap();
    n.pg.stop(StopMode::Fast, START).await.unwrap();
    assert!(n.pg.reload().is_err());
}

#[tokio::test]
async fn clean_switchover_needs_no_rewind() {
    let a = PgNode::new("sw-a");
    let b = PgNode::new("sw-b");
    bootstrap_primary(&a).await;
    a.pg.ensure_physical_slots(&["sw_b".to_string()])
        .await
        .unwrap();
    make_replica(&b, &a).await;
    wait_streaming(&b, a.port).await;

    // A fast shutdown streams the shutdown checkpoint to the replica before it ends, so
    // the promoted replica's switch point is exactly the end of a's last record.
    a.pg.stop(StopMode::Fast, START).await.unwrap();
    b.pg.promote(START).await.unwrap();
    b.pg.checkpoint().await.unwrap();
    let d = a.pg.check_timeline_divergence(&b.upstream()).await.unwrap();
    assert_eq!(d, Divergence::NotDiverged);

    b.pg.ensure_physical_slots(&["sw_a".to_string()])
        .await
        .unwrap();
    a.pg.start(&standby_of(&b), START).await.unwrap();
    wait_streaming(&a, b.port).await;
    assert_eq!(a.pg.observe().await.sql.unwrap().timeline, 2);
}
