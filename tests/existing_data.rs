//! Converting a standalone PostgreSQL into a cluster (upstream's existing_data.rst) on real
//! etcd + PostgreSQL 15: the daemon adopts the running server as it is, a new member
//! clones it, and POST /restart hands the start-up over to the daemon.
//! Set `PATRONI_TEST_LOCK=/tmp/patroni-tests.lock` to share the machine with other runs.
mod support;

use serde_json::json;
use std::time::Duration;
use support::cluster::{Cluster, FAST, http, psql};
use support::standalone::Standalone;
use support::{eventually, serial};

/// The users upstream's procedure asks for, with the passwords of the test configuration.
const USERS: &str = "ALTER USER postgres WITH ENCRYPTED PASSWORD 'patroni'; \
    CREATE USER replicator WITH REPLICATION ENCRYPTED PASSWORD 'rep-pass'; \
    CREATE USER rewind_user WITH ENCRYPTED PASSWORD 'rewind_password'; \
    GRANT EXECUTE ON function pg_catalog.pg_ls_dir(text, boolean, boolean) TO rewind_user; \
    GRANT EXECUTE ON function pg_catalog.pg_stat_file(text, boolean) TO rewind_user; \
    GRANT EXECUTE ON function pg_catalog.pg_read_binary_file(text) TO rewind_user; \
    GRANT EXECUTE ON function pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean) TO rewind_user";

#[test]
fn a_running_standalone_is_adopted_cloned_and_restarted_by_the_daemon() {
    let _s = serial();
    let started = std::time::Instant::now();
    let mut c = Cluster::new(2, &FAST);
    // The standalone server lives where pg0's configuration says its data directory is,
    // with initdb's defaults (max_connections 100, above the cluster's 50).
    let mut pg = Standalone::init(&c.dir.join("data"), "pg0");
    pg.port = c.nodes[0].pg_port;
    pg.start();
    let port = pg.port;
    psql(port, USERS).unwrap();
    psql(
        port,
        "CREATE TABLE t AS SELECT g AS v FROM generate_series(1, 1000) g",
    )
    .unwrap();
    let pid = pg.postmaster_pid().expect("standalone running");
    let sysid = pg.system_identifier();

    c.start(0);
    assert_eq!(c.wait_primary(Duration::from_secs(60)), 0);
    pg.owned = false;
    let status = c.patroni(0).unwrap();
    assert_eq!(status["database_system_identifier"], json!(sysid));
    assert_eq!(
        c.postmaster_pid(0),
        Some(pid as i32),
        "the daemon must not restart an adopted server"
    );

    // A new member clones it; it starts although its max_connections (50) is below the
    // primary's (100): pg_control's value is used until a restart.
    c.start(1);
    eventually(Duration::from_secs(90), "pg1 streams from pg0", || {
        c.is_streaming(1).then_some(())
    });
    assert_eq!(
        psql(c.nodes[1].pg_port, "SELECT count(*) FROM t").unwrap(),
        "1000"
    );
    assert_eq!(
        psql(c.nodes[1].pg_port, "SHOW max_connections").unwrap(),
        "100"
    );
    assert!(
        c.log_of(1)
            .contains("max_connections value in pg_controldata: 100"),
        "{}",
        c.log_of(1)
    );
    let replica = c.patroni(1).unwrap();
    assert_eq!(replica["pending_restart"], json!(true), "{replica}");

    // Hand the start-up over to the daemon: a restart with its own configuration.
    let (code, body) = http("POST", c.nodes[0].api_port, "/restart", Some(&json!({})));
    assert_eq!(code, 200, "{body}");
    let new_pid = eventually(Duration::from_secs(60), "pg0 restarted", || {
        c.postmaster_pid(0).filter(|p| *p != pid as i32)
    });
    eventually(
        Duration::from_secs(60),
        "pg0 answers after the restart",
        || {
            psql(port, "SELECT count(*) FROM t")
                .ok()
                .filter(|n| n == "1000")
        },
    );
    assert_eq!(c.wait_primary(Duration::from_secs(60)), 0);
    assert_eq!(c.postmaster_pid(0), Some(new_pid));
    assert_eq!(psql(port, "SHOW max_connections").unwrap(), "50");
    assert_eq!(
        c.patroni(0).unwrap()["database_system_identifier"],
        json!(sysid)
    );
    psql(port, "INSERT INTO t VALUES (1001)").unwrap();
    eventually(
        Duration::from_secs(60),
        "pg1 follows the restarted primary",
        || {
            psql(c.nodes[1].pg_port, "SELECT count(*) FROM t")
                .ok()
                .filter(|n| n == "1001")
        },
    );
    eprintln!("scenario took {:.1} s", started.elapsed().as_secs_f64());
}
