//! patronictl harness: run our `patronictl` or upstream's against a cluster, and start a
//! cluster of upstream Patroni nodes (target/upstream-venv, see scripts/upstream-venv.sh).
use super::cluster::{Cluster, FAST};
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The upstream venv, built once by scripts/upstream-venv.sh.
pub fn upstream_venv() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let venv = root.join("target/upstream-venv");
    if !venv.join("bin/patronictl").exists() {
        let ok = Command::new(root.join("scripts/upstream-venv.sh"))
            .status()
            .expect("run scripts/upstream-venv.sh");
        assert!(ok.success(), "building the upstream venv failed");
    }
    venv
}

/// The venv's interpreter may live in a directory the postgres user cannot read (pyenv
/// under /root), so upstream runs on the system python3 with the venv's packages.
fn upstream_cmd(script: &str) -> Command {
    let venv = upstream_venv();
    let site = std::fs::read_dir(venv.join("lib"))
        .expect("venv lib")
        .filter_map(Result::ok)
        .map(|e| e.path().join("site-packages"))
        .find(|p| p.exists())
        .expect("venv site-packages");
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.arg(venv.join("bin").join(script))
        .env("PYTHONPATH", site)
        .env("PYTHONDONTWRITEBYTECODE", "1");
    cmd
}

/// A result of one ctl invocation.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Run {
    pub fn ok(&self) -> &Self {
        assert_eq!(
            self.code, 0,
            "command failed:\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
    pub fn yaml(&self) -> Value {
        serde_yaml_ng::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not YAML ({e}): {}", self.stdout))
    }
}

fn run(mut cmd: Command, stdin: &str) -> Run {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd.spawn().expect("spawn patronictl");
    let _ = child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes());
    let out: Output = child.wait_with_output().expect("wait patronictl");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed: started.elapsed(),
    }
}

/// A ctl config file for `cluster` (scope + etcd3), like an operator's patronictl.yaml.
pub fn write_ctl_config(c: &Cluster, extra: &str) -> PathBuf {
    let path = c.dir.join("patronictl.yaml");
    let text = format!(
        "scope: {}\nnamespace: /service/\netcd3:\n  hosts: 127.0.0.1:{}\n{extra}",
        c.scope, c.etcd.client_port
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Our patronictl with `-c CONFIG`, feeding `stdin` to prompts.
pub fn ours(config: &Path, args: &[&str], stdin: &str) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_patronictl"));
    cmd.arg("-c").arg(config).args(args);
    run(cmd, stdin)
}

/// Our patronictl with an explicit environment (no -c).
pub fn ours_env(args: &[&str], env: &[(&str, &str)], stdin: &str) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_patronictl"));
    cmd.args(args).env_remove("PATRONICTL_CONFIG_FILE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    run(cmd, stdin)
}

/// Upstream's patronictl with the same config.
pub fn theirs(config: &Path, args: &[&str], stdin: &str) -> Run {
    let mut cmd = upstream_cmd("patronictl");
    cmd.arg("-c").arg(config).args(args);
    run(cmd, stdin)
}

/// A cluster of upstream Patroni daemons (same configs as our daemon's scenarios).
pub fn upstream_cluster(n: usize) -> Cluster {
    upstream_cluster_edit(n, |_| {})
}

/// Like `upstream_cluster`, with `edit` applied to every node's YAML before the start.
pub fn upstream_cluster_edit(n: usize, edit: impl Fn(&mut serde_yaml_ng::Value)) -> Cluster {
    let mut c = Cluster::new(n, &FAST);
    for i in 0..n {
        c.edit_config(i, &edit);
    }
    for i in 0..n {
        start_upstream(&mut c, i);
    }
    c
}

/// Start node `i` of `c` as an upstream Patroni daemon (as the postgres user).
pub fn start_upstream(c: &mut Cluster, i: usize) {
    let mut cmd = upstream_cmd("patroni");
    cmd.arg(&c.nodes[i].config);
    c.start_with(i, cmd, true);
}

/// Wait until every node of `c` reports running (and replicas stream).
pub fn wait_healthy(c: &Cluster) -> usize {
    let primary = c.wait_primary(Duration::from_secs(120));
    super::eventually(Duration::from_secs(120), "all replicas streaming", || {
        (0..c.nodes.len())
            .all(|i| i == primary || c.is_streaming(i))
            .then_some(())
    });
    primary
}
