//! `edit-config`: change the dynamic configuration in the DCS (editor, -s/-p pairs,
//! --apply/--replace files), show a unified diff, confirm, and write the `config` key with
//! compare-and-set against the version that was read.

use super::cli::Group;
use super::table::to_yaml;
use super::{Ctl, CtlResult, msg, prompt};
use crate::config::deep_merge_patch;
use crate::dcs::Dcs;
use clap::Args;
use serde_json::{Map, Value};
use std::io::IsTerminal;

#[derive(Debug, Args)]
pub struct EditArgs {
    pub cluster_name: Option<String>,
    #[command(flatten)]
    pub group: Group,
    /// Do not show changes
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Set specific configuration value. Can be specified multiple times
    #[arg(short = 's', long = "set", value_name = "KEY=VALUE")]
    pub kvpairs: Vec<String>,
    /// Set specific PostgreSQL parameter value. Shorthand for -s postgresql.parameters. Can be specified multiple times
    #[arg(short = 'p', long = "pg", value_name = "GUC=VALUE")]
    pub pgkvpairs: Vec<String>,
    /// Apply configuration from file. Use - for stdin.
    #[arg(long = "apply", value_name = "FILE")]
    pub apply_filename: Option<String>,
    /// Apply configuration from file, replacing existing configuration. Use - for stdin.
    #[arg(long = "replace", value_name = "FILE")]
    pub replace_filename: Option<String>,
    /// Do not ask for confirmation at any point
    #[arg(long)]
    pub force: bool,
}

pub async fn edit_config(ctl: &Ctl, a: EditArgs) -> CtlResult<()> {
    let scope = ctl.scope(a.cluster_name.as_deref())?;
    let (dcs, cluster) = ctl.existing_cluster(&scope, &a.group).await?;
    let Some(cfg) = &cluster.config else {
        return Err(msg(format!(
            "The config key does not exist in the cluster {scope}"
        )));
    };
    let before = to_yaml(&Value::Object(cfg.data.clone()), false);
    let mut changed = cfg.data.clone();
    let mut after: Option<String> = None;
    if let Some(f) = &a.replace_filename {
        changed = Map::new();
        deep_merge_patch(&mut changed, &read_yaml_file(f)?);
        after = Some(to_yaml(&Value::Object(changed.clone()), false));
    }
    if let Some(f) = &a.apply_filename {
        deep_merge_patch(&mut changed, &read_yaml_file(f)?);
        after = Some(to_yaml(&Value::Object(changed.clone()), false));
    }
    if !a.kvpairs.is_empty() || !a.pgkvpairs.is_empty() {
        let pairs = a.kvpairs.iter().cloned().chain(
            a.pgkvpairs
                .iter()
                .map(|p| format!("postgresql.parameters.{}", p.trim_start())),
        );
        for pair in pairs {
            apply_pair(&mut changed, &pair)?;
        }
        after = Some(to_yaml(&Value::Object(changed.clone()), false));
    }
    let after = match after {
        Some(a) => a,
        None => {
            let (text, data) = invoke_editor(&before, &scope)?;
            changed = data;
            text
        }
    };
    if changed == cfg.data {
        if !a.quiet {
            println!("Not changed");
        }
        return Ok(());
    }
    if !a.quiet {
        for line in unified_diff(&before, &after) {
            println!("{line}");
        }
    }
    let from_stdin =
        a.apply_filename.as_deref() == Some("-") || a.replace_filename.as_deref() == Some("-");
    if from_stdin && !a.force {
        println!("Use --force option to apply changes");
        return Ok(());
    }
    if a.force || prompt::confirm("Apply these changes?")? {
        let value = Value::Object(changed).to_string();
        if !dcs.set_config_value(&value, Some(cfg.version)).await? {
            return Err(msg("Config modification aborted due to concurrent changes"));
        }
        println!("Configuration changed");
    }
    Ok(())
}

fn parse_yaml_map(text: &str, origin: &str) -> CtlResult<Map<String, Value>> {
    match serde_yaml_ng::from_str::<Value>(text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(Value::Null) => Ok(Map::new()),
        Ok(_) => Err(msg(format!("{origin} does not contain a YAML mapping"))),
        Err(e) => Err(msg(format!("{origin}: invalid YAML: {e}"))),
    }
}

