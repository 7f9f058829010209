//! What the machine and the processes did: CPU seconds from `/proc/<pid>/stat`, the machine's
//! description, and the warnings and errors in a log file.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

/// Clock ticks per second of `/proc/<pid>/stat` times.
pub fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// User + system CPU seconds of a process (all its threads), `None` when it is gone.
pub fn cpu_seconds(pid: u32, ticks: f64) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count from after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime field 15.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks)
}

/// The processes whose CPU time is measured, by role.
#[derive(Debug, Clone)]
pub struct Procs {
    pub roles: Vec<(String, u32)>,
    pub ticks: f64,
}

#[derive(Debug, Clone)]
pub struct CpuSnap {
    pub at: Instant,
    pub secs: BTreeMap<String, Option<f64>>,
    /// Busy CPU seconds of the whole machine (all processes, all cores), from /proc/stat.
    pub machine_busy: Option<f64>,
}

/// Busy (not idle, not iowait) CPU seconds of the whole machine since boot.
pub fn machine_busy_seconds(ticks: f64) -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user)
    let total: f64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).unwrap_or(&0.0);
    Some((total - idle) / ticks)
}

impl Procs {
    pub fn snap(&self) -> CpuSnap {
        CpuSnap {
            at: Instant::now(),
            // Several processes with one role (the workers of a cluster) are summed.
            secs: self
                .roles
                .iter()
                .fold(BTreeMap::new(), |mut m, (role, pid)| {
                    let s = cpu_seconds(*pid, self.ticks);
                    m.entry(role.clone())
                        .and_modify(|t: &mut Option<f64>| *t = t.zip(s).map(|(a, b)| a + b))
                        .or_insert(s);
                    m
                }),
            machine_busy: machine_busy_seconds(self.ticks),
        }
    }
}

/// CPU used by each role between two snapshots.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CpuSplit {
    pub wall_seconds: f64,
    /// role -> CPU seconds (None: the process was not measured or vanished).
    pub cpu_seconds: BTreeMap<String, Option<f64>>,
    /// role -> share of the summed CPU seconds of all roles, percent.
    pub share_percent: BTreeMap<String, Option<f64>>,
    /// All roles' CPU seconds over wall seconds: cores kept busy (of `cores`).
    pub cores_busy: f64,
    pub cores: usize,
    /// Cores kept busy by every process on the machine (ours and anything else running).
    pub machine_cores_busy: Option<f64>,
    /// CPU seconds of processes other than the measured ones (builds, other tests...): when
    /// this is large, the figures were disturbed.
    pub other_cpu_seconds: Option<f64>,
}

pub fn cpu_split(a: &CpuSnap, b: &CpuSnap) -> CpuSplit {
    let wall = b.at.duration_since(a.at).as_secs_f64();
    let cpu: BTreeMap<String, Option<f64>> = a
        .secs
        .iter()
        .map(|(role, s0)| {
            let s1 = b.secs.get(role).copied().flatten();
            (role.clone(), s0.zip(s1).map(|(x, y)| y - x))
        })
        .collect();
    let total: f64 = cpu.values().flatten().sum();
    CpuSplit {
        wall_seconds: wall,
        share_percent: cpu
            .iter()
            .map(|(r, s)| (r.clone(), s.map(|s| 100.0 * s / total.max(1e-9))))
            .collect(),
        cores_busy: if wall > 0.0 { total / wall } else { 0.0 },
        cpu_seconds: cpu,
        cores: cores(),
        machine_cores_busy: a
            .machine_busy
            .zip(b.machine_busy)
            .filter(|_| wall > 0.0)
            .map(|(x, y)| (y - x) / wall),
        other_cpu_seconds: a
            .machine_busy
            .zip(b.machine_busy)
            .map(|(x, y)| (y - x - total).max(0.0)),
    }
}

pub fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// CPU model, cores, memory and kernel of this machine.
pub fn machine() -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    if let Some(model) = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
    {
        m.insert("cpu".into(), model.1.trim().to_string());
    }
    m.insert("cores".into(), cores().to_string());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    if let Some(kb) = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
    {
        m.insert("memory".into(), format!("{:.1} GiB", kb / 1024.0 / 1024.0));
    }
    if let Ok(k) = std::fs::read_to_string("/proc/sys/kernel/osrelease") {
        m.insert("kernel".into(), k.trim().to_string());
    }
    m
}

/// Warnings and errors found in a log file.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LogScan {
    pub path: String,
    pub errors: usize,
    pub warnings: usize,
    /// The first few distinct WARN/ERROR lines (timestamps cut, shortened).
    pub samples: Vec<String>,
}

pub fn scan_log(path: &Path) -> LogScan {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut scan = LogScan {
        path: path.display().to_string(),
        ..LogScan::default()
    };
    for raw in text.lines() {
        let line = strip_ansi(raw);
        let mut words = line.split_whitespace();
        // tracing's format: `<timestamp> <LEVEL> <target>: <message>`
        let level = words.nth(1).unwrap_or("");
        let is_error = level == "ERROR" || line.contains("panicked");
        let is_warn = level == "WARN";
        if is_error {
            scan.errors += 1;
        } else if is_warn {
            scan.warnings += 1;
        } else {
            continue;
        }
        let msg: String = line
            .split_once(' ')
            .map(|(_, m)| m)
            .unwrap_or(&line)
            .chars()
            .take(240)
            .collect();
        if scan.samples.len() < 8 && !scan.samples.iter().any(|s| similar(s, &msg)) {
            scan.samples.push(msg);
        }
    }
    scan
}

/// Same level and target and the same first 60 characters: one sample is enough.
fn similar(a: &str, b: &str) -> bool {
    a.chars().take(60).eq(b.chars().take(60))
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ ... final byte in @..~
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cpu_time_is_readable() {
        let s = cpu_seconds(std::process::id(), clock_ticks());
        assert!(s.is_some_and(|s| s >= 0.0));
        assert!(machine_busy_seconds(clock_ticks()).is_some_and(|s| s > 0.0));
    }

    #[test]
    fn log_levels() {
        let dir = std::env::temp_dir().join(format!("kb-log-{}", std::process::id()));
        std::fs::write(
            &dir,
            "2024-01-01T00:00:00Z  INFO keyflow: fine\n\
             2024-01-01T00:00:01Z  WARN keyflow: hmm\n\
             \u{1b}[2m2024-01-01T00:00:02Z\u{1b}[0m \u{1b}[31mERROR\u{1b}[0m keyflow: bad\n",
        )
        .unwrap();
        let s = scan_log(&dir);
        let _ = std::fs::remove_file(&dir);
        assert_eq!((s.errors, s.warnings), (1, 1));
        assert_eq!(s.samples.len(), 2);
    }
}
