//! Command-line options (hand-parsed: a handful of `--key value` pairs).
use patroni::config::{ALLOW_SHORT_TTL, DynamicConfig, UPSTREAM_FLOORS};
use std::path::PathBuf;

/// One timing setting, applied identically to both implementations via `bootstrap.dcs`,
/// except below upstream's floors: there ours runs it with `allow_short_ttl: true` and
/// upstream runs the timing it adjusts it to (its floors), see [`Profile::for_impl`].
#[derive(Clone, Debug)]
pub struct Profile {
    pub name: String,
    pub ttl: u64,
    pub loop_wait: u64,
    pub retry_timeout: u64,
    /// Write `allow_short_ttl: true` into `bootstrap.dcs` (ours only).
    pub allow_short_ttl: bool,
}

impl Profile {
    /// `fast`, `default`, or `NAME=TTL/LOOP_WAIT/RETRY_TIMEOUT` (e.g. `quick=6/1/2`).
    pub fn parse(s: &str) -> Result<Profile, String> {
        let make = |name: &str, ttl, loop_wait, retry_timeout| Profile {
            name: name.to_string(),
            ttl,
            loop_wait,
            retry_timeout,
            allow_short_ttl: false,
        };
        match s {
            "fast" => return Ok(make("fast", 20, 2, 5)),
            "default" => return Ok(make("default", 30, 10, 10)),
            _ => {}
        }
        let bad = || format!("profile '{s}': expected fast, default or NAME=TTL/LOOP_WAIT/RETRY");
        let (name, nums) = s.split_once('=').ok_or_else(bad)?;
        let n: Vec<u64> = nums
            .split('/')
            .map(|x| x.parse().map_err(|_| bad()))
            .collect::<Result<_, _>>()?;
        match n[..] {
            [ttl, lw, rt] => Ok(make(name, ttl, lw, rt)),
            _ => Err(bad()),
        }
    }

    fn timing(&self) -> String {
        format!(
            "ttl {} / loop_wait {} / retry_timeout {}",
            self.ttl, self.loop_wait, self.retry_timeout
        )
    }

    /// `true` when a value is below upstream's floors (the library's constants).
    pub fn below_upstream_floors(&self) -> bool {
        let f = UPSTREAM_FLOORS;
        self.ttl < f.ttl || self.loop_wait < f.loop_wait || self.retry_timeout < f.retry_timeout
    }

    /// The timing `imp` actually runs. Ours: the profile, with `allow_short_ttl` when it is
    /// below upstream's floors. Upstream: the profile as upstream adjusts it (raised to its
    /// floors, then fitted to `loop_wait + 2*retry_timeout <= ttl`), written out explicitly.
    pub fn for_impl(&self, imp: Impl) -> Profile {
        let mut d = DynamicConfig {
            ttl: self.ttl,
            loop_wait: self.loop_wait,
            retry_timeout: self.retry_timeout,
            ..DynamicConfig::default()
        };
        let short = imp == Impl::Ours && self.below_upstream_floors();
        d.allow_short_ttl = short;
        d.enforce_timing();
        Profile {
            name: self.name.clone(),
            ttl: d.ttl,
            loop_wait: d.loop_wait,
            retry_timeout: d.retry_timeout,
            allow_short_ttl: short,
        }
    }

    /// The timing of one run (a profile already adjusted by [`Profile::for_impl`]).
    pub fn describe_run(&self) -> String {
        let short = if self.allow_short_ttl {
            format!(" with {ALLOW_SHORT_TTL}")
        } else {
            String::new()
        };
        format!("{}{short}", self.timing())
    }

