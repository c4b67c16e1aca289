//! A strict reader of the Prometheus text exposition (and the OpenMetrics
//! text prometheus-client writes): every line must be a `# HELP`, `# TYPE`,
//! `# UNIT`, `# EOF` or a well-formed sample of a declared family, or the
//! scrape is refused with the line that broke it.

use std::collections::{BTreeMap, HashSet};

/// One unlabelled series of the /metrics served at `ops` (-1 if the page
/// cannot be read or parsed, or lacks it): for tests waiting on a counter.
pub async fn value_at(ops: &str, name: &str) -> f64 {
    let answer = crate::http_get(ops, "/metrics").await.unwrap_or_default();
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    parse(body).map_or(-1.0, |s| s.get(name, &[]).unwrap_or(-1.0))
}

/// One sample: metric name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// All samples of a scrape, for lookups in tests.
#[derive(Debug, Clone, Default)]
pub struct Scrape(pub Vec<Sample>, pub HashSet<String>);

impl Scrape {
    /// Whether the scrape declares `series` (a family name, or a sample name
    /// such as `x_total` / `x_bucket` of family `x`).
    pub fn declares(&self, series: &str) -> bool {
        self.1.contains(series)
            || SUFFIXES.iter().any(|suffix| {
                series
                    .strip_suffix(suffix)
                    .is_some_and(|base| self.1.contains(base))
            })
    }

    /// The value of `name` whose labels include every `labels` pair; None if
    /// no such sample.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.0
            .iter()
            .find(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v))
            })
            .map(|s| s.value)
    }

    /// Like [`get`](Self::get), 0 when absent (a counter not touched yet).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }
}

const SUFFIXES: [&str; 6] = ["_total", "_bucket", "_sum", "_count", "_created", "_info"];

fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Parses a whole exposition; Err names the first bad line.
pub fn parse(text: &str) -> Result<Scrape, String> {
    let mut families = HashSet::new();
    let mut samples = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let bad = |why: &str| format!("line {}: {why}: {line:?}", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix("# ") {
            let mut parts = comment.splitn(3, ' ');
            match parts.next() {
                Some("TYPE") => {
                    let name = parts.next().ok_or_else(|| bad("TYPE without a name"))?;
                    let kind = parts.next().ok_or_else(|| bad("TYPE without a type"))?;
                    let known = [
                        "counter",
                        "gauge",
                        "histogram",
                        "summary",
                        "untyped",
                        "unknown",
                        "info",
                        "stateset",
                        "gaugehistogram",
                    ];
                    if !is_name(name) || !known.contains(&kind) {
                        return Err(bad("bad TYPE"));
                    }
                    families.insert(name.to_owned());
                }
                Some("HELP" | "UNIT") => {
                    let name = parts.next().ok_or_else(|| bad("HELP without a name"))?;
                    if !is_name(name) {
                        return Err(bad("bad metric name"));
                    }
                }
                Some("EOF") => {}
                _ => return Err(bad("unknown comment")),
            }
            continue;
        }
        let (name, rest) = match line.find(['{', ' ']) {
            Some(i) => line.split_at(i),
            None => return Err(bad("no value")),
        };
        if !is_name(name) {
            return Err(bad("bad metric name"));
        }
        let family_declared = families.contains(name)
            || SUFFIXES.iter().any(|suffix| {
                name.strip_suffix(suffix)
                    .is_some_and(|base| families.contains(base))
            });
        if !family_declared {
            return Err(bad("sample of an undeclared family"));
        }
        let (labels, rest) = if let Some(body) = rest.strip_prefix('{') {
            parse_labels(body).map_err(|why| bad(&why))?
        } else {
            (BTreeMap::new(), rest)
        };
        let mut fields = rest.split_whitespace();
        let value = fields.next().ok_or_else(|| bad("no value"))?;
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse::<f64>().map_err(|_| bad("value is not a number"))?,
        };
        if let Some(ts) = fields.next() {
            ts.parse::<f64>().map_err(|_| bad("bad timestamp"))?;
        }
        if fields.next().is_some() {
            return Err(bad("trailing fields"));
        }
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    if samples.is_empty() {
        return Err("no samples".into());
    }
    Ok(Scrape(samples, families))
}

/// `k="v",k2="v2"}` → the labels and what follows the `}`.
fn parse_labels(mut body: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    loop {
        if let Some(rest) = body.strip_prefix('}') {
            return Ok((labels, rest));
        }
        let eq = body.find('=').ok_or("label without =")?;
        let key = &body[..eq];
        if !is_name(key) {
            return Err(format!("bad label name {key:?}"));
        }
        let mut chars = body[eq + 1..].char_indices();
        if chars.next().map(|(_, c)| c) != Some('"') {
            return Err("label value not quoted".into());
        }
        let mut value = String::new();
        let mut end = None;
        let mut escaped = false;
        for (i, c) in chars {
            if escaped {
                value.push(match c {
                    'n' => '\n',
                    '\\' | '"' => c,
                    _ => return Err("bad escape in label value".into()),
                });
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                end = Some(eq + 1 + i + 1);
                break;
            } else {
                value.push(c);
            }
        }
        let end = end.ok_or("unterminated label value")?;
        if labels.insert(key.to_owned(), value).is_some() {
            return Err(format!("label {key} twice"));
        }
        body = &body[end..];
        body = body.strip_prefix(',').unwrap_or(body);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_families_labels_and_special_values() {
        let text = "# HELP a_total things\n# TYPE a counter\na_total{k=\"v\\\"x\",j=\"2\"} 3\n\
                    # TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_sum 0.5\nh_count 1\n# EOF\n";
        let scrape = parse(text).unwrap();
        assert_eq!(scrape.get("a_total", &[("k", "v\"x")]), Some(3.0));
        assert_eq!(scrape.get("h_count", &[]), Some(1.0));
    }

    #[test]
    fn refuses_what_prometheus_would() {
        assert!(parse("# TYPE a counter\na_total{k=v} 1\n").is_err());
        assert!(parse("a 1\n").is_err(), "undeclared family");
        assert!(parse("# TYPE a gauge\na one\n").is_err());
        assert!(parse("# TYPE a gauge\na{k=\"v\" 1\n").is_err());
        assert!(parse("# TYPE 1a gauge\n").is_err());
    }
}
