//! The engine's `/metrics` page (Prometheus text format): fetched over a plain HTTP/1.1 GET,
//! parsed into samples, and compared between two moments.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{bail, Context as _};

#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// One scrape of `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub samples: Vec<Sample>,
}

/// `GET path` on `addr` (host:port); returns status and body.
pub fn http_get(addr: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("no HTTP header end in the answer of {addr}{path}");
    };
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n =
            usize::from_str_radix(size.split(';').next().unwrap_or("0").trim(), 16).unwrap_or(0);
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

impl Page {
    pub fn fetch(admin: &str) -> anyhow::Result<Page> {
        let (status, body) = http_get(admin, "/metrics")?;
        if status != 200 {
            bail!("GET http://{admin}/metrics answered {status}");
        }
        Ok(Page::parse(&body))
    }

    pub fn parse(text: &str) -> Page {
        let mut samples = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, parse_labels(rest.trim_end_matches('}'))),
                None => (series, BTreeMap::new()),
            };
            samples.push(Sample {
                name: name.to_string(),
                labels,
                value,
            });
        }
        Page { samples }
    }

    /// Sum of every sample of `name` (0 when absent).
    pub fn sum(&self, name: &str) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .map(|s| s.value)
            .sum()
    }

    /// Samples of `name` summed by the value of `label`.
    pub fn by_label(&self, name: &str, label: &str) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for s in self.samples.iter().filter(|s| s.name == name) {
            let key = s.labels.get(label).cloned().unwrap_or_default();
            *out.entry(key).or_insert(0.0) += s.value;
        }
        out
    }

    /// Cumulative histogram buckets of `name` (`<name>_bucket`), as (upper bound, count).
    pub fn buckets(&self, name: &str) -> Vec<(f64, f64)> {
        let bucket = format!("{name}_bucket");
        let mut acc: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
        for s in self.samples.iter().filter(|s| s.name == bucket) {
            let le = match s.labels.get("le").map(String::as_str) {
                Some("+Inf") => f64::INFINITY,
                Some(v) => v.parse().unwrap_or(f64::NAN),
                None => continue,
            };
            let e = acc.entry(le.to_bits()).or_insert((le, 0.0));
            e.1 += s.value;
        }
        let mut v: Vec<(f64, f64)> = acc.into_values().collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v
    }
}

fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = s;
    while let Some((k, after)) = rest.split_once("=\"") {
        // Values are escaped Prometheus strings: find the closing quote not preceded by `\`.
        let mut end = None;
        let mut escaped = false;
        for (i, c) in after.char_indices() {
            match c {
                '\\' if !escaped => escaped = true,
                '"' if !escaped => {
                    end = Some(i);
                    break;
                }
                _ => escaped = false,
            }
        }
        let Some(end) = end else { break };
        out.insert(
            k.trim_start_matches(',').trim().to_string(),
            after[..end].replace("\\\"", "\"").replace("\\\\", "\\"),
        );
        rest = &after[end + 1..];
    }
    out
}

/// The change of a histogram between two scrapes.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct HistDelta {
    pub count: f64,
    pub sum: f64,
    pub mean: Option<f64>,
    /// Estimated from the buckets (linear inside a bucket, as Prometheus' histogram_quantile).
    pub p50: Option<f64>,
    pub p99: Option<f64>,
}

pub fn hist_delta(before: &Page, after: &Page, name: &str) -> HistDelta {
    let count = after.sum(&format!("{name}_count")) - before.sum(&format!("{name}_count"));
    let sum = after.sum(&format!("{name}_sum")) - before.sum(&format!("{name}_sum"));
    let b0 = before.buckets(name);
    let b1 = after.buckets(name);
    let delta: Vec<(f64, f64)> = b1
        .iter()
        .map(|(le, c)| {
            let prev = b0
                .iter()
                .find(|(l, _)| l.to_bits() == le.to_bits())
                .map(|(_, c)| *c)
                .unwrap_or(0.0);
            (*le, c - prev)
        })
        .collect();
    HistDelta {
        count,
        sum,
        mean: (count > 0.0).then(|| sum / count),
        p50: quantile(&delta, 0.5),
        p99: quantile(&delta, 0.99),
    }
}

/// Histogram delta of `name` restricted to the samples whose `label` equals `value`.
pub fn hist_delta_for(
    before: &Page,
    after: &Page,
    name: &str,
    label: &str,
    value: &str,
) -> HistDelta {
    let only = |p: &Page| Page {
        samples: p
            .samples
            .iter()
            .filter(|s| s.labels.get(label).map(String::as_str) == Some(value))
            .cloned()
            .collect(),
    };
    hist_delta(&only(before), &only(after), name)
}

fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = 0.0;
    let mut below = 0.0;
    for (le, cum) in buckets {
        if *cum >= rank {
            if le.is_infinite() {
                return Some(lower);
            }
            let inside = cum - below;
            let frac = if inside > 0.0 {
                (rank - below) / inside
            } else {
                1.0
            };
            return Some(lower + (le - lower) * frac);
        }
        lower = *le;
        below = *cum;
    }
    Some(lower)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = r#"# HELP keyflow_epoch_commit_seconds Time
# TYPE keyflow_epoch_commit_seconds histogram
keyflow_epoch_commit_seconds_bucket{le="0.01"} 10
keyflow_epoch_commit_seconds_bucket{le="0.02"} 30
keyflow_epoch_commit_seconds_bucket{le="+Inf"} 40
keyflow_epoch_commit_seconds_sum 0.6
keyflow_epoch_commit_seconds_count 40
keyflow_invocations_total{function_type="com.example/stock"} 7
keyflow_invocations_total{function_type="com.example/user-shopping-cart"} 14
"#;

    #[test]
    fn parses_and_sums() {
        let p = Page::parse(PAGE);
        assert_eq!(p.sum("keyflow_invocations_total"), 21.0);
        let by = p.by_label("keyflow_invocations_total", "function_type");
        assert_eq!(by["com.example/stock"], 7.0);
        let d = hist_delta(&Page::default(), &p, "keyflow_epoch_commit_seconds");
        assert_eq!(d.count, 40.0);
        assert!((d.mean.unwrap() - 0.015).abs() < 1e-9);
        // rank 20 lies halfway through the (0.01, 0.02] bucket
        assert!((d.p50.unwrap() - 0.015).abs() < 1e-9);
        // rank 39.6 is in +Inf: the last finite bound
        assert_eq!(d.p99.unwrap(), 0.02);
    }

    #[test]
    fn labels_with_commas_and_quotes() {
        let l = parse_labels(r#"a="x,y",b="say \"hi\"""#);
        assert_eq!(l["a"], "x,y");
        assert_eq!(l["b"], r#"say "hi""#);
    }

    #[test]
    fn chunked_bodies() {
        assert_eq!(dechunk("3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), "abcde");
    }
}
