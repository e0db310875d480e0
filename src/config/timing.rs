//! The timing settings (ttl, loop_wait, retry_timeout): their floors and the rule that ties
//! them together. Defined once here and used by the strict validation (PATCH /config,
//! `bootstrap.dcs`, `--validate-config`), by the tolerant reading of the DCS `config` key, and
//! by the tests and the benchmark.
//!
//! Without `allow_short_ttl` the floors are exactly upstream Patroni's (ttl 20, loop_wait 1,
//! retry_timeout 3). Upstream needs ttl 20 because a stalled Python daemon could lose its lock
//! while still running PostgreSQL. `allow_short_ttl: true` in the dynamic configuration (our
//! key; upstream ignores keys it does not know) lowers them to ttl 6, loop_wait 1,
//! retry_timeout 2: the fast-failover profile.

/// The dynamic-configuration key that selects [`SHORT_FLOORS`].
pub const ALLOW_SHORT_TTL: &str = "allow_short_ttl";

/// The smallest accepted value of each timing setting, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimingFloors {
    pub ttl: u64,
    pub loop_wait: u64,
    pub retry_timeout: u64,
}

/// Upstream Patroni's minimums (its `_validate_and_adjust_timeouts`).
pub const UPSTREAM_FLOORS: TimingFloors = TimingFloors {
    ttl: 20,
    loop_wait: 1,
    retry_timeout: 3,
};

/// The fast-failover minimums, accepted only with `allow_short_ttl: true`.
pub const SHORT_FLOORS: TimingFloors = TimingFloors {
    ttl: 6,
    loop_wait: 1,
    retry_timeout: 2,
};

impl TimingFloors {
    /// The floors in force for a configuration with or without `allow_short_ttl`.
    pub const fn select(allow_short_ttl: bool) -> TimingFloors {
        if allow_short_ttl {
            SHORT_FLOORS
        } else {
            UPSTREAM_FLOORS
        }
    }

