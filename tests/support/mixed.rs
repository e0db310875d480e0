//! Mixed clusters: every node is either an upstream Patroni 4.1 daemon or ours, on the same
//! YAML, scope and etcd. A node can be swapped to the other kind in place (stop the daemon
//! and its postgres, start the other daemon on the same data dir and config), which is the
//! rolling migration an operator does.
use super::cluster::{Cluster, FAST, Writer, http, longest_gap, psql};
use super::ctl::{start_upstream, theirs, write_ctl_config};
use super::eventually;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Upstream,
    Ours,
}

pub struct MixedCluster {
    pub c: Cluster,
    pub kinds: Vec<Kind>,
    /// patronictl.yaml for upstream's patronictl.
    pub ctl: PathBuf,
    /// Every id a writer got an acknowledgement for.
    pub acked: Vec<i64>,
    next_id: i64,
}

const LONG: Duration = Duration::from_secs(180);

impl MixedCluster {
    /// Configs for `kinds.len()` nodes (edited by `edit(i, yaml)`), etcd and HAProxy; no
    /// daemon started yet.
    pub fn new(kinds: &[Kind], edit: impl Fn(usize, &mut serde_yaml_ng::Value)) -> MixedCluster {
        let mut c = Cluster::new(kinds.len(), &FAST);
        for i in 0..kinds.len() {
            c.edit_config(i, |v| edit(i, v));
        }
        c.start_haproxy();
        let ctl = write_ctl_config(&c, "");
        MixedCluster {
            c,
            kinds: kinds.to_vec(),
            ctl,
            acked: vec![],
            next_id: 1,
        }
    }

    pub fn name(&self, i: usize) -> String {
        self.c.nodes[i].name.clone()
    }

    pub fn start(&mut self, i: usize) {
        match self.kinds[i] {
            Kind::Upstream => start_upstream(&mut self.c, i),
            Kind::Ours => self.c.start(i),
        }
    }

    /// Start node 0 alone (so it bootstraps and leads), then the others; wait until healthy
    /// and create the writers' table.
    pub fn bootstrap(&mut self) {
        self.start(0);
        eventually(LONG, "node 0 to bootstrap and lead", || {
            (self.c.primary() == Some(0)).then_some(())
        });
        for i in 1..self.kinds.len() {
            self.start(i);
        }
        let p = self.check("bootstrap");
        psql(
            self.c.nodes[p].pg_port,
            "CREATE TABLE t (id int primary key)",
        )
        .unwrap();
    }

    /// Graceful stop (SIGTERM) of node i's daemon; waits for the daemon and its postgres.
    pub fn stop(&mut self, i: usize) {
        self.c.sigterm_daemon(i);
        let node = &mut self.c.nodes[i];
        eventually(LONG, "daemon to exit after SIGTERM", || {
            (!node.daemon.as_mut().is_some_and(|d| d.alive())).then_some(())
        });
        node.daemon = None;
        eventually(LONG, "postgres to stop", || {
            self.c.postmaster_pid(i).is_none().then_some(())
        });
    }

    /// Swap node i to `kind`: stop it, start the other daemon on the same config and data.
    pub fn replace(&mut self, i: usize, kind: Kind) {
        self.stop(i);
        self.kinds[i] = kind;
        self.start(i);
    }

    /// Exactly one primary, everybody else streaming, upstream's patronictl agrees, and no
    /// acknowledged write is missing on any node. Returns the primary.
    pub fn check(&self, step: &str) -> usize {
        let p = eventually(LONG, &format!("{step}: one primary, all streaming"), || {
            let p = self.c.primary()?;
            (0..self.c.nodes.len())
                .all(|i| i == p || self.c.is_streaming(i))
                .then_some(p)
        });
        let leader = self.name(p);
        eventually(LONG, &format!("{step}: upstream patronictl list"), || {
            self.list_ok(&leader).then_some(())
        });
        self.check_writes(step);
        println!(
            "{step}: ok, leader {leader} ({:?}), {:?}",
            self.kinds[p], self.kinds
        );
        p
    }

