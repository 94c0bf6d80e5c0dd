//! DVB-CSA2 throughput, side by side in one run: every castmux backend, the
//! system libdvbcsa (with `--features libdvbcsa`), the `rcsa` crate (AVX2,
//! SSE2, u64 paths) and the `dvb-csa` crate (bitsliced and scalar).
//! Full 184-byte payloads; a final table prints Gbit/s of TS (188-byte
//! packets) and the ratios the targets are stated in.
//!
//! Run: `cargo bench --bench csa --features libdvbcsa`

mod support;

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use csa::{Backend, ControlWord, KeyContext, MultiBatch, Parity};
use std::hint::black_box;
use std::time::Duration;

const CW: [u8; 8] = [0x11, 0x22, 0x33, 0x66, 0x44, 0x55, 0x66, 0xff];
const BATCH: usize = 2048;

fn packets(n: usize, tsc: u8) -> Vec<u8> {
    let mut v = vec![0u8; n * 188];
    let mut x: u32 = 0x1234_5678;
    for (i, p) in v.chunks_exact_mut(188).enumerate() {
        p[0] = 0x47;
        p[1] = 0x01;
        p[2] = 0x00;
        p[3] = 0x10 | (tsc << 6) | (i as u8 & 0x0f);
        for b in &mut p[4..] {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *b = x as u8;
        }
    }
    v
}

fn ctx(backend: Backend) -> KeyContext {
    KeyContext::csa2(&ControlWord::from_bytes(CW), &ControlWord::from_bytes(CW))
        .with_backend(Some(backend))
}

fn engines(c: &mut Criterion) {
    for (group_name, scramble) in [("scramble", true), ("descramble", false)] {
        let mut g = c.benchmark_group(format!("csa-{group_name}"));
        g.throughput(Throughput::Bytes((BATCH * 188) as u64));
        g.sample_size(10)
            .measurement_time(Duration::from_secs(2))
            .warm_up_time(Duration::from_millis(300));
        for backend in Backend::supported() {
            let k = ctx(backend);
            let n = if backend == Backend::Scalar {
                BATCH / 8
            } else {
                BATCH
            };
            let mut buf = packets(n, 0);
            g.throughput(Throughput::Bytes((n * 188) as u64));
            g.bench_function(format!("castmux-{}", backend.name()), |b| {
                b.iter(|| {
                    // Clear the TSC so every iteration does the full work.
                    for p in buf.chunks_exact_mut(188) {
                        p[3] = (p[3] & 0x3f) | if scramble { 0 } else { 0x80 };
                    }
                    if scramble {
                        k.scramble(black_box(&mut buf), Parity::Even).unwrap();
                    } else {
                        k.descramble(black_box(&mut buf)).unwrap();
                    }
                })
            });
        }
        g.throughput(Throughput::Bytes((BATCH * 188) as u64));
        #[cfg(feature = "libdvbcsa")]
        {
            let mut bs = csa::reference::LibDvbCsaBs::new(&CW);
            let mut buf = packets(BATCH, 0);
            g.bench_function("libdvbcsa-bitslice", |b| {
                b.iter(|| {
                    let mut payloads: Vec<&mut [u8]> =
                        buf.chunks_exact_mut(188).map(|p| &mut p[4..]).collect();
                    if scramble {
                        bs.encrypt(&mut payloads);
                    } else {
                        bs.decrypt(&mut payloads);
                    }
                })
            });
            let single = csa::reference::LibDvbCsa::new(&CW);
            let mut buf = packets(BATCH / 8, 0);
            g.throughput(Throughput::Bytes((BATCH / 8 * 188) as u64));
            g.bench_function("libdvbcsa-single", |b| {
                b.iter(|| {
                    for p in buf.chunks_exact_mut(188) {
                        if scramble {
                            single.encrypt(&mut p[4..]);
                        } else {
                            single.decrypt(&mut p[4..]);
                        }
                    }
                })
            });
            g.throughput(Throughput::Bytes((BATCH * 188) as u64));
        }
        {
            let r = rcsa::CsaBatch::new(&CW);
            let mut buf = packets(BATCH, if scramble { 0 } else { 2 });
            if scramble {
                g.bench_function("rcsa-auto", |b| {
                    b.iter(|| r.encrypt_in_place(black_box(&mut buf)))
                });
            } else {
                #[cfg(target_arch = "x86_64")]
                {
                    g.bench_function("rcsa-avx2", |b| {
                        b.iter(|| r.decrypt_in_place_avx2(black_box(&mut buf)))
                    });
                    g.bench_function("rcsa-sse2", |b| {
                        b.iter(|| r.decrypt_in_place_sse2(black_box(&mut buf)))
                    });
                }
                g.bench_function("rcsa-u64", |b| {
                    b.iter(|| r.decrypt_in_place_u64(black_box(&mut buf)))
                });
            }
        }
        {
            let cw = dvb_csa::ControlWord::from_bytes(CW);
            let mut buf = packets(BATCH, 0);
            g.bench_function("dvb-csa-bitsliced", |b| {
                b.iter(|| {
                    for chunk in buf.chunks_mut(188 * dvb_csa::bitsliced::LANES) {
                        let mut payloads: Vec<&mut [u8]> =
                            chunk.chunks_exact_mut(188).map(|p| &mut p[4..]).collect();
                        if scramble {
                            dvb_csa::bitsliced::scramble_batch(&cw, &mut payloads);
                        } else {
                            dvb_csa::bitsliced::descramble_batch(&cw, &mut payloads);
                        }
                    }
                })
            });
        }
        g.finish();
    }
}

