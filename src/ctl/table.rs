//! Upstream's `print_output`: a prettytable-style box with the cluster name in the top
//! border, tab separated values, or JSON/YAML lists of objects keyed by column name.

use super::cli::Format;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Column alignment for pretty tables ('l' unless listed).
pub type Alignment<'a> = &'a [(&'a str, char)];

/// Render rows in `fmt`. `header`: title injected in the top border (list/topology);
/// with a header, JSON/YAML rows drop empty values, as upstream does.
pub fn render(
    columns: &[String],
    rows: &[Vec<Value>],
    align: Alignment,
    fmt: Format,
    header: &str,
    delimiter: &str,
) -> String {
    match fmt {
        Format::Json | Format::Yaml | Format::Yml => {
            let objs: Vec<Vec<(String, Value)>> = rows
                .iter()
                .map(|r| {
                    columns
                        .iter()
                        .cloned()
                        .zip(r.iter().cloned())
                        .filter(|(_, v)| header.is_empty() || !py_str(v).is_empty())
                        .collect()
                })
                .collect();
            if fmt == Format::Json {
                let items: Vec<String> = objs.iter().map(|o| py_json_pairs(o)).collect();
                format!("[{}]", items.join(", "))
            } else {
                let list: Vec<Value> = objs
                    .into_iter()
                    .map(|o| Value::Object(o.into_iter().collect::<Map<_, _>>()))
                    .collect();
                to_yaml(&Value::Array(list), false).trim_end().to_string()
            }
        }
        Format::Tsv => std::iter::once(columns.to_vec())
            .chain(rows.iter().map(|r| r.iter().map(py_str).collect()))
            .map(|r| r.join(delimiter))
            .collect::<Vec<_>>()
            .join("\n"),
        Format::Pretty | Format::Topology => pretty(columns, rows, align, header),
    }
}

fn pretty(columns: &[String], rows: &[Vec<Value>], align: Alignment, header: &str) -> String {
    let cells: Vec<Vec<Vec<String>>> = rows
        .iter()
        .map(|r| {
            r.iter()
                .map(|v| py_str(v).split('\n').map(str::to_string).collect())
                .collect()
        })
        .collect();
    let widths: Vec<usize> = (0..columns.len())
        .map(|i| {
            let body = cells
                .iter()
                .flat_map(|r| r.get(i).into_iter().flatten())
                .map(|l| l.chars().count());
            body.chain([columns[i].chars().count()]).max().unwrap_or(0)
        })
        .collect();
    let right: Vec<bool> = columns
        .iter()
        .map(|c| align.iter().any(|(n, a)| n == c && *a == 'r'))
        .collect();
    let hrule = {
        let parts: Vec<String> = widths.iter().map(|w| "-".repeat(w + 2)).collect();
        format!("+{}+", parts.join("+"))
    };
    let line = |vals: &[&str]| {
        let parts: Vec<String> = vals
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let pad = widths[i].saturating_sub(v.chars().count());
                if right[i] {
                    format!(" {}{v} ", " ".repeat(pad))
                } else {
                    format!(" {v}{} ", " ".repeat(pad))
                }
            })
            .collect();
        format!("|{}|", parts.join("|"))
    };
    let multiline = cells.iter().any(|r| r.iter().any(|c| c.len() > 1));
    let mut out = vec![inject_header(&hrule, header)];
    let names: Vec<&str> = columns.iter().map(String::as_str).collect();
    out.push(line(&names));
    out.push(hrule.clone());
    for (n, r) in cells.iter().enumerate() {
        let height = r.iter().map(Vec::len).max().unwrap_or(1);
        for k in 0..height {
            let vals: Vec<&str> = r
                .iter()
                .map(|c| c.get(k).map(String::as_str).unwrap_or(""))
                .collect();
            out.push(line(&vals));
        }
        if multiline && n + 1 < cells.len() {
            out.push(hrule.clone());
        }
    }
    out.push(hrule);
    out.join("\n")
}

/// Put `header` over the top border right after the first '+', cut to fit.
fn inject_header(line: &str, header: &str) -> String {
    let chars: Vec<char> = line.chars().collect();
    let h: String = header.chars().take(chars.len().saturating_sub(2)).collect();
    let hl = h.chars().count();
    let mut out = String::new();
    out.push(chars[0]);
    out.push_str(&h);
    out.extend(&chars[1 + hl..]);
    out
}

