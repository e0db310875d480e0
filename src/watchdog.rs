//! Linux watchdog device (`watchdog:` section: mode off/automatic/required, device,
//! safety_margin). Opened while this node is the leading primary, kept alive after every
//! successful leader refresh, closed with the magic 'V' on demotion so the kernel does not
//! reset the machine. Keepalives are plain writes (every driver accepts them; a test double
//! such as a FIFO or regular file records them).

use serde_json::{Map, Value};
use std::io::Write;
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;
use tracing::{info, warn};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchdogMode {
    Off,
    Automatic,
    Required,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WatchdogConfig {
    pub mode: WatchdogMode,
    pub device: PathBuf,
    /// Seconds the watchdog fires before the leader key would expire; -1: at ttl / 2.
    pub safety_margin: i64,
}

impl WatchdogConfig {
    /// Upstream's defaults: automatic, /dev/watchdog, 5 s. YAML `off` arrives as `false`.
    pub fn from_map(m: &Map<String, Value>) -> WatchdogConfig {
        let mode = match m.get("mode") {
            Some(Value::Bool(false)) => WatchdogMode::Off,
            Some(Value::String(s)) => match s.to_lowercase().as_str() {
                "off" | "false" | "no" => WatchdogMode::Off,
                "required" => WatchdogMode::Required,
                _ => WatchdogMode::Automatic,
            },
            _ => WatchdogMode::Automatic,
        };
        WatchdogConfig {
            mode,
            device: m
                .get("device")
                .and_then(Value::as_str)
                .unwrap_or("/dev/watchdog")
                .into(),
            safety_margin: m.get("safety_margin").and_then(Value::as_i64).unwrap_or(5),
        }
    }

    /// Seconds before the leader key's expiry by which PostgreSQL must be stopped.
    pub fn margin_secs(&self, ttl: u64) -> u64 {
        if self.safety_margin < 0 {
            ttl / 2
        } else {
            (self.safety_margin as u64).min(ttl / 2)
        }
    }

    /// The device timeout: ttl minus the safety margin.
    pub fn timeout_secs(&self, ttl: u64) -> u64 {
        ttl.saturating_sub(self.margin_secs(ttl)).max(1)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WatchdogError {
    #[error("cannot open the watchdog device {device}: {source}")]
    Open {
        device: String,
        source: std::io::Error,
    },
    #[error("keepalive to the watchdog device {device} failed: {source}")]
    Keepalive {
        device: String,
        source: std::io::Error,
    },
}

// Linux <linux/watchdog.h>: _IOWR('W', 6, int).
const WDIOC_SETTIMEOUT: libc::c_ulong = 0xC004_5706;

pub struct Watchdog {
    pub config: WatchdogConfig,
    file: Option<std::fs::File>,
}

impl Watchdog {
    pub fn new(config: WatchdogConfig) -> Watchdog {
        Watchdog { config, file: None }
    }

    pub fn is_active(&self) -> bool {
        self.file.is_some()
    }

    /// Whether a failure to use the device must keep this node from leading.
    pub fn required(&self) -> bool {
        self.config.mode == WatchdogMode::Required
    }

    /// Open the device (if not yet) and send a keepalive. Off: nothing. Automatic: a missing
    /// device is not an error (returns Ok without a device).
    pub fn keepalive(&mut self, ttl: u64) -> Result<(), WatchdogError> {
        if self.config.mode == WatchdogMode::Off {
            return Ok(());
        }
        if self.file.is_none() {
            match self.open(ttl) {
                Ok(f) => self.file = Some(f),
                Err(e) if self.config.mode == WatchdogMode::Automatic => {
                    tracing::debug!("watchdog not used: {e}");
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
        let device = self.config.device.display().to_string();
        let f = self.file.as_mut().expect("opened above");
        f.write_all(b"1")
            .and_then(|_| f.flush())
            .map_err(|source| WatchdogError::Keepalive { device, source })
    }

    fn open(&self, ttl: u64) -> Result<std::fs::File, WatchdogError> {
        let device = self.config.device.display().to_string();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.config.device)
            .map_err(|source| WatchdogError::Open {
                device: device.clone(),
                source,
            })?;
        let mut timeout: libc::c_int = self.config.timeout_secs(ttl) as libc::c_int;
        // SAFETY: WDIOC_SETTIMEOUT reads and writes one int we own; on a non-watchdog file
        // the kernel answers ENOTTY without touching it.
        let rc = unsafe { libc::ioctl(f.as_raw_fd(), WDIOC_SETTIMEOUT as _, &mut timeout) };
        if rc != 0 {
            warn!(
                "watchdog {device}: could not set the timeout to {} s ({}); keeping its own timeout",
                self.config.timeout_secs(ttl),
                std::io::Error::last_os_error()
            );
        }
        info!(
            "watchdog {device} activated with a {} s timeout",
            self.config.timeout_secs(ttl)
        );
        Ok(f)
    }

    /// Magic close: write 'V' so the driver disarms, then close.
    pub fn disable(&mut self) {
        if let Some(mut f) = self.file.take() {
            let device = self.config.device.display();
            match f.write_all(b"V").and_then(|_| f.flush()) {
                Ok(()) => info!("watchdog {device} disabled"),
                Err(e) => warn!("watchdog {device}: magic close failed: {e}"),
            }
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.disable();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cfg(v: Value) -> WatchdogConfig {
        WatchdogConfig::from_map(v.as_object().unwrap())
    }

    #[test]
    fn config_defaults_and_modes() {
        let d = cfg(json!({}));
        assert_eq!(d.mode, WatchdogMode::Automatic);
        assert_eq!(d.device, PathBuf::from("/dev/watchdog"));
        assert_eq!(d.timeout_secs(30), 25);
        assert_eq!(cfg(json!({"mode": false})).mode, WatchdogMode::Off);
        assert_eq!(cfg(json!({"mode": "off"})).mode, WatchdogMode::Off);
        assert_eq!(
            cfg(json!({"mode": "required"})).mode,
            WatchdogMode::Required
        );
        assert_eq!(cfg(json!({"safety_margin": -1})).timeout_secs(30), 15);
    }

    #[test]
    fn keepalive_and_magic_close_on_a_file_double() {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("watchdog");
        std::fs::write(&dev, "").unwrap();
        let mut w = Watchdog::new(cfg(json!({"mode": "required", "device": dev})));
        w.keepalive(30).unwrap();
        w.keepalive(30).unwrap();
        assert!(w.is_active());
        w.disable();
        assert!(!w.is_active());
        assert_eq!(std::fs::read_to_string(&dev).unwrap(), "11V");
    }

    #[test]
    fn missing_device_is_fatal_only_when_required() {
        let dev = "/nonexistent/watchdog";
        let mut auto = Watchdog::new(cfg(json!({"device": dev})));
        assert!(auto.keepalive(30).is_ok());
        assert!(!auto.is_active());
        let mut req = Watchdog::new(cfg(json!({"mode": "required", "device": dev})));
        assert!(req.keepalive(30).is_err());
    }
}
