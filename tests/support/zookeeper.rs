//! A real ZooKeeper (Debian's `zookeeper` package, run standalone with the JRE) on a free
//! loopback port in a temp dir, killed by PID on drop.
use super::{ChildGuard, TestDir, free_port, wait_port};
use std::process::Command;
use std::time::Duration;

const ZOOKEEPER_JAR: &str = "/usr/share/java/zookeeper.jar";

pub struct ZooKeeper {
    pub client_port: u16,
    pub dir: TestDir,
    pub guard: Option<ChildGuard>,
}

impl ZooKeeper {
    pub fn start() -> ZooKeeper {
        assert!(
            std::path::Path::new(ZOOKEEPER_JAR).exists(),
            "{ZOOKEEPER_JAR} missing: run scripts/install-deps.sh (Debian package zookeeper)"
        );
        let dir = TestDir::new("zookeeper-");
        let client_port = free_port();
        // A short tick lets sessions be as short as 1 s (min = 2 ticks), like small TTLs.
        let cfg = format!(
            "tickTime=500\ndataDir={}\nclientPort={client_port}\nclientPortAddress=127.0.0.1\n\
             minSessionTimeout=1000\nmaxSessionTimeout=120000\nadmin.enableServer=false\n\
             4lw.commands.whitelist=ruok\n",
            dir.join("data").display()
        );
        std::fs::write(dir.join("zoo.cfg"), cfg).unwrap();
        let mut z = ZooKeeper {
            client_port,
            dir,
            guard: None,
        };
        z.restart();
        z
    }

    pub fn hosts(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// (Re)start the server on the same port and data dir.
    pub fn restart(&mut self) {
        let mut cmd = Command::new("java");
        cmd.arg("-Xmx256m")
            .arg("-cp")
            .arg(ZOOKEEPER_JAR)
            .arg("org.apache.zookeeper.server.ZooKeeperServerMain")
            .arg(self.dir.join("zoo.cfg"));
        let log = self.dir.join("zookeeper.log");
        self.guard = Some(ChildGuard::spawn("zookeeper", cmd, false, &log));
        wait_port(self.client_port, Duration::from_secs(60));
    }

    pub fn stop(&mut self) {
        if let Some(mut g) = self.guard.take() {
            g.kill9();
        }
    }

    /// A `zookeeper:` configuration section pointing at this server.
    pub fn config(&self) -> patroni::config::ZooKeeperConfig {
        patroni::config::ZooKeeperConfig {
            hosts: Some(serde_json::json!([self.hosts()])),
            ..Default::default()
        }
    }
}
