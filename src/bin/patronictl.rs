//! `patronictl`: upstream-compatible operator CLI (see `patroni::ctl`).
use clap::Parser;
use patroni::ctl::{Cli, CtlError};

fn main() {
    let cli = Cli::parse();
    // Upstream logs warnings only; LOGLEVEL / PATRONI_LOGLEVEL / PATRONI_LOG_LEVEL raise it.
    let level = ["LOGLEVEL", "PATRONI_LOGLEVEL", "PATRONI_LOG_LEVEL"]
        .iter()
        .find_map(|v| std::env::var(v).ok())
        .unwrap_or_else(|| "warn".into())
        .to_lowercase();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            level.replace("warning", "warn"),
        ))
        .with_writer(std::io::stderr)
        .try_init();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    match rt.block_on(patroni::ctl::run(cli)) {
        Ok(()) => {}
        Err(CtlError::Reported) => std::process::exit(1),
        Err(e) => {
            eprintln!("Error: {e}");
            std::process::exit(1);
        }
    }
}
