//! What every command needs: the configuration (file, `PATRONI_*` overlay, `-d`), a DCS
//! handle per cluster, and an HTTP client for members' REST APIs with the `ctl:` settings.

use super::cli::{Cli, Group};
use super::{CtlError, CtlResult, msg};
use crate::config::{Config, Etcd3Config};
use crate::dcs::etcd3::Etcd3Dcs;
use crate::dcs::{Cluster, Member};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Upstream's default `retry_timeout` bounds one DCS read.
const DEFAULT_RETRY_TIMEOUT: u64 = 10;

pub struct Ctl {
    pub config: Config,
    etcd3: Option<Etcd3Config>,
    namespace: String,
    retry_timeout: Duration,
    http: reqwest::Client,
    auth: Option<(String, String)>,
}

/// `~/.config/patroni/patronictl.yaml`, as click's `get_app_dir('patroni')` on Linux.
pub fn default_config_path() -> PathBuf {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from(".config"));
    base.join("patroni").join("patronictl.yaml")
}

fn load_config(explicit: Option<&Path>) -> CtlResult<Config> {
    let env = crate::config::load::process_env();
    let path = explicit
        .map(Path::to_path_buf)
        .unwrap_or_else(default_config_path);
    let readable = std::fs::File::open(&path).is_ok();
    if !readable && explicit.is_some() {
        return Err(msg(format!(
            "Provided config file {} not existing or no read rights. Check the -c/--config-file parameter",
            path.display()
        )));
    }
    let file = readable.then_some(path.as_path());
    // Like upstream (validator=None) a config with odd values is still usable by the ctl.
    match crate::config::load::load_lenient(file, &env) {
        Ok((loaded, _issues)) => Ok(loaded.config),
        Err(crate::config::ConfigError::Missing) => Ok(Config {
            namespace: "/service/".into(),
            ..Config::default()
        }),
        Err(e) => Err(msg(e.to_string())),
    }
}

/// `-d` URL: `[scheme://][host][:port][/namespace]`; only etcd3 is served by this build.
pub fn parse_dcs_url(url: &str) -> CtlResult<(Etcd3Config, Option<String>)> {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (s, r),
        None => ("", url.trim_start_matches("//")),
    };
    match scheme {
        "" | "etcd3" => {}
        "etcd" | "consul" | "zookeeper" | "exhibitor" => {
            return Err(msg(format!(
                "DCS {scheme} is not supported by this patronictl; use etcd3://HOST:PORT"
            )));
        }
        other => return Err(msg(format!("Unknown dcs scheme: {other}"))),
    }
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>()
                .map_err(|_| msg(format!("Invalid port in DCS url: {url}")))?,
        ),
        None => (hostport, 2379),
    };
    let host = if host.is_empty() { "localhost" } else { host };
    let cfg = Etcd3Config {
        host: Some(format!("{host}:{port}")),
        ..Default::default()
    };
    let ns = (!path.trim().is_empty() && path.trim() != "/").then(|| path.trim().to_string());
    Ok((cfg, ns))
}

