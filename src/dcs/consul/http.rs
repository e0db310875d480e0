//! The few Consul HTTP API calls we make, with upstream's retry rules: connection
//! failures and plain 500s are retried until the operation's deadline; "invalid session"
//! and "Invalid Session TTL" are answers, not outages.

use crate::dcs::DcsError;
use reqwest::{Method, Url};
use std::time::Duration;
use tokio::time::Instant;

/// Pause between attempts after a failed request.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// One answer from Consul.
#[derive(Debug)]
pub(super) struct Resp {
    pub status: u16,
    /// `X-Consul-Index`: the raft index the answer reflects (blocking queries wait on it).
    pub index: Option<i64>,
    pub body: String,
}

impl Resp {
    /// KV writes answer the JSON literal `true` or `false`.
    pub fn is_true(&self) -> bool {
        self.status == 200 && self.body.trim() == "true"
    }
}

#[derive(Debug)]
pub(super) enum OpError {
    /// The session we named does not exist (any more).
    InvalidSession,
    /// The session TTL is outside the agent's allowed range.
    InvalidSessionTtl(String),
    Dcs(DcsError),
}

impl From<OpError> for DcsError {
    fn from(e: OpError) -> DcsError {
        match e {
            OpError::InvalidSession => DcsError::Rejected("Consul session is invalid".into()),
            OpError::InvalidSessionTtl(m) => DcsError::Rejected(format!(
                "Consul refused the session TTL (the agent's session_ttl_min/max): {m}"
            )),
            OpError::Dcs(e) => e,
        }
    }
}

/// What one attempt found out.
enum Attempt {
    Answer(Resp),
    Retry(String),
    Fail(OpError),
}

/// One request, as handed to `Http::call`.
pub(super) struct Req<'a> {
    pub method: Method,
    /// Path segments after the base URL, e.g. `["v1", "kv", "service", "batman", ""]`.
    pub path: Vec<&'a str>,
    pub query: Vec<(&'a str, String)>,
    pub body: Option<String>,
    /// Overrides the per-attempt timeout (blocking queries wait longer than a normal read).
    pub timeout: Option<Duration>,
}

impl<'a> Req<'a> {
    pub fn new(method: Method, path: Vec<&'a str>) -> Req<'a> {
        Req {
            method,
            path,
            query: Vec::new(),
            body: None,
            timeout: None,
        }
    }
    pub fn query(mut self, k: &'a str, v: impl Into<String>) -> Req<'a> {
        self.query.push((k, v.into()));
        self
    }
    pub fn body(mut self, body: String) -> Req<'a> {
        self.body = Some(body);
        self
    }
}

pub(super) struct Http {
    client: reqwest::Client,
    base: Url,
    token: Option<String>,
    dc: Option<String>,
}

impl Http {
    pub fn new(
        client: reqwest::Client,
        base: Url,
        token: Option<String>,
        dc: Option<String>,
    ) -> Http {
        Http {
            client,
            base,
            token: token.filter(|t| !t.is_empty()),
            dc: dc.filter(|d| !d.is_empty()),
        }
    }

    fn url(&self, req: &Req<'_>, with_dc: bool) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut segs) = url.path_segments_mut() {
            segs.pop_if_empty().extend(&req.path);
        }
        {
            let mut q = url.query_pairs_mut();
            for (k, v) in &req.query {
                if v.is_empty() {
                    q.append_key_only(k);
                } else {
                    q.append_pair(k, v);
                }
            }
            if with_dc && let Some(dc) = &self.dc {
                q.append_pair("dc", dc);
            }
        }
        if url.query() == Some("") {
            url.set_query(None);
        }
        url
    }

    async fn attempt(&self, req: &Req<'_>, url: Url, timeout: Duration) -> Attempt {
        let mut rb = self
            .client
            .request(req.method.clone(), url)
            .timeout(timeout);
        if let Some(t) = &self.token {
            rb = rb.header("X-Consul-Token", t);
        }
        if let Some(b) = &req.body {
            rb = rb.body(b.clone());
        }
        let resp = match rb.send().await {
            Ok(r) => r,
            Err(e) => return Attempt::Retry(describe(&e)),
        };
        let status = resp.status().as_u16();
        let index = resp
            .headers()
            .get("X-Consul-Index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let body = match resp.text().await {
            Ok(b) => b,
            Err(e) => return Attempt::Retry(describe(&e)),
        };
        classify(Resp {
            status,
            index,
            body,
        })
    }

    /// Run `req` until Consul answers, fails for good, or `deadline` passes.
    /// Agent endpoints (`/v1/agent/...`) take no `dc`.
    pub async fn call(
        &self,
        what: &str,
        req: Req<'_>,
        deadline: Instant,
        per_attempt: Duration,
    ) -> Result<Resp, OpError> {
        let with_dc = req.path.get(1) != Some(&"agent");
        let url = self.url(&req, with_dc);
        let mut last = None;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            let timeout = req.timeout.unwrap_or(per_attempt).min(remaining);
            match self.attempt(&req, url.clone(), timeout).await {
                Attempt::Answer(r) => return Ok(r),
                Attempt::Fail(e) => return Err(e),
                Attempt::Retry(m) => {
                    tracing::debug!("consul {what} failed, retrying: {m}");
                    last = Some(m);
                }
            }
            let pause = RETRY_PAUSE.min(deadline.saturating_duration_since(Instant::now()));
            tokio::time::sleep(pause).await;
        }
        Err(OpError::Dcs(match last {
            Some(m) => DcsError::Unreachable(format!("consul {what} ({}): {m}", self.base)),
            None => DcsError::Timeout(per_attempt),
        }))
    }
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

fn classify(r: Resp) -> Attempt {
    let lower = r.body.to_ascii_lowercase();
    match r.status {
        200..=299 | 404 => Attempt::Answer(r),
        _ if r.body.starts_with("Invalid Session TTL") => {
            Attempt::Fail(OpError::InvalidSessionTtl(r.body))
        }
        _ if lower.starts_with("invalid session") => Attempt::Fail(OpError::InvalidSession),
        403 => Attempt::Fail(OpError::Dcs(DcsError::Rejected(format!(
            "Consul denied access (check consul.token and its ACL policy): {}",
            r.body.trim()
        )))),
        500 | 502..=504 | 429 => Attempt::Retry(format!("HTTP {}: {}", r.status, r.body.trim())),
        s => Attempt::Fail(OpError::Dcs(DcsError::Rejected(format!(
            "Consul answered HTTP {s}: {}",
            r.body.trim()
        )))),
    }
}
