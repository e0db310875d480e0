//! Loading and validating whole configuration files: upstream's sample, a file full of
//! mistakes, the PATRONI_* overlay, PATRONI_CONFIGURATION, and timing adjustment.

use patroni::config::{ConfigError, DynamicConfig, load, validate_file};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/config")
        .join(name)
}

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn upstream_sample_loads_without_issues_or_warnings() {
    let loaded = validate_file(&fixture("upstream_postgres0.yml"), &BTreeMap::new())
        .unwrap_or_else(|issues| panic!("{issues:#?}"));
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let c = loaded.config;
    assert_eq!(
        (c.name.as_str(), c.scope.as_str(), c.namespace.as_str()),
        ("postgresql0", "batman", "/service/")
    );
    assert_eq!(c.restapi.listen, "127.0.0.1:8008");
    assert_eq!(
        c.etcd3.as_ref().unwrap().endpoints(),
        ["http://127.0.0.1:2379"]
    );
    assert_eq!(c.postgresql.data_dir, PathBuf::from("data/postgresql0"));
    assert_eq!(c.postgresql.authentication.superuser.username, "postgres");
    assert_eq!(
        c.postgresql
            .authentication
            .rewind
            .as_ref()
            .unwrap()
            .username,
        "rewind_user"
    );
    assert_eq!(c.bootstrap.initdb.len(), 2);
    assert_eq!(c.bootstrap.dcs["ttl"], serde_json::json!(30));
    assert_eq!(c.tags["noloadbalance"], serde_json::json!(false));
    let (dynamic, warnings) = DynamicConfig::from_map(&c.bootstrap.dcs);
    assert!(warnings.is_empty(), "{warnings:?}");
    assert!(dynamic.postgresql.use_pg_rewind);
    assert_eq!(dynamic.postgresql.pg_hba.as_ref().unwrap().len(), 2);
}

#[test]
fn upstream_sample_with_etcd_v2_section_is_accepted() {
    // Upstream's sample talks to etcd through the v2 API (`etcd:`); same file otherwise.
    let text = std::fs::read_to_string(fixture("upstream_postgres0.yml"))
        .unwrap()
        .replace("etcd3:", "etcd:");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("postgres0.yml");
    std::fs::write(&path, text).unwrap();
    let loaded = validate_file(&path, &BTreeMap::new()).unwrap_or_else(|i| panic!("{i:#?}"));
    let etcd = loaded.config.etcd.expect("etcd v2 section");
    assert_eq!(etcd.endpoints(), ["http://127.0.0.1:2379"]);
    assert!(loaded.config.etcd3.is_none());
}

#[test]
fn every_mistake_is_reported_with_its_path() {
    let issues = validate_file(&fixture("many_errors.yml"), &BTreeMap::new())
        .map(|_| ())
        .expect_err("full of mistakes");
    let mut paths: Vec<&str> = issues.iter().map(|i| i.path.as_str()).collect();
    paths.sort();
    let mut want = vec![
        "name",
        "scope",
        "restapi.listen",
        "restapi.connect_address",
        "restapi.authentication.password",
        "etcd3.hosts[0]",
        "etcd3.protocol",
        "loop_wait",
        "bootstrap.dcs.loop_wait",
        "bootstrap.dcs.retry_timeout",
        "bootstrap.dcs.synchronous_mode",
        "bootstrap.dcs.postgresql.use_slots",
        "bootstrap.dcs.postgresql.parameters.max_connections",
        "bootstrap.dcs.postgresql.parameters.wal_level",
        "bootstrap.initdb[1]",
        "bootstrap.initdb[2]",
        "postgresql.listen",
        "postgresql.connect_address",
        "postgresql.data_dir",
        "postgresql.bin_dir",
        "postgresql.pg_ctl_timeout",
        "postgresql.use_pg_rewind",
        "postgresql.authentication.superuser.username",
        "watchdog.mode",
        "tags.nofailover",
    ];
    want.sort();
    assert_eq!(paths, want, "{issues:#?}");
    let text: Vec<String> = issues.iter().map(ToString::to_string).collect();
    assert!(
        text.contains(
            &"bootstrap.dcs.loop_wait: must be an integer number of seconds, got \"ten\""
                .to_string()
        ),
        "{text:#?}"
    );
    assert!(
        text.contains(
            &"postgresql.pg_ctl_timeout: must be an integer number of seconds, got \"soon\""
                .to_string()
        ),
        "{text:#?}"
    );
    // `load` refuses the same file, listing the type problems.
    let err = load(Some(&fixture("many_errors.yml")), &BTreeMap::new()).unwrap_err();
    assert!(matches!(err, ConfigError::Invalid(_)), "{err}");
    assert!(
        err.to_string()
            .contains("postgresql.use_pg_rewind: must be true or false"),
        "{err}"
    );
}

#[test]
fn unknown_keys_warn_but_load() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.yml");
    let text = std::fs::read_to_string(fixture("upstream_postgres0.yml")).unwrap()
        + "\nsomething_new: 1\nrestapi_typo: {}\n";
    std::fs::write(
        &path,
        text.replace(
            "  data_dir: data/postgresql0",
            "  data_dir: data/postgresql0\n  shiny: yes",
        ),
    )
    .unwrap();
    let loaded = validate_file(&path, &BTreeMap::new()).unwrap_or_else(|i| panic!("{i:#?}"));
    let mut w = loaded.warnings.clone();
    w.sort();
    assert_eq!(
        w,
        [
            "unknown key postgresql.shiny, kept and ignored",
            "unknown key restapi_typo, kept and ignored",
            "unknown key something_new, kept and ignored",
        ]
    );
    assert!(loaded.config.postgresql.extra.contains_key("shiny"));
}

