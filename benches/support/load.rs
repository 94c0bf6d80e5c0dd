//! Shared by the load benches (`headend`, `http`), which run the real binary against a
//! load from this process: their settings from the environment, and the core the load runs
//! on, kept apart from castmux's.

/// The number in environment variable `name`, else `default`.
pub fn env_num(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Run the calling thread on core `cpu` only (left as it is where that fails).
pub fn pin_to(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    if set.set(cpu).is_ok() {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
    }
}
