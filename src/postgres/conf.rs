//! Pure renderers for the files we own (postgresql.conf, pg_hba.conf, pgpass) and small
//! parsers for values we read back. No I/O here; `files.rs` writes what these produce.

use std::collections::BTreeMap;

use serde_json::Value;

/// GUCs passed to the postmaster on the command line (as upstream does) so that neither
/// `ALTER SYSTEM` nor a stray include can change them behind our back.
pub use crate::config::pg_params::CMDLINE_PARAMS;

/// Upstream's file names inside the config dir.
pub const POSTGRESQL_CONF: &str = "postgresql.conf";
pub const POSTGRESQL_BASE_CONF: &str = "postgresql.base.conf";
pub const PG_HBA_CONF: &str = "pg_hba.conf";
pub const PG_IDENT_CONF: &str = "pg_ident.conf";
pub const STANDBY_SIGNAL: &str = "standby.signal";
pub const RECOVERY_SIGNAL: &str = "recovery.signal";

pub fn is_cmdline_param(name: &str) -> bool {
    CMDLINE_PARAMS.iter().any(|p| p.eq_ignore_ascii_case(name))
}

/// Settings of the recovery machinery that come and go with the role (a promoted standby
/// still runs with its `recovery_target_*` values until a restart). Upstream leaves them,
/// and `hot_standby`, out of the pending-restart report.
const RECOVERY_GUCS: &[&str] = &[
    "archive_cleanup_command",
    "restore_command",
    "recovery_end_command",
    "recovery_target",
    "recovery_target_name",
    "recovery_target_time",
    "recovery_target_xid",
    "recovery_target_lsn",
    "recovery_target_inclusive",
    "recovery_target_timeline",
    "recovery_target_action",
    "recovery_min_apply_delay",
    "primary_conninfo",
    "primary_slot_name",
    "promote_trigger_file",
    "hot_standby",
];

pub fn is_recovery_param(name: &str) -> bool {
    RECOVERY_GUCS.iter().any(|p| p.eq_ignore_ascii_case(name))
}

/// Split `postgresql.listen` ("addr1,addr2:port") into (listen_addresses, port).
pub fn split_listen(listen: &str) -> (String, u16) {
    match listen.rsplit_once(':') {
        Some((hosts, port)) if !port.is_empty() && port.chars().all(|c| c.is_ascii_digit()) => {
            (hosts.to_string(), port.parse().unwrap_or(5432))
        }
        _ => (listen.to_string(), 5432),
    }
}

/// The address to reach our own postmaster over TCP: localhost when it listens on a
/// wildcard or loopback address, else the first listen address.
pub fn local_tcp_host(listen_addresses: &str) -> String {
    let addrs: Vec<&str> = listen_addresses.split(',').map(str::trim).collect();
    if addrs.iter().any(|a| {
        matches!(
            a.to_ascii_lowercase().as_str(),
            "*" | "0.0.0.0" | "127.0.0.1" | "localhost" | ""
        )
    }) {
        return "127.0.0.1".to_string();
    }
    addrs[0].to_string()
}

/// The first absolute directory in `unix_socket_directories`, if any.
pub fn unix_socket_dir(unix_socket_directories: &str) -> Option<String> {
    unix_socket_directories
        .split(',')
        .map(str::trim)
        .find(|d| d.starts_with('/'))
        .map(str::to_string)
}

/// Single quotes and backslashes doubled, as postgresql.conf expects inside '...'.
pub fn escape_conf_value(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\'', "''")
}

/// Escape for a libpq `key=value` conninfo: backslash before quote, backslash and space.
pub fn escape_conninfo_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        if matches!(c, '\'' | '\\' | ' ') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Render ordered `key=value` pairs as a libpq conninfo string, skipping empty values.
pub fn format_conninfo(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{k}={}", escape_conninfo_value(v)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Upstream's slot naming: lowercase, `-` and `.` become `_`, any other character outside
/// `[a-z0-9_]` becomes `u` + its code point as 4 digits; at most 63 bytes.
pub fn slot_name_from_member_name(member: &str) -> String {
    let mut out = String::new();
    for c in member.to_lowercase().chars() {
        match c {
            'a'..='z' | '0'..='9' | '_' => out.push(c),
            '-' | '.' => out.push('_'),
            other => out.push_str(&format!("u{:04}", other as u32)),
        }
    }
    out.truncate(63);
    out
}

/// The standby part of postgresql.conf.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RecoveryParams {
    /// `None`: standby without an upstream (no primary_conninfo).
    pub primary_conninfo: Option<String>,
    pub primary_slot_name: Option<String>,
    /// More recovery settings (a standby cluster's restore_command,
    /// archive_cleanup_command, recovery_min_apply_delay).
    pub extra: BTreeMap<String, String>,
}

