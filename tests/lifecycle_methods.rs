//! Replica creation methods and custom bootstrap on real etcd + PostgreSQL 15: a custom
//! method gets its options and the cluster facts, a failing method falls through to the
//! next; a new cluster is bootstrapped from a pg_basebackup tar plus archived WAL.
//! Set `PATRONI_TEST_LOCK=/tmp/patroni-tests.lock` to share the machine with other runs.
mod support;

use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;
use support::cluster::{Cluster, FAST, psql};
use support::{PG_BIN, eventually, serial};

fn yaml(v: Value) -> serde_yaml_ng::Value {
    serde_yaml_ng::to_value(v).unwrap()
}

/// An executable shell script in the test directory.
fn script(c: &Cluster, name: &str, body: &str) -> String {
    let path = c.dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}")).unwrap();
    std::fs::set_permissions(
        &path,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    path.to_string_lossy().into_owned()
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn custom_replica_methods_get_their_options_and_fall_back_through_the_list() {
    let _s = serial();
    let mut c = Cluster::new(2, &FAST);
    let argv_file = c.dir.join("broken-argv");
    let broken = script(
        &c,
        "broken_restore.sh",
        &format!(
            "for a in \"$@\"; do echo \"$a\"; done > {}\nexit 3\n",
            argv_file.display()
        ),
    );
    // The second method clones with pg_basebackup from the connstring it is given.
    let used_file = c.dir.join("clone-used");
    let clone = script(
        &c,
        "clone_with_basebackup.sh",
        &format!(
            "for a in \"$@\"; do case \"$a\" in --datadir=*) d=\"${{a#--datadir=}}\";; \
             --connstring=*) cs=\"${{a#--connstring=}}\";; esac; done\n\
             {PG_BIN}/pg_basebackup -D \"$d\" -d \"$cs\" -X stream -c fast || exit 1\n\
             echo \"$cs\" > {}\n",
            used_file.display()
        ),
    );
    c.edit_config(1, |y| {
        y["postgresql"]["create_replica_methods"] = yaml(json!(["broken", "clone"]));
        y["postgresql"]["broken"] =
            yaml(json!({"command": format!("{broken} --first"), "keep_data": true, "stanza": "main"}));
        y["postgresql"]["clone"] = yaml(json!({"command": clone}));
    });
    c.start(0);
    let p = c.wait_primary(Duration::from_secs(60));
    assert_eq!(p, 0);
    psql(c.nodes[0].pg_port, "CREATE TABLE t AS SELECT 42 AS v").unwrap();
    c.start(1);
    eventually(Duration::from_secs(90), "pg1 streams from pg0", || {
        c.is_streaming(1).then_some(())
    });
    let connstring = format!(
        "dbname=postgres user=replicator host=127.0.0.1 port={}",
        c.nodes[0].pg_port
    );
    assert_eq!(
        lines(&argv_file),
        [
            "--first".to_string(),
            "--keep_data=True".into(),
            "--stanza=main".into(),
            format!("--scope={}", c.scope),
            "--role=replica".into(),
            format!("--datadir={}", c.nodes[1].data_dir.display()),
            format!("--connstring={connstring}"),
        ]
    );
    assert_eq!(lines(&used_file), [connstring]);
    assert_eq!(psql(c.nodes[1].pg_port, "SELECT v FROM t").unwrap(), "42");
    let log = c.log_of(1);
    assert!(
        log.contains("error creating replica using method broken")
            && log.contains("replica has been created using clone"),
        "{log}"
    );
}
