//! A thin client for the few Kubernetes core/v1 REST calls Patroni makes (list, get,
//! create, merge-patch, delete and watch of ConfigMaps/Endpoints/Pods in one namespace).
//!
//! Why not the `kube` crate: it pulls in k8s-openapi (a very large generated crate) and
//! its own TLS stack; the handful of documented paths below is all the backend needs.

use crate::dcs::DcsError;
use reqwest::{Method, StatusCode, Url};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;
use tokio::time::Instant;

const RETRY_PAUSE: Duration = Duration::from_millis(100);
const SERVICE_TOKEN_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// How to reach the API server.
#[derive(Debug, Clone)]
pub struct ApiServer {
    pub base: Url,
    pub token: Option<String>,
}

impl ApiServer {
    /// In a pod: `KUBERNETES_SERVICE_HOST`/`_PORT` and the service account token; otherwise
    /// the kubeconfig (`$KUBECONFIG` or `~/.kube/config`), `context` or its current context.
    pub fn discover(context: Option<&str>) -> Result<ApiServer, DcsError> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        if let (Some(host), Some(port)) = (
            env("KUBERNETES_SERVICE_HOST"),
            env("KUBERNETES_SERVICE_PORT"),
        ) {
            let token = std::fs::read_to_string(SERVICE_TOKEN_FILE).ok();
            let host = if host.contains(':') {
                format!("[{host}]")
            } else {
                host
            };
            return Self::from_parts(&format!("https://{host}:{port}"), token);
        }
        let path = env("KUBECONFIG").unwrap_or_else(|| {
            format!(
                "{}/.kube/config",
                env("HOME").unwrap_or_else(|| "/root".into())
            )
        });
        Self::from_kubeconfig(Path::new(&path), context)
    }

    pub fn from_parts(server: &str, token: Option<String>) -> Result<ApiServer, DcsError> {
        let base = Url::parse(server.trim_end_matches('/')).map_err(|e| {
            DcsError::Rejected(format!("kubernetes: bad API server URL {server:?}: {e}"))
        })?;
        if base.scheme() == "https" {
            return Err(DcsError::Rejected(format!(
                "kubernetes: the API server {server} needs TLS, which this build does not include; \
                 reach it through `kubectl proxy` (http://127.0.0.1:8001) in a kubeconfig instead"
            )));
        }
        Ok(ApiServer {
            base,
            token: token
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty()),
        })
    }

    fn from_kubeconfig(path: &Path, context: Option<&str>) -> Result<ApiServer, DcsError> {
        let bad = |m: String| {
            DcsError::Rejected(format!("kubernetes: kubeconfig {}: {m}", path.display()))
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let doc: Value = serde_yaml_ng::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let ctx_name = context
            .map(str::to_string)
            .or_else(|| doc["current-context"].as_str().map(str::to_string))
            .ok_or_else(|| bad("no context given and no current-context".into()))?;
        let by_name = |section: &str, name: &str| -> Option<Value> {
            doc[section]
                .as_array()?
                .iter()
                .find(|c| c["name"].as_str() == Some(name))
                .map(|c| c[section.trim_end_matches('s')].clone())
        };
        let ctx = by_name("contexts", &ctx_name)
            .ok_or_else(|| bad(format!("no context {ctx_name:?}")))?;
        let cluster_name = ctx["cluster"].as_str().unwrap_or_default();
        let cluster = by_name("clusters", cluster_name)
            .ok_or_else(|| bad(format!("no cluster {cluster_name:?}")))?;
        let server = cluster["server"]
            .as_str()
            .ok_or_else(|| bad(format!("cluster {cluster_name:?} has no server")))?;
        let user = ctx["user"]
            .as_str()
            .and_then(|u| by_name("users", u))
            .unwrap_or(Value::Null);
        let token = user["token"].as_str().map(str::to_string);
        Self::from_parts(server, token)
    }
}

/// What went wrong with one request, once retries are spent.
#[derive(Debug)]
pub enum ApiError {
    /// 409: the object exists already, or its resourceVersion moved on.
    Conflict,
    NotFound,
    Dcs(DcsError),
}

impl From<ApiError> for DcsError {
    fn from(e: ApiError) -> DcsError {
        match e {
            ApiError::Conflict => DcsError::Rejected("kubernetes: conflicting update".into()),
            ApiError::NotFound => DcsError::Rejected("kubernetes: object not found".into()),
            ApiError::Dcs(e) => e,
        }
    }
}

