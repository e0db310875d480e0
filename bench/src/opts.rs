//! Command-line options (hand-parsed: a handful of `--key value` pairs).
use std::path::PathBuf;

/// One timing setting, applied identically to both implementations via `bootstrap.dcs`.
#[derive(Clone, Debug)]
pub struct Profile {
    pub name: String,
    pub ttl: u64,
    pub loop_wait: u64,
    pub retry_timeout: u64,
}

impl Profile {
    /// `fast`, `default`, or `NAME=TTL/LOOP_WAIT/RETRY_TIMEOUT` (e.g. `quick=6/1/2`).
    pub fn parse(s: &str) -> Result<Profile, String> {
        let make = |name: &str, ttl, loop_wait, retry_timeout| Profile {
            name: name.to_string(),
            ttl,
            loop_wait,
            retry_timeout,
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

    pub fn describe(&self) -> String {
        format!(
            "ttl {} / loop_wait {} / retry_timeout {}",
            self.ttl, self.loop_wait, self.retry_timeout
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
