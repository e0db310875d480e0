//! A real etcd on free loopback ports in a temp dir, killed by PID on drop.
use super::{ChildGuard, TestDir, free_port, wait_port};
use std::process::Command;
use std::time::Duration;

pub struct Etcd {
    pub client_port: u16,
    pub peer_port: u16,
    pub dir: TestDir,
    pub guard: Option<ChildGuard>,
}

impl Etcd {
    pub fn start() -> Etcd {
        let dir = TestDir::new("etcd-");
        let client_port = free_port();
        let peer_port = free_port();
        let mut e = Etcd {
            client_port,
            peer_port,
            dir,
            guard: None,
        };
        e.restart();
        e
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// (Re)start the server on the same ports and data dir.
    pub fn restart(&mut self) {
        let mut cmd = Command::new("etcd");
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        cmd.arg("--name")
            .arg("test")
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .arg("--listen-client-urls")
            .arg(&client)
            .arg("--advertise-client-urls")
            .arg(&client)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(format!("test={peer}"))
            .arg("--enable-v2=true");
        let log = self.dir.join("etcd.log");
        self.guard = Some(ChildGuard::spawn("etcd", cmd, false, &log));
        wait_port(self.client_port, Duration::from_secs(20));
    }

    pub fn stop(&mut self) {
        if let Some(mut g) = self.guard.take() {
            g.kill9();
        }
    }
}

impl Etcd {
    /// An `etcd3:` configuration section pointing at this server.
    pub fn etcd3_config(&self) -> patroni::config::Etcd3Config {
        patroni::config::Etcd3Config {
            hosts: Some(serde_json::Value::String(format!(
                "127.0.0.1:{}",
                self.client_port
            ))),
            ..Default::default()
        }
    }
}
