//! tshark dissects castmux's SimulCrypt traffic: castmux's SCS client talks to castmux's ECMG,
//! castmux's EMMG client to castmux's mux-side server, through a recording TCP proxy on
//! loopback. The recorded bytes are written as a pcap with real TCP framing (handshake,
//! sequence and acknowledgement numbers, checksums), one segment per read, and tshark
//! (`-d tcp.port==43000,simulcrypt`, TVCAS's port) must decode every message with no
//! malformed packet or expert warning and with the expected parameters.

mod simulcrypt_support;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use castmux::scramble::ecm::{EcmError, EcmGenerator, EcmRequest};
use castmux::scramble::{CryptoPeriod, Cw, EmmData, EmmSource};
use castmux::simulcrypt::access::parse_access_criteria_hex;
use castmux::simulcrypt::{
    run_emmg, EcmgServerConfig, EmmMuxConfig, EmmMuxServer, EmmgConfig, EmmgStats, ScsConfig,
    SimulcryptEcmg,
};
use castmux::ts::Pid;
use simulcrypt_support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Bytes seen by the proxy: (from the client?, bytes).
type Log = Arc<Mutex<Vec<(bool, Vec<u8>)>>>;

/// A TCP proxy to `upstream` recording every read in order.
fn proxy(rt: &tokio::runtime::Runtime, upstream: SocketAddr) -> (SocketAddr, Log) {
    let l = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = l.local_addr().unwrap();
    let log: Log = Arc::default();
    let lg = log.clone();
    rt.spawn(async move {
        let (down, _) = l.accept().await.unwrap();
        let up = tokio::net::TcpStream::connect(upstream).await.unwrap();
        let (mut dr, mut dw) = down.into_split();
        let (mut ur, mut uw) = up.into_split();
        let l1 = lg.clone();
        let a = tokio::spawn(async move {
            let mut b = vec![0u8; 65536];
            while let Ok(n @ 1..) = dr.read(&mut b).await {
                l1.lock().unwrap().push((true, b[..n].to_vec()));
                if uw.write_all(&b[..n]).await.is_err() {
                    break;
                }
            }
        });
        let mut b = vec![0u8; 65536];
        while let Ok(n @ 1..) = ur.read(&mut b).await {
            lg.lock().unwrap().push((false, b[..n].to_vec()));
            if dw.write_all(&b[..n]).await.is_err() {
                break;
            }
        }
        let _ = a.await;
    });
    (addr, log)
}

fn checksum(data: &[u8], mut sum: u32) -> u16 {
    for c in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    !(sum as u16)
}