    /// `(name, floor)` for each setting, in the order upstream adjusts them.
    pub fn named(&self) -> [(&'static str, u64); 3] {
        [
            ("loop_wait", self.loop_wait),
            ("retry_timeout", self.retry_timeout),
            ("ttl", self.ttl),
        ]
    }

    /// `true` when every value is at or above its floor and the rule holds.
    pub fn admits(&self, ttl: u64, loop_wait: u64, retry_timeout: u64) -> bool {
        ttl >= self.ttl
            && loop_wait >= self.loop_wait
            && retry_timeout >= self.retry_timeout
            && rule_violation(ttl, loop_wait, retry_timeout).is_none()
    }
}

/// `true` when `ttl / loop_wait / retry_timeout` is accepted only with `allow_short_ttl`: a
/// harness uses it to decide whether to add the key.
pub fn needs_short_ttl(ttl: u64, loop_wait: u64, retry_timeout: u64) -> bool {
    !UPSTREAM_FLOORS.admits(ttl, loop_wait, retry_timeout)
        && SHORT_FLOORS.admits(ttl, loop_wait, retry_timeout)
}

/// The rule `loop_wait + 2*retry_timeout <= ttl`: a leader that misses one loop and then
/// retries the DCS for retry_timeout twice must still hold its lease. `None` when it holds.
pub fn rule_violation(ttl: u64, loop_wait: u64, retry_timeout: u64) -> Option<String> {
    let need = loop_wait.saturating_add(retry_timeout.saturating_mul(2));
    (need > ttl)
        .then(|| format!("ttl ({ttl}) must be at least loop_wait + 2*retry_timeout ({need})"))
}

/// Why `value` is below `floor` for setting `name`, with the way out when the short floors
/// would accept it.
pub fn floor_message(name: &str, value: i64, floor: u64, allow_short_ttl: bool) -> String {
    let mut msg = format!("must be at least {floor} seconds, got {value}");
    let short = SHORT_FLOORS
        .named()
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, f)| *f);
    if !allow_short_ttl && short.is_some_and(|s| value >= s as i64) {
        msg.push_str(&format!(
            " (upstream Patroni's minimum; set {ALLOW_SHORT_TTL}: true in the dynamic \
             configuration to allow down to {} for this daemon)",
            short.unwrap_or(floor)
        ));
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floors_are_upstreams_unless_short_ttl_is_allowed() {
        assert_eq!(TimingFloors::select(false), UPSTREAM_FLOORS);
        assert_eq!(TimingFloors::select(true), SHORT_FLOORS);
        assert_eq!(
            (
                UPSTREAM_FLOORS.ttl,
                UPSTREAM_FLOORS.loop_wait,
                UPSTREAM_FLOORS.retry_timeout
            ),
            (20, 1, 3)
        );
    }

    #[test]
    fn admits_table() {
        // (floors, ttl, loop_wait, retry_timeout) -> admitted?
        let cases = [
            (UPSTREAM_FLOORS, 30, 10, 10, true),
            (UPSTREAM_FLOORS, 20, 1, 3, true),
            (UPSTREAM_FLOORS, 20, 2, 5, true),
            (UPSTREAM_FLOORS, 6, 1, 2, false),
            (UPSTREAM_FLOORS, 20, 1, 2, false),
            (UPSTREAM_FLOORS, 20, 11, 5, false),
            (SHORT_FLOORS, 6, 1, 2, true),
            (SHORT_FLOORS, 5, 1, 2, false),
            (SHORT_FLOORS, 6, 1, 1, false),
            (SHORT_FLOORS, 6, 2, 2, true),
            (SHORT_FLOORS, 7, 2, 3, false),
            (SHORT_FLOORS, 6, 0, 2, false),
            (SHORT_FLOORS, 30, 10, 10, true),
        ];
        for (floors, ttl, lw, rt, ok) in cases {
            assert_eq!(floors.admits(ttl, lw, rt), ok, "{floors:?} {ttl}/{lw}/{rt}");
        }
    }

    #[test]
    fn needs_short_ttl_only_between_the_floors() {
        assert!(needs_short_ttl(6, 1, 2));
        assert!(needs_short_ttl(10, 2, 2));
        assert!(!needs_short_ttl(20, 2, 5));
        assert!(!needs_short_ttl(5, 1, 2), "below even the short floors");
    }

    #[test]
    fn messages_a_dba_understands() {
        assert_eq!(
            rule_violation(10, 2, 6).as_deref(),
            Some("ttl (10) must be at least loop_wait + 2*retry_timeout (14)")
        );
        assert_eq!(rule_violation(6, 1, 2), None);
        let m = floor_message("ttl", 6, 20, false);
        assert!(
            m.starts_with("must be at least 20 seconds, got 6") && m.contains(ALLOW_SHORT_TTL),
            "{m}"
        );
        let m = floor_message("ttl", 5, 6, true);
        assert_eq!(m, "must be at least 6 seconds, got 5");
        let m = floor_message("ttl", 3, 20, false);
        assert!(
            !m.contains(ALLOW_SHORT_TTL),
            "no hint the key would not help: {m}"
        );
    }

    fn issues(v: serde_json::Value) -> Vec<String> {
        let map = v.as_object().cloned().expect("object");
        let mut got: Vec<String> = crate::config::DynamicConfig::validate_map(&map)
            .into_iter()
            .map(|i| i.to_string())
            .collect();
        got.sort();
        got
    }

    #[test]
    fn validation_uses_upstream_floors_without_the_key() {
        let got = issues(serde_json::json!({"ttl": 6, "loop_wait": 1, "retry_timeout": 2}));
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(
            got[0].starts_with("retry_timeout: must be at least 3 seconds, got 2"),
            "{got:?}"
        );
        assert!(
            got[1].starts_with("ttl: must be at least 20 seconds, got 6"),
            "{got:?}"
        );
        assert!(got.iter().all(|m| m.contains(ALLOW_SHORT_TTL)), "{got:?}");
        assert!(
            issues(serde_json::json!({"ttl": 20, "loop_wait": 1, "retry_timeout": 3})).is_empty()
        );
    }

    #[test]
    fn validation_with_the_key_accepts_the_short_floors_and_no_lower() {
        let ok = serde_json::json!({"ttl": 6, "loop_wait": 1, "retry_timeout": 2, "allow_short_ttl": true});
        assert!(issues(ok).is_empty());
        let on = serde_json::json!({"ttl": 6, "loop_wait": 1, "retry_timeout": 2, "allow_short_ttl": "on"});
        assert!(issues(on).is_empty(), "upstream's boolean spellings");
        let got = issues(
            serde_json::json!({"ttl": 5, "loop_wait": 1, "retry_timeout": 1, "allow_short_ttl": true}),
        );
        assert_eq!(
            got,
            vec![
                "retry_timeout: must be at least 2 seconds, got 1".to_string(),
                "ttl: must be at least 6 seconds, got 5".to_string(),
            ]
        );
        let got = issues(
            serde_json::json!({"ttl": 6, "loop_wait": 1, "retry_timeout": 3, "allow_short_ttl": true}),
        );
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].starts_with("ttl: ttl (6) must be at least loop_wait + 2*retry_timeout (7)"),
            "{got:?}"
        );
        let got = issues(serde_json::json!({"allow_short_ttl": "maybe"}));
        assert_eq!(
            got,
            vec!["allow_short_ttl: must be true or false, got \"maybe\"".to_string()]
        );
    }

    #[test]
    fn reading_the_dcs_config_applies_the_floors_in_force() {
        use crate::config::DynamicConfig;
        let map = |v: serde_json::Value| v.as_object().cloned().expect("object");
        let (c, w) = DynamicConfig::from_map(&map(
            serde_json::json!({"ttl": 6, "loop_wait": 1, "retry_timeout": 2, "allow_short_ttl": "on"}),
        ));
        assert_eq!((c.ttl, c.loop_wait, c.retry_timeout), (6, 1, 2), "{w:?}");
        assert!(c.allow_short_ttl && w.is_empty(), "{w:?}");
        let (c, w) = DynamicConfig::from_map(&map(
            serde_json::json!({"ttl": 6, "loop_wait": 1, "retry_timeout": 2}),
        ));
        assert_eq!((c.ttl, c.loop_wait, c.retry_timeout), (20, 1, 3));
        assert!(
            w.iter()
                .any(|m| m.contains("ttl=6 can't be smaller than 20")),
            "{w:?}"
        );
        let (c, _) = DynamicConfig::from_map(&map(
            serde_json::json!({"ttl": 4, "loop_wait": 3, "retry_timeout": 3, "allow_short_ttl": true}),
        ));
        assert_eq!(
            (c.ttl, c.loop_wait, c.retry_timeout),
            (6, 1, 2),
            "raised, then fitted to the rule"
        );
    }

    #[test]
    fn the_key_is_not_written_back_when_off() {
        let c = crate::config::DynamicConfig::default();
        let v = serde_json::to_value(&c).expect("serialize");
        assert!(v.get(ALLOW_SHORT_TTL).is_none(), "{v}");
    }
}