/// Parameters for `primary_conninfo` (the password lives in the passfile, never here).
pub struct ConninfoParams<'a> {
    pub host: &'a str,
    pub port: u16,
    pub user: &'a str,
    pub passfile: &'a str,
    pub application_name: &'a str,
}

/// `primary_conninfo` as upstream writes it for PostgreSQL 13+.
pub fn primary_conninfo(p: &ConninfoParams) -> String {
    let port = p.port.to_string();
    format_conninfo(&[
        ("user", p.user),
        ("passfile", p.passfile),
        ("host", p.host),
        ("port", &port),
        ("sslmode", "prefer"),
        ("application_name", p.application_name),
        ("gssencmode", "prefer"),
        ("channel_binding", "prefer"),
    ])
}

/// postgresql.conf: include of the base file, then every parameter (also those passed on
/// the command line, so a reload never sees the base file's value for them and reports a
/// spurious pending restart), then the recovery settings for a standby.
pub fn render_postgresql_conf(
    include: &str,
    params: &BTreeMap<String, String>,
    recovery: Option<&RecoveryParams>,
) -> String {
    let mut out =
        String::from("# Do not edit this file manually!\n# It will be overwritten by Patroni!\n");
    out.push_str(&format!("include '{}'\n\n", escape_conf_value(include)));
    for (name, value) in params {
        out.push_str(&format!("{name} = '{}'\n", escape_conf_value(value)));
    }
    if let Some(r) = recovery {
        out.push_str("\n# recovery.conf\n");
        let mut rec: BTreeMap<&str, String> = BTreeMap::new();
        if let Some(ci) = &r.primary_conninfo {
            rec.insert("primary_conninfo", ci.clone());
        }
        if let Some(slot) = &r.primary_slot_name {
            rec.insert("primary_slot_name", slot.clone());
        }
        for (k, v) in &r.extra {
            rec.insert(k.as_str(), v.clone());
        }
        // Blank targets guard against settings in an included file pausing, promoting
        // or shutting down the standby.
        for t in [
            "recovery_target",
            "recovery_target_lsn",
            "recovery_target_name",
            "recovery_target_time",
            "recovery_target_xid",
        ] {
            rec.insert(t, String::new());
        }
        rec.insert("recovery_target_timeline", "latest".to_string());
        for (name, value) in rec {
            out.push_str(&format!("{name} = '{}'\n", escape_conf_value(&value)));
        }
    }
    out
}

/// pg_hba.conf from the configured lines.
pub fn render_lines(lines: &[String]) -> String {
    let mut out =
        String::from("# Do not edit this file manually!\n# It will be overwritten by Patroni!\n");
    for l in lines {
        out.push_str(l);
        out.push('\n');
    }
    out
}

fn escape_pgpass(v: &str) -> String {
    v.replace('\\', "\\\\").replace(':', "\\:")
}

/// pgpass lines `*:*:*:user:password` for each (user, password), first one wins per user.
pub fn render_pgpass(entries: &[(&str, &str)]) -> String {
    let mut seen = Vec::new();
    let mut out = String::new();
    for (user, pw) in entries {
        if seen.contains(user) {
            continue;
        }
        seen.push(user);
        out.push_str(&format!(
            "*:*:*:{}:{}\n",
            escape_pgpass(user),
            escape_pgpass(pw)
        ));
    }
    out
}

/// Strip one level of matching surrounding quotes (upstream's `unquote`).
fn unquote(v: &str) -> String {
    let t = v.trim();
    for q in ['"', '\''] {
        if t.len() >= 2 && t.starts_with(q) && t.ends_with(q) {
            return t[1..t.len() - 1].to_string();
        }
    }
    t.to_string()
}

