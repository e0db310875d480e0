//! One run against one fresh cluster: bootstrap, idle footprint, REST under wrk, switchover,
//! postmaster crash and node crash (in that order: the last one leaves a node dead).
use crate::cluster::Cluster;
use crate::opts::{Impl, Opts, Profile};
use crate::report::RunResult;
use crate::writer::{self, Writer};
use crate::{http, procs, wrk};
use serde_json::json;
use std::time::{Duration, Instant};

/// After an event, how long writes keep being recorded (to catch a second pause).
const TAIL: Duration = Duration::from_secs(2);

pub async fn one_run(opts: &Opts, imp: Impl, p: &Profile, label: &str) -> RunResult {
    let mut r = RunResult::default();
    match Cluster::create(opts, imp, p, 3).await {
        Err(e) => r.note("setting up etcd/HAProxy", e),
        Ok(mut c) => {
            if let Err(e) = steps(opts, p, &mut c, &mut r).await {
                r.note("run aborted", e);
            }
            if !r.notes.is_empty() {
                let to = opts.logs_dir.join(label);
                c.save_logs(&to);
                eprintln!("    logs kept in {}", to.display());
            }
            // Cluster lifetime, without waiting for the lock.
            let secs = c.now();
            eprintln!("    done in {secs:.0}s");
            r.extra.insert("run_seconds".into(), json!(secs));
        }
    }
    r
}

/// Generous bound for any single event at this timing.
fn event_timeout(p: &Profile) -> Duration {
    Duration::from_secs(p.ttl * 3 + p.loop_wait * 3 + 60)
}

async fn steps(opts: &Opts, p: &Profile, c: &mut Cluster, r: &mut RunResult) -> Result<(), String> {
    bootstrap(c, r).await?;
    let ddl = format!("CREATE TABLE {}(id bigint PRIMARY KEY)", writer::TABLE);
    writer::exec_retry(c.ha_port, &ddl, Duration::from_secs(60)).await?;
    footprint(opts, c, r).await?;
    rest(opts, c, r).await?;
    let heal = event_timeout(p) * 2;
    if let Err(e) = switchover(c, p, r).await {
        r.note("switchover", e);
    }
    c.wait_healthy(heal).await?;
    if let Err(e) = postmaster_crash(c, p, r).await {
        r.note("postmaster crash", e);
    }
    c.wait_healthy(heal).await?;
    if let Err(e) = node_crash(c, p, r).await {
        r.note("node crash", e);
    }
    Ok(())
}

async fn bootstrap(c: &mut Cluster, r: &mut RunResult) -> Result<(), String> {
    let t0 = c.now();
    for i in 0..c.nodes.len() {
        c.start_node(i)?;
    }
    let leader = c.wait_healthy(Duration::from_secs(300)).await?;
    r.set("bootstrap_s", c.now() - t0);
    eprintln!(
        "    bootstrap {:.1}s, leader {}",
        c.now() - t0,
        c.nodes[leader].name
    );
    Ok(())
}

