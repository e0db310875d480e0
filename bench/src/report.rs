//! Per-run figures, their median and spread, and the JSON + markdown reports.
use crate::opts::{Impl, Opts, Profile};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

/// What one cluster (one implementation, one profile, one run) measured.
#[derive(Default, Debug)]
pub struct RunResult {
    pub metrics: BTreeMap<&'static str, f64>,
    /// Extra facts (HTTP answers, per-node figures) kept in the JSON only.
    pub extra: Map<String, Value>,
    /// Why a figure is missing.
    pub notes: Vec<String>,
}

impl RunResult {
    pub fn set(&mut self, key: &'static str, v: f64) {
        debug_assert!(METRICS.iter().any(|m| m.key == key), "unknown metric {key}");
        self.metrics.insert(key, v);
    }
    pub fn note(&mut self, what: &str, why: impl std::fmt::Display) {
        let msg = format!("{what}: {why}");
        eprintln!("    ! {msg}");
        self.notes.push(msg);
    }
    fn to_json(&self) -> Value {
        json!({"metrics": self.metrics, "extra": self.extra, "notes": self.notes})
    }
}

pub struct Metric {
    pub key: &'static str,
    pub label: &'static str,
    pub unit: &'static str,
    pub lower_is_better: bool,
}

const fn m(key: &'static str, label: &'static str, unit: &'static str, lower: bool) -> Metric {
    Metric {
        key,
        label,
        unit,
        lower_is_better: lower,
    }
}

pub const METRICS: &[Metric] = &[
    m(
        "failover_write_unavailable_s",
        "Node crash (kill -9 daemon + postmaster): write pause",
        "s",
        true,
    ),
    m(
        "failover_new_primary_s",
        "Node crash: time to a new primary",
        "s",
        true,
    ),
    m(
        "failover_lost_writes",
        "Node crash: lost acknowledged writes",
        "writes",
        true,
    ),
    m(
        "switchover_write_unavailable_s",
        "Switchover under load: write pause",
        "s",
        true,
    ),
    m(
        "switchover_new_primary_s",
        "Switchover: time to the new primary",
        "s",
        true,
    ),
    m(
        "switchover_lost_writes",
        "Switchover: lost acknowledged writes",
        "writes",
        true,
    ),
    m(
        "pm_crash_write_recovery_s",
        "Postmaster crash (kill -9): writes succeed again after",
        "s",
        true,
    ),
    m(
        "pm_crash_lost_writes",
        "Postmaster crash: lost acknowledged writes",
        "writes",
        true,
    ),
    m("rss_mib", "Daemon RSS per node (mean of 3)", "MiB", true),
    m(
        "cpu_s_per_idle_min",
        "Daemon CPU per idle minute per node (mean of 3)",
        "s",
        true,
    ),
    m(
        "rest_primary_rps",
        "GET /primary throughput (wrk)",
        "req/s",
        false,
    ),
    m(
        "rest_primary_p99_ms",
        "GET /primary p99 latency",
        "ms",
        true,
    ),
    m(
        "rest_patroni_rps",
        "GET /patroni throughput (wrk)",
        "req/s",
        false,
    ),
    m(
        "rest_patroni_p99_ms",
        "GET /patroni p99 latency",
        "ms",
        true,
    ),
    m(
        "bootstrap_s",
        "Bootstrap of a 3-node cluster (all streaming)",
        "s",
        true,
    ),
];

#[derive(Debug, PartialEq)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

pub fn summarize(values: &[f64]) -> Option<Summary> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = match n {
        0 => return None,
        _ if n % 2 == 1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    };
    Some(Summary {
        median,
        min: v[0],
        max: v[n - 1],
        n,
    })
}

/// All runs of one profile, per implementation.
pub struct ProfileResults {
    pub profile: Profile,
    pub runs: BTreeMap<&'static str, Vec<RunResult>>,
}

