//! Replica creation methods and custom bootstrap on real etcd + PostgreSQL 15: a custom
//! method gets its options and the cluster facts, a failing method falls through to the
//! next; a new cluster is bootstrapped from a pg_basebackup tar plus archived WAL.
//! Set `PATRONI_TEST_LOCK=/tmp/patroni-tests.lock` to share the machine with other runs.
mod support;

use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;
use support::cluster::{Cluster, FAST, psql};
use support::standalone::{Standalone, pg_command, run_ok};
use support::{PG_BIN, eventually, serial};

fn yaml(v: Value) -> serde_yaml_ng::Value {
    serde_yaml_ng::to_value(v).unwrap()
}

/// An executable shell script in the test directory.
fn script(c: &Cluster, name: &str, body: &str) -> String {
    let path = c.dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}")).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
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
    let started = std::time::Instant::now();
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
        y["postgresql"]["broken"] = yaml(
            json!({"command": format!("{broken} --first"), "keep_data": true, "stanza": "main"}),
        );
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
    eprintln!("scenario took {:.1} s", started.elapsed().as_secs_f64());
}

#[test]
fn custom_bootstrap_restores_a_basebackup_tar_and_recovers_with_recovery_conf() {
    let _s = serial();
    let started = std::time::Instant::now();
    let mut c = Cluster::new(1, &FAST);
    // A throwaway server that archives its WAL; a tar base backup of it; one more row
    // that only the archive holds.
    let archive = c.dir.join("archive");
    let backup = c.dir.join("backup");
    for d in [&archive, &backup] {
        std::fs::create_dir(d).unwrap();
        support::chown_for_postgres(d);
    }
    let mut src = Standalone::init(c.dir.path(), "source");
    src.options += &format!(
        " -c archive_mode=on -c archive_command='cp %p {}/%f'",
        archive.display()
    );
    src.start();
    psql(src.port, "CREATE TABLE t AS SELECT 1 AS v").unwrap();
    let mut bb = pg_command("pg_basebackup");
    bb.arg("-D")
        .arg(&backup)
        .args([
            "-Ft",
            "-X",
            "fetch",
            "-c",
            "fast",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
        ])
        .arg(format!("--port={}", src.port));
    run_ok(bb, "pg_basebackup -Ft");
    psql(src.port, "INSERT INTO t VALUES (2)").unwrap();
    let seg = psql(src.port, "SELECT pg_walfile_name(pg_switch_wal())").unwrap();
    eventually(Duration::from_secs(30), "the last segment archived", || {
        archive.join(&seg).exists().then_some(())
    });
    let sysid = src.system_identifier();
    src.stop();

    let argv_file = c.dir.join("bootstrap-argv");
    let restore = script(
        &c,
        "restore_tar.sh",
        &format!(
            "for a in \"$@\"; do echo \"$a\"; case \"$a\" in --datadir=*) d=\"${{a#--datadir=}}\";; \
             --tarball=*) t=\"${{a#--tarball=}}\";; esac; done > {}\n\
             tar -xf \"$t\" -C \"$d\"\n",
            argv_file.display()
        ),
    );
    let tarball = backup.join("base.tar");
    c.edit_config(0, |y| {
        y["bootstrap"]["method"] = yaml(json!("restore_tar"));
        y["bootstrap"]["restore_tar"] = yaml(json!({
            "command": restore,
            "tarball": tarball,
            "recovery_conf": {
                "restore_command": format!("cp {}/%f %p", archive.display()),
                "recovery_target_timeline": "latest",
            },
        }));
    });
    c.start(0);
    c.wait_primary(Duration::from_secs(90));
    let port = c.nodes[0].pg_port;
    assert_eq!(
        lines(&argv_file),
        [
            format!("--scope={}", c.scope),
            format!("--datadir={}", c.nodes[0].data_dir.display()),
            format!("--tarball={}", tarball.display()),
        ]
    );
    // Row 2 came from the archive through restore_command; recovery ended in a promotion.
    assert_eq!(
        psql(port, "SELECT string_agg(v::text, ',' ORDER BY v) FROM t").unwrap(),
        "1,2"
    );
    assert_eq!(psql(port, "SELECT pg_is_in_recovery()").unwrap(), "f");
    let tl = psql(port, "SELECT timeline_id FROM pg_control_checkpoint()").unwrap();
    assert!(tl.parse::<u32>().unwrap() >= 2, "timeline {tl}");
    let status = c.patroni(0).unwrap();
    assert_eq!(status["database_system_identifier"], json!(sysid));
    assert_eq!(status["role"], json!("primary"));
    // The bootstrap's recovery settings and trust line are gone: the password is needed.
    let dd = &c.nodes[0].data_dir;
    assert!(!dd.join("recovery.signal").exists());
    let conf = std::fs::read_to_string(dd.join("postgresql.conf")).unwrap();
    assert!(
        !conf.contains("restore_command") && !conf.contains("trust"),
        "{conf}"
    );
    let hba = std::fs::read_to_string(dd.join("pg_hba.conf")).unwrap();
    assert!(!hba.contains("trust"), "{hba}");
    eprintln!("scenario took {:.1} s", started.elapsed().as_secs_f64());
}
