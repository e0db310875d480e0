//! Who may call the unsafe endpoints (POST/PUT/PATCH/DELETE), checked in upstream's order:
//! `restapi.allowlist` (+ members' REST addresses) -> 403, a client certificate when
//! `verify_client` asks for one -> 403, `restapi.authentication` Basic auth -> 401.
//! Safe methods (health checks, status) stay open, as upstream.

use super::Ctx;
use super::error::ApiError;
use crate::config::{Config, RestApiConfig};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use std::net::{IpAddr, SocketAddr};

/// What the listener knows about a connection: the client address and whether it
/// presented a certificate the TLS layer verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientInfo {
    pub addr: SocketAddr,
    pub client_cert: bool,
}

fn is_unsafe(m: &Method) -> bool {
    matches!(
        *m,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    )
}

pub(super) async fn guard(State(ctx): State<Ctx>, req: Request, next: Next) -> Response {
    if !is_unsafe(req.method()) {
        return next.run(req).await;
    }
    let Some(cfg) = ctx.api.config.as_ref().map(|c| c.borrow().clone()) else {
        return next.run(req).await;
    };
    let client = req
        .extensions()
        .get::<ConnectInfo<ClientInfo>>()
        .map(|c| c.0);
    match check(&ctx, &cfg, client, req.headers()).await {
        Ok(()) => next.run(req).await,
        Err(e) => {
            // Never log the Authorization header or the configured credentials.
            tracing::info!(
                "refused {} {} from {}: {e}",
                req.method(),
                req.uri().path(),
                client.map_or_else(|| "an unknown address".to_string(), |c| c.addr.to_string())
            );
            e.into_response()
        }
    }
}

async fn check(
    ctx: &Ctx,
    cfg: &Config,
    client: Option<ClientInfo>,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    let api = &cfg.restapi;
    let entries = allowlist_entries(api);
    let include_members = crate::dcs::tag_is_true(api.allowlist_include_members.as_ref());
    if !entries.is_empty() || include_members {
        let ip = client.map(|c| c.addr.ip().to_canonical());
        let mut allowed = allowed_networks(&entries).await;
        if include_members {
            allowed.extend(member_networks(ctx).await);
        }
        if !ip.is_some_and(|ip| allowed.iter().any(|n| n.contains(ip))) {
            return Err(ApiError::Forbidden("Access is denied".into()));
        }
    }
    let verify = api.verify_client.as_deref().map(str::to_ascii_lowercase);
    let wants_cert =
        api.certfile.is_some() && matches!(verify.as_deref(), Some("required") | Some("optional"));
    if wants_cert && !client.is_some_and(|c| c.client_cert) {
        return Err(ApiError::Forbidden("client certificate required".into()));
    }
    check_basic_auth(api, headers)
}

fn check_basic_auth(api: &RestApiConfig, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(auth) = api.authentication.as_ref() else {
        return Ok(());
    };
    let expected = format!(
        "{}:{}",
        auth.username,
        auth.password.as_deref().unwrap_or("")
    );
    let Some(got) = headers.get(header::AUTHORIZATION) else {
        return Err(ApiError::Unauthorized("no auth header received".into()));
    };
    let decoded = got
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        });
    match decoded {
        Some(d) if constant_time_eq(&d, expected.as_bytes()) => Ok(()),
        _ => Err(ApiError::Unauthorized("not authenticated".into())),
    }
}

/// Compare without an early exit, so response timing does not leak the password prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

fn allowlist_entries(api: &RestApiConfig) -> Vec<String> {
    match api.allowlist.as_ref() {
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        Some(serde_json::Value::String(s)) => s
            .split(',')
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
            .collect(),
        _ => Vec::new(),
    }
}

/// An address with a prefix length (a single host is /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl Network {
    pub fn parse(s: &str) -> Option<Network> {
        let (a, p) = s.split_once('/').unwrap_or((s, ""));
        let addr: IpAddr = a.trim().parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = if p.is_empty() {
            max
        } else {
            p.trim().parse().ok()?
        };
        (prefix <= max).then_some(Network {
            addr: addr.to_canonical(),
            prefix,
        })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(n), IpAddr::V4(i)) => {
                masked(u32::from(n) as u128, 32, self.prefix)
                    == masked(u32::from(i) as u128, 32, self.prefix)
            }
            (IpAddr::V6(n), IpAddr::V6(i)) => {
                masked(u128::from(n), 128, self.prefix) == masked(u128::from(i), 128, self.prefix)
            }
            _ => false,
        }
    }
}

fn masked(v: u128, bits: u8, prefix: u8) -> u128 {
    if prefix == 0 { 0 } else { v >> (bits - prefix) }
}

/// Networks from the allowlist; host names are resolved now (so DNS changes apply).
async fn allowed_networks(entries: &[String]) -> Vec<Network> {
    let mut out = Vec::new();
    for e in entries {
        if let Some(n) = Network::parse(e) {
            out.push(n);
        } else if e.contains('/') {
            tracing::error!("Invalid value {e:?} in restapi.allowlist");
        } else {
            out.extend(resolve(e, 8080).await);
        }
    }
    out
}

async fn resolve(host: &str, port: u16) -> Vec<Network> {
    match tokio::net::lookup_host((host, port)).await {
        Ok(addrs) => addrs
            .map(|a| Network {
                addr: a.ip().to_canonical(),
                prefix: if a.is_ipv4() { 32 } else { 128 },
            })
            .collect(),
        Err(e) => {
            tracing::error!("Failed to resolve {host}: {e}");
            Vec::new()
        }
    }
}

/// The REST API hosts of the cluster members in the last published snapshot.
async fn member_networks(ctx: &Ctx) -> Vec<Network> {
    let st = ctx.snapshot();
    let Some(cluster) = st.cluster.as_deref() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for m in &cluster.members {
        let Some(base) = m.api_base() else { continue };
        let Ok(url) = reqwest::Url::parse(&base) else {
            continue;
        };
        let Some(host) = url.host_str() else { continue };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        match Network::parse(host) {
            Some(n) => out.push(n),
            None => out.extend(resolve(host, url.port_or_known_default().unwrap_or(80)).await),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks() {
        let n = Network::parse("10.0.0.0/8").unwrap();
        assert!(n.contains("10.1.2.3".parse().unwrap()));
        assert!(!n.contains("11.0.0.1".parse().unwrap()));
        assert!(n.contains("::ffff:10.0.0.7".parse().unwrap()));
        let h = Network::parse("127.0.0.1").unwrap();
        assert!(h.contains("127.0.0.1".parse().unwrap()));
        assert!(!h.contains("127.0.0.2".parse().unwrap()));
        assert!(
            Network::parse("::/0")
                .unwrap()
                .contains("::1".parse().unwrap())
        );
        assert!(Network::parse("10.0.0.0/33").is_none());
        assert!(Network::parse("db1").is_none());
    }

    #[test]
    fn constant_time() {
        assert!(constant_time_eq(b"a:b", b"a:b"));
        assert!(!constant_time_eq(b"a:b", b"a:c"));
        assert!(!constant_time_eq(b"a:b", b"a:bc"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
