//! `patroni CONFIG.yml`: load and validate the config, then run the HA loop and REST API.

use anyhow::{Context, Result, bail};
use clap::Parser;
use patroni::config::{self, Config};
use patroni::status::NodeStatus;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

#[derive(Parser, Debug)]
#[command(name = "patroni", version = patroni::PATRONI_VERSION, about = "PostgreSQL high availability (Patroni-compatible)")]
struct Args {
    /// Check the configuration file, print every problem with its YAML path, and exit.
    #[arg(long)]
    validate_config: bool,
    /// Internal: run as the self-fencing process for this data directory (spawned by the
    /// daemon; see src/fence.rs).
    #[arg(long, hide = true, value_name = "DATA_DIR")]
    fence: Option<PathBuf>,
    /// The Patroni YAML configuration file (or set PATRONI_CONFIGURATION).
    config: Option<PathBuf>,
}

fn main() {
    let args = Args::parse();
    if let Some(data_dir) = &args.fence {
        std::process::exit(patroni::fence::run_fencer(data_dir));
    }
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let loaded = match config::validate::validate_file_or_env(args.config.as_deref(), &env) {
        Ok(l) => l,
        Err(issues) => {
            eprintln!("The configuration is invalid:");
            for i in &issues {
                eprintln!("  {i}");
            }
            std::process::exit(1);
        }
    };
    if args.validate_config {
        for w in &loaded.warnings {
            println!("warning: {w}");
        }
        println!("configuration is valid");
        return;
    }
    init_logging(&loaded.config);
    for w in &loaded.warnings {
        warn!("{w}");
    }
    if let Err(e) = drop_privileges(&loaded.config) {
        eprintln!("{e:#}");
        std::process::exit(1);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio");
    if let Err(e) = rt.block_on(run(loaded.config, args.config)) {
        error!("{e:#}");
        std::process::exit(1);
    }
}

fn init_logging(cfg: &Config) {
    let level = cfg
        .log
        .get("level")
        .and_then(|l| l.as_str())
        .unwrap_or("info")
        .to_lowercase();
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .init();
}

/// PostgreSQL refuses to run as root: as root, become the `postgres` user (or
/// PATRONI_RUN_AS), creating the data directory's parent for it first.
fn drop_privileges(cfg: &Config) -> Result<()> {
    use nix::unistd::{Gid, Uid, User, setgid, setgroups, setuid};
    if !Uid::effective().is_root() {
        return Ok(());
    }
    let name = std::env::var("PATRONI_RUN_AS").unwrap_or_else(|_| "postgres".into());
    let Some(user) = User::from_name(&name)? else {
        bail!(
            "running as root and there is no '{name}' user to run PostgreSQL as (set PATRONI_RUN_AS)"
        );
    };
    if let Some(parent) = cfg
        .postgresql
        .data_dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty() && !p.exists())
    {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
        std::os::unix::fs::chown(parent, Some(user.uid.as_raw()), Some(user.gid.as_raw()))?;
    }
    setgroups(&[Gid::from_raw(user.gid.as_raw())])?;
    setgid(user.gid)?;
    setuid(user.uid)?;
    info!("running as user '{name}' (PostgreSQL refuses root)");
    Ok(())
}