/// Python's `str()` of a JSON-ish value (what upstream prints in tables).
pub fn py_str(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Number(n) => n.to_string(),
        other => py_json(other),
    }
}

/// `json.dumps` with Python's default separators and ASCII escaping.
pub fn py_json(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let pairs: Vec<(String, Value)> =
                m.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            py_json_pairs(&pairs)
        }
        Value::Array(a) => {
            let items: Vec<String> = a.iter().map(py_json).collect();
            format!("[{}]", items.join(", "))
        }
        Value::String(s) => py_json_str(s),
        other => other.to_string(),
    }
}

fn py_json_pairs(pairs: &[(String, Value)]) -> String {
    let items: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{}: {}", py_json_str(k), py_json(v)))
        .collect();
    format!("{{{}}}", items.join(", "))
}

fn py_json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// YAML as upstream's `format_config_for_editing` (block style, sorted keys); `flow` gives
/// the one-line `{a: 1, b: 2}` form used for tags in tsv/topology output.
pub fn to_yaml(v: &Value, flow: bool) -> String {
    if flow {
        return flow_yaml(v) + "\n";
    }
    let sorted = sort_keys(v);
    serde_yaml_ng::to_string(&sorted).unwrap_or_default()
}

fn sort_keys(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let b: BTreeMap<&String, Value> = m.iter().map(|(k, v)| (k, sort_keys(v))).collect();
            Value::Object(b.into_iter().map(|(k, v)| (k.clone(), v)).collect())
        }
        Value::Array(a) => Value::Array(a.iter().map(sort_keys).collect()),
        o => o.clone(),
    }
}

fn flow_yaml(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let items: Vec<String> = m
                .iter()
                .map(|(k, v)| format!("{}: {}", flow_scalar(k), flow_yaml(v)))
                .collect();
            format!("{{{}}}", items.join(", "))
        }
        Value::Array(a) => {
            let items: Vec<String> = a.iter().map(flow_yaml).collect();
            format!("[{}]", items.join(", "))
        }
        Value::String(s) => flow_scalar(s),
        Value::Null => "null".into(),
        other => other.to_string(),
    }
}

/// A string scalar, quoted when YAML would read it as something else.
fn flow_scalar(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars().all(|c| c.is_alphanumeric() || "_-./".contains(c))
        && super::edit::yaml_value(s).as_str() == Some(s);
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cols(c: &[&str]) -> Vec<String> {
        c.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn pretty_matches_prettytable() {
        let out = render(
            &cols(&["TL", "LSN", "Reason"]),
            &[vec![json!(1), json!(25165984), json!("no recovery target")]],
            &[("TL", 'r'), ("LSN", 'r')],
            Format::Pretty,
            "",
            "\t",
        );
        let want = "+----+----------+--------------------+\n\
                    | TL |      LSN | Reason             |\n\
                    +----+----------+--------------------+\n\
                    |  1 | 25165984 | no recovery target |\n\
                    +----+----------+--------------------+";
        assert_eq!(out, want);
    }

    #[test]
    fn header_and_multiline() {
        let out = render(
            &cols(&["a", "b"]),
            &[vec![json!("x\ny"), json!(2)], vec![json!("zz"), json!(3)]],
            &[],
            Format::Pretty,
            "hdr",
            "\t",
        );
        let want = "+hdr-+---+\n| a  | b |\n+----+---+\n| x  | 2 |\n| y  |   |\n+----+---+\n| zz | 3 |\n+----+---+";
        assert_eq!(out, want);
        let empty = render(&cols(&["a", "b"]), &[], &[], Format::Pretty, "", "\t");
        assert_eq!(empty, "+---+---+\n| a | b |\n+---+---+\n+---+---+");
    }

    #[test]
    fn json_is_python_style() {
        let out = render(
            &cols(&["Member", "Lag", "Host"]),
            &[vec![json!("pg0é"), json!(0), json!("")]],
            &[],
            Format::Json,
            " Cluster: x ",
            "\t",
        );
        assert_eq!(out, r#"[{"Member": "pg0\u00e9", "Lag": 0}]"#);
        assert_eq!(
            flow_yaml(&json!({"a": 1, "b": "on", "c": "x"})),
            "{a: 1, b: 'on', c: x}"
        );
    }
}