impl ProfileResults {
    fn values(&self, imp: Impl, key: &str) -> Vec<f64> {
        self.runs
            .get(imp.name())
            .into_iter()
            .flatten()
            .filter_map(|r| r.metrics.get(key).copied())
            .collect()
    }

    fn summary(&self, imp: Impl, key: &str) -> Option<Summary> {
        summarize(&self.values(imp, key))
    }

    /// Ours' median over upstream's; None when undefined (a zero or a missing side).
    fn ratio(&self, key: &str) -> Option<f64> {
        let (o, u) = (
            self.summary(Impl::Ours, key)?,
            self.summary(Impl::Upstream, key)?,
        );
        (u.median != 0.0).then(|| o.median / u.median)
    }

    /// The HTTP answers to POST /switchover that were not a success, per implementation.
    fn switchover_refusals(&self, imp: Impl) -> Vec<String> {
        let runs = self.runs.get(imp.name()).into_iter().flatten();
        let mut v: Vec<String> = runs
            .filter(|r| !r.metrics.contains_key("switchover_write_unavailable_s"))
            .filter_map(|r| r.extra.get("switchover_http")?.as_str().map(str::to_string))
            .collect();
        v.dedup();
        v
    }

    fn to_json(&self) -> Value {
        let mut summary = Map::new();
        for imp in [Impl::Ours, Impl::Upstream] {
            let mut s = Map::new();
            for m in METRICS {
                if let Some(x) = self.summary(imp, m.key) {
                    s.insert(
                        m.key.into(),
                        json!({"median": x.median, "min": x.min, "max": x.max, "n": x.n}),
                    );
                }
            }
            summary.insert(imp.name().into(), Value::Object(s));
        }
        let ratios: Map<String, Value> = METRICS
            .iter()
            .filter_map(|m| Some((m.key.to_string(), json!(self.ratio(m.key)?))))
            .collect();
        let runs: Map<String, Value> = self
            .runs
            .iter()
            .map(|(k, v)| (k.to_string(), v.iter().map(RunResult::to_json).collect()))
            .collect();
        let ran = |imp| {
            let t = self.profile.for_impl(imp);
            json!({"ttl": t.ttl, "loop_wait": t.loop_wait, "retry_timeout": t.retry_timeout,
                   "allow_short_ttl": t.allow_short_ttl})
        };
        json!({
            "timing": {"ttl": self.profile.ttl, "loop_wait": self.profile.loop_wait,
                       "retry_timeout": self.profile.retry_timeout},
            "timing_run": {"ours": ran(Impl::Ours), "upstream": ran(Impl::Upstream)},
            "summary": summary, "ratio_ours_to_upstream": ratios, "runs": runs,
        })
    }
}

pub fn to_json(opts: &Opts, meta: Map<String, Value>, all: &[ProfileResults]) -> Value {
    let profiles: Map<String, Value> = all
        .iter()
        .map(|p| (p.profile.name.clone(), p.to_json()))
        .collect();
    json!({
        "meta": meta,
        "settings": {
            "runs": opts.runs, "haproxy_check": opts.check, "idle_secs": opts.idle_secs,
            "wrk": format!("wrk -t{} -c{} -d{}s --latency", opts.wrk_threads, opts.wrk_conns, opts.wrk_secs),
            "writer": "one INSERT every 50 ms through HAProxy, fresh connection after any error",
        },
        "profiles": profiles,
    })
}

fn fmt_num(x: f64, unit: &str) -> String {
    if unit == "writes" && x.fract() == 0.0 {
        return format!("{x:.0}");
    }
    match x.abs() {
        a if a >= 1000.0 => format!("{x:.0}"),
        a if a >= 100.0 => format!("{x:.1}"),
        _ => format!("{x:.2}"),
    }
}

fn cell(s: Option<Summary>, unit: &str) -> String {
    let f = |x| fmt_num(x, unit);
    match s {
        None => "n/a".into(),
        Some(s) if s.n == 1 => f(s.median),
        Some(s) => format!("{} ({}–{})", f(s.median), f(s.min), f(s.max)),
    }
}

