//! An MPTS channel against the real binary: three ffmpeg-made SPTS (different program
//! numbers; two of them on the same PIDs) sent live over UDP into one `[[channel.program]]`
//! channel written to a file, one of its programs scrambled under a fixed CW. ffprobe lists
//! the three programs under their new numbers with their SDT names and providers; each
//! decodes (the scrambled one after descrambling); the scrambled program's ES carry the
//! scrambling bits and the others' do not; the status API and `/metrics` count per program.

mod cli_support;
mod http_support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::UdpSocket;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use castmux::ts::{Pat, Pmt, Section, SectionAssembler};
use cli_support::*;
use http_support::*;

const CW: &str = "11223366445566EF:0102030609080716";
const SECS: u64 = 8;
const MUXRATE: u64 = 1_200_000;

/// An ffmpeg-made SPTS: MPEG-2 video and MP2 audio at a constant mux rate, numbered by
/// `numbering` (ffmpeg's -mpegts_* options).
fn make_input(path: &Path, pattern: &str, numbering: &[&str]) {
    let muxrate = MUXRATE.to_string();
    let mut options = vec!["-muxrate", &muxrate, "-pat_period", "0.1"];
    options.extend_from_slice(numbering);
    ffmpeg_spts(path, pattern, SECS, "500k", &options);
}

/// Send each input as 7-packet datagrams at its mux rate, all together, to its port.
fn send(inputs: Vec<(Vec<u8>, u16)>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let dgram = 7 * 188;
        let step = Duration::from_secs_f64(dgram as f64 * 8.0 / MUXRATE as f64);
        let start = Instant::now();
        let mut at = 0usize;
        for k in 0u32.. {
            if inputs.iter().all(|(b, _)| at + dgram > b.len()) {
                break;
            }
            if let Some(d) = (step * k).checked_sub(start.elapsed()) {
                std::thread::sleep(d);
            }
            for (bytes, port) in &inputs {
                if at + dgram <= bytes.len() {
                    let _ = tx.send_to(&bytes[at..at + dgram], ("127.0.0.1", *port));
                }
            }
            at += dgram;
        }
    })
}

/// The last PAT's programs, and each program's last PMT (PCR PID, ES PIDs) in `pkts` (the
/// first PAT may come before every input's PMT is known: the PAT grows as they come).
fn layout(pkts: &[Packet]) -> (u16, BTreeMap<u16, (u16, Vec<u16>)>) {
    let mut asm = SectionAssembler::psi();
    let mut pat: Option<(u16, Vec<(u16, u16)>)> = None;
    for p in pkts.iter().filter(|p| pid(p) == 0) {
        asm.push(p, |r| {
            if let Ok(s) = r {
                let t = Pat::parse(&s).unwrap();
                pat = Some((
                    t.transport_stream_id(),
                    t.entries()
                        .map(|e| (e.program_number, e.pid.value()))
                        .collect(),
                ));
            }
        });
    }
    let (tsid, entries) = pat.expect("a PAT on the output");
    let mut programs = BTreeMap::new();
    for (number, pmt_pid) in entries.into_iter().filter(|e| e.0 != 0) {
        let mut asm = SectionAssembler::psi();
        let mut got = None;
        for p in pkts.iter().filter(|p| pid(p) == pmt_pid) {
            asm.push(p, |r| {
                if let Ok(s) = r {
                    let t = Pmt::parse(&s).unwrap();
                    assert_eq!(t.program_number(), number);
                    got = Some((
                        t.pcr_pid.value(),
                        t.streams().map(|s| s.elementary_pid.value()).collect(),
                    ));
                }
            });
        }
        programs.insert(number, got.expect("the program's PMT"));
    }
    (tsid, programs)
}