/// RSS and CPU of each daemon (without its PostgreSQL processes) over an idle window.
async fn footprint(opts: &Opts, c: &Cluster, r: &mut RunResult) -> Result<(), String> {
    tokio::time::sleep(Duration::from_secs(3)).await; // let post-bootstrap work settle
    let pids: Vec<i32> = c.alive().filter_map(|i| c.daemon_pid(i)).collect();
    let before: Vec<u64> = pids.iter().map(|&p| procs::footprint(p).1).collect();
    let start = Instant::now();
    let mut rss_max = vec![0u64; pids.len()];
    // The daemon's own process alone (without helpers such as our fencer), for the JSON.
    let mut own_max = vec![0u64; pids.len()];
    while start.elapsed() < Duration::from_secs(opts.idle_secs) {
        for ((m, o), &p) in rss_max.iter_mut().zip(own_max.iter_mut()).zip(&pids) {
            *m = (*m).max(procs::footprint(p).0);
            *o = (*o).max(procs::rss_kib(p));
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    let after: Vec<u64> = pids.iter().map(|&p| procs::footprint(p).1).collect();
    let cpu: Vec<f64> = before
        .iter()
        .zip(&after)
        .map(|(b, a)| a.saturating_sub(*b) as f64 / procs::clk_tck() / secs * 60.0)
        .collect();
    let rss: Vec<f64> = rss_max.iter().map(|k| *k as f64 / 1024.0).collect();
    if rss.contains(&0.0) {
        return Err("a daemon vanished during the idle window".into());
    }
    r.set("rss_mib", mean(&rss));
    r.set("cpu_s_per_idle_min", mean(&cpu));
    r.extra.insert("rss_mib_per_node".into(), json!(rss));
    let own: Vec<f64> = own_max.iter().map(|k| *k as f64 / 1024.0).collect();
    r.extra
        .insert("rss_mib_main_process_per_node".into(), json!(own));
    r.extra
        .insert("cpu_s_per_idle_min_per_node".into(), json!(cpu));
    Ok(())
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

async fn rest(opts: &Opts, c: &Cluster, r: &mut RunResult) -> Result<(), String> {
    let leader = c.wait_healthy(Duration::from_secs(30)).await?;
    let port = c.nodes[leader].api_port;
    for (path, rps, p99) in [
        ("/primary", "rest_primary_rps", "rest_primary_p99_ms"),
        ("/patroni", "rest_patroni_rps", "rest_patroni_p99_ms"),
    ] {
        match wrk::run(opts, port, path).await {
            Ok(w) => {
                r.set(rps, w.rps);
                r.set(p99, w.p99_ms);
                if w.non_2xx + w.socket_errors > 0 {
                    let msg = format!(
                        "{} non-2xx answers and {} connect/write/timeout errors under wrk",
                        w.non_2xx, w.socket_errors
                    );
                    r.note(&format!("GET {path}"), msg);
                }
            }
            Err(e) => r.note(&format!("GET {path}"), e),
        }
    }
    Ok(())
}

/// Start the writer and wait until it has been acknowledged steadily for a moment.
async fn loaded(c: &Cluster, first_id: i64) -> Result<Writer, String> {
    let w = Writer::start(c.ha_port, c.epoch, first_id);
    let epoch = c.epoch;
    w.wait_flowing(
        move || epoch.elapsed().as_secs_f64(),
        Duration::from_secs(60),
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(w)
}

/// First time (cluster seconds) one of `among` answers GET /primary with 200.
async fn wait_new_primary(
    c: &Cluster,
    among: &[usize],
    timeout: Duration,
) -> Result<(usize, f64), String> {
    let deadline = Instant::now() + timeout;
    loop {
        for &i in among {
            if c.is_primary(i).await {
                return Ok((i, c.now()));
            }
        }
        if Instant::now() > deadline {
            return Err(format!("no new primary within {timeout:?}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Keep writing a little after recovery, stop, and record pause and lost writes.
async fn finish(
    c: &Cluster,
    w: Writer,
    t0: f64,
    prefix: &str,
    r: &mut RunResult,
) -> Result<(), String> {
    tokio::time::sleep(TAIL).await;
    let acks = w.stop().await;
    let gap = writer::max_gap(&acks, t0).ok_or("no write acknowledged before the event")?;
    let lost = writer::lost_writes(c.ha_port, &acks, Duration::from_secs(30)).await?;
    let (gap_key, lost_key) = match prefix {
        "failover" => ("failover_write_unavailable_s", "failover_lost_writes"),
        "switchover" => ("switchover_write_unavailable_s", "switchover_lost_writes"),
        _ => ("", "pm_crash_lost_writes"),
    };
    if !gap_key.is_empty() {
        r.set(gap_key, gap);
    }
    r.set(lost_key, lost as f64);
    r.extra.insert(format!("{prefix}_max_gap_s"), json!(gap));
    r.extra
        .insert(format!("{prefix}_acked_writes"), json!(acks.len()));
    eprintln!(
        "    {prefix}: write pause {gap:.2}s, lost {lost} of {} acked",
        acks.len()
    );
    Ok(())
}

type Answer = Result<(u16, String), String>;

fn record_answer(r: &mut RunResult, a: &Answer) -> bool {
    let (text, ok) = match a {
        Ok((st, body)) => (format!("{st} {}", body.trim()), *st == 200 || *st == 202),
        Err(e) => (format!("no answer: {e}"), false),
    };
    r.extra.insert("switchover_http".into(), json!(text));
    ok
}

/// POST /switchover to the leader while writing; the candidate's GET /primary = 200 marks
/// the new primary. A refusal (e.g. no such endpoint) makes the figures n/a.
async fn switchover(c: &Cluster, p: &Profile, r: &mut RunResult) -> Result<(), String> {
    let leader = c.wait_healthy(event_timeout(p)).await?;
    let cand = c.alive().find(|&i| i != leader).ok_or("no replica")?;
    let body = json!({"leader": c.nodes[leader].name, "candidate": c.nodes[cand].name}).to_string();
    let port = c.nodes[leader].api_port;
    let w = loaded(c, 1_000_000).await?;
    let t0 = c.now();
    let mut post = Some(tokio::spawn(async move {
        http::request(
            port,
            "POST",
            "/switchover",
            Some(&body),
            Duration::from_secs(120),
        )
        .await
    }));
    let deadline = Instant::now() + event_timeout(p);
    let at = loop {
        if let Some(h) = post.take_if(|h| h.is_finished()) {
            let answer = h.await.map_err(|e| e.to_string())?;
            if !record_answer(r, &answer) {
                w.stop().await;
                let said = match &answer {
                    Ok((st, body)) => format!("HTTP {st}: {}", body.trim()),
                    Err(e) => e.clone(),
                };
                return Err(format!("n/a: POST /switchover answered {said}"));
            }
        }
        if c.is_primary(cand).await {
            break c.now();
        }
        if Instant::now() > deadline {
            w.stop().await;
            return Err(format!("{} did not become primary", c.nodes[cand].name));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    r.set("switchover_new_primary_s", at - t0);
    w.wait_ack_after(at, event_timeout(p)).await?;
    finish(c, w, t0, "switchover", r).await?;
    if let Some(h) = post
        && let Ok(Ok(a)) = tokio::time::timeout(Duration::from_secs(60), h).await
    {
        record_answer(r, &a);
    }
    Ok(())
}

async fn postmaster_crash(c: &Cluster, p: &Profile, r: &mut RunResult) -> Result<(), String> {
    let leader = c.wait_healthy(event_timeout(p)).await?;
    let w = loaded(c, 2_000_000).await?;
    let pm = c
        .postmaster_pid(leader)
        .ok_or("the leader has no running postmaster")?;
    let t0 = c.now();
    procs::signal(pm, libc::SIGKILL);
    let ack = w.wait_ack_after(t0, event_timeout(p)).await?;
    r.set("pm_crash_write_recovery_s", ack.acked - t0);
    eprintln!(
        "    postmaster crash: writes back after {:.2}s",
        ack.acked - t0
    );
    finish(c, w, t0, "pm_crash", r).await?;
    let same = c.wait_healthy(event_timeout(p)).await? == leader;
    r.extra.insert("pm_crash_same_primary".into(), json!(same));
    Ok(())
}

async fn node_crash(c: &mut Cluster, p: &Profile, r: &mut RunResult) -> Result<(), String> {
    let leader = c.wait_healthy(event_timeout(p)).await?;
    let others: Vec<usize> = c.alive().filter(|&i| i != leader).collect();
    let w = loaded(c, 3_000_000).await?;
    // The kill must land at a random point of the leader's loop: what a node crash costs
    // depends on how long ago the leader last renewed its lease. Without this the kill came
    // at fixed delays after the postmaster-crash step, which restarts our loop's cadence but
    // not upstream's, and so biased the figure. A uniform delay over two loop periods makes
    // the phase (nearly) uniform for both, even when a cycle takes longer than loop_wait.
    let delay = random_unit() * 2.0 * p.loop_wait as f64;
    r.extra.insert("failover_kill_delay_s".into(), json!(delay));
    tokio::time::sleep(Duration::from_secs_f64(delay)).await;
    let t0 = c.now();
    c.kill_node(leader);
    let (_, at) = wait_new_primary(c, &others, event_timeout(p)).await?;
    r.set("failover_new_primary_s", at - t0);
    w.wait_ack_after(at, event_timeout(p)).await?;
    finish(c, w, t0, "failover", r).await
}

/// A uniform random number in [0, 1) from the kernel (no seed to get wrong, no crate).
fn random_unit() -> f64 {
    use std::io::Read;
    let mut b = [0u8; 8];
    match std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)) {
        Ok(()) => (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64,
        // Fallback: the sub-second part of the clock is as good as random at this scale.
        Err(_) => {
            let ns = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            f64::from(ns) / 1e9
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn random_unit_is_in_range_and_varies() {
        let xs: Vec<f64> = (0..64).map(|_| super::random_unit()).collect();
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)), "{xs:?}");
        assert!(
            xs.iter().any(|x| *x < 0.5) && xs.iter().any(|x| *x >= 0.5),
            "{xs:?}"
        );
    }
}