fn value_to_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Tool options from config (`initdb:` / `basebackup:`): a list of `"switch"` or
/// `{key: value}`, or a map, into `--switch` / `--key=value`. Forbidden names are errors.
pub fn user_options(tool: &str, opts: &Value, forbidden: &[&str]) -> Result<Vec<String>, String> {
    let allowed = |name: &str| -> Result<(), String> {
        if forbidden.contains(&name) {
            Err(format!("{name} option for {tool} is not allowed"))
        } else {
            Ok(())
        }
    };
    let mut out = Vec::new();
    match opts {
        Value::Null => {}
        Value::Object(map) => {
            for (k, v) in map {
                allowed(k)?;
                match value_to_string(v) {
                    Some(s) if !s.is_empty() => out.push(format!("--{k}={}", unquote(&s))),
                    _ => {}
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                match item {
                    Value::String(s) => {
                        allowed(s)?;
                        out.push(format!("--{s}"));
                    }
                    Value::Object(m) if m.len() == 1 => {
                        let (k, v) = m.iter().next().expect("one entry");
                        allowed(k)?;
                        let s = value_to_string(v).ok_or_else(|| {
                            format!("{tool} option {k}: value should be a string")
                        })?;
                        out.push(format!("--{k}={}", unquote(&s)));
                    }
                    other => {
                        return Err(format!(
                            "{tool} option {other}: expected a string or a single key-value pair"
                        ));
                    }
                }
            }
        }
        other => {
            return Err(format!(
                "{tool} options must be a list or a map, got {other}"
            ));
        }
    }
    Ok(out)
}

/// Read the value of `name = '...'` from a postgresql.conf text (last occurrence wins).
pub fn read_conf_param(text: &str, name: &str) -> Option<String> {
    let mut found = None;
    for line in text.lines() {
        let line = line.trim();
        let Some((k, rest)) = line.split_once('=') else {
            continue;
        };
        if !k.trim().eq_ignore_ascii_case(name) {
            continue;
        }
        let rest = rest.trim();
        if let Some(body) = rest.strip_prefix('\'') {
            let mut val = String::new();
            let mut chars = body.chars().peekable();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => val.extend(chars.next()),
                    '\'' if chars.peek() == Some(&'\'') => {
                        chars.next();
                        val.push('\'');
                    }
                    '\'' => break,
                    c => val.push(c),
                }
            }
            found = Some(val);
        } else {
            found = rest.split_whitespace().next().map(str::to_string);
        }
    }
    found
}

/// Parse a libpq `key=value ...` conninfo (with `\` escapes and '...' quoting).
pub fn parse_conninfo(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        if key.is_empty() {
            break;
        }
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == '=') {
            chars.next();
        }
        let mut val = String::new();
        let quoted = chars.peek() == Some(&'\'');
        if quoted {
            chars.next();
        }
        while let Some(c) = chars.next() {
            match c {
                '\\' => val.extend(chars.next()),
                '\'' if quoted => break,
                c if c.is_whitespace() && !quoted => break,
                c => val.push(c),
            }
        }
        out.insert(key, val);
    }
    out
}

/// (host, port) of the upstream our standby config points at.
pub fn configured_primary(conf_text: &str) -> Option<(String, u16)> {
    let ci = parse_conninfo(&read_conf_param(conf_text, "primary_conninfo")?);
    let host = ci.get("host")?.clone();
    let port = ci.get("port").and_then(|p| p.parse().ok()).unwrap_or(5432);
    Some((host, port))
}

