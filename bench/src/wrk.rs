//! REST throughput with Debian's `wrk`: requests/s and the 99th percentile latency.
use crate::opts::Opts;
use tokio::process::Command;

#[derive(Debug, PartialEq)]
pub struct WrkResult {
    pub rps: f64,
    pub p99_ms: f64,
    /// Responses other than 2xx/3xx.
    pub non_2xx: u64,
    /// connect + write + timeout socket errors. Read errors are left out: wrk counts one for
    /// every connection an HTTP/1.0 server (upstream's) closes after its answer.
    pub socket_errors: u64,
}

pub async fn run(opts: &Opts, port: u16, path: &str) -> Result<WrkResult, String> {
    let out = Command::new("wrk")
        .arg(format!("-t{}", opts.wrk_threads))
        .arg(format!("-c{}", opts.wrk_conns))
        .arg(format!("-d{}s", opts.wrk_secs))
        .arg("--latency")
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("wrk: {e} (install Debian's wrk)"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "wrk failed: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    parse(&text).ok_or_else(|| format!("cannot read wrk's output:\n{text}"))
}

fn parse(text: &str) -> Option<WrkResult> {
    let rps = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))?
        .trim()
        .parse()
        .ok()?;
    let p99 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .and_then(|v| duration_ms(v.trim()))?;
    let non2xx: u64 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let sock = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Socket errors:"))
        .map(|v| {
            v.split(',')
                .filter(|p| !p.trim().starts_with("read"))
                .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    Some(WrkResult {
        rps,
        p99_ms: p99,
        non_2xx: non2xx,
        socket_errors: sock,
    })
}

/// wrk prints durations as `812.00us`, `3.21ms`, `1.02s`, `2.00m`.
fn duration_ms(v: &str) -> Option<f64> {
    let split = v.find(|c: char| c.is_ascii_alphabetic())?;
    let (num, unit) = v.split_at(split);
    let n: f64 = num.parse().ok()?;
    let f = match unit {
        "us" => 0.001,
        "ms" => 1.0,
        "s" => 1000.0,
        "m" => 60_000.0,
        _ => return None,
    };
    Some(n * f)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "Running 5s test @ http://127.0.0.1:8008/primary
  2 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.10ms  300.00us   9.00ms   90.00%
    Req/Sec     7.30k   500.00     8.00k    70.00%
  Latency Distribution
     50%    1.00ms
     75%    1.20ms
     90%    1.50ms
     99%  812.00us
  72000 requests in 5.00s, 20.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:  14400.50
Transfer/sec:      4.00MB
";

    #[test]
    fn reads_rate_p99_and_errors() {
        let r = parse(SAMPLE).unwrap();
        assert_eq!(
            r,
            WrkResult {
                rps: 14400.5,
                p99_ms: 0.812,
                non_2xx: 4,
                socket_errors: 1,
            }
        );
        assert_eq!(duration_ms("1.02s"), Some(1020.0));
        assert_eq!(parse("garbage"), None);
    }
}