#[test]
fn environment_overrides_the_file() {
    let vars = env(&[
        ("PATRONI_NAME", "from-env"),
        ("PATRONI_RESTAPI_CONNECT_ADDRESS", "10.0.0.5:8008"),
        ("PATRONI_POSTGRESQL_DATA_DIR", "/srv/pg"),
        ("PATRONI_SUPERUSER_PASSWORD", "s3cret"),
        ("PATRONI_ETCD3_HOSTS", "'e1:2379','e2:2379'"),
        ("PATRONI_ETCD3_PROTOCOL", "https"),
        ("PATRONI_ETCD3_USERNAME", "root"),
        ("PATRONI_LOG_LEVEL", "DEBUG"),
        ("UNRELATED", "x"),
    ]);
    let c = load(Some(&fixture("upstream_postgres0.yml")), &vars)
        .unwrap()
        .config;
    assert_eq!(c.name, "from-env");
    assert_eq!(c.scope, "batman");
    assert_eq!(c.restapi.connect_address, "10.0.0.5:8008");
    assert_eq!(c.postgresql.data_dir, PathBuf::from("/srv/pg"));
    assert_eq!(c.postgresql.authentication.superuser.username, "postgres");
    assert_eq!(
        c.postgresql.authentication.superuser.password.as_deref(),
        Some("s3cret")
    );
    let e = c.etcd3.unwrap();
    assert_eq!(
        e.endpoints(),
        [
            "https://127.0.0.1:2379",
            "https://e1:2379",
            "https://e2:2379"
        ]
    );
    assert_eq!(e.username.as_deref(), Some("root"));
    assert_eq!(c.log["level"], serde_json::json!("DEBUG"));
}

#[test]
fn patroni_configuration_replaces_the_file_and_other_variables() {
    let yaml = std::fs::read_to_string(fixture("upstream_postgres0.yml")).unwrap();
    let vars = env(&[
        ("PATRONI_CONFIGURATION", &yaml),
        ("PATRONI_NAME", "ignored"),
    ]);
    let c = load(None, &vars).unwrap().config;
    assert_eq!(c.name, "postgresql0");
    assert!(c.etcd3.is_some());
    // Without a file or PATRONI_CONFIGURATION the variables alone are the configuration.
    let c = load(None, &env(&[("PATRONI_NAME", "n"), ("PATRONI_SCOPE", "s")]))
        .unwrap()
        .config;
    assert_eq!((c.name.as_str(), c.scope.as_str()), ("n", "s"));
    assert!(matches!(
        load(None, &BTreeMap::new()),
        Err(ConfigError::Missing)
    ));
    let bad = env(&[("PATRONI_CONFIGURATION", "name: [")]);
    assert!(matches!(load(None, &bad), Err(ConfigError::Syntax { .. })));
}

#[test]
fn yaml_syntax_error_is_one_issue_with_position() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.yml");
    std::fs::write(&path, "scope: x\nrestapi:\n  listen: [127.0.0.1\n").unwrap();
    let issues = validate_file(&path, &BTreeMap::new())
        .map(|_| ())
        .unwrap_err();
    assert_eq!(issues.len(), 1, "{issues:#?}");
    assert!(issues[0].message.contains("line"), "{}", issues[0]);
    assert!(issues[0].message.contains("broken.yml"), "{}", issues[0]);
    let missing = validate_file(&dir.path().join("nope.yml"), &BTreeMap::new())
        .map(|_| ())
        .unwrap_err();
    assert!(missing[0].message.contains("cannot read"), "{}", missing[0]);
}

#[test]
fn directory_of_files_is_merged_in_name_order() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture("upstream_postgres0.yml"),
        dir.path().join("00-base.yml"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("10-node.yaml"),
        "name: node-b\npostgresql:\n  data_dir: /b\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("README"), "not yaml: [").unwrap();
    let c = load(Some(dir.path()), &BTreeMap::new()).unwrap().config;
    assert_eq!(c.name, "node-b");
    assert_eq!(c.postgresql.data_dir, PathBuf::from("/b"));
    assert_eq!(c.postgresql.listen, "127.0.0.1:5432");
}

#[test]
fn timing_is_adjusted_like_upstream_and_flagged_by_validation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.yml");
    let text = std::fs::read_to_string(fixture("upstream_postgres0.yml"))
        .unwrap()
        .replace("    ttl: 30\n", "    ttl: 20\n");
    std::fs::write(&path, text).unwrap();
    let issues = validate_file(&path, &BTreeMap::new())
        .map(|_| ())
        .unwrap_err();
    assert_eq!(issues.len(), 1, "{issues:#?}");
    assert_eq!(issues[0].path, "bootstrap.dcs.ttl");
    let c = load(Some(&path), &BTreeMap::new()).unwrap().config;
    let (d, warnings) = DynamicConfig::from_map(&c.bootstrap.dcs);
    assert_eq!((d.ttl, d.loop_wait, d.retry_timeout), (20, 1, 9));
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("ttl (20) must be at least loop_wait + 2*retry_timeout (30)"),
        "{}",
        warnings[0]
    );
}
