//! The head-end's HTTP surface against the real binary: `castmux headend` with `[http]`
//! serves its channels' status (keyed), takes restart/disable/enable/reload over HTTP,
//! and exposes `/metrics` that `promtool check metrics` accepts and that a real
//! Prometheus scrapes and answers a query on; per EMMG client, per channel EMM, store
//! follower and active input metrics; the per-channel monitor (ETR 290 and CA checks on
//! the output) in the status API and `/metrics`.

mod cli_support;
mod http_support;
mod simulcrypt_support;

use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cli_support::gen::{pat_sections, pmt_section, Es, Writer};
use cli_support::*;
use http_support::*;

/// Datagrams of 7 packets, PAT/PMT every 40 packets, video and audio.
fn stream(seed: u8, datagrams: usize) -> Vec<Vec<u8>> {
    let pat = &pat_sections(1, 0, &[(1, 0x1000)], 64)[0];
    let pmt = pmt_section(1, 0, 0x100, &[Es::new(0x1B, 0x100), Es::new(0x0F, 0x101)]);
    let mut w = Writer::new();
    let mut k = 0;
    while w.packets.len() < datagrams * 7 {
        if k % 40 == 0 {
            w.section(0, pat);
            w.section(0x1000, &pmt);
        }
        w.es(
            if k % 4 == 3 { 0x101 } else { 0x100 },
            k % 25 == 0,
            seed ^ k as u8,
        );
        k += 1;
    }
    w.packets.truncate(datagrams * 7);
    w.packets
        .chunks(7)
        .map(|d| d.iter().flat_map(|p| p.iter().copied()).collect())
        .collect()
}

/// Send a stream of its own to each of `ins`, a datagram each every 5 ms, until `stop`.
fn feed(ins: &[u16], stop: &Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let (stop, ins) = (Arc::clone(stop), ins.to_vec());
    std::thread::spawn(move || {
        let streams: Vec<_> = (0..ins.len()).map(|i| stream(i as u8, 4000)).collect();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut r = 0;
        while !stop.load(Ordering::Relaxed) {
            for (s, port) in streams.iter().zip(&ins) {
                let _ = tx.send_to(&s[r % s.len()], ("127.0.0.1", *port));
            }
            r += 1;
            std::thread::sleep(Duration::from_millis(5));
        }
    })
}

/// Wait until the head-end at `addr` lists `n` channels, every one on air.
fn wait_all_on_air(addr: SocketAddr, n: usize) {
    assert!(
        wait_until(Duration::from_secs(20), || {
            let r = api(addr, "GET", "/api/v1/channels", None);
            r.status == 200
                && r.json()
                    .as_array()
                    .is_some_and(|l| l.len() == n && l.iter().all(|c| c["on_air"] == true))
        }),
        "channels not on air: {}",
        api(addr, "GET", "/api/v1/channels", None).text()
    );
}

fn wait_until(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

fn channel<'a>(list: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no channel {name} in {list}"))
}

fn promtool_check(text: &str) {
    let mut p = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) must be installed");
    use std::io::Write;
    p.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = p.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool: {said}\n{text}"
    );
}

