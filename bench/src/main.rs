//! `bench`: our daemon against upstream Patroni on identical clusters, alternating runs.
//! See bench/README.md for what each figure means and how it is taken.
mod cluster;
mod http;
mod opts;
mod procs;
mod report;
mod scenarios;
mod writer;
mod wrk;

use opts::{Impl, Opts};
use report::ProfileResults;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::process::Command;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match Opts::parse(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    tokio::spawn(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        eprintln!("interrupted: stopping every process this run started");
        procs::emergency_cleanup();
        std::process::exit(130);
    });
    if let Err(e) = run(&opts).await {
        eprintln!("bench: {e}");
        std::process::exit(1);
    }
}

async fn run(opts: &Opts) -> Result<(), String> {
    procs::pg_user()?;
    let mut meta = meta_start(opts);
    let mut all = Vec::new();
    for p in &opts.profiles {
        let mut pr = ProfileResults {
            profile: p.clone(),
            runs: BTreeMap::new(),
        };
        for run in 0..opts.runs {
            // Alternate who goes first so drift in machine load hits both alike.
            let mut order = opts.impls.clone();
            if run % 2 == 1 {
                order.reverse();
            }
            for imp in order {
                let label = format!("{}-{}-run{}", p.name, imp.name(), run + 1);
                let runs_at = p.for_impl(imp);
                eprintln!("== {label} ({})", runs_at.describe_run());
                let r = scenarios::one_run(opts, imp, &runs_at, &label).await;
                pr.runs.entry(imp.name()).or_default().push(r);
            }
            write_partial(opts, &meta, &all, &pr)?;
        }
        all.push(pr);
    }
    meta.insert("loadavg_end".into(), json!(loadavg()));
    write_results(opts, &meta, &all, "latest")?;
    let _ = std::fs::remove_file(opts.out_dir.join("partial.json"));
    println!("{}", report::to_markdown(opts, &meta, &all));
    Ok(())
}

fn write_partial(
    opts: &Opts,
    meta: &Map<String, Value>,
    done: &[ProfileResults],
    current: &ProfileResults,
) -> Result<(), String> {
    // An interrupted run still leaves what it measured so far.
    let v = json!({
        "done": report::to_json(opts, meta.clone(), done),
        "in_progress": report::to_json(opts, meta.clone(), std::slice::from_ref(current)),
    });
    std::fs::create_dir_all(&opts.out_dir).map_err(|e| e.to_string())?;
    let path = opts.out_dir.join("partial.json");
    std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap())
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn write_results(
    opts: &Opts,
    meta: &Map<String, Value>,
    all: &[ProfileResults],
    stem: &str,
) -> Result<(), String> {
    std::fs::create_dir_all(&opts.out_dir).map_err(|e| e.to_string())?;
    let json = report::to_json(opts, meta.clone(), all);
    let j = opts.out_dir.join(format!("{stem}.json"));
    let m = opts.out_dir.join(format!("{stem}.md"));
    std::fs::write(&j, serde_json::to_string_pretty(&json).unwrap() + "\n")
        .map_err(|e| format!("{}: {e}", j.display()))?;
    std::fs::write(&m, report::to_markdown(opts, meta, all))
        .map_err(|e| format!("{}: {e}", m.display()))?;
    eprintln!("wrote {} and {}", j.display(), m.display());
    Ok(())
}

fn meta_start(opts: &Opts) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert(
        "date".into(),
        json!(command_line("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"])),
    );
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    m.insert("host".into(), json!(host.trim()));
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    m.insert("cpus".into(), json!(cpus));
    m.insert("loadavg_start".into(), json!(loadavg()));
    let ours =
        std::env::var("BENCH_OURS_VERSION").unwrap_or_else(|_| "patroni (this repository)".into());
    m.insert("ours_version".into(), json!(ours));
    let up = opts.bin(Impl::Upstream).to_string_lossy().to_string();
    m.insert(
        "upstream_version".into(),
        json!(command_line(&up, &["--version"])),
    );
    m
}

fn command_line(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|e| format!("({cmd}: {e})"))
}

fn loadavg() -> String {
    let s = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    s.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}
