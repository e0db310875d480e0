//! One writer per node, each on its own long-lived connection, recording which ids each
//! node acknowledged and when: the raw material for the split-brain (overlap) and
//! lost-write checks of the fault suite.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A commit not answered within this budget is abandoned (connection dropped) and never
/// counted as acknowledged: with synchronous replication it may be waiting for a standby.
const BUDGET: Duration = Duration::from_secs(3);
const PACE: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, Copy)]
pub struct Ack {
    pub node: usize,
    pub id: i64,
    /// When the INSERT was sent: the commit happened between `sent` and `acked`.
    pub sent: Instant,
    pub acked: Instant,
}

pub struct Writers {
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<Vec<Ack>>>,
}

impl Writers {
    /// Start one writer per `(host, port)`, inserting into `t (id bigint primary key)`.
    pub fn start(targets: &[(String, u16)]) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let next = Arc::new(AtomicI64::new(1));
        let handles = targets
            .iter()
            .enumerate()
            .map(|(node, (host, port))| {
                let conn = format!(
                    "host={host} port={port} user=postgres password=patroni dbname=postgres connect_timeout=2"
                );
                let (stop, next) = (stop.clone(), next.clone());
                std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    rt.block_on(write_loop(node, conn, stop, next))
                })
            })
            .collect();
        Writers { stop, handles }
    }

    /// Stop all writers; every acknowledgement, ordered by `acked`.
    pub fn finish(mut self) -> Vec<Ack> {
        self.stop.store(true, Ordering::SeqCst);
        let mut all: Vec<Ack> = self
            .handles
            .drain(..)
            .flat_map(|h| h.join().unwrap())
            .collect();
        all.sort_by_key(|a| a.acked);
        all
    }
}

impl Drop for Writers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

async fn write_loop(
    node: usize,
    conn: String,
    stop: Arc<AtomicBool>,
    next: Arc<AtomicI64>,
) -> Vec<Ack> {
    let mut acks = vec![];
    let mut client: Option<(tokio_postgres::Client, tokio::task::JoinHandle<()>)> = None;
    while !stop.load(Ordering::Relaxed) {
        let t0 = Instant::now();
        if client.is_none() {
            match tokio::time::timeout(
                BUDGET,
                tokio_postgres::connect(&conn, tokio_postgres::NoTls),
            )
            .await
            {
                Ok(Ok((c, connection))) => {
                    let h = tokio::spawn(async move {
                        let _ = connection.await;
                    });
                    client = Some((c, h));
                }
                _ => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            }
        }
        let (c, h) = client.as_ref().unwrap();
        let id = next.fetch_add(1, Ordering::SeqCst);
        let sent = Instant::now();
        match tokio::time::timeout(BUDGET, c.execute("INSERT INTO t VALUES ($1)", &[&id])).await {
            Ok(Ok(_)) => acks.push(Ack {
                node,
                id,
                sent,
                acked: Instant::now(),
            }),
            Ok(Err(_)) if !c.is_closed() => {} // read-only replica: keep the connection
            _ => {
                // Closed, or no answer in time: abandon the connection (never acknowledged).
                h.abort();
                client = None;
            }
        }
        tokio::time::sleep(PACE.saturating_sub(t0.elapsed())).await;
    }
    acks
}

/// A stretch of time in which one node kept acknowledging writes (no gap above `gap`):
/// from the first acknowledged INSERT's send to the last one's acknowledgement.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    pub node: usize,
    pub start: Instant,
    pub end: Instant,
}

pub fn runs(acks: &[Ack], gap: Duration) -> Vec<Run> {
    let mut out: Vec<Run> = vec![];
    let mut by_node: Vec<&Ack> = acks.iter().collect();
    by_node.sort_by_key(|a| (a.node, a.acked));
    for a in by_node {
        match out.last_mut() {
            Some(r) if r.node == a.node && a.sent.saturating_duration_since(r.end) <= gap => {
                r.end = a.acked;
            }
            _ => out.push(Run {
                node: a.node,
                start: a.sent,
                end: a.acked,
            }),
        }
    }
    out
}

/// Two nodes acknowledging writes at overlapping times: which, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct Overlap {
    pub nodes: (usize, usize),
    pub window: Duration,
}

/// The longest time two different nodes were both acknowledging writes, among acks made in
/// `[from, to]`. `None` means no two nodes ever overlapped (the target).
pub fn max_overlap(acks: &[Ack], from: Instant, to: Instant) -> Option<Overlap> {
    let sel: Vec<Ack> = acks
        .iter()
        .filter(|a| a.acked >= from && a.acked <= to)
        .copied()
        .collect();
    let rs = runs(&sel, Duration::from_secs(2));
    let mut best: Option<Overlap> = None;
    for (i, a) in rs.iter().enumerate() {
        for b in &rs[i + 1..] {
            if a.node == b.node || a.start.max(b.start) > a.end.min(b.end) {
                continue;
            }
            let window = a.end.min(b.end) - a.start.max(b.start);
            if best.is_none_or(|o| window > o.window) {
                best = Some(Overlap {
                    nodes: (a.node, b.node),
                    window,
                });
            }
        }
    }
    best
}

/// Last acknowledgement of `node` in `[from, to)`.
pub fn last_ack(acks: &[Ack], node: usize, from: Instant, to: Instant) -> Option<Instant> {
    acks.iter()
        .filter(|a| a.node == node && a.acked >= from && a.acked < to)
        .map(|a| a.acked)
        .max()
}

/// Acknowledged ids missing from `present` (the final primary's rows).
pub fn lost(acks: &[Ack], present: &std::collections::HashSet<i64>) -> Vec<i64> {
    acks.iter()
        .map(|a| a.id)
        .filter(|id| !present.contains(id))
        .collect()
}
