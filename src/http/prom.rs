//! The Prometheus text exposition format (version 0.0.4), written by hand: metric
//! families with HELP and TYPE, samples with escaped label values, histograms with
//! cumulative buckets; and the process metrics every exporter gives (`process_*`, from
//! /proc). `promtool check metrics` accepts what this writes (tests/metrics.rs).

use std::fmt::Write;

/// Content-Type of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A metric family's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Text being written; one family at a time.
#[derive(Debug, Default)]
pub struct Text {
    out: String,
}

impl Text {
    pub fn new() -> Text {
        Text::default()
    }

    /// Start family `name` (a counter's name ends in `_total`).
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    /// One sample of the family just started (or of its `_bucket`/`_sum`/`_count`).
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(k);
                self.out.push_str("=\"");
                for c in v.chars() {
                    match c {
                        '\\' => self.out.push_str("\\\\"),
                        '"' => self.out.push_str("\\\""),
                        '\n' => self.out.push_str("\\n"),
                        c => self.out.push(c),
                    }
                }
                self.out.push('"');
            }
            self.out.push('}');
        }
        self.out.push(' ');
        if value.is_finite() {
            let _ = write!(self.out, "{value}");
        } else if value.is_nan() {
            self.out.push_str("NaN");
        } else if value > 0.0 {
            self.out.push_str("+Inf");
        } else {
            self.out.push_str("-Inf");
        }
        self.out.push('\n');
    }

    /// A histogram's samples from an HDR histogram of microseconds, in seconds, with the
    /// bucket bounds `le_seconds`.
    pub fn histogram_us(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        h: &hdrhistogram::Histogram<u64>,
        le_seconds: &[f64],
    ) {
        let bucket = format!("{name}_bucket");
        for le in le_seconds {
            let upto = (le * 1e6) as u64;
            let n = if h.is_empty() {
                0
            } else {
                h.count_between(0, upto)
            };
            let le_text = le.to_string();
            let mut l = labels.to_vec();
            l.push(("le", &le_text));
            self.sample(&bucket, &l, n as f64);
        }
        let mut l = labels.to_vec();
        l.push(("le", "+Inf"));
        self.sample(&bucket, &l, h.len() as f64);
        self.sample(
            &format!("{name}_sum"),
            labels,
            h.mean() * h.len() as f64 / 1e6,
        );
        self.sample(&format!("{name}_count"), labels, h.len() as f64);
    }

    /// The process metrics (CPU seconds, resident memory, open descriptors, start time),
    /// where /proc tells them.
    pub fn process(&mut self) {
        let Some(p) = ProcessStats::read() else {
            return;
        };
        self.family(
            "process_cpu_seconds_total",
            Kind::Counter,
            "Total user and system CPU time spent in seconds.",
        );
        self.sample("process_cpu_seconds_total", &[], p.cpu_seconds);
        self.family(
            "process_resident_memory_bytes",
            Kind::Gauge,
            "Resident memory size in bytes.",
        );
        self.sample("process_resident_memory_bytes", &[], p.rss_bytes as f64);
        self.family(
            "process_open_fds",
            Kind::Gauge,
            "Number of open file descriptors.",
        );
        self.sample("process_open_fds", &[], p.open_fds as f64);
        self.family(
            "process_start_time_seconds",
            Kind::Gauge,
            "Start time of the process since unix epoch in seconds.",
        );
        self.sample("process_start_time_seconds", &[], p.start_time);
    }

    pub fn finish(self) -> String {
        self.out
    }
}

/// What /proc says about this process.
#[derive(Debug, Clone, Copy)]
pub struct ProcessStats {
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
    pub open_fds: usize,
    pub start_time: f64,
}

impl ProcessStats {
    /// Read /proc/self (None off Linux or when /proc is not mounted).
    pub fn read() -> Option<ProcessStats> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // fields after the command name, which is in parentheses and may hold spaces
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        // field 3 is f[0]: utime 14, stime 15, starttime 22, rss 24
        let num = |i: usize| f.get(i - 3).and_then(|v| v.parse::<f64>().ok());
        let ticks = clock_ticks();
        let page = page_size();
        let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("btime "))
                .and_then(|v| v.trim().parse::<f64>().ok())
        })?;
        let open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count());
        Some(ProcessStats {
            cpu_seconds: (num(14)? + num(15)?) / ticks,
            rss_bytes: (num(24)? as u64) * page,
            open_fds,
            start_time: boot + num(22)? / ticks,
        })
    }
}

fn clock_ticks() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100.0, |v| v as f64)
}

fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map_or(4096, |v| v as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped_and_values_spelled() {
        let mut t = Text::new();
        t.family("castmux_x_total", Kind::Counter, "A \\ help\nline.");
        t.sample("castmux_x_total", &[("channel", "a\"b\\c\nd")], 3.0);
        t.sample("castmux_x_total", &[], f64::INFINITY);
        let s = t.finish();
        assert_eq!(
            s,
            "# HELP castmux_x_total A \\\\ help\\nline.\n# TYPE castmux_x_total counter\n\
             castmux_x_total{channel=\"a\\\"b\\\\c\\nd\"} 3\ncastmux_x_total +Inf\n"
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        for us in [500, 2_000, 2_000, 40_000] {
            h.record(us).unwrap();
        }
        let mut t = Text::new();
        t.histogram_us("x_seconds", &[], &h, &[0.001, 0.005, 0.1]);
        let s = t.finish();
        assert!(s.contains("x_seconds_bucket{le=\"0.001\"} 1\n"), "{s}");
        assert!(s.contains("x_seconds_bucket{le=\"0.005\"} 3\n"), "{s}");
        assert!(s.contains("x_seconds_bucket{le=\"0.1\"} 4\n"), "{s}");
        assert!(s.contains("x_seconds_bucket{le=\"+Inf\"} 4\n"), "{s}");
        assert!(s.contains("x_seconds_count 4\n"), "{s}");
    }

    #[test]
    fn process_stats_read_on_linux() {
        let p = ProcessStats::read().expect("/proc");
        assert!(p.rss_bytes > 0 && p.open_fds > 0 && p.start_time > 1e9);
    }
}
