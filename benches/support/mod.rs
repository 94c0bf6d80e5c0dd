//! Shared by the benches: read back what criterion measured in this run, so each bench
//! can print its comparison table (Gbit/s side by side, ratios) at the end.

use std::path::Path;

/// One measured benchmark: (group, benchmark id, Gbit/s).
pub type Row = (String, String, f64);

/// Gbit/s of every benchmark under criterion's output whose group starts with `prefix`,
/// sorted by group and fastest first.
pub fn measured(prefix: &str) -> Vec<Row> {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("../criterion");
    let mut rows: Vec<Row> = Vec::new();
    let Ok(groups) = std::fs::read_dir(&root) else {
        return rows;
    };
    for g in groups.flatten() {
        let gname = g.file_name().to_string_lossy().to_string();
        if !gname.starts_with(prefix) {
            continue;
        }
        let mut stack = vec![g.path()];
        while let Some(dir) = stack.pop() {
            let est = dir.join("new/estimates.json");
            let bench = dir.join("new/benchmark.json");
            if est.exists() && bench.exists() {
                let e = json(&est);
                let b = json(&bench);
                let ns = e["mean"]["point_estimate"].as_f64().unwrap_or(0.0);
                let bytes = b["throughput"]["Bytes"].as_f64().unwrap_or(0.0);
                let id = b["title"].as_str().unwrap_or("?").to_string();
                if ns > 0.0 && bytes > 0.0 {
                    rows.push((gname.clone(), id, bytes * 8.0 / ns));
                }
            } else if let Ok(rd) = std::fs::read_dir(&dir) {
                for sub in rd.flatten() {
                    if sub.path().is_dir() && sub.file_name() != "report" {
                        stack.push(sub.path());
                    }
                }
            }
        }
    }
    rows.sort_by(|a, b| {
        a.0.cmp(&b.0)
            .then(b.2.partial_cmp(&a.2).unwrap_or(std::cmp::Ordering::Equal))
    });
    rows
}

/// The Gbit/s of the benchmark in `group` whose id ends with `name`.
pub fn find(rows: &[Row], group: &str, name: &str) -> Option<f64> {
    rows.iter()
        .find(|r| r.0 == group && r.1.ends_with(name))
        .map(|r| r.2)
}

/// Print the rows as a table.
pub fn print_table(rows: &[Row]) {
    println!("\n{:<24} {:<44} {:>10}", "group", "benchmark", "Gbit/s");
    for (g, id, gbps) in rows {
        println!("{g:<24} {id:<44} {gbps:>10.3}");
    }
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap_or_default()).unwrap_or_default()
}
