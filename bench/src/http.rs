//! Minimal HTTP/1.0 client for the REST APIs (one request per connection, so neither
//! server uses chunked bodies and both are treated alike).
use serde_json::Value;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub async fn request(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> Result<(u16, String), String> {
    let fut = async {
        let mut s = TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let mut req = format!("{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n");
        if let Some(b) = body {
            req += &format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
                b.len()
            );
        } else {
            req += "\r\n";
        }
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
        parse(&String::from_utf8_lossy(&buf))
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
}

fn parse(resp: &str) -> Result<(u16, String), String> {
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not an HTTP response: {:.80}", resp))?;
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Ok((status, body.to_string()))
}

/// GET with a short timeout; the status and the body as JSON (Null if it is not JSON).
pub async fn get_json(port: u16, path: &str) -> Option<(u16, Value)> {
    let (st, body) = request(port, "GET", path, None, Duration::from_secs(2))
        .await
        .ok()?;
    Some((st, serde_json::from_str(&body).unwrap_or(Value::Null)))
}

pub async fn status(port: u16, path: &str) -> Option<u16> {
    request(port, "GET", path, None, Duration::from_secs(2))
        .await
        .ok()
        .map(|(s, _)| s)
}
