//! `keyflow-bench peers`: keyflow and its peers (Kafka Streams, StateFun, Restate) from one
//! run of `bench/run.sh --peers ...` in one table, with the ratios keyflow/peer, and a chart
//! (plain SVG text) of throughput and latency percentiles per system.
//!
//! Each peer's JSON is either the driver's own (`keyflow-bench run --system <peer>`: the same
//! phases and checks as keyflow's) or the Restate peer's (`bench/restate/run.sh`). A ratio
//! keyflow/peer above 1 means keyflow is faster for throughput and slower for latency.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use serde_json::{json, Value};

#[derive(Args, Debug)]
pub struct PeersArgs {
    /// keyflow's JSON of this run (`bench/results/<timestamp>.json`): gets a `peers` section.
    #[arg(long)]
    main: PathBuf,
    /// `name=path`: a peer's JSON (repeatable, in the order of the table).
    #[arg(long = "peer", value_parser = crate::key_value)]
    peers: Vec<(String, String)>,
    /// Where to write the chart (default: the main JSON's path with `.svg`).
    #[arg(long)]
    svg: Option<PathBuf>,
}

/// One system's figures, whichever JSON shape they came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub system: String,
    pub records: Option<f64>,
    pub records_per_s: Option<f64>,
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub p999: Option<f64>,
    pub settings: String,
    pub correct: bool,
}