    /// Upstream `patronictl list -f json`: every member, one Leader (the primary), the
    /// others streaming replicas on the same timeline.
    fn list_ok(&self, leader: &str) -> bool {
        let run = theirs(&self.ctl, &["list", "-f", "json"], "");
        if run.code != 0 {
            return false;
        }
        let rows = run.json();
        let Some(rows) = rows.as_array() else {
            return false;
        };
        let tl = rows
            .iter()
            .find(|r| r["Role"] == "Leader")
            .map(|r| &r["TL"]);
        rows.len() == self.c.nodes.len()
            && rows.iter().all(|r| {
                let is_leader = r["Member"] == leader;
                let role_ok = if is_leader {
                    r["Role"] == "Leader" && r["State"] == "running"
                } else {
                    let role = r["Role"].as_str().unwrap_or("");
                    ["Replica", "Sync Standby", "Quorum Standby"].contains(&role)
                        && r["State"] == "streaming"
                };
                role_ok && Some(&r["TL"]) == tl
            })
    }

    /// Every acknowledged id is on every node (replicas given time to replay).
    pub fn check_writes(&self, step: &str) {
        let want: BTreeSet<i64> = self.acked.iter().copied().collect();
        if want.is_empty() {
            return;
        }
        for i in 0..self.c.nodes.len() {
            if self.c.nodes[i].daemon.is_none() {
                continue;
            }
            let port = self.c.nodes[i].pg_port;
            let settle = Instant::now() + Duration::from_secs(60);
            let missing = eventually(LONG, &format!("{step}: table t readable"), || {
                let have: BTreeSet<i64> = psql(port, "SELECT id FROM t")
                    .ok()?
                    .lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect();
                let missing: Vec<i64> = want.difference(&have).copied().collect();
                // A replica may still be replaying: retry while something is missing, and
                // report what is missing when it stays so.
                (missing.is_empty() || Instant::now() > settle).then_some(missing)
            });
            assert!(
                missing.is_empty(),
                "{step}: {} acknowledged writes lost on {}: {missing:?}",
                missing.len(),
                self.name(i)
            );
        }
    }

    /// Run `f` with a writer going through HAProxy's primary port; returns the longest
    /// pause between two acknowledged writes.
    pub fn with_writer(&mut self, f: impl FnOnce(&mut MixedCluster)) -> Duration {
        let writer = Writer::start(self.c.ha_primary_port, self.next_id);
        // Let it get going so the pause measures the operation, not the start.
        std::thread::sleep(Duration::from_secs(1));
        f(self);
        std::thread::sleep(Duration::from_secs(2));
        let acks = writer.finish();
        assert!(!acks.is_empty(), "the writer got no acknowledgement at all");
        self.next_id = acks.last().unwrap().0 + 1_000;
        self.acked.extend(acks.iter().map(|a| a.0));
        longest_gap(&acks)
    }

    /// POST /switchover to the current leader, naming `to` as candidate; waits until `to`
    /// leads and everyone streams.
    pub fn switchover(&mut self, to: usize, step: &str) {
        let from = self.c.wait_primary(LONG);
        let body = json!({"leader": self.name(from), "candidate": self.name(to)});
        let (code, text) = http(
            "POST",
            self.c.nodes[from].api_port,
            "/switchover",
            Some(&body),
        );
        assert_eq!(code, 200, "{step}: switchover refused: {text}");
        eventually(LONG, &format!("{step}: {} to lead", self.name(to)), || {
            (self.c.primary() == Some(to)).then_some(())
        });
    }

    /// Upstream patronictl's `list -f json` rows, keyed by member name.
    pub fn list_rows(&self) -> std::collections::BTreeMap<String, Value> {
        let run = theirs(&self.ctl, &["list", "-f", "json"], "");
        let rows = run.ok().json();
        rows.as_array()
            .unwrap()
            .iter()
            .map(|r| (r["Member"].as_str().unwrap_or("").to_string(), r.clone()))
            .collect()
    }

    /// The value of `/service/<scope>/<key>` in etcd as JSON (Null when absent).
    pub fn dcs_get(&self, key: &str) -> Value {
        let out = std::process::Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args([
                "--endpoints",
                &self.c.etcd.endpoint(),
                "get",
                "--print-value-only",
            ])
            .arg(format!("/service/{}/{key}", self.c.scope))
            .output()
            .expect("etcdctl");
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    /// What `/patroni` of node i says (for diagnostics in assertions).
    pub fn status(&self, i: usize) -> Value {
        self.c.patroni(i).unwrap_or(Value::Null)
    }
}
