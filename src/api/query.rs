//! Query-string handling shared by the health checks: upstream's `parse_qs` semantics (first
//! value wins, blank values dropped) and its byte-size parser for `?lag=`.

use std::collections::BTreeMap;

/// Query parameters as upstream sees them: first value of each key, blank values dropped.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueryParams(BTreeMap<String, String>);

impl QueryParams {
    /// Build from decoded `(key, value)` pairs in request order.
    pub fn from_pairs<I: IntoIterator<Item = (String, String)>>(pairs: I) -> QueryParams {
        let mut map = BTreeMap::new();
        for (k, v) in pairs {
            if !v.is_empty() {
                map.entry(k).or_insert(v);
            }
        }
        QueryParams(map)
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// `tag_<name>=<value>` filters, with the prefix removed.
    pub fn tag_filters(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0
            .iter()
            .filter_map(|(k, v)| k.strip_prefix("tag_").map(|t| (t, v.as_str())))
    }

    /// `?lag=` (or another key) as bytes; `None` when absent or not understood, which
    /// upstream treats as "no limit".
    pub fn bytes(&self, key: &str) -> Option<i128> {
        self.get(key).and_then(parse_bytes)
    }
}

/// Parse a size the way upstream's `parse_int(value, 'B')` does: an integer (decimal, `0x`
/// hex or leading-zero octal) or a decimal fraction, optionally followed by one of the
/// case-sensitive units `B`, `kB`, `MB`, `GB`, `TB` (powers of 1024).
pub fn parse_bytes(value: &str) -> Option<i128> {
    let value = value.trim();
    let (number, unit) = split_number(value)?;
    let unit = unit.trim();
    let factor: f64 = match unit {
        "" | "B" => 1.0,
        "kB" => 1024.0,
        "MB" => 1024f64.powi(2),
        "GB" => 1024f64.powi(3),
        "TB" => 1024f64.powi(4),
        _ => return None,
    };
    let mut bytes = number * factor;
    // Upstream rounds a fractional value to whole units of the next smaller size.
    if factor > 1.0 {
        let step = factor / 1024.0;
        bytes = (bytes / step).round() * step;
    }
    let rounded = bytes.round();
    (rounded.is_finite() && rounded.abs() < 1e36).then_some(rounded as i128)
}

/// Split a leading number from the rest, as C `strtol(.., 0)` / `strtod` would.
fn split_number(s: &str) -> Option<(f64, &str)> {
    let (sign, body) = match s.as_bytes().first()? {
        b'-' => (-1.0, &s[1..]),
        b'+' => (1.0, &s[1..]),
        _ => (1.0, s),
    };
    if let Some(hex) = body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
        let end = hex
            .find(|c: char| !c.is_ascii_hexdigit())
            .unwrap_or(hex.len());
        let n = i128::from_str_radix(&hex[..end], 16).ok()?;
        return Some((sign * n as f64, &hex[end..]));
    }
    let int_end = body
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(body.len());
    let rest = &body[int_end..];
    if rest.starts_with(['.', 'e', 'E']) {
        return split_float(sign, body);
    }
    let digits = &body[..int_end];
    if digits.is_empty() {
        return None;
    }
    let n = if digits.len() > 1 && digits.starts_with('0') {
        i128::from_str_radix(digits, 8).ok()?
    } else {
        digits.parse::<i128>().ok()?
    };
    Some((sign * n as f64, rest))
}

fn split_float(sign: f64, body: &str) -> Option<(f64, &str)> {
    // Longest prefix that parses as a float ("1.5", "2e3", ".5").
    let mut best = None;
    for (i, _) in body.char_indices().skip(1).chain([(body.len(), ' ')]) {
        if let Ok(v) = body[..i].parse::<f64>() {
            best = Some((v, i));
        }
    }
    let (v, end) = best?;
    Some((sign * v, &body[end..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_like_upstream() {
        assert_eq!(parse_bytes("1048576"), Some(1_048_576));
        assert_eq!(parse_bytes("1024kB"), Some(1_048_576));
        assert_eq!(parse_bytes("10MB"), Some(10 * 1024 * 1024));
        assert_eq!(parse_bytes("1GB"), Some(1 << 30));
        assert_eq!(parse_bytes(" 16kB "), Some(16384));
        assert_eq!(parse_bytes("1.5kB"), Some(1536));
        assert_eq!(parse_bytes("0x10"), Some(16));
        assert_eq!(parse_bytes("010"), Some(8));
        assert_eq!(parse_bytes("0"), Some(0));
        assert_eq!(parse_bytes("10mb"), None);
        assert_eq!(parse_bytes("nonsense"), None);
        assert_eq!(parse_bytes(""), None);
    }

    #[test]
    fn query_first_value_wins_and_blanks_dropped() {
        let pairs = [
            ("lag", ""),
            ("tag_dc", "a b"),
            ("tag_dc", "x"),
            ("mode", "write"),
        ];
        let q = QueryParams::from_pairs(pairs.map(|(k, v)| (k.to_string(), v.to_string())));
        assert_eq!(q.get("lag"), None);
        assert_eq!(q.get("mode"), Some("write"));
        assert_eq!(q.tag_filters().collect::<Vec<_>>(), vec![("dc", "a b")]);
    }
}