/// Packets per call in the batch-size curve.
const CURVE: [usize; 7] = [8, 32, 64, 128, 256, 512, 2048];

/// The curve's series: the automatic choice (which narrows small calls on
/// AVX-512) and every SIMD backend forced.
fn curve_series() -> Vec<(String, Option<Backend>)> {
    let mut v = vec![("castmux-auto".to_string(), None)];
    for b in Backend::supported().into_iter().rev() {
        if b != Backend::Scalar {
            v.push((format!("castmux-{}", b.name()), Some(b)));
        }
    }
    v
}

/// One call per batch of `n` packets (up to 2048), for the automatic backend
/// and each forced one: what a call costs for few packets.
fn batch_curve(c: &mut Criterion) {
    for (group_name, scramble) in [("scramble", true), ("descramble", false)] {
        let mut g = c.benchmark_group(format!("csa-batch-{group_name}"));
        g.sample_size(10)
            .measurement_time(Duration::from_secs(1))
            .warm_up_time(Duration::from_millis(200));
        for (series, backend) in curve_series() {
            let k = KeyContext::csa2(&ControlWord::from_bytes(CW), &ControlWord::from_bytes(CW))
                .with_backend(backend);
            for n in CURVE {
                let mut buf = packets(n, 0);
                g.throughput(Throughput::Bytes((n * 188) as u64));
                g.bench_with_input(BenchmarkId::new(&series, n), &n, |b, _| {
                    b.iter(|| {
                        for p in buf.chunks_exact_mut(188) {
                            p[3] = (p[3] & 0x3f) | if scramble { 0 } else { 0x80 };
                        }
                        if scramble {
                            k.scramble(black_box(&mut buf), Parity::Even).unwrap();
                        } else {
                            k.descramble(black_box(&mut buf)).unwrap();
                        }
                    })
                });
            }
        }
        g.finish();
    }
}

/// Channels in the many-channels case, and packets each hands over per wake-up.
const CHANNELS: usize = 200;
const PER_CHANNEL: usize = 8;

/// A head-end worker's wake-up: 200 channels with their own CWs hand over 8
/// packets each. One `MultiBatch` pass (full lane sets whatever the key) vs
/// 200 separate `KeyContext` calls vs one 1600-packet call under one key; and
/// the keyed kernel with every lane on the same key (200 contexts, one CW pair)
/// vs the one-key kernel (one context for all 200 buffers), both through the
/// batch. The best backend, pinned.
fn many_channels(c: &mut Criterion) {
    let best = Backend::best();
    let name = |case: &str| format!("castmux-{}-{case}", best.name());
    let cw = |i: usize, parity: u8| {
        let mut b = CW;
        b[0] = i as u8;
        b[1] = (i >> 8) as u8;
        b[2] = parity;
        ControlWord::from_bytes(b).with_checksum()
    };
    let distinct: Vec<KeyContext> = (0..CHANNELS)
        .map(|i| KeyContext::csa2(&cw(i, 0), &cw(i, 1)).with_backend(Some(best)))
        .collect();
    let same_cw: Vec<KeyContext> = (0..CHANNELS).map(|_| ctx(best)).collect();
    let one = ctx(best);
    for (group_name, scramble) in [("scramble", true), ("descramble", false)] {
        let mut g = c.benchmark_group(format!("csa-channels-{group_name}"));
        g.sample_size(10)
            .measurement_time(Duration::from_secs(2))
            .warm_up_time(Duration::from_millis(300));
        g.throughput(Throughput::Bytes((CHANNELS * PER_CHANNEL * 188) as u64));
        let tsc = if scramble { 0 } else { 0x80 };
        let reset = |buf: &mut [u8]| {
            for p in buf.chunks_exact_mut(188) {
                p[3] = (p[3] & 0x3f) | tsc;
            }
        };
        let mut bufs: Vec<Vec<u8>> = (0..CHANNELS).map(|_| packets(PER_CHANNEL, 0)).collect();
        let mut batch = MultiBatch::new().with_backend(Some(best));
        let contexts: [(&str, Vec<&KeyContext>); 3] = [
            ("multi-200x8", distinct.iter().collect()),
            ("multi-200x8-same-cw", same_cw.iter().collect()),
            ("multi-200x8-one-ctx", vec![&one; CHANNELS]),
        ];
        for (case, ctxs) in &contexts {
            g.bench_function(name(case), |b| {
                b.iter(|| {
                    let mut run = batch.begin();
                    for (k, buf) in ctxs.iter().zip(bufs.iter_mut()) {
                        reset(buf);
                        if scramble {
                            run.scramble(k, black_box(buf), Parity::Even).unwrap();
                        } else {
                            run.descramble(k, black_box(buf)).unwrap();
                        }
                    }
                    run.finish()
                })
            });
        }
        g.bench_function(name("separate-200x8"), |b| {
            b.iter(|| {
                for (k, buf) in distinct.iter().zip(bufs.iter_mut()) {
                    reset(buf);
                    if scramble {
                        k.scramble(black_box(buf), Parity::Even).unwrap();
                    } else {
                        k.descramble(black_box(buf)).unwrap();
                    }
                }
            })
        });
        let mut all = packets(CHANNELS * PER_CHANNEL, 0);
        g.bench_function(name("single-key-1600"), |b| {
            b.iter(|| {
                reset(&mut all);
                if scramble {
                    one.scramble(black_box(&mut all), Parity::Even).unwrap();
                } else {
                    one.descramble(black_box(&mut all)).unwrap();
                }
            })
        });
        g.finish();
    }
}

