//! Shared by the load benches (`headend`, `http`, `mux`), which run the real binary against a
//! load from this process: their settings from the environment, and the core the load runs
//! on, kept apart from castmux's.

/// The number in environment variable `name`, else `default`.
pub fn env_num(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Run `castmux --db DB ARGS` to its end and require success; its wall time in seconds.
#[allow(dead_code)]
pub fn castmux_db(db: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> f64 {
    let t = std::time::Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_castmux"))
        .arg("--db")
        .arg(db)
        .args(args)
        .env("CASTMUX_LOG", "warn")
        .env_remove("CASTMUX_DB")
        .output()
        .expect("run castmux");
    assert!(
        out.status.success(),
        "castmux {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    t.elapsed().as_secs_f64()
}

/// Run the calling thread on core `cpu` only (left as it is where that fails).
pub fn pin_to(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    if set.set(cpu).is_ok() {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
    }
}

/// Start `castmux headend` as `cmd` says (stderr is taken here) and wait until it logs that
/// it runs; its ERROR lines are printed. Panics when it has not started within 60 s.
#[allow(dead_code)]
pub fn start_headend(mut cmd: std::process::Command) -> std::process::Child {
    use std::io::{BufRead, BufReader};
    let mut child = cmd
        .env("CASTMUX_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn taskset castmux (util-linux taskset, cargo build --release)");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut said = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !said && line.contains("headend: running") {
                said = true;
                let _ = tx.send(());
            }
            if line.contains("ERROR") {
                eprintln!("castmux: {line}");
            }
        }
    });
    rx.recv_timeout(std::time::Duration::from_secs(60))
        .expect("castmux headend did not start within 60 s");
    child
}
