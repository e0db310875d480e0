//! Checks of the replica creation and bootstrap method sections: tool options in the
//! shape upstream accepts, options Patroni sets itself refused with a plain reason.

use super::Config;
use super::validate::{ConfigIssue, describe_value};
use crate::postgres::replica_methods::{BASEBACKUP, BASEBACKUP_NOT_ALLOWED};
use serde_json::Value;

fn issue(out: &mut Vec<ConfigIssue>, path: String, message: impl Into<String>) {
    out.push(ConfigIssue {
        path,
        message: message.into(),
    });
}

/// `postgresql.basebackup`, the custom replica methods' sections and the custom
/// bootstrap method's section.
pub(super) fn check_methods(cfg: &Config) -> Vec<ConfigIssue> {
    let mut out = Vec::new();
    if let Some(opts) = &cfg.postgresql.basebackup {
        check_basebackup(opts, &mut out);
    }
    for name in cfg.postgresql.create_replica_methods.iter().flatten() {
        if name == BASEBACKUP {
            continue;
        }
        if let Some(section) = cfg.postgresql.extra.get(name) {
            check_method_section(section, &format!("postgresql.{name}"), &mut out);
        }
    }
    if let Some(method) = cfg.bootstrap.method.as_deref().filter(|m| *m != "initdb")
        && let Some(section) = cfg.bootstrap.extra.get(method)
    {
        let path = format!("bootstrap.{method}");
        check_method_section(section, &path, &mut out);
        if let Some(rc) = section.get("recovery_conf")
            && !rc.is_object()
        {
            issue(
                &mut out,
                format!("{path}.recovery_conf"),
                format!(
                    "must be a mapping of recovery settings, got {}",
                    describe_value(rc)
                ),
            );
        }
    }
    out
}

fn check_method_section(section: &Value, path: &str, out: &mut Vec<ConfigIssue>) {
    let Some(m) = section.as_object() else {
        issue(
            out,
            path.to_string(),
            format!(
                "must be a mapping with the method's command and options, got {}",
                describe_value(section)
            ),
        );
        return;
    };
    if let Some(c) = m.get("command")
        && c.as_str().is_none_or(|c| c.trim().is_empty())
    {
        issue(
            out,
            format!("{path}.command"),
            format!("must be a command line, got {}", describe_value(c)),
        );
    }
}

/// `basebackup:` as a map (`max-rate: 100M`) or a list of switches and single pairs.
fn check_basebackup(opts: &Value, out: &mut Vec<ConfigIssue>) {
    match opts {
        Value::Object(m) => {
            for (k, v) in m {
                let single = Value::Object([(k.clone(), v.clone())].into_iter().collect());
                if let Err(e) = check_tool_option(&single, BASEBACKUP_NOT_ALLOWED) {
                    issue(out, format!("postgresql.basebackup.{k}"), e);
                }
            }
        }
        Value::Array(items) => {
            for (i, opt) in items.iter().enumerate() {
                if let Err(e) = check_tool_option(opt, BASEBACKUP_NOT_ALLOWED) {
                    issue(out, format!("postgresql.basebackup[{i}]"), e);
                }
            }
        }
        other => issue(
            out,
            "postgresql.basebackup".into(),
            format!(
                "must be a list or a mapping of pg_basebackup options, got {}",
                describe_value(other)
            ),
        ),
    }
}

/// A tool option: a switch (`data-checksums`) or one `name: value` pair, not one of
/// the options Patroni sets itself.
pub(super) fn check_tool_option(opt: &Value, not_allowed: &[&str]) -> Result<(), String> {
    let name = match opt {
        Value::String(s) => s.as_str(),
        Value::Object(m) if m.len() == 1 => {
            let (k, v) = m.iter().next().expect("one entry");
            if !(v.is_string() || v.is_number()) {
                return Err(format!(
                    "the value of {k} must be a string, got {}",
                    describe_value(v)
                ));
            }
            k.as_str()
        }
        Value::Object(m) => {
            return Err(format!(
                "each entry must be a single `name: value` pair, this one has {} keys; split it into separate entries",
                m.len()
            ));
        }
        other => {
            return Err(format!(
                "must be a switch such as data-checksums or a `name: value` pair, got {}",
                describe_value(other)
            ));
        }
    };
    if name.starts_with('-') {
        return Err(format!(
            "write the option without leading dashes, e.g. {:?}",
            name.trim_start_matches('-')
        ));
    }
    if not_allowed.contains(&name) {
        return Err(format!("{name} is set by Patroni and not allowed here"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn issues(v: Value) -> Vec<String> {
        let cfg: Config = serde_json::from_value(v).unwrap();
        check_methods(&cfg)
            .into_iter()
            .map(|i| format!("{}: {}", i.path, i.message))
            .collect()
    }

    #[test]
    fn forbidden_basebackup_options_are_refused_by_name() {
        assert_eq!(
            issues(json!({"postgresql": {"basebackup": {"max-rate": "100M", "format": "tar"}}})),
            ["postgresql.basebackup.format: format is set by Patroni and not allowed here"]
        );
        assert_eq!(
            issues(
                json!({"postgresql": {"basebackup": ["verbose", {"wal-method": "fetch"}, {"a": 1, "b": 2}]}})
            ),
            [
                "postgresql.basebackup[1]: wal-method is set by Patroni and not allowed here",
                "postgresql.basebackup[2]: each entry must be a single `name: value` pair, this one has 2 keys; split it into separate entries",
            ]
        );
        assert!(
            issues(json!({"postgresql": {"basebackup": [{"checkpoint": "fast"}, "verbose"]}}))
                .is_empty()
        );
        assert_eq!(
            issues(json!({"postgresql": {"basebackup": "fast"}})),
            [
                "postgresql.basebackup: must be a list or a mapping of pg_basebackup options, got \"fast\""
            ]
        );
    }

    #[test]
    fn method_sections_must_be_mappings_with_a_command() {
        assert_eq!(
            issues(
                json!({"postgresql": {"create_replica_methods": ["a", "b", "basebackup"],
                                          "a": "x", "b": {"command": 3}}})
            ),
            [
                "postgresql.a: must be a mapping with the method's command and options, got \"x\"",
                "postgresql.b.command: must be a command line, got 3",
            ]
        );
        assert_eq!(
            issues(json!({"bootstrap": {"method": "restore",
                                        "restore": {"command": "r", "recovery_conf": "x"}}})),
            ["bootstrap.restore.recovery_conf: must be a mapping of recovery settings, got \"x\""]
        );
    }
}
