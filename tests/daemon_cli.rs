//! The binary refuses bad configuration with messages naming each bad key.
use std::process::Command;

const BAD: &str = r#"
scope: s
restapi:
  listen: nowhere
etcd3:
  hosts: 127.0.0.1:2379
bootstrap:
  dcs:
    loop_wait: ten
postgresql:
  listen: 127.0.0.1:5432
  data_dir: /tmp/x
  authentication:
    superuser: {username: postgres}
    replication: {username: rep}
"#;

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_patroni"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn bad_config_is_rejected_by_validate_and_by_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.yml");
    std::fs::write(&f, BAD).unwrap();
    for args in [
        vec!["--validate-config", f.to_str().unwrap()],
        vec![f.to_str().unwrap()],
    ] {
        let (code, out) = run(&args);
        assert_ne!(code, 0, "{out}");
        for key in ["name", "restapi.listen", "bootstrap.dcs.loop_wait"] {
            assert!(out.contains(key), "message for {key} missing in:\n{out}");
        }
    }
    let (code, out) = run(&["--validate-config", "/nonexistent.yml"]);
    assert_ne!(code, 0);
    assert!(out.contains("/nonexistent.yml"), "{out}");
}

#[test]
fn invalid_yaml_names_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("broken.yml");
    std::fs::write(&f, "scope: s\nname: [unclosed\n").unwrap();
    let (code, out) = run(&["--validate-config", f.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(out.contains("line"), "{out}");
}

#[test]
fn sample_configs_validate() {
    for f in ["postgres0.yml", "postgres1.yml", "postgres2.yml"] {
        let (code, out) = run(&["--validate-config", f]);
        assert_eq!(code, 0, "{f}: {out}");
    }
}