fn read_yaml_file(f: &str) -> CtlResult<Map<String, Value>> {
    let text = if f == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .map_err(|e| msg(format!("cannot read stdin: {e}")))?;
        s
    } else {
        std::fs::read_to_string(f).map_err(|e| msg(format!("cannot read {f}: {e}")))?
    };
    parse_yaml_map(&text, if f == "-" { "stdin" } else { f })
}

/// A `-s` value as PyYAML reads it (YAML 1.1: `on`/`off`/`yes`/`no` are booleans);
/// empty or null deletes the key.
pub fn yaml_value(raw: &str) -> Value {
    match raw.trim() {
        "yes" | "Yes" | "YES" | "on" | "On" | "ON" => return Value::Bool(true),
        "no" | "No" | "NO" | "off" | "Off" | "OFF" => return Value::Bool(false),
        _ => {}
    }
    serde_yaml_ng::from_str::<Value>(raw).unwrap_or_else(|_| Value::String(raw.to_string()))
}

/// Upstream's `set_path_value`: dotted path; under `postgresql.parameters` the rest of the
/// path is one GUC name (GUCs may contain dots). Empty parents are pruned.
pub fn apply_pair(data: &mut Map<String, Value>, pair: &str) -> CtlResult<()> {
    let Some((path, value)) = pair.split_once('=').filter(|_| !pair.is_empty()) else {
        return Err(msg(format!("Invalid parameter setting {pair}")));
    };
    let parts: Vec<String> = path.trim().split('.').map(str::to_string).collect();
    set_path(data, &parts, yaml_value(value), &[]);
    Ok(())
}

fn set_path(config: &mut Map<String, Value>, path: &[String], value: Value, prefix: &[String]) {
    let joined;
    let path = if prefix == ["postgresql", "parameters"] {
        joined = [path.join(".")];
        &joined[..]
    } else {
        path
    };
    let key = &path[0];
    if path.len() == 1 {
        if value.is_null() {
            config.remove(key);
        } else {
            config.insert(key.clone(), value);
        }
        return;
    }
    if !config.get(key).is_some_and(Value::is_object) {
        config.insert(key.clone(), Value::Object(Map::new()));
    }
    let mut sub_prefix = prefix.to_vec();
    sub_prefix.push(key.clone());
    if let Some(Value::Object(child)) = config.get_mut(key) {
        set_path(child, &path[1..], value, &sub_prefix);
        if child.is_empty() {
            config.remove(key);
        }
    }
}

fn invoke_editor(before: &str, scope: &str) -> CtlResult<(String, Map<String, Value>)> {
    let editor = std::env::var("EDITOR")
        .ok()
        .filter(|e| !e.is_empty())
        .or_else(|| ["editor", "vi"].iter().find_map(|e| which(e)));
    let Some(editor) = editor else {
        return Err(msg(
            "EDITOR environment variable is not set. editor or vi are not available",
        ));
    };
    let file = TempFile::create(
        &format!("{}-config-", scope.replace('/', "_")),
        ".yaml",
        before,
    )?;
    let status = std::process::Command::new(&editor)
        .arg(&file.0)
        .status()
        .map_err(|e| msg(format!("cannot run the editor {editor}: {e}")))?;
    if !status.success() {
        return Err(msg(format!(
            "Editor exited with return code {}",
            status.code().unwrap_or(-1)
        )));
    }
    let after = std::fs::read_to_string(&file.0)
        .map_err(|e| msg(format!("cannot read the edited file: {e}")))?;
    let data = parse_yaml_map(&after, "the edited configuration")?;
    Ok((after, data))
}

/// A private temp file removed on drop (the editor gets its path).
struct TempFile(std::path::PathBuf);

impl TempFile {
    fn create(prefix: &str, suffix: &str, contents: &str) -> CtlResult<TempFile> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let dir = std::env::temp_dir();
        for n in 0..100u32 {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let path = dir.join(format!(
                "{prefix}{}{nanos:x}{n}{suffix}",
                std::process::id()
            ));
            let opened = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path);
            if let Ok(mut f) = opened {
                f.write_all(contents.as_bytes())
                    .map_err(|e| msg(format!("cannot write {}: {e}", path.display())))?;
                return Ok(TempFile(path));
            }
        }
        Err(msg(format!(
            "cannot create a temporary file in {}",
            dir.display()
        )))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn which(name: &str) -> Option<String> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .map(|p| p.display().to_string())
}