/// Split a command line like a POSIX shell would for simple cases (quotes, backslashes).
pub fn split_command(cmd: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = cmd.chars();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('"'), '\\') => cur.extend(chars.next()),
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, '\\') => {
                cur.extend(chars.next());
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (None, c) => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_settings_are_told_apart() {
        assert!(is_recovery_param("Recovery_Target_Timeline"));
        assert!(is_recovery_param("hot_standby"));
        assert!(!is_recovery_param("max_connections"));
    }
    use serde_json::json;

    #[test]
    fn listen_split_and_local_host() {
        assert_eq!(split_listen("127.0.0.1:5433"), ("127.0.0.1".into(), 5433));
        assert_eq!(split_listen("0.0.0.0"), ("0.0.0.0".into(), 5432));
        assert_eq!(
            split_listen("10.0.0.1,127.0.0.1:6000"),
            ("10.0.0.1,127.0.0.1".into(), 6000)
        );
        assert_eq!(local_tcp_host("*"), "127.0.0.1");
        assert_eq!(local_tcp_host("10.0.0.1, 127.0.0.1"), "127.0.0.1");
        assert_eq!(local_tcp_host("10.0.0.1,10.0.0.2"), "10.0.0.1");
        assert_eq!(unix_socket_dir("@abstract, /tmp/s"), Some("/tmp/s".into()));
    }

    #[test]
    fn slot_names_follow_upstream() {
        assert_eq!(slot_name_from_member_name("Postgres-1.dc"), "postgres_1_dc");
        assert_eq!(slot_name_from_member_name("a b"), "au0032b");
        assert_eq!(slot_name_from_member_name(&"x".repeat(80)).len(), 63);
    }

    #[test]
    fn conf_includes_base_then_parameters() {
        let mut p = BTreeMap::new();
        p.insert("port".to_string(), "5432".to_string());
        p.insert("work_mem".to_string(), "4MB".to_string());
        p.insert("archive_command".to_string(), "cp %p '/a b/%f'".to_string());
        let text = render_postgresql_conf("postgresql.base.conf", &p, None);
        assert!(text.contains("include 'postgresql.base.conf'\n"));
        assert!(text.contains("work_mem = '4MB'\n"));
        assert!(text.contains("archive_command = 'cp %p ''/a b/%f'''\n"));
        assert!(text.contains("port = '5432'\n"));
        assert!(!text.contains("recovery_target_timeline"));
        assert_eq!(
            read_conf_param(&text, "archive_command").as_deref(),
            Some("cp %p '/a b/%f'")
        );
    }

    #[test]
    fn standby_conf_round_trips_primary() {
        let ci = primary_conninfo(&ConninfoParams {
            host: "10.0.0.5",
            port: 5433,
            user: "repl user",
            passfile: "/var/lib/pgpass",
            application_name: "node-2",
        });
        assert_eq!(
            ci,
            "user=repl\\ user passfile=/var/lib/pgpass host=10.0.0.5 port=5433 sslmode=prefer \
             application_name=node-2 gssencmode=prefer channel_binding=prefer"
        );
        let rec = RecoveryParams {
            primary_conninfo: Some(ci),
            primary_slot_name: Some("node_2".into()),
            ..Default::default()
        };
        let text = render_postgresql_conf("custom.conf", &BTreeMap::new(), Some(&rec));
        assert!(text.contains("primary_slot_name = 'node_2'\n"));
        assert!(text.contains("recovery_target_timeline = 'latest'\n"));
        assert!(text.contains("recovery_target = ''\n"));
        assert_eq!(configured_primary(&text), Some(("10.0.0.5".into(), 5433)));
        let parsed = parse_conninfo(&read_conf_param(&text, "primary_conninfo").unwrap());
        assert_eq!(parsed["user"], "repl user");
        let none = RecoveryParams::default();
        assert_eq!(
            configured_primary(&render_postgresql_conf("b", &BTreeMap::new(), Some(&none))),
            None
        );
    }

    #[test]
    fn pgpass_escapes_and_dedups() {
        let text = render_pgpass(&[("repl", "a:b\\c"), ("postgres", "pw"), ("repl", "other")]);
        assert_eq!(text, "*:*:*:repl:a\\:b\\\\c\n*:*:*:postgres:pw\n");
    }

    #[test]
    fn tool_options_list_and_map() {
        let v = json!(["data-checksums", {"encoding": "UTF8"}, {"locale": "\"en US\""}]);
        assert_eq!(
            user_options("initdb", &v, &["pgdata"]).unwrap(),
            vec!["--data-checksums", "--encoding=UTF8", "--locale=en US"]
        );
        let m = json!({"max-rate": "100M", "checkpoint": "fast"});
        assert_eq!(
            user_options("basebackup", &m, &[]).unwrap(),
            vec!["--checkpoint=fast", "--max-rate=100M"]
        );
        assert!(user_options("initdb", &json!(["pgdata"]), &["pgdata"]).is_err());
        assert!(user_options("initdb", &json!([{"a": "1", "b": "2"}]), &[]).is_err());
        assert!(user_options("initdb", &json!("x"), &[]).is_err());
    }

    #[test]
    fn command_split() {
        assert_eq!(
            split_command("/bin/sh -c 'echo hi there'"),
            vec!["/bin/sh", "-c", "echo hi there"]
        );
        assert_eq!(
            split_command(r#"a "b \" c" d\ e"#),
            vec!["a", "b \" c", "d e"]
        );
    }
}
