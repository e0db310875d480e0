//! The `consul:` and `kubernetes:` sections, with upstream's keys and defaults.
//!
//! Loosely typed keys (booleans that may be `on`/`yes` strings) stay `Value`s and are read
//! through accessors, so a file upstream accepts also deserializes here.

use super::pg_params::parse_bool;
use super::validate::ConfigIssue;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Consul's default HTTP port.
pub const CONSUL_DEFAULT_PORT: u16 = 8500;

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct ConsulConfig {
    /// `host: h:p` of the local agent (port defaults to 8500).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// `url: http(s)://host:port`, wins over host/port/scheme.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cacert: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dc: Option<String>,
    /// `default`, `consistent` or `stale`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency: Option<String>,
    /// Health check ids the session is bound to (default: none, TTL only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checks: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub register_service: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_tags: Option<Vec<String>>,
    /// Interval of the HTTP check of a registered service (default `5s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_check_interval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_check_tls_server_name: Option<String>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// Where and how to reach the Consul agent, resolved from url / host / port / scheme.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsulEndpoint {
    pub scheme: String,
    pub host: String,
    pub port: u16,
}

impl ConsulEndpoint {
    pub fn base_url(&self) -> String {
        let host = if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!("{}://{host}:{}", self.scheme, self.port)
    }
}

impl ConsulConfig {
    /// As upstream: `url` wins; otherwise `host` (default 127.0.0.1:8500) with `port`
    /// overriding the port in `host`; scheme defaults to http.
    pub fn endpoint(&self) -> Result<ConsulEndpoint, String> {
        if let Some(url) = &self.url {
            let u = reqwest::Url::parse(url)
                .map_err(|e| format!("url {url:?} is not a valid URL: {e}"))?;
            let host = u
                .host_str()
                .ok_or_else(|| format!("url {url:?} has no host"))?;
            return Ok(ConsulEndpoint {
                scheme: u.scheme().to_string(),
                host: host.trim_matches(['[', ']']).to_string(),
                port: u.port().unwrap_or(CONSUL_DEFAULT_PORT),
            });
        }
        let raw = self.host.as_deref().unwrap_or("127.0.0.1:8500").trim();
        let (host, host_port) = split_host_port(raw, CONSUL_DEFAULT_PORT)?;
        let port = match self.port {
            Some(p) => u16::try_from(p)
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("port must be between 1 and 65535, got {p}"))?,
            None => host_port,
        };
        Ok(ConsulEndpoint {
            scheme: self.scheme.clone().unwrap_or_else(|| "http".into()),
            host,
            port,
        })
    }

    pub fn register_service(&self) -> bool {
        self.register_service
            .as_ref()
            .and_then(parse_bool)
            .unwrap_or(false)
    }

    /// `verify` as upstream reads it; `None` when absent or not a boolean.
    pub fn verify(&self) -> Option<bool> {
        self.verify.as_ref().and_then(parse_bool)
    }

    pub fn issues(&self, path: &str) -> Vec<ConfigIssue> {
        let mut out = Vec::new();
        let mut add = |key: &str, message: String| {
            out.push(ConfigIssue {
                path: format!("{path}.{key}"),
                message,
            })
        };
        match self.endpoint() {
            Err(m) => add(if self.url.is_some() { "url" } else { "host" }, m),
            Ok(e) if e.scheme != "http" && e.scheme != "https" => add(
                if self.url.is_some() { "url" } else { "scheme" },
                format!("must be http or https, got {:?}", e.scheme),
            ),
            Ok(_) => {}
        }
        if let Some(c) = &self.consistency
            && !["default", "consistent", "stale"].contains(&c.as_str())
        {
            add(
                "consistency",
                format!("must be default, consistent or stale, got {c:?}"),
            );
        }
        if self.verify.is_some() && self.verify().is_none() {
            add("verify", "must be true or false".into());
        }
        if self.register_service.is_some()
            && self
                .register_service
                .as_ref()
                .and_then(parse_bool)
                .is_none()
        {
            add("register_service", "must be true or false".into());
        }
        out
    }
}

