//! `castmux emmg` feeding several muxes (real process, three EMMG<->MUX servers of the
//! library): the muxes at one bandwidth get the same EMMs, each built once (byte for byte
//! the same sections: sealed once, under one nonce), a mux with a bandwidth of its own
//! (`--mux HOST:PORT?bandwidth=RATE`) gets them at its own rate, and every card reaches each.

mod cli_support;
mod head_support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use castmux::scramble::{EmmData, EmmSource};
use castmux::simulcrypt::{EmmMuxConfig, EmmMuxServer, EmmMuxStats, EmmQueueSource};
use castmux::ts::section::section_total_len;
use head_support::*;

struct Mux {
    addr: String,
    stats: Arc<EmmMuxStats>,
    src: EmmQueueSource,
    _stop: tokio::sync::oneshot::Sender<()>,
}

fn start_mux(rt: &tokio::runtime::Runtime) -> Mux {
    let cfg = EmmMuxConfig {
        max_bandwidth_kbps: 2000,
        ..EmmMuxConfig::default()
    };
    let (server, src) = rt
        .block_on(EmmMuxServer::bind("127.0.0.1:0".parse().unwrap(), cfg))
        .unwrap();
    let addr = server.local_addr().unwrap().to_string();
    let stats = server.stats();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    rt.spawn(server.run(async move {
        let _ = rx.await;
    }));
    Mux {
        addr,
        stats,
        src,
        _stop: stop,
    }
}

/// The sections in `bytes`, back to back.
fn sections(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while let Some(len) = section_total_len(rest) {
        if len > rest.len() {
            break;
        }
        out.push(rest[..len].to_vec());
        rest = &rest[len..];
    }
    out
}

#[test]
fn one_emmg_feeds_three_muxes_building_each_emm_once() {
    let h = Head::new();
    h.ok(&["card", "add", "--count", "300", "--packages", "sport"]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut muxes: Vec<Mux> = (0..3).map(|_| start_mux(&rt)).collect();
    let own = format!("{}?bandwidth=100k", muxes[1].addr);
    let mut emmg = h.spawn(
        &[
            "emmg",
            "--mux",
            &muxes[0].addr,
            "--mux",
            &own,
            "--mux",
            &muxes[2].addr,
            "--bandwidth",
            "400k",
        ],
        false,
    );
    for _ in 0..3 {
        emmg.wait_for("EMMG stream set up");
    }
    let mut got: Vec<Vec<u8>> = vec![Vec::new(); 3];
    let t0 = Instant::now();
    let secs = 6.0;
    while t0.elapsed() < Duration::from_secs_f64(secs) {
        for (m, into) in muxes.iter_mut().zip(got.iter_mut()) {
            while let Some(kind) = m.src.poll(Duration::ZERO, into) {
                assert_eq!(kind, EmmData::Sections);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(emmg);
    // air bit/s as the bandwidth counts it: the sections packed into TS packets
    let rate = |b: &[u8]| b.len() as f64 * 188.0 / 184.0 * 8.0 / secs;
    let (ra, rb, rc) = (rate(&got[0]), rate(&got[1]), rate(&got[2]));
    println!("400k muxes: {ra:.0} and {rc:.0} bit/s; the 100k mux: {rb:.0} bit/s (TS)");
    for m in &muxes {
        assert_eq!(
            m.stats
                .dropped_over_bandwidth
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
    }
    // the two muxes at one bandwidth: the same sections, byte for byte (built once)
    let (sa, sb, sc) = (sections(&got[0]), sections(&got[1]), sections(&got[2]));
    let n = sa.len().min(sc.len());
    assert!(n > 300, "{} and {} sections", sa.len(), sc.len());
    assert_eq!(sa[..n], sc[..n], "the same EMMs on both");
    // the mux of its own: other EMMs (sealed for it), at its own rate
    assert!(!sb.is_empty() && !sa.contains(&sb[0]), "its own carousel");
    assert!((320_000.0..=440_000.0).contains(&ra), "{ra}");
    assert!((80_000.0..=110_000.0).contains(&rb), "{rb}");
    // every card on each
    let serials = |ss: &[Vec<u8>]| -> BTreeSet<Vec<u8>> {
        ss.iter().filter_map(|s| card_serial(s)).collect()
    };
    for (what, ss) in [("400k", &sa), ("100k", &sb), ("400k", &sc)] {
        assert_eq!(serials(ss).len(), 301, "every card on the {what} mux");
    }
}

/// The card a unique EMM is addressed to (format 2, table 0x83), by its clear header.
fn card_serial(section: &[u8]) -> Option<Vec<u8>> {
    castmux::cas::Emm2Header::parse(section)
        .ok()
        .map(|h| h.serial.0.to_be_bytes().to_vec())
}