impl Row {
    pub fn from_json(system: &str, v: &Value) -> Row {
        // The driver's JSON has `throughput`; the Restate peer's has its figures at the top.
        let (t, correct) = if v["throughput"].is_object() {
            let c = &v["checks"];
            let ok = v["throughput"]["quantity_ok"].as_bool() == Some(true)
                && v["latency"]["complete"].as_bool() == Some(true)
                && v["latency"]["wrong_receipts"].as_u64() == Some(0)
                && c["duplicate_receipts"].as_u64() == Some(0)
                && c["out_of_stock_events"].as_u64() == Some(0);
            (&v["throughput"], ok)
        } else {
            (v, v["quantity_ok"].as_bool() == Some(true))
        };
        let ms = &v["latency"]["ms"];
        let settings = v["meta"]["settings"]
            .as_str()
            .map(str::to_string)
            .or_else(|| {
                v["versions"].as_object().map(|o| {
                    o.iter()
                        .map(|(k, v)| format!("{k} {}", v.as_str().unwrap_or("")))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
            })
            .unwrap_or_default();
        Row {
            system: system.to_string(),
            records: t["records"].as_f64(),
            records_per_s: t["records_per_s"].as_f64(),
            p50: ms["p50"].as_f64(),
            p99: ms["p99"].as_f64(),
            p999: ms["p999"].as_f64(),
            settings,
            correct,
        }
    }
}

/// keyflow / peer, when both are there and the peer's is not 0.
pub fn ratio(k: Option<f64>, p: Option<f64>) -> Option<f64> {
    k.zip(p).filter(|(_, p)| *p > 0.0).map(|(k, p)| k / p)
}

fn read(path: &str) -> anyhow::Result<Value> {
    serde_json::from_str(&std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?)
        .with_context(|| format!("parsing {path}"))
}

pub fn run(a: &PeersArgs) -> anyhow::Result<()> {
    let main_path = a.main.to_string_lossy().to_string();
    let mut main = read(&main_path)?;
    let k = Row::from_json("keyflow", &main);
    let mut rows = vec![k.clone()];
    for (name, path) in &a.peers {
        rows.push(Row::from_json(name, &read(path)?));
    }
    print(&rows);
    let section: Vec<Value> = rows[1..]
        .iter()
        .zip(&a.peers)
        .map(|(r, (_, path))| {
            json!({
                "system": r.system,
                "json": path,
                "records": r.records,
                "records_per_s": r.records_per_s,
                "ms": {"p50": r.p50, "p99": r.p99, "p999": r.p999},
                "settings": r.settings,
                "correct": r.correct,
                "keyflow_over_peer": {
                    "records_per_s": ratio(k.records_per_s, r.records_per_s),
                    "p50": ratio(k.p50, r.p50),
                    "p99": ratio(k.p99, r.p99),
                },
            })
        })
        .collect();
    main["peers"] = Value::Array(section);
    std::fs::write(&a.main, serde_json::to_string_pretty(&main)? + "\n")
        .with_context(|| format!("writing {}", a.main.display()))?;
    let svg_path = a
        .svg
        .clone()
        .unwrap_or_else(|| a.main.with_extension("svg"));
    std::fs::write(&svg_path, svg(&rows, main["run_id"].as_str().unwrap_or("")))
        .with_context(|| format!("writing {}", svg_path.display()))?;
    eprintln!(
        "[peers] added to {}; chart {}",
        a.main.display(),
        svg_path.display()
    );
    Ok(())
}

fn cell(v: Option<f64>, digits: usize) -> String {
    v.map(|v| format!("{v:.digits$}"))
        .unwrap_or_else(|| "-".into())
}

fn print(rows: &[Row]) {
    let k = &rows[0];
    println!();
    println!("keyflow and its peers (one run, same broker, same driver phases)");
    println!(
        "  {:<26} {:>9} {:>11} {:>9} {:>9} {:>9}   {:>10} {:>9} {:>9}",
        "system",
        "records",
        "AddToCart/s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "k/p thrpt",
        "k/p p50",
        "k/p p99"
    );
    for r in rows {
        let is_k = r.system == "keyflow";
        let rat = |kv: Option<f64>, pv: Option<f64>| {
            if is_k {
                "".to_string()
            } else {
                cell(ratio(kv, pv), 2)
            }
        };
        println!(
            "  {:<26} {:>9} {:>11} {:>9} {:>9} {:>9}   {:>10} {:>9} {:>9}{}",
            r.system,
            cell(r.records, 0),
            cell(r.records_per_s, 0),
            cell(r.p50, 1),
            cell(r.p99, 1),
            cell(r.p999, 1),
            rat(k.records_per_s, r.records_per_s),
            rat(k.p50, r.p50),
            rat(k.p99, r.p99),
            if r.correct { "" } else { "  (CHECK FAILED)" }
        );
    }
    println!("  (k/p: keyflow / peer; throughput above 1 and latency below 1 favour keyflow)");
    for r in rows.iter().filter(|r| !r.settings.is_empty()) {
        println!("  {}: {}", r.system, r.settings);
    }
    println!();
}

/// Two panels: AddToCart/s per system (linear bars) and checkout -> receipt p50 / p99 / p99.9
/// per system (log scale: StateFun's checkpoint interval puts it orders of magnitude apart).
pub fn svg(rows: &[Row], run_id: &str) -> String {
    let (w, bar_h, gap, label_w) = (900.0, 18.0, 10.0, 220.0);
    let plot_w = w - label_w - 120.0;
    let panel_h = rows.len() as f64 * (3.0 * bar_h + gap) + 40.0;
    let h = 60.0 + (rows.len() as f64 * (bar_h + gap) + 40.0) + panel_h + 40.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h:.0}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="10" y="22" font-size="15" font-weight="bold">Shopping cart on one machine: keyflow and its peers ({})</text>"#,
        esc(run_id)
    );
    let colors = ["#1f77b4", "#ff7f0e", "#2ca02c"];
    // Panel 1: throughput.
    let mut y = 50.0;
    let _ = writeln!(
        s,
        r#"<text x="10" y="{y}" font-weight="bold">AddToCart records/s, end to end (higher is better)</text>"#
    );
    y += 12.0;
    let max_t = rows
        .iter()
        .filter_map(|r| r.records_per_s)
        .fold(0.0_f64, f64::max)
        .max(1.0);
    for r in rows {
        let v = r.records_per_s.unwrap_or(0.0);
        let bw = plot_w * v / max_t;
        let _ = writeln!(
            s,
            r#"<text x="{:.0}" y="{:.0}" text-anchor="end">{}</text><rect x="{label_w}" y="{y:.0}" width="{bw:.1}" height="{bar_h}" fill="{}"/><text x="{:.0}" y="{:.0}">{}</text>"#,
            label_w - 8.0,
            y + 13.0,
            esc(&r.system),
            colors[0],
            label_w + bw + 6.0,
            y + 13.0,
            cell(r.records_per_s, 0)
        );
        y += bar_h + gap;
    }
    // Panel 2: latency, log scale from 1 ms.
    y += 30.0;
    let _ = writeln!(
        s,
        r#"<text x="10" y="{y}" font-weight="bold">Checkout -> receipt latency, ms, log scale (lower is better): p50 / p99 / p99.9</text>"#
    );
    y += 12.0;
    let max_l = rows
        .iter()
        .flat_map(|r| [r.p50, r.p99, r.p999])
        .flatten()
        .fold(10.0_f64, f64::max);
    let decades = max_l.log10().ceil().max(1.0);
    let x_of = |ms: f64| label_w + plot_w * (ms.max(1.0).log10() / decades);
    let top = y;
    for r in rows {
        let _ = writeln!(
            s,
            r#"<text x="{:.0}" y="{:.0}" text-anchor="end">{}</text>"#,
            label_w - 8.0,
            y + 1.5 * bar_h + 4.0,
            esc(&r.system)
        );
        for (i, (name, v)) in [("p50", r.p50), ("p99", r.p99), ("p99.9", r.p999)]
            .into_iter()
            .enumerate()
        {
            let Some(v) = v else { continue };
            let bw = x_of(v) - label_w;
            let _ = writeln!(
                s,
                r#"<rect x="{label_w}" y="{y:.0}" width="{bw:.1}" height="{}" fill="{}"/><text x="{:.0}" y="{:.0}">{name} {v:.1}</text>"#,
                bar_h - 2.0,
                colors[i],
                label_w + bw + 6.0,
                y + 12.0
            );
            y += bar_h;
        }
        y += gap;
    }
    for d in 0..=(decades as i32) {
        let x = x_of(10f64.powi(d));
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{top:.0}" x2="{x:.1}" y2="{y:.0}" stroke="#999" stroke-dasharray="2,3"/><text x="{x:.1}" y="{:.0}" text-anchor="middle">{}</text>"##,
            y + 14.0,
            10u64.pow(d as u32)
        );
    }
    let _ = writeln!(s, "</svg>");
    s
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_from_both_shapes() {
        let driver = json!({
            "throughput": {"records": 10000, "records_per_s": 5000.0, "quantity_ok": true},
            "latency": {"complete": true, "wrong_receipts": 0, "ms": {"p50": 20.0, "p99": 40.0, "p999": 50.0}},
            "checks": {"duplicate_receipts": 0, "out_of_stock_events": 0},
            "meta": {"settings": "exactly_once_v2"},
        });
        let r = Row::from_json("kstreams", &driver);
        assert_eq!(r.records_per_s, Some(5000.0));
        assert_eq!(r.p99, Some(40.0));
        assert!(r.correct);
        assert_eq!(r.settings, "exactly_once_v2");
        let restate = json!({
            "records": 10000, "records_per_s": 2000.0, "quantity_ok": true,
            "latency": {"ms": {"p50": 5.0, "p99": 9.0, "p999": 12.0}},
            "versions": {"restate-server": "1.7.x"},
        });
        let r = Row::from_json("restate", &restate);
        assert_eq!(r.records_per_s, Some(2000.0));
        assert_eq!(r.p50, Some(5.0));
        assert!(r.correct);
        assert_eq!(r.settings, "restate-server 1.7.x");
        let mut short = restate.clone();
        short["quantity_ok"] = json!(false);
        assert!(!Row::from_json("restate", &short).correct);
        let mut dup = driver.clone();
        dup["checks"]["duplicate_receipts"] = json!(1);
        assert!(!Row::from_json("kstreams", &dup).correct);
    }

    #[test]
    fn ratios_and_chart() {
        assert_eq!(ratio(Some(10.0), Some(5.0)), Some(2.0));
        assert_eq!(ratio(Some(10.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(1.0)), None);
        let row = |s: &str, t: f64, p: f64| Row {
            system: s.into(),
            records: Some(1.0),
            records_per_s: Some(t),
            p50: Some(p),
            p99: Some(2.0 * p),
            p999: Some(3.0 * p),
            settings: String::new(),
            correct: true,
        };
        let svg = svg(
            &[row("keyflow", 100.0, 10.0), row("a<b", 50.0, 5000.0)],
            "r",
        );
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("a&lt;b"));
        assert!(svg.contains("p99.9 15000.0"));
    }
}