#[test]
fn headend_status_control_and_metrics_over_http() {
    let dir = tmp();
    let db = seed_store(dir.path());
    let ins: Vec<u16> = (0..2).map(|_| free_udp_port()).collect();
    let outs: Vec<UdpSocket> = (0..2)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    let cfg = dir.path().join("headend.toml");
    let mut toml = String::from("[http]\nlisten = \"127.0.0.1:0\"\n\n");
    for (i, name) in ["a", "b"].iter().enumerate() {
        toml.push_str(&format!(
            "[[channel]]\nname = \"{name}\"\ninput = \"udp://127.0.0.1:{}\"\n\
             output = \"udp://127.0.0.1:{}\"\ncw = \"11223366445566EF:0102030609080716\"\n\
             crypto_period = \"1s\"\n\n",
            ins[i],
            outs[i].local_addr().unwrap().port()
        ));
    }
    std::fs::write(&cfg, &toml).unwrap();
    let server = headend(&db, &cfg);
    let addr: SocketAddr = server.addr;

    // input for both channels, paced, until told to stop
    let stop = Arc::new(AtomicBool::new(false));
    let sender = feed(&ins, &stop);

    // status needs the key
    assert_eq!(get(addr, "/api/v1/channels").status, 401);
    wait_all_on_air(addr, 2);
    let list = api(addr, "GET", "/api/v1/channels", None).json();
    let a = channel(&list, "a");
    assert!(a["input"]["bitrate_bps"].as_u64().unwrap() > 500_000, "{a}");
    assert!(
        a["output"]["bitrate_bps"].as_u64().unwrap() > 500_000,
        "{a}"
    );
    assert_eq!(a["state"], "running");
    assert_eq!(a["scrambled_ratio"].as_f64(), Some(1.0), "{a}");
    let status = api(addr, "GET", "/api/v1/status", None).json();
    assert_eq!(status["channels"], 2, "{status}");
    assert_eq!(api(addr, "GET", "/api/v1/channels/nope", None).status, 404);

    // metrics: open, valid, with the channels
    let m = get(addr, "/metrics");
    assert_eq!(m.status, 200);
    assert!(m
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = m.text();
    assert!(
        text.contains("castmux_channel_up{channel=\"a\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("castmux_channel_on_air{channel=\"b\"} 1"),
        "{text}"
    );
    assert!(text.contains("process_resident_memory_bytes "), "{text}");
    promtool_check(&text);

    // restart a: it comes back with restarts=1; disable b: it stops; enable: back
    assert_eq!(
        api(addr, "POST", "/api/v1/channels/a/restart", None).status,
        202
    );
    assert!(wait_until(Duration::from_secs(10), || {
        let l = api(addr, "GET", "/api/v1/channels", None).json();
        let a = channel(&l, "a");
        a["restarts"] == 1 && a["state"] == "running" && a["on_air"] == true
    }));
    assert_eq!(
        api(addr, "POST", "/api/v1/channels/b/disable", None).status,
        202
    );
    assert!(wait_until(Duration::from_secs(10), || {
        channel(&api(addr, "GET", "/api/v1/channels", None).json(), "b")["state"] == "disabled"
    }));
    outs[1]
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 2048];
    while outs[1].recv(&mut buf).is_ok() {}
    assert!(
        outs[1].recv(&mut buf).is_err(),
        "a disabled channel still sends"
    );
    assert_eq!(
        api(addr, "POST", "/api/v1/channels/b/enable", None).status,
        202
    );
    assert!(wait_until(Duration::from_secs(10), || {
        channel(&api(addr, "GET", "/api/v1/channels", None).json(), "b")["on_air"] == true
    }));
    assert_eq!(api(addr, "POST", "/api/v1/reload", None).status, 202);
    assert!(wait_until(Duration::from_secs(10), || {
        api(addr, "GET", "/api/v1/status", None).json()["reloads"] == 1
    }));

    // a real Prometheus scrapes the head-end and answers a query on a castmux metric
    let prom_dir = dir.path().join("prom");
    std::fs::create_dir_all(&prom_dir).unwrap();
    let prom_cfg = prom_dir.join("prometheus.yml");
    std::fs::write(
        &prom_cfg,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: castmux\n    \
             static_configs:\n      - targets: ['{addr}']\n"
        ),
    )
    .unwrap();
    let prom_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut prom = Command::new("prometheus")
        .arg(format!("--config.file={}", prom_cfg.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            prom_dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus (Debian package prometheus) must be installed");
    let prom_addr: SocketAddr = format!("127.0.0.1:{prom_port}").parse().unwrap();
    let mut answer = String::new();
    let found = wait_until(Duration::from_secs(40), || {
        let r = std::panic::catch_unwind(|| {
            get(
                prom_addr,
                "/api/v1/query?query=castmux_channel_up%7Bchannel%3D%22a%22%7D",
            )
        });
        match r {
            Ok(r) if r.status == 200 => {
                answer = r.text();
                let v: serde_json::Value = serde_json::from_str(&answer).unwrap_or_default();
                v["data"]["result"][0]["value"][1] == "1"
            }
            _ => false,
        }
    });
    let _ = prom.kill();
    let _ = prom.wait();
    assert!(
        found,
        "Prometheus did not answer castmux_channel_up: {answer}"
    );

    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    let (status, _) = server.stop();
    assert!(status.success(), "{status:?}");
}

#[test]
fn channels_share_one_http_ts_port_with_a_path_each() {
    let dir = tmp();
    let db = seed_store(dir.path());
    let ins: Vec<u16> = (0..2).map(|_| free_udp_port()).collect();
    let port = free_tcp_port();
    let cfg = dir.path().join("headend.toml");
    let mut toml = String::from("[http]\nlisten = \"127.0.0.1:0\"\n\n");
    for (i, name) in ["a", "b"].iter().enumerate() {
        toml.push_str(&format!(
            "[[channel]]\nname = \"{name}\"\ninput = \"udp://127.0.0.1:{}\"\n\
             output = \"http://127.0.0.1:{port}/{name}\"\n\
             cw = \"11223366445566EF:0102030609080716\"\ncrypto_period = \"1s\"\n\n",
            ins[i]
        ));
    }
    std::fs::write(&cfg, &toml).unwrap();
    let server = headend(&db, &cfg);
    let addr = server.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let sender = feed(&ins, &stop);
    wait_all_on_air(addr, 2);

    // both channels on one port, each at its path, scrambled; another path is 404
    let tv: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut clients = Vec::new();
    for name in ["a", "b"] {
        let (mut s, head) = http_get(tv, &format!("/{name}"), false);
        assert!(
            head.starts_with("HTTP/1.1 200 OK") && head.contains("video/mp2t"),
            "{name}: {head}"
        );
        let mut body = vec![0u8; 700 * 188];
        use std::io::Read;
        s.read_exact(&mut body).unwrap();
        let pkts = packets_of(&body);
        assert!(
            pkts.iter().all(|p| p[0] == 0x47),
            "{name}: not packet-aligned"
        );
        let es: Vec<_> = pkts
            .iter()
            .filter(|p| matches!(pid(p), 0x100 | 0x101) && has_payload(p))
            .collect();
        assert!(
            !es.is_empty() && es.iter().all(|p| tsc(p) != 0),
            "{name}: clear ES"
        );
        clients.push(s);
    }
    let (_, head) = http_get(tv, "/c", false);
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");

    // one client on each now; then b's leaves
    let metric = |series: &str| sample(&api(addr, "GET", "/metrics", None).text(), series);
    assert!(wait_until(Duration::from_secs(10), || {
        metric("castmux_channel_http_clients{channel=\"a\"}") == Some(1.0)
            && metric("castmux_channel_http_clients{channel=\"b\"}") == Some(1.0)
    }));
    drop(clients.pop());
    assert!(
        wait_until(Duration::from_secs(10), || {
            metric("castmux_channel_http_clients{channel=\"b\"}") == Some(0.0)
        }),
        "b's client was not seen leaving"
    );
    let text = api(addr, "GET", "/metrics", None).text();
    assert_eq!(
        sample(
            &text,
            &format!("castmux_http_listener_not_found_total{{listen=\"{tv}\"}}")
        ),
        Some(1.0),
        "{text}"
    );
    promtool_check(&text);
    let list = api(addr, "GET", "/api/v1/channels", None).json();
    assert_eq!(channel(&list, "a")["output"]["http_clients"], 1, "{list}");

    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    let (status, _) = server.stop();
    assert!(status.success(), "{status:?}");
}

/// The value of the sample `name{labels}` in a metrics text (None: no such sample).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn emmg_clients_emm_store_follower_and_active_input_in_metrics() {
    use castmux::simulcrypt::emmg_messages::ChannelIds;
    use castmux::simulcrypt::{EmmgMessage, StreamIds};
    use simulcrypt_support::Raw;
    const CLIENT: u32 = 0x00C0_FFEE;

    let dir = tmp();
    let db = seed_store(dir.path());
    let (http_port, emmg_port) = (free_udp_port(), free_udp_port());
    let ins: Vec<u16> = (0..2).map(|_| free_udp_port()).collect();
    let outs: Vec<UdpSocket> = (0..2)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    let out_port = |i: usize| outs[i].local_addr().unwrap().port();
    let cfg = dir.path().join("headend.toml");
    std::fs::write(
        &cfg,
        format!(
            "[http]\nlisten = \"127.0.0.1:{http_port}\"\n\n\
             [emmg]\nlisten = \"127.0.0.1:{emmg_port}\"\nemm_pid = \"0x1FF2\"\n\n\
             [[channel]]\nname = \"clone\"\ninput = \"udp://127.0.0.1:{}\"\n\
             output = \"udp://127.0.0.1:{}\"\ncw = \"11223366445566EF:0102030609080716\"\n\
             crypto_period = \"1s\"\n\n\
             [[channel]]\nname = \"card\"\ninput = \"udp://127.0.0.1:{}\"\n\
             output = \"udp://127.0.0.1:{}\"\ncas = \"builtin\"\npackages = [\"sport\"]\n\
             emm_clone = false\ncrypto_period = \"1s\"\n",
            ins[0],
            out_port(0),
            ins[1],
            out_port(1)
        ),
    )
    .unwrap();
    let server = headend(&db, &cfg);
    let addr: SocketAddr = format!("127.0.0.1:{http_port}").parse().unwrap();
    // the address logged first is the [emmg] port's; HTTP follows it
    assert!(wait_until(Duration::from_secs(20), || {
        std::net::TcpStream::connect(addr).is_ok()
    }));
    let stop = Arc::new(AtomicBool::new(false));
    let sender = feed(&ins, &stop);
    wait_all_on_air(addr, 2);

    // an EMMG asks for 64 kbit/s and sends 2,000 one-packet EMMs at once: most are over
    let ids = StreamIds {
        client_id: CLIENT,
        channel_id: 3,
        stream_id: 4,
    };
    let mut emmg = Raw::connect(format!("127.0.0.1:{emmg_port}").parse().unwrap());
    let setup = [
        EmmgMessage::ChannelSetup {
            ids: ChannelIds {
                client_id: CLIENT,
                channel_id: 3,
            },
            section_tspkt_flag: false,
        },
        EmmgMessage::StreamSetup {
            ids,
            data_id: 9,
            data_type: 0,
        },
        EmmgMessage::StreamBwRequest {
            ids,
            bandwidth: Some(64),
        },
    ];
    for m in &setup {
        emmg.send_emmg(3, m);
        assert!(emmg.read_emmg().is_some(), "no answer to {m:?}");
    }
    for batch in 0..100u32 {
        let datagrams = (0..20u32)
            .map(|i| {
                let mut s = vec![0x82, 0x70, 97];
                s.extend_from_slice(&(batch * 20 + i).to_be_bytes());
                s.resize(100, 0xA5);
                s
            })
            .collect();
        emmg.send_emmg(
            3,
            &EmmgMessage::DataProvision {
                client_id: CLIENT,
                channel_id: Some(3),
                stream_id: Some(4),
                data_id: 9,
                datagrams,
            },
        );
    }
    let client = "{client_id=\"00C0FFEE\"}";
    let mut text = String::new();
    let counted = wait_until(Duration::from_secs(10), || {
        text = get(addr, "/metrics").text();
        let taken = sample(
            &text,
            &format!("castmux_emmg_client_emm_datagrams_total{client}"),
        );
        let dropped = sample(&text, &format!("castmux_emmg_client_dropped_total{client}"));
        matches!((taken, dropped), (Some(t), Some(d)) if t + d == 2000.0)
            && sample(
                &text,
                "castmux_channel_emm_packets_total{channel=\"clone\"}",
            )
            .is_some_and(|n| n > 0.0)
    });
    assert!(counted, "{text}");
    let dropped = sample(&text, &format!("castmux_emmg_client_dropped_total{client}")).unwrap();
    assert!(dropped > 1000.0, "the flood is mostly dropped: {text}");
    let bytes = sample(
        &text,
        &format!("castmux_emmg_client_emm_bytes_total{client}"),
    )
    .unwrap();
    let taken = sample(
        &text,
        &format!("castmux_emmg_client_emm_datagrams_total{client}"),
    )
    .unwrap();
    assert_eq!(bytes, taken * 188.0, "one packet on air each: {text}");
    assert_eq!(
        sample(
            &text,
            &format!("castmux_emmg_client_dropped_bytes_total{client}")
        ),
        Some(dropped * 188.0)
    );
    // the channel that makes its own EMMs does not clone; the cloning one lost none
    assert_eq!(
        sample(
            &text,
            "castmux_channel_emm_clone_dropped_total{channel=\"clone\"}"
        ),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "castmux_channel_emm_clone_dropped_total{channel=\"card\"}"
        ),
        None
    );
    assert_eq!(
        sample(
            &text,
            "castmux_emmg_port_connections_total{result=\"accepted\"}"
        ),
        Some(1.0),
        "{text}"
    );
    // the built-in CAS reads its store every second; the fixed-CW channel has no store
    let age = sample(
        &text,
        "castmux_store_follower_age_seconds{channel=\"card\"}",
    );
    assert!(age.is_some_and(|a| a < 3.0), "{text}");
    assert_eq!(
        sample(
            &text,
            "castmux_store_follower_age_seconds{channel=\"clone\"}"
        ),
        None
    );
    let input = format!(
        "castmux_channel_active_input{{channel=\"card\",input=\"udp://127.0.0.1:{}\"}}",
        ins[1]
    );
    assert_eq!(sample(&text, &input), Some(1.0), "{text}");
    promtool_check(&text);

    // the status API shows the same
    let list = api(addr, "GET", "/api/v1/channels", None).json();
    let card = channel(&list, "card");
    assert!(
        card["store"]["age_s"].as_f64().is_some_and(|a| a < 3.0),
        "{card}"
    );
    assert_eq!(
        card["emm"]["clone_dropped"],
        serde_json::Value::Null,
        "{card}"
    );
    assert!(
        card["emm"]["packets"].as_u64().is_some_and(|n| n > 0),
        "{card}"
    );
    let clone = channel(&list, "clone");
    assert_eq!(clone["store"], serde_json::Value::Null, "{clone}");
    assert_eq!(clone["emm"]["clone_dropped"], 0, "{clone}");

    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    drop(emmg);
    let (status, _) = server.stop();
    assert!(status.success(), "{status:?}");
}

