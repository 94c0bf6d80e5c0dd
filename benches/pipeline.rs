//! The scrambling pipeline against the raw cipher, side by side in one run, on a 200 MB
//! stream (samples/spts.ts repeated) held in memory:
//! - `raw-csa`: copy each 2048-packet batch (a file input's default batch) and scramble it
//!   with `csa::KeyContext` (the engine's ceiling for this stream);
//! - `scrambler-memory`: `Scrambler::process` on the same batches (PSI tracking, PMT
//!   rewrite, ES selection, crypto periods, counters; one thread, no I/O);
//! - `scramble-file`: `run_scramble` from a file to a file in /dev/shm, the real threaded
//!   data path (input thread, cipher thread, output thread), over the previous output;
//! - `scramble-new-file`: the same into a file that does not exist yet (no truncation).
//!
//! The table at the end gives Gbit/s and each pipeline's share of raw-csa (target ≥ 80 %);
//! then raw-csa and the two file pipelines run in turn for 25 rounds, and the median of the
//! rounds' ratios is printed (the robust figure on a shared machine).
//!
//! Run: `cargo bench --bench pipeline`

mod support;

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use castmux::io::{Input, InputOptions, InputUrl, Output, OutputOptions, OutputUrl};
use castmux::scramble::{run_scramble, KeyMode, RunOptions, ScrambleConfig, Scrambler};
use criterion::{BatchSize, Criterion, Throughput};
use csa::{ControlWord, KeyContext};

const TARGET_BYTES: usize = 200 * 1000 * 1000;
/// Every path runs batches of what `castmux scramble` takes from a file by default.
const BATCH: usize = castmux::headend::spec::DEFAULT_FILE_BATCH;

fn stream() -> Vec<u8> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let one = std::fs::read(root.join("samples/spts.ts")).expect("samples/spts.ts");
    let one = &one[..one.len() / 188 * 188];
    let mut v = Vec::with_capacity(TARGET_BYTES + one.len());
    while v.len() < TARGET_BYTES {
        v.extend_from_slice(one);
    }
    v
}

fn config() -> ScrambleConfig {
    ScrambleConfig {
        keys: KeyMode::Rotating,
        ..ScrambleConfig::default()
    }
}