impl Ctl {
    pub fn from_cli(cli: &Cli) -> CtlResult<Ctl> {
        let mut config = load_config(cli.config_file.as_deref())?;
        let mut etcd3 = config.etcd3.clone();
        if let Some(url) = &cli.dcs_url {
            let (cfg, ns) = parse_dcs_url(url)?;
            etcd3 = Some(cfg);
            if let Some(ns) = ns {
                config.namespace = ns;
            }
        }
        let insecure = cli.insecure || ctl_value(&config, "insecure").is_some_and(truthy);
        let retry_timeout = config
            .extra
            .get("retry_timeout")
            .and_then(Value::as_u64)
            .unwrap_or(DEFAULT_RETRY_TIMEOUT);
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(300))
            .user_agent(format!("Patroni/{}", crate::PATRONI_VERSION))
            .build()
            .map_err(|e| msg(format!("cannot build the HTTP client: {e}")))?;
        // No TLS in this build: `insecure` only matters for https, which we refuse clearly.
        let _ = insecure;
        Ok(Ctl {
            auth: basic_auth(&config),
            namespace: config.namespace.clone(),
            etcd3,
            retry_timeout: Duration::from_secs(retry_timeout.max(1)),
            http,
            config,
        })
    }

    /// The cluster name argument, or `scope` from the configuration.
    pub fn scope(&self, arg: Option<&str>) -> CtlResult<String> {
        arg.map(str::to_string)
            .or_else(|| (!self.config.scope.is_empty()).then(|| self.config.scope.clone()))
            .ok_or_else(|| {
                msg("No cluster name given and no scope in the configuration file; pass CLUSTER_NAME")
            })
    }

    pub async fn dcs(&self, scope: &str, group: &Group) -> CtlResult<Etcd3Dcs> {
        if group.group.is_some() {
            return Err(msg(
                "Citus groups (--group) are not supported by this patronictl",
            ));
        }
        let cfg = match (&self.etcd3, &self.config.etcd) {
            (Some(c), _) => c,
            (None, Some(_)) => {
                return Err(msg(
                    "The configuration uses the etcd v2 API (etcd:), which this patronictl does not support; use an etcd3: section or -d etcd3://HOST:PORT",
                ));
            }
            (None, None) => {
                return Err(msg(
                    "No DCS configured: add an etcd3: section to the configuration file or pass -d etcd3://HOST:PORT",
                ));
            }
        };
        let t = self.retry_timeout;
        Ok(Etcd3Dcs::connect(
            cfg,
            &self.namespace,
            scope,
            scope,
            Duration::from_secs(30),
            t,
        )
        .await?)
    }

    /// Read the cluster once (linearizable).
    pub async fn cluster(&self, scope: &str, group: &Group) -> CtlResult<(Etcd3Dcs, Cluster)> {
        use crate::dcs::Dcs;
        let dcs = self.dcs(scope, group).await?;
        let cluster = dcs.get_cluster().await?;
        Ok((dcs, cluster))
    }

    /// Like `cluster`, but a cluster with no keys at all is an error.
    pub async fn existing_cluster(
        &self,
        scope: &str,
        group: &Group,
    ) -> CtlResult<(Etcd3Dcs, Cluster)> {
        let (dcs, cluster) = self.cluster(scope, group).await?;
        if is_empty(&cluster) {
            return Err(msg(format!(
                "Cluster {scope} not found in the DCS (no keys under {}{scope}/)",
                crate::dcs::keys::cluster_prefix(&self.namespace, "")
            )));
        }
        Ok((dcs, cluster))
    }

    /// One request to a member's REST API: (status, body). Transport failures are errors.
    pub async fn request(
        &self,
        member: &Member,
        method: reqwest::Method,
        endpoint: Option<&str>,
        body: Option<&Value>,
    ) -> CtlResult<(u16, String)> {
        let url = endpoint_url(member, endpoint);
        let unreachable = |why: String| CtlError::Unreachable {
            member: member.name.clone(),
            url: url.clone(),
            why,
        };
        if url.is_empty() {
            return Err(unreachable("the member has no api_url".into()));
        }
        if url.starts_with("https://") {
            return Err(unreachable(
                "https is not supported by this build of patronictl".into(),
            ));
        }
        let mut req = self.http.request(method, &url);
        if let Some((u, p)) = &self.auth {
            req = req.basic_auth(u, Some(p));
        }
        if let Some(b) = body {
            req = req
                .header("Content-Type", "application/json")
                .body(b.to_string());
        }
        let resp = req.send().await.map_err(|e| unreachable(error_chain(&e)))?;
        let status = resp.status().as_u16();
        let text = resp
            .text()
            .await
            .map_err(|e| unreachable(error_chain(&e)))?;
        Ok((status, text))
    }
}

fn is_empty(c: &Cluster) -> bool {
    c.initialize.is_none()
        && c.config.is_none()
        && c.leader.is_none()
        && c.members.is_empty()
        && c.history.is_none()
}

/// `api_url` with the path replaced by `endpoint` (upstream's `get_endpoint_url`).
pub fn endpoint_url(member: &Member, endpoint: Option<&str>) -> String {
    let Some(api) = member.data.api_url.as_deref() else {
        return String::new();
    };
    match (endpoint, member.api_base()) {
        (Some(ep), Some(base)) => format!("{base}/{}", ep.trim_start_matches('/')),
        _ => api.to_string(),
    }
}

/// reqwest's top-level message hides the cause ("error sending request"); add the chain.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let s_text = s.to_string();
        if !out.contains(&s_text) {
            out.push_str(": ");
            out.push_str(&s_text);
        }
        src = s.source();
    }
    out
}

fn ctl_value<'a>(config: &'a Config, key: &str) -> Option<&'a Value> {
    config.ctl.get(key)
}

fn truthy(v: &Value) -> bool {
    crate::dcs::tag_is_true(Some(v))
}

/// `ctl.auth` / `ctl.authentication`, else `restapi.auth` / `restapi.authentication`.
fn basic_auth(config: &Config) -> Option<(String, String)> {
    let split = |s: &str| {
        let (u, p) = s.split_once(':').unwrap_or((s, ""));
        (u.to_string(), p.to_string())
    };
    if let Some(a) = ctl_value(config, "auth").and_then(Value::as_str) {
        return Some(split(a));
    }
    if let Some(Value::Object(a)) = ctl_value(config, "authentication") {
        let user = a.get("username").and_then(Value::as_str)?;
        let pass = a.get("password").and_then(Value::as_str).unwrap_or("");
        return Some((user.to_string(), pass.to_string()));
    }
    if let Some(a) = config.restapi.extra.get("auth").and_then(Value::as_str) {
        return Some(split(a));
    }
    config
        .restapi
        .authentication
        .as_ref()
        .map(|c| (c.username.clone(), c.password.clone().unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dcs_urls() {
        let (c, ns) = parse_dcs_url("etcd3://10.0.0.1:2399/custom").unwrap();
        assert_eq!(c.host.as_deref(), Some("10.0.0.1:2399"));
        assert_eq!(ns.as_deref(), Some("/custom"));
        let (c, ns) = parse_dcs_url("127.0.0.1").unwrap();
        assert_eq!(c.host.as_deref(), Some("127.0.0.1:2379"));
        assert_eq!(ns, None);
        let (c, _) = parse_dcs_url("etcd3://:2400").unwrap();
        assert_eq!(c.host.as_deref(), Some("localhost:2400"));
        assert!(
            parse_dcs_url("foo://x")
                .unwrap_err()
                .to_string()
                .contains("Unknown dcs scheme: foo")
        );
        assert!(parse_dcs_url("consul://x").is_err());
    }
}