criterion_group!(benches, engines, batch_curve, many_channels);

/// Reads criterion's estimates back and prints Gbit/s side by side.
fn summary() {
    let rows = support::measured("csa");
    let find = |group: &str, name: &str| support::find(&rows, group, name);
    support::print_table(&rows);
    let best = format!("castmux-{}", Backend::best().name());
    let ratio = |g: &str, other: &str| match (find(g, &best), find(g, other)) {
        (Some(a), Some(b)) => format!("{:.1}x", a / b),
        _ => "n/a".into(),
    };
    println!(
        "\nscramble:   {best} vs libdvbcsa-bitslice {}, vs dvb-csa-bitsliced {}",
        ratio("csa-scramble", "libdvbcsa-bitslice"),
        ratio("csa-scramble", "dvb-csa-bitsliced")
    );
    println!(
        "descramble: {best} vs rcsa-avx2 {}, vs libdvbcsa-bitslice {}",
        ratio("csa-descramble", "rcsa-avx2"),
        ratio("csa-descramble", "libdvbcsa-bitslice")
    );
    for dir in ["scramble", "descramble"] {
        let group = format!("csa-batch-{dir}");
        let series = curve_series();
        let cell = |name: &str, n: usize| find(&group, &format!("/{name}/{n}"));
        // The peak: the fastest figure of any series at any size.
        let peak = series
            .iter()
            .flat_map(|(name, _)| CURVE.iter().filter_map(move |&n| cell(name, n)))
            .fold(0.0f64, f64::max);
        println!("\nbatch curve, {dir} (Gbit/s, and % of the peak {peak:.2}):");
        println!(
            "{:<22}{}",
            "packets per call",
            CURVE.iter().map(|n| format!("{n:>14}")).collect::<String>()
        );
        for (name, _) in &series {
            let cells: String = CURVE
                .iter()
                .map(|&n| match cell(name, n) {
                    Some(v) if peak > 0.0 => format!("{:>7.2} ({:>3.0}%)", v, 100.0 * v / peak),
                    _ => format!("{:>14}", "n/a"),
                })
                .collect();
            println!("{name:<22}{cells}");
        }
    }
    println!("\n{CHANNELS} channels x {PER_CHANNEL} packets, {best} (Gbit/s):");
    let cases = [
        "multi-200x8",
        "separate-200x8",
        "single-key-1600",
        "multi-200x8-same-cw",
        "multi-200x8-one-ctx",
    ];
    println!(
        "{:<12}{}",
        "",
        cases.iter().map(|c| format!("{c:>22}")).collect::<String>()
    );
    for dir in ["scramble", "descramble"] {
        let group = format!("csa-channels-{dir}");
        let cell = |case: &str| match find(&group, &format!("{best}-{case}")) {
            Some(v) => format!("{v:>22.3}"),
            None => format!("{:>22}", "n/a"),
        };
        println!(
            "{dir:<12}{}",
            cases.iter().map(|c| cell(c)).collect::<String>()
        );
        if let (Some(multi), Some(sep)) = (
            find(&group, &format!("{best}-multi-200x8")),
            find(&group, &format!("{best}-separate-200x8")),
        ) {
            println!("{:<12}one pass vs separate calls: {:.1}x", "", multi / sep);
        }
    }
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    summary();
}