async fn run(cfg: Config, path: Option<PathBuf>) -> Result<()> {
    let cfg = Arc::new(cfg);
    let dcs = connect_dcs(&cfg).await?;
    let bootstrap_dynamic = patroni::config::DynamicConfig::from_map(&cfg.bootstrap.dcs).0;
    let pg = Arc::new(patroni::postgres::Postgres::new(
        patroni::postgres::settings_from_config(&cfg, &bootstrap_dynamic),
    ));
    let (tx, rx) = tokio::sync::watch::channel(Arc::new(NodeStatus {
        name: cfg.name.clone(),
        scope: cfg.scope.clone(),
        ..Default::default()
    }));
    let mut runtime = patroni::runtime::Runtime::new(cfg.clone(), dcs.clone(), pg, tx);
    // The self-fencing process is on unless PATRONI_FENCE says off (beyond upstream).
    let fence_off = std::env::var("PATRONI_FENCE")
        .is_ok_and(|v| matches!(v.to_lowercase().as_str(), "off" | "false" | "0" | "no"));
    if !fence_off {
        runtime.enable_fence();
    }
    let api_state = patroni::api::ApiState {
        status: rx,
        dcs: Some(dcs.clone()),
        wake: runtime.wake.clone(),
        commands: Some(runtime.command_sender()),
        reloader: Some(runtime.reloader(path.clone())),
        config: Some(runtime.config_watch()),
    };
    // TLS settings are read once at start (a changed certfile needs a daemon restart).
    let tls = patroni::api::tls_acceptor(&cfg.restapi).context("restapi TLS settings")?;
    let listener = tokio::net::TcpListener::bind(&cfg.restapi.listen)
        .await
        .with_context(|| format!("cannot listen on restapi.listen {}", cfg.restapi.listen))?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut api_stop = stop_rx.clone();
    let api_shutdown = async move {
        let _ = api_stop.wait_for(|s| *s).await;
    };
    let api = match tls {
        Some(acceptor) => {
            info!("REST API serves HTTPS on {}", cfg.restapi.listen);
            tokio::spawn(patroni::api::serve_tls(
                listener,
                acceptor,
                api_state,
                api_shutdown,
            ))
        }
        None => tokio::spawn(patroni::api::serve(listener, api_state, api_shutdown)),
    };
    tokio::spawn(watch_sighup(runtime.reloader(path)));
    let mut ha_stop = stop_rx.clone();
    let ha = tokio::spawn(runtime.run(async move {
        let _ = ha_stop.wait_for(|s| *s).await;
    }));
    wait_for_termination().await;
    info!("received a termination signal");
    let _ = stop_tx.send(true);
    let _ = ha.await;
    let _ = tokio::time::timeout(Duration::from_secs(2), api).await;
    Ok(())
}

async fn connect_dcs(cfg: &Config) -> Result<Arc<dyn patroni::dcs::Dcs>> {
    use patroni::dcs::{etcd2, etcd3, exhibitor, zookeeper};
    let dynamic = patroni::config::dynamic::DynamicConfig::from_map(&cfg.bootstrap.dcs).0;
    let ttl = Duration::from_secs(dynamic.ttl);
    let retry = Duration::from_secs(dynamic.retry_timeout);
    let (ns, scope, name) = (&cfg.namespace, &cfg.scope, &cfg.name);
    if let Some(etcd) = cfg.etcd3.as_ref() {
        let d = etcd3::Etcd3Dcs::connect(etcd, ns, scope, name, ttl, retry)
            .await
            .context("connecting to etcd")?;
        return Ok(Arc::new(d));
    }
    if let Some(etcd) = cfg.etcd.as_ref() {
        let d = etcd2::Etcd2Dcs::connect(etcd, ns, scope, name, ttl, retry)
            .context("setting up the etcd (v2 API) client")?;
        return Ok(Arc::new(d));
    }
    if let Some(ex) = cfg.exhibitor.as_ref() {
        let d = exhibitor::connect(ex, ns, scope, name, ttl, retry)
            .await
            .context("asking Exhibitor for the ZooKeeper ensemble")?;
        return Ok(Arc::new(d));
    }
    if let Some(zk) = cfg.zookeeper.as_ref() {
        let d = zookeeper::ZooKeeperDcs::connect(zk, ns, scope, name, ttl, retry)
            .await
            .context("setting up the ZooKeeper client")?;
        return Ok(Arc::new(d));
    }
    if let Some(consul) = cfg.consul.as_ref() {
        let d = patroni::dcs::consul::ConsulDcs::new(
            consul,
            &cfg.namespace,
            &cfg.scope,
            &cfg.name,
            ttl,
            retry,
        )
        .context("setting up the Consul client")?;
        return Ok(Arc::new(d));
    }
    if let Some(k8s) = cfg.kubernetes.as_ref() {
        let server = patroni::dcs::kubernetes::ApiServer::discover(k8s.context.as_deref())
            .context("finding the Kubernetes API server")?;
        let d = patroni::dcs::kubernetes::KubernetesDcs::new(
            k8s, server, &cfg.scope, &cfg.name, ttl, retry,
        )
        .context("setting up the Kubernetes client")?;
        return Ok(Arc::new(d));
    }
    bail!(
        "no supported DCS section: configure `etcd3:`, `etcd:`, `zookeeper:`, `exhibitor:`, `consul:` or `kubernetes:`"
    );
}

async fn wait_for_termination() {
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// SIGHUP: re-read the local configuration; the loop adopts a valid one at once.
async fn watch_sighup(reloader: patroni::reload::ConfigReloader) {
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        match reloader.reload() {
            Ok(warnings) => {
                for w in warnings {
                    warn!("SIGHUP: {w}");
                }
                info!("SIGHUP: configuration re-read");
            }
            Err(issues) => {
                for i in issues {
                    warn!("SIGHUP: configuration not reloaded: {i}");
                }
            }
        }
    }
}