/// Send `streams[i]` to `ports[i]` one datagram every 5 ms until `stop`, looping, with the
/// continuity counters stamped here so the loop has no CC jump; on the streams marked
/// `gap`, PID 0x100 skips one counter value once a second (a lost packet).
fn send_restamped(
    streams: Vec<Vec<Vec<u8>>>,
    ports: Vec<u16>,
    gap: Vec<bool>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut cc = vec![[0u8; 0x2000]; streams.len()];
        let mut r = 0usize;
        while !stop.load(Ordering::Relaxed) {
            for (k, (s, port)) in streams.iter().zip(&ports).enumerate() {
                let mut d = s[r % s.len()].clone();
                if gap[k] && r % 200 == 199 {
                    cc[k][0x100] = (cc[k][0x100] + 1) & 0x0F;
                }
                for p in d.chunks_exact_mut(188) {
                    let pid = usize::from(u16::from_be_bytes([p[1], p[2]]) & 0x1FFF);
                    if p[3] & 0x10 != 0 {
                        p[3] = (p[3] & 0xF0) | cc[k][pid];
                        cc[k][pid] = (cc[k][pid] + 1) & 0x0F;
                    }
                }
                let _ = tx.send_to(&d, ("127.0.0.1", *port));
            }
            r += 1;
            std::thread::sleep(Duration::from_millis(5));
        }
    })
}