/// Ethernet + IPv4 + TCP frame on 127.0.0.1.
fn frame(sport: u16, dport: u16, seq: u32, ack: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut tcp = Vec::with_capacity(20 + payload.len());
    tcp.extend_from_slice(&sport.to_be_bytes());
    tcp.extend_from_slice(&dport.to_be_bytes());
    tcp.extend_from_slice(&seq.to_be_bytes());
    tcp.extend_from_slice(&ack.to_be_bytes());
    tcp.extend_from_slice(&[0x50, flags, 0xFF, 0xFF, 0, 0, 0, 0]);
    tcp.extend_from_slice(payload);
    let lo = [127u8, 0, 0, 1];
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&lo);
    pseudo.extend_from_slice(&lo);
    pseudo.extend_from_slice(&[0, 6]);
    pseudo.extend_from_slice(&(tcp.len() as u16).to_be_bytes());
    let pre: u32 = pseudo
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    let c = checksum(&tcp, pre);
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 6, 0, 0];
    ip[2..4].copy_from_slice(&((20 + tcp.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&lo);
    ip.extend_from_slice(&lo);
    let c = checksum(&ip, 0);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut f = vec![0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 2, 0x08, 0x00];
    f.extend_from_slice(&ip);
    f.extend_from_slice(&tcp);
    f
}

/// A pcap of one TCP connection client:40000 -> server:`port` carrying `log`.
fn write_pcap(path: &std::path::Path, port: u16, log: &[(bool, Vec<u8>)]) {
    let (cport, sport) = (40000u16, port);
    let (mut cseq, mut sseq) = (1000u32, 5000u32);
    let mut frames = vec![
        frame(cport, sport, cseq, 0, 0x02, &[]),
        frame(sport, cport, sseq, cseq + 1, 0x12, &[]),
    ];
    cseq += 1;
    sseq += 1;
    frames.push(frame(cport, sport, cseq, sseq, 0x10, &[]));
    for (from_client, bytes) in log {
        for seg in bytes.chunks(1400) {
            if *from_client {
                frames.push(frame(cport, sport, cseq, sseq, 0x18, seg));
                cseq += seg.len() as u32;
                frames.push(frame(sport, cport, sseq, cseq, 0x10, &[]));
            } else {
                frames.push(frame(sport, cport, sseq, cseq, 0x18, seg));
                sseq += seg.len() as u32;
                frames.push(frame(cport, sport, cseq, sseq, 0x10, &[]));
            }
        }
    }
    let mut out = Vec::new();
    out.extend_from_slice(&0xA1B2_C3D4u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&65535u32.to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes());
    for (i, f) in frames.iter().enumerate() {
        out.extend_from_slice(&1_700_000_000u32.to_le_bytes());
        out.extend_from_slice(&((i as u32) * 100).to_le_bytes());
        out.extend_from_slice(&(f.len() as u32).to_le_bytes());
        out.extend_from_slice(&(f.len() as u32).to_le_bytes());
        out.extend_from_slice(f);
    }
    std::fs::write(path, out).unwrap();
}

/// A missing tshark fails the test: a skip would pass without checking anything.
fn require_tshark() {
    assert!(
        Command::new("tshark").arg("--version").output().is_ok(),
        "tshark is required: scripts/test.sh installs it (apt-get install tshark)"
    );
}

/// tshark's view: one line per SimulCrypt message with the asked fields; panics on any
/// malformed packet or expert warning.
fn tshark(pcap: &std::path::Path, port: u16, fields: &[&str]) -> Vec<String> {
    let decode = format!("tcp.port=={port},simulcrypt");
    let bad = Command::new("tshark")
        .args(["-n", "-r"])
        .arg(pcap)
        .args([
            "-d",
            &decode,
            "-Y",
            "_ws.malformed || _ws.expert.severity >= 0x00600000",
        ])
        .output()
        .unwrap();
    let bad_out = String::from_utf8_lossy(&bad.stdout);
    assert!(
        bad.status.success(),
        "tshark failed: {}",
        String::from_utf8_lossy(&bad.stderr)
    );
    assert!(
        bad_out.trim().is_empty(),
        "malformed or warned frames:\n{bad_out}"
    );
    let mut args = vec![
        "-n",
        "-Y",
        "simulcrypt",
        "-T",
        "fields",
        "-E",
        "separator=|",
        "-E",
        "occurrence=a",
    ];
    for f in fields {
        args.push("-e");
        args.push(f);
    }
    let out = Command::new("tshark")
        .arg("-r")
        .arg(pcap)
        .args(["-d", &decode])
        .args(&args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Every message's protocol_version (the first field of each line) is `version`.
fn assert_version_everywhere(lines: &[String], version: u8) {
    // one TCP segment may carry several messages: tshark then lists each field's values
    // comma-separated
    let want = format!("0x{version:02x}");
    assert!(
        lines.iter().all(|l| l
            .split('|')
            .next()
            .unwrap_or("")
            .split(',')
            .all(|v| v == want)),
        "{}",
        lines.join("\n")
    );
}

#[test]
fn tshark_decodes_ecmg_scs_traffic_of_both_versions() {
    require_tshark();
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    for version in [2u8, 3] {
        let mut server = start_ecmg(
            &rt,
            "127.0.0.1:0".parse().unwrap(),
            EcmgServerConfig::default(),
        );
        let (paddr, log) = proxy(&rt, server.addr);
        let mut c = ScsConfig::new(paddr.to_string(), 0x0B00_0001);
        c.version = version;
        c.access_criteria = parse_access_criteria_hex("00000001").unwrap();
        c.keepalive = Duration::from_millis(300);
        let mut g = SimulcryptEcmg::start(c).unwrap();
        g.wait_ready(Duration::from_secs(20)).unwrap();
        let cws: Vec<Cw> = (0..4)
            .map(|i| Cw::from_slice(&[i as u8 + 1; 8]).unwrap())
            .collect();
        for p in 0..3u64 {
            let req = EcmRequest {
                period: CryptoPeriod(p),
                parity: CryptoPeriod(p).parity(),
                current: &cws[p as usize],
                next: &cws[p as usize + 1],
                ecm_pid: Pid::new(0x59),
                ca_system_id: 0x0B00,
            };
            assert!(wait_until(Duration::from_secs(20), || {
                let mut out = Vec::new();
                !matches!(g.generate(&req, &mut out), Err(EcmError::Unavailable(_)))
            }));
        }
        // let a keepalive go by
        std::thread::sleep(Duration::from_millis(700));
        drop(g);
        assert!(wait_until(Duration::from_secs(10), || log
            .lock()
            .unwrap()
            .len()
            >= 12));
        std::thread::sleep(Duration::from_millis(200));
        let pcap = dir.path().join(format!("ecmg-v{version}.pcap"));
        write_pcap(&pcap, 43000, &log.lock().unwrap());
        let lines = tshark(
            &pcap,
            43000,
            &[
                "simulcrypt.version",
                "simulcrypt.message.type",
                "simulcrypt.super_cas_id",
                "simulcrypt.ecm_channel_id",
                "simulcrypt.ecm_stream_id",
                "simulcrypt.cp_number",
                "simulcrypt.access_criteria",
                "simulcrypt.ecm_datagram",
            ],
        );
        let all = lines.join("\n");
        let types: Vec<u16> = lines
            .iter()
            .flat_map(|l| {
                l.split('|')
                    .nth(1)
                    .unwrap_or("")
                    .split(',')
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .filter_map(|t| u16::from_str_radix(t.trim_start_matches("0x"), 16).ok())
            .collect();
        for t in [0x0001u16, 0x0003, 0x0101, 0x0103, 0x0201, 0x0202, 0x0002] {
            assert!(
                types.contains(&t),
                "v{version}: message type {t:#06x} not decoded:\n{all}"
            );
        }
        assert_version_everywhere(&lines, version);
        assert!(all.contains("0x0b000001"), "Super_CAS_id:\n{all}");
        assert!(all.contains("00000001"), "access criteria:\n{all}");
        // the CW_provision / ECM_response pairs for CPs 0, 1, 2
        for cp in 0..3 {
            assert!(
                lines
                    .iter()
                    .filter(|l| l.split('|').nth(5) == Some(&cp.to_string()))
                    .count()
                    >= 2,
                "CP {cp}:\n{all}"
            );
        }
        server.kill(&rt);
    }
}

struct Few(u32);
impl EmmSource for Few {
    fn poll(&mut self, _now: Duration, out: &mut Vec<u8>) -> Option<EmmData> {
        if self.0 == 0 {
            return None;
        }
        self.0 -= 1;
        out.extend_from_slice(&[0x82, 0x70, 5, 1, 2, 3, 4, self.0 as u8]);
        Some(EmmData::Sections)
    }
}

#[test]
fn tshark_decodes_emmg_mux_traffic_of_both_versions() {
    require_tshark();
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    for version in [2u8, 3] {
        let (server, mut src) = rt
            .block_on(EmmMuxServer::bind(
                "127.0.0.1:0".parse().unwrap(),
                EmmMuxConfig::default(),
            ))
            .unwrap();
        let addr = server.local_addr().unwrap();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        rt.spawn(server.run(async move {
            let _ = stop_rx.await;
        }));
        let (paddr, log) = proxy(&rt, addr);
        let mut cfg = EmmgConfig::new(paddr.to_string(), 0x0B00_0001);
        cfg.version = version;
        cfg.bandwidth_kbps = 96;
        let stats = Arc::new(EmmgStats::default());
        let (quit, quit_rx) = tokio::sync::oneshot::channel::<()>();
        let st = stats.clone();
        let job = rt.spawn(async move {
            let mut s = Few(5);
            run_emmg(cfg, &mut s, st, async move {
                let _ = quit_rx.await;
            })
            .await;
        });
        let mut got = 0;
        assert!(wait_until(Duration::from_secs(20), || {
            let mut out = Vec::new();
            // sections waiting are handed over together
            while src.poll(Duration::ZERO, &mut out).is_some() {
                got += castmux::ts::section::check_sections(&out, 0x82..=0x8F).unwrap();
                out.clear();
            }
            got == 5
        }));
        let _ = quit.send(());
        let _ = rt.block_on(job);
        std::thread::sleep(Duration::from_millis(200));
        let pcap = dir.path().join(format!("emmg-v{version}.pcap"));
        write_pcap(&pcap, 41000, &log.lock().unwrap());
        let lines = tshark(
            &pcap,
            41000,
            &[
                "simulcrypt.version",
                "simulcrypt.message.type",
                "simulcrypt.client_id",
                "simulcrypt.data_channel_id",
                "simulcrypt.data_stream_id",
                "simulcrypt.bandwidth",
                "simulcrypt.datagram",
            ],
        );
        let all = lines.join("\n");
        for t in [
            "0x0011", "0x0013", "0x0111", "0x0113", "0x0117", "0x0118", "0x0211",
        ] {
            assert!(all.contains(t), "v{version}: {t} not decoded:\n{all}");
        }
        assert_version_everywhere(&lines, version);
        assert!(all.contains("184549377"), "client_id 0x0B000001:\n{all}");
        assert!(all.contains("|96|"), "bandwidth:\n{all}");
        assert!(
            all.contains("8270050102030404"),
            "first EMM datagram:\n{all}"
        );
        let _ = stop.send(());
    }
}