/// difflib-style unified diff (3 lines of context, empty file names).
pub fn unified_diff(before: &str, after: &str) -> Vec<String> {
    let a: Vec<&str> = before.trim_end_matches('\n').split('\n').collect();
    let b: Vec<&str> = after.trim_end_matches('\n').split('\n').collect();
    let ops = diff_ops(&a, &b);
    let changes: Vec<usize> = ops
        .iter()
        .enumerate()
        .filter(|(_, o)| o.0 != ' ')
        .map(|(i, _)| i)
        .collect();
    if changes.is_empty() {
        return vec![];
    }
    let colour = std::io::stdout().is_terminal();
    let mut out = vec!["--- ".to_string(), "+++ ".to_string()];
    let mut i = 0;
    while i < changes.len() {
        let start = changes[i].saturating_sub(3);
        let mut end = (changes[i] + 4).min(ops.len());
        while i + 1 < changes.len() && changes[i + 1] <= end + 3 {
            i += 1;
            end = (changes[i] + 4).min(ops.len());
        }
        i += 1;
        let hunk = &ops[start..end];
        let (a0, b0) = ops[..start].iter().fold((0, 0), |(x, y), o| {
            (x + (o.0 != '+') as usize, y + (o.0 != '-') as usize)
        });
        let alen = hunk.iter().filter(|o| o.0 != '+').count();
        let blen = hunk.iter().filter(|o| o.0 != '-').count();
        out.push(format!("@@ -{} +{} @@", range(a0, alen), range(b0, blen)));
        for (op, line) in hunk {
            let text = format!("{op}{line}");
            out.push(match (colour, op) {
                (true, '-') => format!("\x1b[31m{text}\x1b[0m"),
                (true, '+') => format!("\x1b[32m{text}\x1b[0m"),
                _ => text,
            });
        }
    }
    out
}

fn range(start: usize, len: usize) -> String {
    match len {
        0 => format!("{start},0"),
        1 => format!("{}", start + 1),
        n => format!("{},{n}", start + 1),
    }
}

/// Line operations from a longest-common-subsequence table (configs are small).
fn diff_ops<'a>(a: &[&'a str], b: &[&'a str]) -> Vec<(char, &'a str)> {
    let (n, m) = (a.len(), b.len());
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut ops) = (0, 0, Vec::new());
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            ops.push((' ', a[i]));
            i += 1;
            j += 1;
        } else if j < m && (i == n || lcs[i][j + 1] >= lcs[i + 1][j]) {
            ops.push(('+', b[j]));
            j += 1;
        } else {
            ops.push(('-', a[i]));
            i += 1;
        }
    }
    // difflib prints removals before additions within a change.
    let mut k = 0;
    while k < ops.len() {
        let s = k;
        while k < ops.len() && ops[k].0 != ' ' {
            k += 1;
        }
        ops[s..k].sort_by_key(|o| o.0 != '-');
        k = k.max(s + 1);
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pairs_follow_upstream() {
        let mut d = json!({"ttl": 30, "postgresql": {"parameters": {"max_connections": 100}}})
            .as_object()
            .unwrap()
            .clone();
        apply_pair(&mut d, "ttl=40").unwrap();
        apply_pair(
            &mut d,
            "postgresql.parameters.auto_explain.log_min_duration=100",
        )
        .unwrap();
        apply_pair(&mut d, "postgresql.parameters.max_connections=").unwrap();
        apply_pair(&mut d, "postgresql.use_slots=off").unwrap();
        apply_pair(&mut d, "a.b.c=null").unwrap();
        assert_eq!(
            Value::Object(d.clone()),
            json!({"ttl": 40, "postgresql": {"use_slots": false, "parameters": {"auto_explain.log_min_duration": 100}}})
        );
        assert!(apply_pair(&mut d, "novalue").is_err());
    }

    #[test]
    fn diff_like_difflib() {
        let d = unified_diff("a\nb\nc\nd\ne\nf\ng\nh\n", "a\nb\nc\nd\nX\nf\ng\nh\n");
        assert_eq!(
            d,
            vec![
                "--- ",
                "+++ ",
                "@@ -2,7 +2,7 @@",
                " b",
                " c",
                " d",
                "-e",
                "+X",
                " f",
                " g",
                " h"
            ]
        );
        assert_eq!(
            unified_diff("a\n", "a\nb\n"),
            vec!["--- ", "+++ ", "@@ -1 +1,2 @@", " a", "+b"]
        );
    }
}