    /// The profile for a heading: one timing, or what each implementation runs.
    pub fn describe(&self) -> String {
        let (ours, up) = (self.for_impl(Impl::Ours), self.for_impl(Impl::Upstream));
        let short = if ours.allow_short_ttl {
            format!(" with {ALLOW_SHORT_TTL}")
        } else {
            String::new()
        };
        if (ours.ttl, ours.loop_wait, ours.retry_timeout)
            == (up.ttl, up.loop_wait, up.retry_timeout)
        {
            return format!("{}{short}", ours.timing());
        }
        format!(
            "ours {}{short}; upstream refuses that and is raised to its floor: {}",
            ours.timing(),
            up.timing()
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Impl {
    Ours,
    Upstream,
}

impl Impl {
    pub fn name(self) -> &'static str {
        match self {
            Impl::Ours => "ours",
            Impl::Upstream => "upstream",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Opts {
    pub runs: usize,
    pub profiles: Vec<Profile>,
    pub impls: Vec<Impl>,
    pub ours_bin: PathBuf,
    pub upstream_bin: PathBuf,
    pub out_dir: PathBuf,
    pub logs_dir: PathBuf,
    pub idle_secs: u64,
    pub wrk_secs: u64,
    pub wrk_threads: u32,
    pub wrk_conns: u32,
    /// HAProxy `default-server` health-check parameters.
    pub check: String,
    /// Hold an exclusive flock on this file while each cluster exists.
    pub lock: Option<PathBuf>,
}

pub const USAGE: &str = "usage: bench [--runs N] [--profiles fast,default,NAME=TTL/LW/RT] \
[--impls ours,upstream] --ours-bin PATH --upstream-bin PATH [--out DIR] [--logs DIR] \
[--idle-secs S] [--wrk-secs S] [--wrk-threads N] [--wrk-conns N] \
[--check 'inter 1s fall 3 rise 2'] [--lock FILE]";

impl Opts {
    pub fn parse(args: &[String]) -> Result<Opts, String> {
        let mut o = Opts {
            runs: 3,
            profiles: vec![Profile::parse("fast")?],
            impls: vec![Impl::Ours, Impl::Upstream],
            ours_bin: PathBuf::from("target/release/patroni"),
            upstream_bin: PathBuf::from("target/bench-venv/bin/patroni"),
            out_dir: PathBuf::from("bench/results"),
            logs_dir: PathBuf::from("target/bench-logs"),
            idle_secs: 30,
            wrk_secs: 5,
            wrk_threads: 2,
            wrk_conns: 16,
            check: "inter 1s fall 3 rise 2".into(),
            lock: None,
        };
        let mut it = args.iter();
        while let Some(k) = it.next() {
            if k == "-h" || k == "--help" {
                return Err(USAGE.into());
            }
            let v = it
                .next()
                .ok_or_else(|| format!("{k} needs a value\n{USAGE}"))?;
            o.set(k, v)?;
        }
        if o.runs == 0 || o.profiles.is_empty() || o.impls.is_empty() {
            return Err("need at least one run, profile and implementation".into());
        }
        Ok(o)
    }

    fn set(&mut self, k: &str, v: &str) -> Result<(), String> {
        let num = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("{k}: not a number: {v}"))
        };
        match k {
            "--runs" => self.runs = num(v)? as usize,
            "--profiles" => {
                self.profiles = v.split(',').map(Profile::parse).collect::<Result<_, _>>()?
            }
            "--impls" => self.impls = v.split(',').map(parse_impl).collect::<Result<_, _>>()?,
            "--ours-bin" => self.ours_bin = v.into(),
            "--upstream-bin" => self.upstream_bin = v.into(),
            "--out" => self.out_dir = v.into(),
            "--logs" => self.logs_dir = v.into(),
            "--idle-secs" => self.idle_secs = num(v)?.max(1),
            "--wrk-secs" => self.wrk_secs = num(v)?.max(1),
            "--wrk-threads" => self.wrk_threads = num(v)?.max(1) as u32,
            "--wrk-conns" => self.wrk_conns = num(v)?.max(1) as u32,
            "--check" => self.check = v.into(),
            "--lock" => self.lock = (!v.is_empty()).then(|| v.into()),
            _ => return Err(format!("unknown option {k}\n{USAGE}")),
        }
        Ok(())
    }

    pub fn bin(&self, imp: Impl) -> &PathBuf {
        match imp {
            Impl::Ours => &self.ours_bin,
            Impl::Upstream => &self.upstream_bin,
        }
    }
}

fn parse_impl(s: &str) -> Result<Impl, String> {
    match s {
        "ours" => Ok(Impl::Ours),
        "upstream" => Ok(Impl::Upstream),
        _ => Err(format!("unknown implementation '{s}' (ours, upstream)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_profile_runs_short_for_ours_and_at_the_floor_for_upstream() {
        let p = Profile::parse("quick=6/1/2").unwrap();
        let ours = p.for_impl(Impl::Ours);
        let up = p.for_impl(Impl::Upstream);
        assert_eq!((ours.ttl, ours.loop_wait, ours.retry_timeout), (6, 1, 2));
        assert!(ours.allow_short_ttl);
        assert_eq!((up.ttl, up.loop_wait, up.retry_timeout), (20, 1, 3));
        assert!(!up.allow_short_ttl);
        assert_eq!(
            p.describe(),
            "ours ttl 6 / loop_wait 1 / retry_timeout 2 with allow_short_ttl; upstream refuses \
             that and is raised to its floor: ttl 20 / loop_wait 1 / retry_timeout 3"
        );
    }

    #[test]
    fn profiles_at_or_above_the_floors_are_the_same_for_both() {
        for name in ["fast", "default"] {
            let p = Profile::parse(name).unwrap();
            let (o, u) = (p.for_impl(Impl::Ours), p.for_impl(Impl::Upstream));
            assert_eq!(
                (o.ttl, o.loop_wait, o.retry_timeout),
                (p.ttl, p.loop_wait, p.retry_timeout)
            );
            assert_eq!(
                (u.ttl, u.loop_wait, u.retry_timeout),
                (p.ttl, p.loop_wait, p.retry_timeout)
            );
            assert!(!o.allow_short_ttl && !u.allow_short_ttl);
            assert!(!p.describe().contains("upstream"), "{}", p.describe());
        }
    }
}