pub struct Api {
    client: reqwest::Client,
    server: ApiServer,
    /// Status codes retried besides connection failures (500, 503, 504 + configured).
    retriable: Vec<u16>,
}

impl Api {
    pub fn new(server: ApiServer, extra_retriable: &[u16]) -> Result<Api, DcsError> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| DcsError::Rejected(format!("kubernetes: HTTP client: {e}")))?;
        let mut retriable = vec![500, 503, 504];
        retriable.extend_from_slice(extra_retriable);
        Ok(Api {
            client,
            server,
            retriable,
        })
    }

    /// `/api/v1/namespaces/<ns>/<kind>[/<name>]`
    pub fn url(&self, ns: &str, kind: &str, name: Option<&str>, query: &[(&str, String)]) -> Url {
        let mut url = self.server.base.clone();
        if let Ok(mut segs) = url.path_segments_mut() {
            segs.pop_if_empty()
                .extend(["api", "v1", "namespaces", ns, kind]);
            if let Some(n) = name {
                segs.push(n);
            }
        }
        if !query.is_empty() {
            let mut q = url.query_pairs_mut();
            for (k, v) in query {
                q.append_pair(k, v);
            }
        }
        url
    }

    fn request(&self, method: Method, url: Url) -> reqwest::RequestBuilder {
        let mut rb = self.client.request(method, url);
        if let Some(t) = &self.server.token {
            rb = rb.bearer_auth(t);
        }
        rb
    }

    /// One call, retried on connection failures and retriable codes until `deadline`.
    /// `body` is sent as a JSON merge patch for PATCH and as JSON otherwise.
    pub async fn call(
        &self,
        what: &str,
        method: Method,
        url: Url,
        body: Option<&Value>,
        deadline: Instant,
    ) -> Result<Value, ApiError> {
        let mut last = None;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            let mut rb = self.request(method.clone(), url.clone()).timeout(remaining);
            if let Some(b) = body {
                let ct = if method == Method::PATCH {
                    "application/merge-patch+json"
                } else {
                    "application/json"
                };
                rb = rb.header("Content-Type", ct).body(b.to_string());
            }
            match rb.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let text = resp.text().await.unwrap_or_default();
                    match self.classify(status, &text) {
                        Some(r) => return r,
                        None => last = Some(format!("HTTP {status}: {}", short(&text))),
                    }
                }
                Err(e) => last = Some(describe(&e)),
            }
            tracing::debug!("kubernetes {what} failed, retrying: {last:?}");
            tokio::time::sleep(RETRY_PAUSE.min(deadline.saturating_duration_since(Instant::now())))
                .await;
        }
        Err(ApiError::Dcs(match last {
            Some(m) => {
                DcsError::Unreachable(format!("kubernetes {what} ({}): {m}", self.server.base))
            }
            None => DcsError::Timeout(Duration::ZERO),
        }))
    }

    /// `None`: worth another attempt.
    fn classify(&self, status: StatusCode, text: &str) -> Option<Result<Value, ApiError>> {
        let code = status.as_u16();
        if status.is_success() {
            return Some(Ok(serde_json::from_str(text).unwrap_or(Value::Null)));
        }
        if self.retriable.contains(&code) {
            return None;
        }
        Some(Err(match code {
            404 => ApiError::NotFound,
            409 => ApiError::Conflict,
            401 | 403 => ApiError::Dcs(DcsError::Rejected(format!(
                "kubernetes: permission denied (HTTP {code}): check the service account's RBAC rules: {}",
                short(text)
            ))),
            _ => ApiError::Dcs(DcsError::Rejected(format!(
                "kubernetes: HTTP {code}: {}",
                short(text)
            ))),
        }))
    }

    /// Open a watch stream; the caller reads it with `chunk()`.
    pub async fn watch(&self, url: Url, timeout: Duration) -> Result<reqwest::Response, DcsError> {
        let resp = self
            .request(Method::GET, url)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| DcsError::Unreachable(format!("kubernetes watch: {}", describe(&e))))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            return Err(DcsError::Unreachable(format!(
                "kubernetes watch: HTTP {status}: {}",
                short(&text)
            )));
        }
        Ok(resp)
    }
}

fn short(text: &str) -> String {
    let v: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    v["message"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| text.chars().take(200).collect())
}

fn describe(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s = format!("{s}: {inner}");
        src = inner.source();
    }
    s
}