pub fn to_markdown(opts: &Opts, meta: &Map<String, Value>, all: &[ProfileResults]) -> String {
    let mv = |k: &str| {
        meta.get(k)
            .map(|v| v.to_string().trim_matches('"').to_string())
    };
    let mut md = format!(
        "# Benchmark: ours vs upstream Patroni\n\n\
         Generated {} on {} ({} CPUs, load average {} at start, {} at end).  \n\
         Upstream: {}. Ours: {}.  \n\
         {} run(s) per implementation, alternating; each cell is the median (min–max).\n\
         HAProxy checks `{}`; writer: one INSERT every 50 ms through HAProxy; \
         REST: `wrk -t{} -c{} -d{}s` against the leader.\n",
        mv("date").unwrap_or_default(),
        mv("host").unwrap_or_default(),
        mv("cpus").unwrap_or_default(),
        mv("loadavg_start").unwrap_or_default(),
        mv("loadavg_end").unwrap_or_default(),
        mv("upstream_version").unwrap_or_default(),
        mv("ours_version").unwrap_or_default(),
        opts.runs,
        opts.check,
        opts.wrk_threads,
        opts.wrk_conns,
        opts.wrk_secs,
    );
    for p in all {
        md += &profile_table(p);
    }
    md
}

fn profile_table(p: &ProfileResults) -> String {
    let mut md = format!(
        "\n## Profile `{}` ({})\n\n| Measure | Unit | Ours | Upstream | Ours / upstream | Better |\n\
         |---|---|---|---|---|---|\n",
        p.profile.name,
        p.profile.describe()
    );
    for m in METRICS {
        let shown = |imp| {
            let c = cell(p.summary(imp, m.key), m.unit);
            match p.switchover_refusals(imp).first() {
                Some(a) if m.key.starts_with("switchover") && c == "n/a" => {
                    format!("n/a (HTTP {})", a.replace('|', "/").replace('\n', " "))
                }
                _ => c,
            }
        };
        let ratio = p.ratio(m.key).map_or("–".into(), |r| format!("{r:.2}"));
        let better = if m.lower_is_better { "lower" } else { "higher" };
        md += &format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            m.label,
            m.unit,
            shown(Impl::Ours),
            shown(Impl::Upstream),
            ratio,
            better
        );
    }
    let notes: Vec<String> = p
        .runs
        .iter()
        .flat_map(|(imp, rs)| {
            rs.iter().enumerate().flat_map(move |(i, r)| {
                r.notes
                    .iter()
                    .map(move |n| format!("- {imp} run {}: {n}", i + 1))
            })
        })
        .collect();
    if !notes.is_empty() {
        md += &format!(
            "\nNotes (missing figures, errors):\n\n{}\n",
            notes.join("\n")
        );
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_spread() {
        let s = summarize(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
        assert_eq!(summarize(&[1.0, 4.0]).unwrap().median, 2.5);
        assert_eq!(summarize(&[]), None);
    }

    #[test]
    fn ratio_is_ours_over_upstream_and_undefined_at_zero() {
        let run = |k: &'static str, v: f64| {
            let mut r = RunResult::default();
            r.set(k, v);
            r
        };
        let mut runs = BTreeMap::new();
        runs.insert(
            "ours",
            vec![run("rss_mib", 10.0), run("failover_lost_writes", 0.0)],
        );
        runs.insert(
            "upstream",
            vec![run("rss_mib", 50.0), run("failover_lost_writes", 0.0)],
        );
        let p = ProfileResults {
            profile: Profile::parse("fast").unwrap(),
            runs,
        };
        assert_eq!(p.ratio("rss_mib"), Some(0.2));
        assert_eq!(p.ratio("failover_lost_writes"), None);
        assert_eq!(p.ratio("bootstrap_s"), None);
    }
}
