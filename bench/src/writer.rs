//! The client load: one INSERT through HAProxy every 50 ms, each with a fresh id, recording
//! which ids the server acknowledged (COMMIT returned) and when.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_postgres::{Client, NoTls};

pub const TABLE: &str = "bench_writes";
const PERIOD: Duration = Duration::from_millis(50);
/// A write not acknowledged within this counts as failed (the connection is dropped).
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, Debug)]
pub struct Ack {
    pub id: i64,
    /// Seconds since the cluster epoch when the INSERT was sent and when it was acknowledged.
    pub sent: f64,
    pub acked: f64,
}

pub struct Writer {
    acks: Arc<Mutex<Vec<Ack>>>,
    stop: Arc<AtomicBool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Writer {
    /// A scenario that gives up early must not leave the load running.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

pub async fn connect(port: u16) -> Result<Client, String> {
    let conn = format!(
        "host=127.0.0.1 port={port} user=postgres password=patroni dbname=postgres connect_timeout=2"
    );
    let fut = tokio_postgres::connect(&conn, NoTls);
    let (client, connection) = tokio::time::timeout(Duration::from_secs(2), fut)
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    Ok(client)
}

/// Run `sql` through HAProxy, retrying until it works or `timeout` passes.
pub async fn exec_retry(port: u16, sql: &str, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let r = match connect(port).await {
            Ok(c) => c.batch_execute(sql).await.map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        match r {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(format!("{sql}: {e}")),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

impl Writer {
    /// Start writing ids `first_id, first_id+1, ...` (one per attempt) through `port`.
    pub fn start(port: u16, epoch: Instant, first_id: i64) -> Writer {
        let acks = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, s) = (acks.clone(), stop.clone());
        let task = tokio::spawn(async move { write_loop(port, epoch, first_id, a, s).await });
        Writer {
            acks,
            stop,
            task: Some(task),
        }
    }

    pub fn acks(&self) -> Vec<Ack> {
        self.acks.lock().unwrap().clone()
    }

    /// Writes are flowing: at least 10 acknowledged in the last second.
    pub async fn wait_flowing(
        &self,
        now: impl Fn() -> f64,
        timeout: Duration,
    ) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let t = now();
            if self.acks().iter().filter(|a| a.acked > t - 1.0).count() >= 10 {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "writes through HAProxy not flowing within {timeout:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The first acknowledged write that was sent after `t`.
    pub async fn wait_ack_after(&self, t: f64, timeout: Duration) -> Result<Ack, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(a) = self.acks().into_iter().find(|a| a.sent > t) {
                return Ok(a);
            }
            if Instant::now() > deadline {
                return Err(format!("no write succeeded within {timeout:?}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn stop(mut self) -> Vec<Ack> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
        self.acks()
    }
}

async fn write_loop(
    port: u16,
    epoch: Instant,
    mut id: i64,
    acks: Arc<Mutex<Vec<Ack>>>,
    stop: Arc<AtomicBool>,
) {
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut client: Option<Client> = None;
    while !stop.load(Ordering::SeqCst) {
        tick.tick().await;
        if client.as_ref().is_none_or(Client::is_closed) {
            client = connect(port).await.ok();
        }
        let Some(c) = &client else { continue };
        let sent = epoch.elapsed().as_secs_f64();
        let sql = format!("INSERT INTO {TABLE}(id) VALUES ({id})");
        id += 1;
        match tokio::time::timeout(WRITE_TIMEOUT, c.simple_query(&sql)).await {
            Ok(Ok(_)) => acks.lock().unwrap().push(Ack {
                id: id - 1,
                sent,
                acked: epoch.elapsed().as_secs_f64(),
            }),
            // Read-only (a demoted primary), reset, timeout: reconnect through HAProxy.
            _ => client = None,
        }
    }
}

/// Acknowledged ids missing from the table on the current primary (read through HAProxy).
pub async fn lost_writes(port: u16, acks: &[Ack], timeout: Duration) -> Result<u64, String> {
    let (Some(lo), Some(hi)) = (
        acks.iter().map(|a| a.id).min(),
        acks.iter().map(|a| a.id).max(),
    ) else {
        return Ok(0);
    };
    let sql = format!("SELECT id FROM {TABLE} WHERE id BETWEEN {lo} AND {hi}");
    let deadline = Instant::now() + timeout;
    let rows = loop {
        let r = match connect(port).await {
            Ok(c) => c.query(&sql, &[]).await.map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        match r {
            Ok(rows) => break rows,
            Err(e) if Instant::now() > deadline => return Err(format!("reading back: {e}")),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    let present: std::collections::HashSet<i64> = rows.iter().map(|r| r.get(0)).collect();
    Ok(acks.iter().filter(|a| !present.contains(&a.id)).count() as u64)
}

/// Longest stretch without an acknowledgement, from the last ack at or before `t0` to the
/// last ack recorded (i.e. "last ack before to first ack after" for a single outage).
pub fn max_gap(acks: &[Ack], t0: f64) -> Option<f64> {
    let mut times: Vec<f64> = acks.iter().map(|a| a.acked).collect();
    times.sort_by(f64::total_cmp);
    let start = times.iter().rposition(|&t| t <= t0)?;
    times[start..]
        .windows(2)
        .map(|w| w[1] - w[0])
        .max_by(f64::total_cmp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(id: i64, t: f64) -> Ack {
        Ack {
            id,
            sent: t - 0.01,
            acked: t,
        }
    }

    #[test]
    fn gap_spans_last_ack_before_to_first_after() {
        let acks = [ack(1, 0.9), ack(2, 1.0), ack(3, 4.5), ack(4, 4.55)];
        assert!((max_gap(&acks, 2.0).unwrap() - 3.5).abs() < 1e-9);
        // A longer pause before t0 does not count.
        let acks = [ack(1, 0.0), ack(2, 9.0), ack(3, 9.1), ack(4, 10.0)];
        assert!((max_gap(&acks, 9.05).unwrap() - 0.9).abs() < 1e-9);
        assert_eq!(max_gap(&acks, -1.0), None);
    }
}