/// The largest distance in stream time between two PAT sections (PUSI packets on PID 0),
/// the time of a packet interpolated between the PCRs on `pcr_pid` around it.
fn max_pat_gap(pkts: &[Packet], pcr_pid: u16) -> f64 {
    let pcrs: Vec<(usize, f64)> = pcrs(pkts, pcr_pid)
        .into_iter()
        .map(|(i, pcr)| (i, pcr as f64 / 27e6))
        .collect();
    let time = |i: usize| {
        let k = pcrs.partition_point(|(at, _)| *at <= i);
        let ((i0, t0), (i1, t1)) = (pcrs.get(k.checked_sub(1)?)?, pcrs.get(k)?);
        Some(t0 + (t1 - t0) * (i - i0) as f64 / (i1 - i0) as f64)
    };
    let pats: Vec<f64> = pkts
        .iter()
        .enumerate()
        .filter(|(_, p)| pid(p) == 0 && p[1] & 0x40 != 0)
        .filter_map(|(i, _)| time(i))
        .collect();
    assert!(pats.len() > 20, "{} PATs timed", pats.len());
    pats.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max)
}

/// ffprobe's programs: (program_num, service_name, service_provider, streams).
fn probe_programs(ts: &Path) -> Vec<(u64, String, String, usize)> {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-show_programs", "-of", "json"])
        .arg(ts)
        .output()
        .expect("ffprobe (Debian package ffmpeg) is needed by this test");
    assert!(out.status.success(), "ffprobe: {out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut got: Vec<_> = v["programs"]
        .as_array()
        .expect("programs")
        .iter()
        .map(|p| {
            (
                p["program_num"].as_u64().unwrap(),
                p["tags"]["service_name"].as_str().unwrap_or("").to_owned(),
                p["tags"]["service_provider"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
                p["streams"].as_array().map_or(0, Vec::len),
            )
        })
        .collect();
    got.sort();
    got
}

/// Video frames ffmpeg decodes from program `pnr` of `ts` (it must decode without error).
fn decoded_frames(ts: &Path, pnr: u16) -> u64 {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-nostats", "-i"])
        .arg(ts)
        .args(["-map", &format!("0:p:{pnr}:v"), "-f", "framemd5", "-"])
        .output()
        .expect("ffmpeg");
    assert!(out.status.success(), "ffmpeg program {pnr}: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .count() as u64
}

/// The three inputs of the multiplex: different program numbers, the second on PIDs of
/// its own, the third on the first one's PIDs (the multiplex moves one of them).
fn three_inputs(dir: &Path) -> [std::path::PathBuf; 3] {
    let a = dir.join("a.ts");
    let b = dir.join("b.ts");
    let c = dir.join("c.ts");
    make_input(&a, "testsrc", &["-mpegts_service_id", "1"]);
    let b_numbering = [
        "-mpegts_service_id",
        "2",
        "-mpegts_pmt_start_pid",
        "0x1100",
        "-mpegts_start_pid",
        "0x200",
    ];
    make_input(&b, "smptebars", &b_numbering);
    make_input(&c, "rgbtestsrc", &["-mpegts_service_id", "3"]);
    [a, b, c]
}

/// The head-end file: one MPTS channel "mux" written to `out`, with `extra` channel lines
/// (how it is scrambled), taking the three inputs from `ports` as 101 (News, Alpha), 102 (the
/// second input's program 2: Sport, Beta) and 103 (Kids, the network's name as provider).
fn mux_config(out: &Path, ports: [u16; 3], extra: &str) -> String {
    format!(
        r#"[http]
listen = "127.0.0.1:0"

[[channel]]
name = "mux"
output = "{out}"
tsid = 10
onid = 1
network_id = 1
network_name = "castmux net"
{extra}
[[channel.program]]
input = "udp://127.0.0.1:{p0}"
pnr = 101
name = "News"
provider = "Alpha"
lcn = 1

[[channel.program]]
input = "udp://127.0.0.1:{p1}"
program = 2
pnr = 102
name = "Sport"
provider = "Beta"
lcn = 2

[[channel.program]]
input = "udp://127.0.0.1:{p2}"
pnr = 103
name = "Kids"
lcn = 3
"#,
        out = out.display(),
        p0 = ports[0],
        p1 = ports[1],
        p2 = ports[2],
    )
}

#[test]
fn three_spts_make_one_mpts_with_its_own_numbering_and_sdt() {
    let dir = tmp();
    let [a, b, c] = three_inputs(dir.path());
    let ports = [free_udp_port(), free_udp_port(), free_udp_port()];
    let db = seed_store(dir.path());
    let out = dir.path().join("out.ts");
    let cfg = dir.path().join("headend.toml");
    let scrambling = format!("cw = \"{CW}\"\ncrypto_period = \"1s\"\nservice = [102]\n");
    let config = mux_config(&out, ports, &scrambling);
    std::fs::write(&cfg, config).unwrap();
    let server = headend(&db, &cfg);
    let addr = server.addr;
    let sender = send(vec![
        (std::fs::read(&a).unwrap(), ports[0]),
        (std::fs::read(&b).unwrap(), ports[1]),
        (std::fs::read(&c).unwrap(), ports[2]),
    ]);
    sender.join().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // the counters, per program, in the status API and /metrics
    let view = api(addr, "GET", "/api/v1/channels/mux", None).json();
    let programs = view["input"]["programs"]
        .as_array()
        .unwrap_or_else(|| panic!("programs in {view}"))
        .clone();
    let pnrs: Vec<u64> = programs
        .iter()
        .map(|p| p["pnr"].as_u64().unwrap())
        .collect();
    assert_eq!(pnrs, [101, 102, 103]);
    for p in &programs {
        assert!(p["packets"].as_u64().unwrap() > 1000, "{p}");
        assert_eq!(p["dropped"], 0, "{p}");
        assert_eq!(p["psi_regenerated"], 1, "{p}");
    }
    let metrics = get(addr, "/metrics").text();
    assert!(
        metrics.contains(
            "castmux_channel_program_packets_total{channel=\"mux\",program=\"2\",pnr=\"102\""
        ),
        "{metrics}"
    );
    assert!(metrics.contains("castmux_channel_input_not_taken_total{channel=\"mux\""));
    assert!(metrics.contains("castmux_channel_psi_dropped_total{channel=\"mux\"} 0"));
    assert_eq!(view["input"]["psi_dropped"], 0, "{view}");
    let (status, _log) = server.stop();
    assert!(status.success(), "{status:?}");

    // ffprobe: three programs under the new numbers, with their SDT names and providers
    let got = probe_programs(&out);
    assert_eq!(
        got.iter()
            .map(|(n, name, prov, _)| (*n, name.as_str(), prov.as_str()))
            .collect::<Vec<_>>(),
        [
            (101, "News", "Alpha"),
            (102, "Sport", "Beta"),
            (103, "Kids", "castmux net")
        ]
    );
    assert!(
        got.iter().all(|p| p.3 == 2),
        "video and audio each: {got:?}"
    );

    // our numbering: the TSID, distinct PIDs, the third input's moved off the first's
    let pkts = packets(&out);
    let (tsid, layout) = layout(&pkts);
    assert_eq!(tsid, 10);
    let mut all = BTreeSet::new();
    for (_, es) in layout.values() {
        for p in es {
            assert!(all.insert(*p), "PID {p:#x} in two programs: {layout:x?}");
        }
    }
    // the first and third inputs both use 0x100/0x101: the one whose PMT came first keeps
    // them, the other moves to free PIDs
    let own = [0x100, 0x101];
    assert!(
        (layout[&101].1 == own) != (layout[&103].1 == own),
        "{layout:x?}"
    );
    assert_eq!(layout[&102].1, [0x200, 0x201], "the second keeps its PIDs");
    // the PAT within 100 ms of the last in stream time (sent every 70 ms on the wall
    // clock; measured up to 86 ms on a quiet machine, a loaded one adds jitter)
    let gap = max_pat_gap(&pkts, layout[&102].0);
    assert!(gap < 0.12, "PAT {:.0} ms after the last", gap * 1000.0);
    // no CC error on any PID
    assert_eq!(cc_errors(&pkts), BTreeMap::new(), "CC errors on the output");
    // 102 scrambled (every ES packet with a payload), 101 and 103 clear
    for (pnr, (_, es)) in &layout {
        let with_payload: Vec<&Packet> = pkts
            .iter()
            .filter(|p| es.contains(&pid(p)) && has_payload(p))
            .collect();
        assert!(with_payload.len() > 500, "program {pnr}");
        let scrambled = with_payload.iter().filter(|p| tsc(p) != 0).count();
        if *pnr == 102 {
            // the first packets before the first ECM may be held, never sent clear
            assert_eq!(scrambled, with_payload.len(), "program {pnr} scrambled");
        } else {
            assert_eq!(scrambled, 0, "program {pnr} clear");
        }
    }

    // each program decodes: the clear ones as they are, the scrambled one descrambled
    let expect = SECS * 25 * 2 / 3;
    for pnr in [101, 103] {
        let n = decoded_frames(&out, pnr);
        assert!(n >= expect, "program {pnr}: {n} frames");
    }
    let clear = dir.path().join("clear.ts");
    ok(&["descramble", "-i", s(&out), "-o", s(&clear), "--cw", CW]);
    let n = decoded_frames(&clear, 102);
    assert!(n >= expect, "program 102 descrambled: {n} frames");

    // and the SI tables are there: SDT, NIT, TDT/TOT
    let pids: BTreeSet<u16> = pkts.iter().map(pid).collect();
    for si in [0x10u16, 0x11, 0x14] {
        assert!(pids.contains(&si), "PID {si:#x} missing: {pids:x?}");
    }
    let mut asm = SectionAssembler::private();
    let mut nit = None;
    for p in pkts.iter().filter(|p| pid(p) == 0x10) {
        asm.push(p, |r| {
            // the last one: the first may come before every input's PMT is known
            if let Ok(s) = r {
                nit = Some(s.bytes().to_vec());
            }
        });
    }
    let nit = nit.expect("a NIT section");
    let nit = Section::parse(&nit, 1024).unwrap();
    assert_eq!(nit.table_id(), 0x40);
    // the LCN descriptor: 101 -> 1, 102 -> 2, 103 -> 3, all visible
    let body = nit.payload();
    let at = body
        .windows(2)
        .position(|w| w == [0x83, 12])
        .expect("a logical_channel_descriptor");
    assert_eq!(
        body[at + 2..at + 14],
        [0, 101, 0xC0, 1, 0, 102, 0xC0, 2, 0, 103, 0xC0, 3]
    );

    // tshark reads it all without a malformed packet, names and LCNs as we wrote them
    let out = Command::new("tshark")
        .args(["-r"])
        .arg(&out)
        .arg("-V")
        .output()
        .expect("tshark (Debian package tshark) is needed by this test");
    assert!(out.status.success(), "tshark: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.contains("Malformed"),
        "tshark found a malformed packet"
    );
    for want in [
        "Service Name: News",
        "Service Provider Name: Beta",
        "Network Name: castmux net",
        "Logical Channel Number: 0x0003",
        "Free CA Mode: One or more component scrambled",
        "UTC Time: ",
    ] {
        assert!(text.contains(want), "tshark: no {want:?}");
    }
}

/// The command line's form, on threads of its own (not the head-end's data plane): two
/// inputs, the second's program under a new number, until the inputs go quiet.
#[test]
fn scramble_makes_an_mpts_from_program_options() {
    let dir = tmp();
    let a = dir.path().join("a.ts");
    let b = dir.path().join("b.ts");
    make_input(&a, "testsrc", &["-mpegts_service_id", "1"]);
    make_input(&b, "smptebars", &["-mpegts_service_id", "2"]);
    let ports = [free_udp_port(), free_udp_port()];
    let out = dir.path().join("out.ts");
    let run = {
        let p0 = format!("udp://127.0.0.1:{},name=One,provider=P", ports[0]);
        let p1 = format!("udp://127.0.0.1:{},program=2,pnr=7,name=Two", ports[1]);
        let out = out.clone();
        std::thread::spawn(move || {
            cli_support::castmux(&[
                "scramble",
                "--program",
                &p0,
                "--program",
                &p1,
                "--tsid",
                "33",
                "-o",
                s(&out),
                "--cw",
                "0102030405060708",
                "--service",
                "7",
                "--idle-timeout",
                "1s",
            ])
        })
    };
    // the sockets are bound once the process logs; give it a moment
    std::thread::sleep(Duration::from_millis(500));
    send(vec![
        (std::fs::read(&a).unwrap(), ports[0]),
        (std::fs::read(&b).unwrap(), ports[1]),
    ])
    .join()
    .unwrap();
    let res = run.join().unwrap();
    assert!(res.status.success(), "scramble: {res:?}");
    let got = probe_programs(&out);
    assert_eq!(
        got.iter()
            .map(|(n, name, prov, streams)| (*n, name.as_str(), prov.as_str(), *streams))
            .collect::<Vec<_>>(),
        [(1, "One", "P", 2), (7, "Two", "castmux", 2)]
    );
    let pkts = packets(&out);
    let (tsid, layout) = layout(&pkts);
    assert_eq!(tsid, 33);
    assert_eq!(cc_errors(&pkts), BTreeMap::new(), "CC errors on the output");
    for (pnr, (_, es)) in &layout {
        let scrambled = pkts
            .iter()
            .filter(|p| es.contains(&pid(p)) && has_payload(p))
            .map(|p| tsc(p) != 0)
            .collect::<BTreeSet<bool>>();
        let want = BTreeSet::from([*pnr == 7]);
        assert_eq!(scrambled, want, "program {pnr}");
    }
    assert!(decoded_frames(&out, 1) >= SECS * 25 * 2 / 3);
}

/// The payload bytes of every packet with a payload on `pid`, in order.
fn es_bytes(pkts: &[Packet], es_pid: u16) -> Vec<u8> {
    let mut out = Vec::new();
    for p in pkts.iter().filter(|p| pid(p) == es_pid && has_payload(p)) {
        let start = if p[3] & 0x20 != 0 {
            5 + p[4] as usize
        } else {
            4
        };
        out.extend_from_slice(&p[start.min(188)..]);
    }
    out
}

/// Issue 15's proof of a multiplex at a constant bitrate: the same three inputs into one
/// MPTS at `cbr = "20M"`, every program scrambled by the built-in CAS. ffprobe lists the
/// three programs with their SDT names; the bitrate every pair of consecutive PCRs gives,
/// on every program's PCR PID, is 20 Mbit/s within 0.1 %; castmux's analyzer finds no
/// priority 1 or 2 error and every PCR within 500 ns of its position; the software card
/// (`softcard play`, a card of the store exported) descrambles it: each program's ES are
/// byte for byte a stretch of its input's, and each decodes.
#[test]
fn three_spts_make_one_mpts_at_a_constant_20_mbits_with_exact_pcrs() {
    let dir = tmp();
    let files: Vec<Vec<u8>> = three_inputs(dir.path())
        .iter()
        .map(|f| std::fs::read(f).unwrap())
        .collect();
    let ports = [free_udp_port(), free_udp_port(), free_udp_port()];
    let db = seed_store(dir.path());
    let out = dir.path().join("out.ts");
    let cfg = dir.path().join("headend.toml");
    // the built-in CAS: ECMs under the store's key for package `basic`, which a card of
    // the store has, exported as a software card
    http_support::castmux(
        &db,
        &[
            "card",
            "add",
            "--serial",
            "2100000009",
            "--packages",
            "basic",
        ],
    );
    let card = dir.path().join("card.json");
    http_support::castmux(&db, &["card", "export-key", "2100000009", "-o", s(&card)]);
    let scrambling =
        "cbr = \"20M\"\ncas = \"builtin\"\npackages = [\"basic\"]\ncrypto_period = \"2s\"\n";
    std::fs::write(&cfg, mux_config(&out, ports, scrambling)).unwrap();
    let server = headend(&db, &cfg);
    let addr = server.addr;
    let sender = send(
        files
            .iter()
            .cloned()
            .zip(ports)
            .collect::<Vec<(Vec<u8>, u16)>>(),
    );
    sender.join().unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    let view = api(addr, "GET", "/api/v1/channels/mux", None).json();
    let cbr = view["output"]["cbr"].clone();
    assert_eq!(cbr["bitrate"], 20_000_000, "{view}");
    assert_eq!(cbr["dropped_late"], 0, "{cbr}");
    assert_eq!(cbr["dropped_full"], 0, "{cbr}");
    assert!(cbr["nulls"].as_u64().unwrap() > 100_000, "{cbr}");
    let metrics = get(addr, "/metrics").text();
    assert!(
        metrics.contains("castmux_channel_cbr_bitrate_bits{channel=\"mux\"} 20000000"),
        "{metrics}"
    );
    let (status, _log) = server.stop();
    assert!(status.success(), "{status:?}");

    // the constant rate goes on with nulls once the inputs stop: judge up to their end
    let all = packets(&out);
    let last = all
        .iter()
        .rposition(|p| pid(p) != 0x1FFF && has_payload(p))
        .unwrap();
    let pkts = &all[..=last];
    let judged = dir.path().join("judged.ts");
    std::fs::write(&judged, pkts.concat()).unwrap();

    let got = probe_programs(&judged);
    assert_eq!(
        got.iter()
            .map(|(n, name, _, _)| (*n, name.as_str()))
            .collect::<Vec<_>>(),
        [(101, "News"), (102, "Sport"), (103, "Kids")]
    );
    let (_, layout) = layout(pkts);
    for (pnr, (pcr_pid, _)) in &layout {
        let list = pcrs(pkts, *pcr_pid);
        assert!(list.len() > 150, "program {pnr}: {} PCRs", list.len());
        for (k, rate) in pcr_bitrates(&list).into_iter().enumerate() {
            assert!(
                (rate - 20e6).abs() / 20e6 < 0.001,
                "program {pnr}: {rate:.0} bit/s between PCRs {k} and {}",
                k + 1
            );
        }
    }
    let probe = cli_support::castmux(&["probe", s(&judged), "--json"]);
    assert!(probe.status.success());
    let v: serde_json::Value = serde_json::from_slice(&probe.stdout).unwrap();
    assert_eq!(v["etr290"]["priority1_errors"], 0, "{}", v["etr290"]);
    assert_eq!(v["etr290"]["priority2_errors"], 0, "{}", v["etr290"]);
    for p in v["etr290"]["pcr"].as_array().unwrap() {
        assert_eq!(p["constant_bitrate"], true, "{p}");
        assert!(p["max_deviation_ns"].as_f64().unwrap() < 500.0, "{p}");
    }

    // every ES packet of every program scrambled
    for (pnr, (_, es)) in &layout {
        let with_payload: Vec<&Packet> = pkts
            .iter()
            .filter(|p| es.contains(&pid(p)) && has_payload(p))
            .collect();
        assert!(with_payload.len() > 500, "program {pnr}");
        assert!(
            with_payload.iter().all(|p| tsc(p) != 0),
            "program {pnr}: a clear ES packet"
        );
    }
    // the software card descrambles it: each program's ES a stretch of its input's, byte
    // for byte; each decodes
    let clear = dir.path().join("clear.ts");
    let play = Command::new(env!("CARGO_BIN_EXE_castmux"))
        .args(["--db", s(&db), "softcard", "play", "--card", s(&card)])
        .args(["-i", s(&judged), "-o", s(&clear)])
        .output()
        .unwrap();
    assert!(play.status.success(), "softcard play: {play:?}");
    let cpkts = packets(&clear);
    let input_pids = [
        (101u16, 0, [0x100u16, 0x101]),
        (102, 1, [0x200, 0x201]),
        (103, 2, [0x100, 0x101]),
    ];
    for (pnr, file, in_pids) in input_pids {
        let in_pkts = packets_of(&files[file]);
        for (k, in_pid) in in_pids.iter().enumerate() {
            let want = es_bytes(&in_pkts, *in_pid);
            let got = es_bytes(&cpkts, layout[&pnr].1[k]);
            assert!(
                got.len() > 50_000,
                "program {pnr} ES {k}: {} bytes",
                got.len()
            );
            // a sine's audio frames repeat: any place the start is found may be the one
            let found = want
                .windows(184)
                .enumerate()
                .filter(|(_, w)| *w == &got[..184])
                .any(|(at, _)| want[at..].starts_with(&got));
            assert!(
                found,
                "program {pnr} ES {k}: {} bytes, not a stretch of the input's",
                got.len()
            );
        }
        let n = decoded_frames(&clear, pnr);
        assert!(n >= SECS * 25 * 2 / 3, "program {pnr}: {n} frames");
    }
}