/// The monitor judges what goes on air: a clean channel (built-in CAS: ECMs every
/// 100 ms, EMMs, 1 s crypto periods) shows no priority 1 or 2 error and its ECM interval,
/// crypto period and EMM bitrate; a channel whose input loses a video packet once a second
/// shows the CC errors (the scrambler passes ES packets with their own counters, so the
/// gap reaches the output, where PSI it regenerates would not); a channel without
/// `monitor` has no monitor and no such series; /metrics passes promtool.
#[test]
fn monitored_channels_report_etr290_and_ca_checks() {
    let dir = tmp();
    let db = seed_store(dir.path());
    let ins: Vec<u16> = (0..3).map(|_| free_udp_port()).collect();
    let outs: Vec<UdpSocket> = (0..3)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    let out_port = |i: usize| outs[i].local_addr().unwrap().port();
    let cfg = dir.path().join("headend.toml");
    std::fs::write(
        &cfg,
        format!(
            "[http]\nlisten = \"127.0.0.1:0\"\n\n\
             [[channel]]\nname = \"clean\"\ninput = \"udp://127.0.0.1:{}\"\n\
             output = \"udp://127.0.0.1:{}\"\ncas = \"builtin\"\npackages = [\"sport\"]\n\
             crypto_period = \"1s\"\necm_repetition = \"100ms\"\nmonitor = true\n\n\
             [[channel]]\nname = \"seeded\"\ninput = \"udp://127.0.0.1:{}\"\n\
             output = \"udp://127.0.0.1:{}\"\ncw = \"11223366445566EF:0102030609080716\"\n\
             crypto_period = \"1s\"\nmonitor = true\n\n\
             [[channel]]\nname = \"plain\"\ninput = \"udp://127.0.0.1:{}\"\n\
             output = \"udp://127.0.0.1:{}\"\ncw = \"11223366445566EF:0102030609080716\"\n\
             crypto_period = \"1s\"\n",
            ins[0],
            out_port(0),
            ins[1],
            out_port(1),
            ins[2],
            out_port(2)
        ),
    )
    .unwrap();
    let server = headend(&db, &cfg);
    let addr = server.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let streams = (0..3).map(|i| stream(i as u8, 4000)).collect();
    let sender = send_restamped(
        streams,
        ins.clone(),
        vec![false, true, false],
        Arc::clone(&stop),
    );

    // enough for whole crypto periods and a few seeded gaps
    let ready = wait_until(Duration::from_secs(30), || {
        let l = api(addr, "GET", "/api/v1/channels", None).json();
        let (c, s) = (channel(&l, "clean"), channel(&l, "seeded"));
        c["monitor"]["ca"]["cw"][0]["periods"].as_u64() >= Some(2)
            && s["monitor"]["duration_s"].as_f64() >= Some(3.0)
    });
    let list = api(addr, "GET", "/api/v1/channels", None).json();
    assert!(ready, "no monitor view: {list}");
    let clean = &channel(&list, "clean")["monitor"];
    assert_eq!(clean["time_base"], "wall", "{clean}");
    assert!(clean["packets"].as_u64().unwrap() > 1000, "{clean}");
    let e = &clean["etr290"];
    assert_eq!(
        (
            e["priority1_errors"].as_u64(),
            e["priority2_errors"].as_u64()
        ),
        (Some(0), Some(0)),
        "{e}"
    );
    assert_eq!(e["indicators"].as_array().unwrap().len(), 13, "{e}");
    let ecm = &clean["ca"]["ecm"][0];
    assert_eq!(ecm["pid"], 0x1FF0, "{ecm}");
    let (mean, max) = (
        ecm["mean_interval_ms"].as_f64().unwrap(),
        ecm["max_interval_ms"].as_f64().unwrap(),
    );
    assert!((70.0..=150.0).contains(&mean) && max < 400.0, "{ecm}");
    let cw = &clean["ca"]["cw"][0];
    let period = cw["mean_period_s"].as_f64().unwrap();
    assert!((0.8..=1.2).contains(&period), "{cw}");
    let emm = &clean["ca"]["emm"][0];
    assert_eq!(emm["pid"], 0x1FF1, "{emm}");
    assert!(emm["bitrate_bps"].as_u64().unwrap() > 0, "{emm}");

    let seeded = &channel(&list, "seeded")["monitor"]["etr290"];
    let cc = seeded["indicators"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "Continuity_count_error")
        .unwrap();
    assert!(cc["count"].as_u64().unwrap() >= 1, "{seeded}");
    assert!(
        cc["pids"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["pid"] == 0x100),
        "only the seeded PID: {cc}"
    );
    assert!(channel(&list, "plain")["monitor"].is_null());

    let text = get(addr, "/metrics").text();
    promtool_check(&text);
    let errors = |ch: &str, ind: &str, prio: u8| {
        sample(
            &text,
            &format!(
                "castmux_channel_etr290_errors_total{{channel=\"{ch}\",indicator=\"{ind}\",priority=\"{prio}\"}}"
            ),
        )
    };
    assert!(
        errors("seeded", "Continuity_count_error", 1) >= Some(1.0),
        "{text}"
    );
    assert_eq!(errors("clean", "Continuity_count_error", 1), Some(0.0));
    assert_eq!(errors("clean", "PCR_repetition_error", 2), Some(0.0));
    let ecm_max = sample(
        &text,
        "castmux_channel_ecm_interval_max_seconds{channel=\"clean\",ecm_pid=\"8176\"}",
    )
    .unwrap();
    assert!(ecm_max > 0.05 && ecm_max < 0.4, "{text}");
    assert!(
        sample(
            &text,
            "castmux_channel_cw_period_seconds{channel=\"clean\",pid=\"256\"}"
        )
        .is_some_and(|p| (0.8..=1.2).contains(&p)),
        "{text}"
    );
    assert!(
        sample(
            &text,
            "castmux_channel_emm_bitrate_bps{channel=\"clean\",emm_pid=\"8177\"}"
        )
        .is_some_and(|b| b > 0.0),
        "{text}"
    );
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("castmux_channel_etr290") && l.contains("\"plain\"")),
        "an unmonitored channel has no ETR 290 series: {text}"
    );
    assert!(errors("plain", "PAT_error", 1).is_none());

    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    let (status, _) = server.stop();
    assert!(status.success(), "{status:?}");
}