/// `host[:port]` (IPv6 in brackets) with a default port.
fn split_host_port(raw: &str, default_port: u16) -> Result<(String, u16), String> {
    let (host, port) = match raw.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && (!h.contains(':') || h.ends_with(']')) => {
            let port = p
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("must be host:port with a valid port, got {raw:?}"))?;
            (h, port)
        }
        _ => (raw, default_port),
    };
    let host = host.trim_matches(['[', ']']);
    if host.is_empty() {
        return Err(format!("must be host:port, got {raw:?}"));
    }
    Ok((host.to_string(), port))
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct KubernetesConfig {
    /// Kubernetes namespace of the pods and objects (default `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Labels that select this cluster's objects; set on every object we create.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope_label: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_label: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader_label_value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follower_label_value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standby_leader_label_value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmp_role_label: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_endpoints: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_ip: Option<String>,
    /// `[{name, port, protocol}]` of the leader Endpoints (use_endpoints only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bypass_api_service: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cacert: Option<String>,
    /// kubeconfig context when not running in a pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retriable_http_codes: Option<Value>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// One port of the leader Endpoints subset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EndpointPort {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub port: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}

impl KubernetesConfig {
    pub fn namespace(&self) -> String {
        self.namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".into())
    }

    pub fn use_endpoints(&self) -> bool {
        self.use_endpoints
            .as_ref()
            .and_then(parse_bool)
            .unwrap_or(false)
    }

    pub fn bypass_api_service(&self) -> bool {
        self.bypass_api_service
            .as_ref()
            .and_then(parse_bool)
            .unwrap_or(false)
    }

    /// `labels` plus `<scope_label>: <scope>`, as strings.
    pub fn selector_labels(&self, scope: &str) -> BTreeMap<String, String> {
        let mut out: BTreeMap<String, String> = self
            .labels
            .iter()
            .flatten()
            .map(|(k, v)| {
                let v = v.as_str().map_or_else(|| v.to_string(), str::to_string);
                (k.clone(), v)
            })
            .collect();
        let scope_label = self.scope_label.as_deref().unwrap_or("cluster-name");
        out.insert(scope_label.to_string(), scope.to_string());
        out
    }

    /// Ports for the leader Endpoints; default `[{port: 5432}]` as upstream.
    pub fn endpoint_ports(&self) -> Result<Vec<EndpointPort>, String> {
        let Some(ports) = &self.ports else {
            return Ok(vec![EndpointPort {
                name: None,
                port: 5432,
                protocol: None,
            }]);
        };
        ports.iter().map(parse_port).collect()
    }

    /// Status codes to retry on besides 500, 503 and 504.
    pub fn retriable_http_codes(&self) -> Result<Vec<u16>, String> {
        let items: Vec<String> = match &self.retriable_http_codes {
            None => return Ok(Vec::new()),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                .collect(),
            Some(Value::String(s)) => s.split(',').map(|x| x.trim().to_string()).collect(),
            Some(v) => vec![v.to_string()],
        };
        items
            .iter()
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<u16>()
                    .map_err(|_| format!("{s:?} is not an HTTP status code"))
            })
            .collect()
    }

    pub fn issues(&self, path: &str) -> Vec<ConfigIssue> {
        let mut out = Vec::new();
        let mut add = |key: &str, message: String| {
            out.push(ConfigIssue {
                path: format!("{path}.{key}"),
                message,
            })
        };
        if let Err(m) = self.endpoint_ports() {
            add("ports", m);
        }
        if let Err(m) = self.retriable_http_codes() {
            add("retriable_http_codes", m);
        }
        for (key, v) in [
            ("use_endpoints", &self.use_endpoints),
            ("bypass_api_service", &self.bypass_api_service),
        ] {
            if v.is_some() && v.as_ref().and_then(parse_bool).is_none() {
                add(key, "must be true or false".into());
            }
        }
        if self.use_endpoints() && self.pod_ip.is_none() {
            add(
                "pod_ip",
                "is required with use_endpoints: the leader Endpoints must point at this pod"
                    .into(),
            );
        }
        out
    }
}

fn parse_port(v: &Value) -> Result<EndpointPort, String> {
    let Value::Object(m) = v else {
        return Err(format!(
            "each port must be a mapping like {{name: postgresql, port: 5432}}, got {v}"
        ));
    };
    let port = match m.get("port") {
        None => 5432,
        Some(p) => p
            .as_u64()
            .or_else(|| p.as_str().and_then(|s| s.parse().ok()))
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("port must be between 1 and 65535, got {p}"))?,
    };
    let text = |k: &str| {
        m.get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    Ok(EndpointPort {
        name: text("name"),
        port,
        protocol: text("protocol"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn consul(v: Value) -> ConsulConfig {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn consul_endpoint_resolution() {
        let e = consul(json!({})).endpoint().unwrap();
        assert_eq!(e.base_url(), "http://127.0.0.1:8500");
        let e = consul(json!({"host": "c1:9500"})).endpoint().unwrap();
        assert_eq!(e.base_url(), "http://c1:9500");
        let e = consul(json!({"host": "c1", "port": 7000, "scheme": "https"}))
            .endpoint()
            .unwrap();
        assert_eq!(e.base_url(), "https://c1:7000");
        let e = consul(json!({"host": "c1:1", "url": "https://c2:8501"}))
            .endpoint()
            .unwrap();
        assert_eq!(e.base_url(), "https://c2:8501");
        let e = consul(json!({"url": "http://c3"})).endpoint().unwrap();
        assert_eq!(e.port, 8500);
    }

    #[test]
    fn consul_issues_name_the_key() {
        let c = consul(json!({"host": "h:0", "consistency": "strong", "verify": "maybe"}));
        let paths: Vec<String> = c.issues("consul").into_iter().map(|i| i.path).collect();
        assert_eq!(
            paths,
            ["consul.host", "consul.consistency", "consul.verify"]
        );
        assert!(
            consul(json!({"url": "ftp://x:1"})).issues("consul")[0]
                .message
                .contains("http or https")
        );
        assert!(
            consul(json!({"host": "h:8500", "verify": "off"}))
                .issues("consul")
                .is_empty()
        );
    }

    #[test]
    fn kubernetes_defaults_and_labels() {
        let k: KubernetesConfig =
            serde_json::from_value(json!({"labels": {"application": "patroni"}})).unwrap();
        assert_eq!(k.namespace(), "default");
        assert!(!k.use_endpoints());
        let l = k.selector_labels("batman");
        assert_eq!(l.get("cluster-name").map(String::as_str), Some("batman"));
        assert_eq!(l.get("application").map(String::as_str), Some("patroni"));
        assert_eq!(k.endpoint_ports().unwrap()[0].port, 5432);
        let k: KubernetesConfig = serde_json::from_value(json!({
            "use_endpoints": "true", "ports": [{"name": "postgresql", "port": "5433"}],
            "retriable_http_codes": "401, 429"
        }))
        .unwrap();
        assert!(k.use_endpoints());
        assert_eq!(
            k.endpoint_ports().unwrap()[0].name.as_deref(),
            Some("postgresql")
        );
        assert_eq!(k.retriable_http_codes().unwrap(), vec![401, 429]);
        let paths: Vec<String> = k.issues("kubernetes").into_iter().map(|i| i.path).collect();
        assert_eq!(paths, ["kubernetes.pod_ip"]);
    }
}
