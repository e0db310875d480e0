//! The loop's safety nets: the POST /failsafe round of a primary that lost the DCS, the
//! contacts replicas received, the watchdog device and the fencing process.

use super::Runtime;
use crate::dcs::Role;
use crate::ha::{FailsafeAnswer, FailsafeContact, FailsafeInput, FailsafeRound, Observation};
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// A POST /failsafe we received: who sent it and when.
#[derive(Debug, Clone)]
pub struct ReceivedContact {
    pub leader: String,
    pub at: Instant,
}

impl Runtime {
    /// The last contact and the last sighting of a leader in the DCS, as the HA core sees
    /// them (ages in ms, from one clock reading so they compare).
    pub(crate) fn failsafe_input(&self) -> FailsafeInput {
        let now = Instant::now();
        let age = |t: Instant| now.saturating_duration_since(t).as_millis() as u64;
        FailsafeInput {
            round: None,
            contact: self.failsafe_contact.as_ref().map(|c| FailsafeContact {
                leader: c.leader.clone(),
                age_ms: age(c.at),
            }),
            leader_seen_age_ms: self.leader_seen_at.map(age),
        }
    }

    /// POST /failsafe to every other member of the last known `failsafe` key, in parallel,
    /// 2 s per call and one retry, as upstream.
    pub(crate) async fn failsafe_round(&self) -> FailsafeRound {
        let key = self
            .status
            .borrow()
            .cluster
            .as_ref()
            .and_then(|c| c.failsafe.clone());
        let me = self.local.name.clone();
        let Some(key) = key.filter(|k| k.contains_key(&me)) else {
            return FailsafeRound {
                listed: false,
                answers: vec![],
            };
        };
        let (conn_url, api_url) = self.urls();
        let body = serde_json::json!({
            "name": me, "conn_url": conn_url, "api_url": api_url, "slots": {},
        });
        let auth = self.local.restapi.authentication.clone();
        let calls = key
            .into_iter()
            .filter(|(n, _)| *n != me)
            .map(|(name, url)| {
                let (http, body, auth) = (self.http.clone(), body.clone(), auth.clone());
                async move {
                    let url = failsafe_url(&url);
                    let mut answer = FailsafeAnswer::NoAnswer("not tried".into());
                    for _ in 0..2 {
                        let mut req = http.post(&url).json(&body).timeout(Duration::from_secs(2));
                        if let Some(c) = &auth {
                            req = req.basic_auth(&c.username, c.password.as_ref());
                        }
                        answer = match req.send().await {
                            Ok(r) => read_answer(r).await,
                            Err(e) => FailsafeAnswer::NoAnswer(e.to_string()),
                        };
                        if !matches!(answer, FailsafeAnswer::NoAnswer(_)) {
                            break;
                        }
                    }
                    match &answer {
                        FailsafeAnswer::Accepted { .. } => info!("POST {url}: {name} accepted"),
                        other => warn!("POST {url}: {name} did not accept: {other:?}"),
                    }
                    (name, answer)
                }
            });
        FailsafeRound {
            listed: true,
            answers: futures::future::join_all(calls).await,
        }
    }

    /// After a cycle: a leading primary arms the fencer and feeds the watchdog; anything
    /// else disarms them (a primary still running without the lock keeps the last deadline,
    /// so a stuck demotion is still fenced).
    pub(crate) fn after_cycle_safety(&mut self, obs: &Observation, role: Role, lease_boot_ms: u64) {
        let paused = obs.config.paused;
        let leading = !paused && self.memory.has_lock && role == Role::Primary;
        let pg_primary = obs.pg.sql.as_ref().is_some_and(|s| !s.in_recovery);
        let ttl = obs.config.ttl;
        if leading && pg_primary {
            let margin = self.watchdog.config.margin_secs(ttl);
            if let Some(f) = self.fence.as_mut() {
                f.arm(lease_boot_ms + (ttl - margin) * 1000);
            }
            match self.watchdog.keepalive(ttl) {
                Ok(()) => self.watchdog_failed = false,
                Err(e) => {
                    warn!("{e}");
                    self.watchdog_failed = self.watchdog.required();
                }
            }
        } else if paused || !pg_primary {
            if let Some(f) = self.fence.as_mut() {
                f.disarm();
            }
            self.watchdog.disable();
        }
    }

    /// Required watchdog that could not be opened: this node must not lead.
    pub(crate) fn check_watchdog_at_start(&mut self) {
        if self.watchdog.required() {
            let dev = self.watchdog.config.device.clone();
            if let Err(e) = std::fs::OpenOptions::new().write(true).open(&dev) {
                warn!(
                    "watchdog mode is required but {} cannot be opened ({e}); this node will not take the leader key",
                    dev.display()
                );
                self.watchdog_failed = true;
            } else {
                // Opening a real device arms it: close it with the magic character at once.
                let mut w = crate::watchdog::Watchdog::new(self.watchdog.config.clone());
                let _ = w.keepalive(self.dynamic.ttl);
                w.disable();
            }
        }
    }
}

/// `http://host:port/patroni` -> `http://host:port/failsafe`.
fn failsafe_url(api_url: &str) -> String {
    let (scheme, rest) = api_url.split_once("://").unwrap_or(("http", api_url));
    let host = rest.split('/').next().unwrap_or(rest);
    format!("{scheme}://{host}/failsafe")
}

async fn read_answer(r: reqwest::Response) -> FailsafeAnswer {
    let status = r.status();
    let lsn = r
        .headers()
        .get("lsn")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let text = r.text().await.unwrap_or_default();
    if status.as_u16() == 200 && text == "Accepted" {
        FailsafeAnswer::Accepted { lsn }
    } else {
        FailsafeAnswer::Refused(format!("{status} {text}"))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn failsafe_url_from_api_url() {
        assert_eq!(
            super::failsafe_url("http://127.0.0.1:8008/patroni"),
            "http://127.0.0.1:8008/failsafe"
        );
        assert_eq!(super::failsafe_url("https://h:1/"), "https://h:1/failsafe");
    }
}
