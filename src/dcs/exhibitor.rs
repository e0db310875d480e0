//! Exhibitor: a ZooKeeper ensemble whose member list is published by Exhibitor's REST
//! API (`GET http://<exhibitor>:<port>/exhibitor/v1/cluster/list` ->
//! `{"servers": ["zk1", ...], "port": 2181}`). The store itself is the ZooKeeper backend;
//! this module only keeps its connect string up to date, every `poll_interval` seconds,
//! checked before each cluster read (as upstream does).

use super::zookeeper::{HostsSource, ZooKeeperDcs};
use super::{DcsError, DcsResult};
use crate::config::ExhibitorConfig;
use async_trait::async_trait;
use serde::Deserialize;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Exhibitor's cluster list endpoint.
pub const CLUSTER_LIST_PATH: &str = "/exhibitor/v1/cluster/list";
/// Upstream's per-request timeout for Exhibitor queries.
const QUERY_TIMEOUT: Duration = Duration::from_millis(3100);
/// After a failed poll, try again no sooner than this (or `poll_interval` if shorter).
const FAILED_POLL_BACKOFF: Duration = Duration::from_secs(30);
/// Pause between attempts while waiting for the first answer at start-up.
const STARTUP_RETRY: Duration = Duration::from_secs(5);

/// Exhibitor's answer: the ZooKeeper servers and their client port.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ClusterList {
    pub servers: Vec<String>,
    pub port: u16,
}

impl ClusterList {
    /// `host:port,...` sorted, as upstream builds the connect string.
    pub fn connect_string(&self) -> String {
        let mut servers = self.servers.clone();
        servers.sort();
        servers
            .iter()
            .map(|s| format!("{s}:{}", self.port))
            .collect::<Vec<_>>()
            .join(",")
    }
}

struct ProviderState {
    /// Exhibitors to ask first: the last answer's servers (Exhibitor runs beside each).
    exhibitors: Vec<String>,
    zookeeper_hosts: String,
    next_poll: Option<Instant>,
}

/// Polls Exhibitor for the ZooKeeper ensemble.
pub struct ExhibitorProvider {
    http: reqwest::Client,
    port: u16,
    poll_interval: Duration,
    /// The configured hosts, asked when none of the last known ones answers.
    seeds: Vec<String>,
    state: Mutex<ProviderState>,
}

impl ExhibitorProvider {
    pub fn new(cfg: &ExhibitorConfig) -> DcsResult<ExhibitorProvider> {
        let seeds = cfg.host_list();
        if seeds.is_empty() {
            return Err(DcsError::Rejected(
                "no Exhibitor host configured (exhibitor.hosts)".into(),
            ));
        }
        let port = cfg
            .port
            .ok_or_else(|| DcsError::Rejected("exhibitor.port is not set".into()))?;
        let http = reqwest::Client::builder()
            .timeout(QUERY_TIMEOUT)
            .build()
            .map_err(|e| DcsError::Rejected(format!("HTTP client: {e}")))?;
        Ok(ExhibitorProvider {
            http,
            port,
            poll_interval: Duration::from_secs(cfg.poll_interval().max(1)),
            state: Mutex::new(ProviderState {
                exhibitors: seeds.clone(),
                zookeeper_hosts: String::new(),
                next_poll: None,
            }),
            seeds,
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ProviderState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The connect string from the last successful poll (empty before the first).
    pub fn zookeeper_hosts(&self) -> String {
        self.state().zookeeper_hosts.clone()
    }

    /// Ask Exhibitor if a poll is due; `Some(connect string)` when it changed.
    pub async fn poll(&self) -> Option<String> {
        let known = {
            let st = self.state();
            if st.next_poll.is_some_and(|t| t > Instant::now()) {
                return None;
            }
            st.exhibitors.clone()
        };
        let answer = match self.query(&known).await {
            Some(a) => Some(a),
            None => self.query(&self.seeds).await,
        };
        let mut st = self.state();
        let Some(list) = answer else {
            st.next_poll = Some(Instant::now() + self.poll_interval.min(FAILED_POLL_BACKOFF));
            return None;
        };
        st.next_poll = Some(Instant::now() + self.poll_interval);
        let hosts = list.connect_string();
        if hosts == st.zookeeper_hosts {
            return None;
        }
        tracing::info!(
            "ZooKeeper connection string has changed: {:?} => {hosts:?}",
            st.zookeeper_hosts
        );
        st.zookeeper_hosts = hosts.clone();
        st.exhibitors = list.servers;
        Some(hosts)
    }

    /// The first usable answer from `hosts`, tried in order.
    async fn query(&self, hosts: &[String]) -> Option<ClusterList> {
        for host in hosts {
            let url = format!("http://{host}:{}{CLUSTER_LIST_PATH}", self.port);
            let answer = async {
                let resp = self.http.get(&url).send().await.ok()?;
                resp.json::<ClusterList>().await.ok()
            };
            match answer.await {
                Some(list) if !list.servers.is_empty() => return Some(list),
                _ => tracing::debug!("Exhibitor {url} gave no usable cluster list"),
            }
        }
        None
    }
}

#[async_trait]
impl HostsSource for ExhibitorProvider {
    async fn refresh(&self) -> Option<String> {
        self.poll().await
    }
}

/// A ZooKeeper handle whose ensemble comes from Exhibitor. Like upstream, waits until
/// Exhibitor answers once (logging while it waits).
pub async fn connect(
    cfg: &ExhibitorConfig,
    namespace: &str,
    scope: &str,
    name: &str,
    ttl: Duration,
    retry_timeout: Duration,
) -> DcsResult<ZooKeeperDcs> {
    let provider = Arc::new(ExhibitorProvider::new(cfg)?);
    let hosts = loop {
        if let Some(h) = provider.poll().await {
            break h;
        }
        tracing::info!(
            "waiting on Exhibitor {:?} for the ZooKeeper ensemble",
            provider.seeds
        );
        provider.state().next_poll = None;
        tokio::time::sleep(STARTUP_RETRY).await;
    };
    let source: Arc<dyn HostsSource> = provider;
    Ok(ZooKeeperDcs::with_hosts(
        hosts,
        Some(source),
        namespace,
        scope,
        name,
        ttl,
        retry_timeout,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_string_is_sorted_with_port() {
        let l: ClusterList =
            serde_json::from_str(r#"{"servers":["zk2","zk1"],"port":2181}"#).unwrap();
        assert_eq!(l.connect_string(), "zk1:2181,zk2:2181");
    }
}