fn benches(c: &mut Criterion, data: &[u8], files: &Files) {
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.sample_size(10)
        .measurement_time(Duration::from_secs(8))
        .warm_up_time(Duration::from_secs(1));

    let ctx = key();
    let mut buf = vec![0u8; BATCH * 188];
    g.bench_function("raw-csa", |b| b.iter(|| raw_csa(&ctx, data, &mut buf)));

    let (packets, rest) = data.as_chunks::<188>();
    assert!(rest.is_empty());
    g.bench_function("scrambler-memory", |b| {
        b.iter(|| {
            let mut s = Scrambler::new(config(), None, Vec::new()).expect("scrambler");
            for batch in packets.chunks(BATCH) {
                black_box(s.process(batch).expect("process").len());
            }
        })
    });

    let (src, dst) = (&files.src, &files.dst);
    let scramble_file = || scramble_file(src, dst);
    // overwrites the previous iteration's output: opening it truncates 200 MB (the kernel
    // frees its pages, ~11 ms in /dev/shm), as a run over an existing file does
    g.bench_function("scramble-file", |b| b.iter(scramble_file));
    // the same into a new file: the previous output is deleted before, untimed
    g.bench_function("scramble-new-file", |b| {
        b.iter_batched(
            || {
                let _ = std::fs::remove_file(dst);
            },
            |()| scramble_file(),
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

/// The one key every path scrambles under.
fn key() -> KeyContext {
    let cw = ControlWord::from_bytes([1, 2, 3, 6, 4, 5, 6, 15]);
    KeyContext::csa2(&cw, &cw)
}

/// Copy each batch of `data` and scramble it: the engine's ceiling for this stream.
fn raw_csa(ctx: &KeyContext, data: &[u8], buf: &mut [u8]) {
    for chunk in data.chunks(BATCH * 188) {
        let out = &mut buf[..chunk.len()];
        out.copy_from_slice(chunk);
        black_box(ctx.scramble(out, csa::Parity::Even).ok());
    }
}

/// The stream written once to a file in /dev/shm (or the target dir), and the output's
/// path; both are removed when this is dropped.
struct Files {
    src: PathBuf,
    dst: PathBuf,
}

impl Files {
    fn write(data: &[u8]) -> Files {
        let shm = PathBuf::from("/dev/shm");
        let dir = if shm.is_dir() {
            shm
        } else {
            PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        };
        let src = dir.join(format!("castmux-bench-{}.ts", std::process::id()));
        let dst = dir.join(format!("castmux-bench-{}.out", std::process::id()));
        std::fs::write(&src, data).expect("write the bench input");
        Files { src, dst }
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.src);
        let _ = std::fs::remove_file(&self.dst);
    }
}

/// `run_scramble` from `src` to `dst`, as `castmux scramble -i FILE -o FILE` runs it.
fn scramble_file(src: &Path, dst: &Path) {
    let mut s = Scrambler::new(config(), None, Vec::new()).expect("scrambler");
    let mut input =
        Input::open(&InputUrl::File(src.to_owned()), &InputOptions::default()).expect("open input");
    let mut output = Output::open(&OutputUrl::File(dst.to_owned()), &OutputOptions::default())
        .expect("open output");
    let opts = RunOptions {
        batch_packets: BATCH,
        ..RunOptions::default()
    };
    run_scramble(&mut input, &mut output, &mut s, &opts).expect("run");
    output.close(Duration::from_secs(1)).expect("close");
}

/// Rounds of the interleaved comparison.
const ROUNDS: usize = 25;

/// raw-csa and the file pipelines timed in turn, round after round, each round's ratio
/// kept: on a shared machine the speed moves by tens of percent from one ten-second
/// stretch to the next (criterion's means above are taken minutes apart), so only ratios
/// within a round compare like with like. Prints the median ratio and the spread.
fn interleaved(data: &[u8], files: &Files) {
    let ctx = key();
    let mut buf = vec![0u8; BATCH * 188];
    let (src, dst) = (&files.src, &files.dst);
    let time = |f: &mut dyn FnMut()| {
        let t = Instant::now();
        f();
        t.elapsed().as_secs_f64()
    };
    let (mut new_file, mut over_file) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let _ = std::fs::remove_file(dst);
        let raw = time(&mut || raw_csa(&ctx, data, &mut buf));
        new_file.push(raw / time(&mut || scramble_file(src, dst)));
        over_file.push(raw / time(&mut || scramble_file(src, dst)));
    }
    println!(
        "\ninterleaved, {ROUNDS} rounds (each pipeline against the raw-csa run just before it):"
    );
    for (name, mut r) in [
        ("scramble-new-file", new_file),
        ("scramble-file", over_file),
    ] {
        r.sort_by(f64::total_cmp);
        println!(
            "{name:<18} median {:>5.1} % of raw-csa (middle half {:.1}-{:.1} %; target >= 80 %)",
            100.0 * r[ROUNDS / 2],
            100.0 * r[ROUNDS / 4],
            100.0 * r[3 * ROUNDS / 4]
        );
    }
}

fn summary() {
    let rows = support::measured("pipeline");
    support::print_table(&rows);
    let find = |name: &str| support::find(&rows, "pipeline", name);
    if let Some(raw) = find("raw-csa") {
        for name in ["scrambler-memory", "scramble-file", "scramble-new-file"] {
            if let Some(v) = find(name) {
                println!(
                    "{name:<18} {:>5.1} % of raw-csa (target >= 80 %)",
                    100.0 * v / raw
                );
            }
        }
    }
}

fn main() {
    let data = stream();
    let files = Files::write(&data);
    let mut c = Criterion::default().configure_from_args();
    benches(&mut c, &data, &files);
    c.final_summary();
    summary();
    interleaved(&data, &files);
}
