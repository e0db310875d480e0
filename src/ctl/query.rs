//! `query`: run SQL on a member chosen by role or name and print the result like upstream
//! (errors become an `ERROR, SQLSTATE: ...` row, not a failure of the command).

use super::cli::{CtlRole, Format, Group, Watch};
use super::members::{conn_host_port, timestamp};
use super::select::any_member;
use super::table::render;
use super::{Ctl, CtlResult, msg, prompt};
use crate::dcs::Cluster;
use clap::Args;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio_postgres::types::Type;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

#[derive(Debug, Args)]
pub struct QueryArgs {
    pub cluster_name: Option<String>,
    #[command(flatten)]
    pub group: Group,
    /// Output format (pretty, tsv, json, yaml)
    #[arg(long = "format", value_enum, default_value = "tsv")]
    pub fmt: Format,
    /// Execute the SQL commands from this file (- for stdin)
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// force password prompt
    #[arg(long)]
    pub password: bool,
    /// database user name
    #[arg(short = 'U', long)]
    pub username: Option<String>,
    #[command(flatten)]
    pub watch: Watch,
    /// The role of the query
    #[arg(short = 'r', long, value_enum)]
    pub role: Option<CtlRole>,
    /// Query a specific member
    #[arg(short = 'm', long)]
    pub member: Option<String>,
    /// The column delimiter
    #[arg(long, default_value = "\t")]
    pub delimiter: String,
    /// The SQL commands to execute
    #[arg(short = 'c', long)]
    pub command: Option<String>,
    /// database name to connect to
    #[arg(short = 'd', long)]
    pub dbname: Option<String>,
}

struct Auth {
    user: String,
    password: Option<String>,
    dbname: Option<String>,
}

type Output = (Vec<Vec<Value>>, Option<Vec<String>>);

pub async fn run(ctl: &Ctl, a: QueryArgs) -> CtlResult<()> {
    let sql = match (&a.file, &a.command) {
        (Some(_), Some(_)) => {
            return Err(msg("--file and --command are mutually exclusive options"));
        }
        (Some(f), None) => read_sql(f)?,
        (None, Some(c)) => c.clone(),
        (None, None) => return Err(msg("You need to specify either --command or --file")),
    };
    if a.role.is_some() && a.member.is_some() {
        return Err(msg("--role and --member are mutually exclusive options"));
    }
    let user = a
        .username
        .clone()
        .or_else(|| std::env::var("PGUSER").ok())
        .unwrap_or_else(os_user);
    let password = if a.password {
        Some(prompt::password("Password")?)
    } else {
        None
    };
    let auth = Auth {
        user,
        password,
        dbname: a.dbname.clone(),
    };
    let scope = ctl.scope(a.cluster_name.as_deref())?;
    let (_, cluster) = ctl.existing_cluster(&scope, &a.group).await?;
    let every = match (a.watch.watch, a.watch.w) {
        (Some(s), _) if s > 0.0 => Some(Duration::from_secs_f64(s)),
        (_, true) => Some(Duration::from_secs(2)),
        _ => None,
    };
    let mut client: Option<Client> = None;
    loop {
        let started = Instant::now();
        let (rows, header) = query_member(&cluster, &mut client, &a, &auth, &sql).await;
        let columns = header.unwrap_or_default();
        println!("{}", render(&columns, &rows, &[], a.fmt, "", &a.delimiter));
        let Some(every) = every else { return Ok(()) };
        tokio::time::sleep(every.saturating_sub(started.elapsed())).await;
    }
}

fn read_sql(f: &PathBuf) -> CtlResult<String> {
    if f.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .map_err(|e| msg(format!("cannot read stdin: {e}")))?;
        return Ok(s);
    }
    std::fs::read_to_string(f)
        .map_err(|e| msg(format!("Could not open file '{}': {e}", f.display())))
}

fn os_user() -> String {
    nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| "postgres".into())
}

fn error_row(message: &str) -> Output {
    (vec![vec![json!(timestamp(0)), json!(message)]], None)
}

async fn query_member(
    cluster: &Cluster,
    client: &mut Option<Client>,
    a: &QueryArgs,
    auth: &Auth,
    sql: &str,
) -> Output {
    if client.as_ref().is_none_or(Client::is_closed) {
        match connect(cluster, a, auth).await {
            Ok(Some(c)) => *client = Some(c),
            Ok(None) => {
                let m = match (&a.member, a.role) {
                    (Some(m), _) => format!("No connection to member {m} is available"),
                    (None, Some(r)) => format!("No connection to role {} is available", r.as_str()),
                    _ => "No connection is available".to_string(),
                };
                return error_row(&m);
            }
            Err(e) => return error_row(&format!("ERROR, SQLSTATE: {}", pg_error(&e))),
        }
    }
    let c = client.as_ref().expect("connected above");
    match execute(c, sql).await {
        Ok(out) => out,
        Err(e) => {
            *client = None;
            error_row(&format!("ERROR, SQLSTATE: {}", pg_error(&e)))
        }
    }
}

fn pg_error(e: &tokio_postgres::Error) -> String {
    let text = match e.code() {
        Some(code) => code.code().to_string(),
        None => {
            let mut s = e.to_string();
            if let Some(src) = std::error::Error::source(e) {
                s = format!("{s}: {src}");
            }
            s
        }
    };
    text.replace('\n', " ")
}

/// Connect to the chosen member; for replica/primary roles the server must agree.
async fn connect(
    cluster: &Cluster,
    a: &QueryArgs,
    auth: &Auth,
) -> Result<Option<Client>, tokio_postgres::Error> {
    let Ok(Some(m)) = any_member(cluster, a.role, a.member.as_deref()) else {
        return Ok(None);
    };
    let (Some(host), port) = conn_host_port(m) else {
        return Ok(None);
    };
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(&host)
        .port(port)
        .user(&auth.user)
        .application_name("Patroni ctl")
        .connect_timeout(Duration::from_secs(5));
    let dbname = auth
        .dbname
        .clone()
        .or_else(|| std::env::var("PGDATABASE").ok())
        .unwrap_or_else(|| auth.user.clone());
    cfg.dbname(&dbname);
    let password = auth
        .password
        .clone()
        .or_else(|| std::env::var("PGPASSWORD").ok())
        .or_else(|| pgpass(&host, port, &dbname, &auth.user));
    if let Some(p) = password {
        cfg.password(p);
    }
    let (client, conn) = cfg.connect(NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let needs_check = matches!(
        a.role,
        Some(CtlRole::Replica | CtlRole::Standby | CtlRole::StandbyLeader | CtlRole::Primary)
    );
    if !needs_check {
        return Ok(Some(client));
    }
    let in_recovery: bool = client
        .query_one("SELECT pg_catalog.pg_is_in_recovery()", &[])
        .await?
        .get(0);
    let ok = if a.role == Some(CtlRole::Primary) {
        !in_recovery
    } else {
        in_recovery
    };
    Ok(ok.then_some(client))
}

/// libpq's password file lookup (PGPASSFILE or ~/.pgpass), first matching line wins.
fn pgpass(host: &str, port: u16, db: &str, user: &str) -> Option<String> {
    let path = std::env::var_os("PGPASSFILE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".pgpass")))?;
    let text = std::fs::read_to_string(path).ok()?;
    let port = port.to_string();
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let f = split_pgpass(l);
        let want = [host, port.as_str(), db, user];
        (f.len() == 5 && f.iter().zip(want).all(|(a, b)| a == "*" || a == b)).then(|| f[4].clone())
    })
}

fn split_pgpass(line: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.last_mut().unwrap().extend(chars.next()),
            ':' => out.push(String::new()),
            c => out.last_mut().unwrap().push(c),
        }
    }
    out
}

/// Run the SQL (several statements allowed); the last result with columns is shown,
/// typed by a prepare of a single statement when that works.
async fn execute(c: &Client, sql: &str) -> Result<Output, tokio_postgres::Error> {
    let types: Option<Vec<Type>> = c
        .prepare(sql)
        .await
        .ok()
        .map(|s| s.columns().iter().map(|c| c.type_().clone()).collect());
    let mut header: Option<Vec<String>> = None;
    let mut rows: Vec<Vec<Value>> = Vec::new();
    for msg in c.simple_query(sql).await? {
        match msg {
            SimpleQueryMessage::RowDescription(cols) => {
                header = Some(cols.iter().map(|c| c.name().to_string()).collect());
                rows.clear();
            }
            SimpleQueryMessage::Row(r) => {
                let vals = (0..r.len())
                    .map(|i| typed(r.get(i), types.as_ref().and_then(|t| t.get(i))))
                    .collect();
                rows.push(vals);
            }
            _ => {}
        }
    }
    Ok((rows, header))
}

fn typed(text: Option<&str>, ty: Option<&Type>) -> Value {
    let Some(t) = text else { return Value::Null };
    match ty {
        Some(&Type::BOOL) => json!(t == "t"),
        Some(&Type::INT2 | &Type::INT4 | &Type::INT8 | &Type::OID) => {
            t.parse::<i64>().map(Value::from).unwrap_or(json!(t))
        }
        Some(&Type::FLOAT4 | &Type::FLOAT8) => t
            .parse::<f64>()
            .ok()
            .and_then(|f| serde_json::Number::from_f64(f).map(Value::Number))
            .unwrap_or(json!(t)),
        _ => json!(t),
    }
}
