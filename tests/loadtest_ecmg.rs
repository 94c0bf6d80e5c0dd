//! `castmux loadtest ecmg`, real processes and sockets (issue 13): against the real
//! `castmux ecmg` serving a card store it passes (every request answered by an ECM, no
//! error) and writes its JSON and plot; against a fake ECMG slower than the max_comp_time
//! it announced it reports the late answers and fails naming the criterion; against a
//! hostile fake ECMG (errors, broken ECMs, undecodable and unasked-for messages, a frame
//! that breaks the stream) it counts each by kind, reconnects, and never panics; an ECMG
//! that is not there ends the run early with the reason.

mod cli_support;
mod head_support;
mod simulcrypt_support;

use std::net::SocketAddr;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use castmux::cas::AccessCriteria;
use castmux::simulcrypt::conn::{FrameReader, FrameWriter};
use castmux::simulcrypt::{CwProvision, EcmBuildRequest, EcmBuilder, EcmgMessage};
use cli_support::*;
use head_support::*;
use serde_json::Value;
use simulcrypt_support::{channel_status, TestBuilder};

fn loadtest(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_castmux"))
        .arg("loadtest")
        .arg("ecmg")
        .args(args)
        .env("CASTMUX_LOG", "info")
        .output()
        .expect("run castmux loadtest")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn json(path: &std::path::Path) -> Value {
    let s = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_json::from_str(&s).unwrap_or_else(|e| panic!("{path:?} is not JSON: {e}\n{s}"))
}

fn n(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no number {key} in {v}"))
}

#[test]
fn passes_against_castmux_ecmg_and_writes_json_and_plot() {
    let h = Head::new();
    let (_ecmg, addr) = h.ecmg("127.0.0.1:0");
    let report = h.path("report.json");
    let plot = h.path("plot.svg");
    let o = loadtest(&[
        &addr,
        "--super-cas-id",
        "4AE10000",
        "--access-criteria",
        "00000001",
        "--channels",
        "3",
        "--streams-per-channel",
        "4",
        "--crypto-period",
        "1s",
        "--duration",
        "4s",
        "--stats-interval",
        "1s",
        "--ecmg-version",
        "3",
        // a shared CI machine may stall a process past castmux ecmg's 100 ms now and then
        "--max-late",
        "10",
        "--json",
        s(&report),
        "--plot",
        s(&plot),
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "failed:\n{out}\n{err}");
    // an interval line a second, then the summary and the verdict
    assert!(out.matches("requests ").count() >= 3, "{out}");
    for want in [
        "response p99",
        "connection errors",
        "PASS",
        "max_comp_time 100 ms",
    ] {
        assert!(out.contains(want), "{want:?} not in\n{out}");
    }
    assert!(!out.contains("FAIL"), "{out}");

    let j = json(&report);
    let t = &j["total"];
    assert!(n(t, "requests") >= 3 * 4 * 3, "{t}");
    assert_eq!(n(t, "requests"), n(t, "ecms"), "{t}");
    assert_eq!(n(t, "errors"), 0, "{t}");
    assert!(n(t, "late") <= 10, "{t}");
    assert_eq!(n(t, "streams_up"), 12, "{t}");
    assert!(t["response"]["p99_ms"].as_f64().unwrap() > 0.0, "{t}");
    assert_eq!(j["verdict"]["passed"], Value::Bool(true));
    assert_eq!(j["announced"]["max_comp_time_ms"], 100);
    assert_eq!(j["settings"]["version"], 3);
    let intervals = j["intervals"].as_array().unwrap();
    assert!(intervals.len() >= 3, "{intervals:?}");
    let summed: u64 = intervals.iter().map(|i| n(i, "requests")).sum();
    assert_eq!(
        summed,
        n(t, "requests"),
        "the intervals add up to the total"
    );

    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(200)]);
    for want in ["response time", "per interval", "p99", "requests"] {
        assert!(svg.contains(want), "{want:?} not in the plot");
    }
}

/// How a fake ECMG answers.
#[derive(Debug, Clone, Copy)]
enum Fake {
    /// Every ECM after `delay`, announcing max_comp_time `max_comp_ms`.
    Slow { delay: Duration, max_comp_ms: u16 },
    /// A different wrong answer to each CW_provision in turn, and a frame that breaks the
    /// stream now and then.
    Hostile,
}

/// A fake ECMG on a runtime of its own; gives its address.
fn fake_ecmg(rt: &tokio::runtime::Runtime, fake: Fake) -> SocketAddr {
    let l = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = l.local_addr().unwrap();
    rt.spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(serve_fake(s, fake));
        }
    });
    addr
}

fn ecm_for(cp: &CwProvision) -> Vec<u8> {
    let cw = |n: u16| cp.cp_cw.iter().find(|x| x.cp_number == n).map(|x| &x.cw);
    let (Some(cur), Some(next)) = (cw(cp.cp_number), cw(cp.cp_number.wrapping_add(1))) else {
        return vec![0x80, 0x70, 0x00];
    };
    let req = EcmBuildRequest {
        super_cas_id: 0,
        ecm_id: 1,
        cp_number: cp.cp_number,
        even: cur,
        odd: next,
        access_criteria_bytes: &[],
        access_criteria: AccessCriteria(0),
        cp_duration: None,
    };
    let mut d = Vec::new();
    TestBuilder.build(&req, &mut d).unwrap();
    d
}

async fn serve_fake(s: tokio::net::TcpStream, fake: Fake) {
    let (rd, wr) = s.into_split();
    let mut r = FrameReader::new(rd);
    let mut w = FrameWriter::new(wr);
    let mut provisions = 0u32;
    while let Ok(Some(f)) = r.next().await {
        let Ok((v, m)) = EcmgMessage::decode(&f) else {
            return;
        };
        let reply = match m {
            EcmgMessage::ChannelSetup { channel_id, .. } => {
                EcmgMessage::ChannelStatus(channel_status(
                    channel_id,
                    16,
                    match fake {
                        Fake::Slow { max_comp_ms, .. } => max_comp_ms,
                        Fake::Hostile => 100,
                    },
                ))
            }
            EcmgMessage::StreamSetup {
                channel_id,
                stream_id,
                ecm_id,
                ..
            } => EcmgMessage::StreamStatus {
                channel_id,
                stream_id,
                ecm_id,
                access_criteria_transfer_mode: false,
            },
            EcmgMessage::StreamCloseRequest {
                channel_id,
                stream_id,
            } => EcmgMessage::StreamCloseResponse {
                channel_id,
                stream_id,
            },
            EcmgMessage::CwProvision(cp) => {
                provisions += 1;
                let (ch, st) = (cp.channel_id, cp.stream_id);
                let ecm = |cp_number, datagram| EcmgMessage::EcmResponse {
                    channel_id: ch,
                    stream_id: st,
                    cp_number,
                    datagram,
                };
                match fake {
                    Fake::Slow { delay, .. } => {
                        tokio::time::sleep(delay).await;
                        ecm(cp.cp_number, ecm_for(&cp))
                    }
                    Fake::Hostile => {
                        if provisions.is_multiple_of(20) {
                            // message_length 65535: the stream cannot be framed any more
                            let _ = w.send_raw(&[v, 0x02, 0x02, 0xFF, 0xFF, 0, 0]).await;
                            return;
                        }
                        match provisions % 6 {
                            0 => ecm(cp.cp_number, ecm_for(&cp)),
                            1 => EcmgMessage::StreamError {
                                channel_id: ch,
                                stream_id: st,
                                status: vec![0x000D],
                                info: Vec::new(),
                            },
                            2 => EcmgMessage::ChannelError {
                                channel_id: ch,
                                status: vec![0x7000],
                                info: Vec::new(),
                            },
                            // a section that says it is longer than it is
                            3 => ecm(cp.cp_number, vec![0x80, 0x70, 0x40, 1, 2]),
                            4 => {
                                // a well-framed message of no known type, then garbage
                                // parameters in a known one
                                let _ = w.send_raw(&[v, 0x09, 0x99, 0, 4, 0, 1, 0, 0]).await;
                                let _ = w.send_raw(&[v, 0x02, 0x02, 0, 3, 0xAA, 0xBB, 0xCC]).await;
                                continue;
                            }
                            // an ECM for a crypto period never asked
                            _ => ecm(cp.cp_number.wrapping_add(1000), ecm_for(&cp)),
                        }
                    }
                }
            }
            EcmgMessage::ChannelClose { .. } => return,
            _ => continue,
        };
        if w.send(v, &reply).await.is_err() {
            return;
        }
    }
}

#[test]
fn a_slow_ecmg_gives_late_answers_and_fails_naming_the_criterion() {
    let rt = simulcrypt_support::runtime();
    let addr = fake_ecmg(
        &rt,
        Fake::Slow {
            delay: Duration::from_millis(150),
            max_comp_ms: 50,
        },
    );
    let dir = tmp();
    let report = dir.path().join("slow.json");
    let o = loadtest(&[
        &addr.to_string(),
        "--super-cas-id",
        "4AE10000",
        "-c",
        "2",
        "-s",
        "2",
        "--crypto-period",
        "1s",
        "--duration",
        "3s",
        "--stats-interval",
        "1s",
        "--json",
        s(&report),
    ]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}\n{err}");
    assert!(
        err.contains("loadtest ecmg failed") && err.contains("(--max-late)"),
        "the reason names the criterion:\n{err}"
    );
    assert!(
        !err.contains("--max-errors"),
        "no error but lateness:\n{err}"
    );
    assert!(out.contains("FAIL"), "{out}");
    let j = json(&report);
    let t = &j["total"];
    assert!(n(t, "ecms") >= 8, "{t}");
    assert_eq!(n(t, "late"), n(t, "ecms"), "every answer late: {t}");
    assert_eq!(n(t, "errors"), 0, "{t}");
    assert!(t["response"]["p50_ms"].as_f64().unwrap() >= 150.0, "{t}");
    assert_eq!(j["announced"]["max_comp_time_ms"], 50);
    assert_eq!(j["verdict"]["passed"], Value::Bool(false));
}

#[test]
fn a_hostile_ecmg_is_counted_by_kind_never_a_panic() {
    let rt = simulcrypt_support::runtime();
    let addr = fake_ecmg(&rt, Fake::Hostile);
    let dir = tmp();
    let report = dir.path().join("hostile.json");
    let plot = dir.path().join("hostile.png");
    let o = loadtest(&[
        &addr.to_string(),
        "--super-cas-id",
        "4AE10000",
        "-c",
        "2",
        "-s",
        "3",
        "--crypto-period",
        "500ms",
        "--duration",
        "5s",
        "--stats-interval",
        "1s",
        "--json",
        s(&report),
        "--plot",
        s(&plot),
    ]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}\n{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains("(--max-errors)"), "{err}");
    let j = json(&report);
    let t = &j["total"];
    let by_status = &t["error_status"];
    assert!(
        n(
            by_status,
            "stream_error: ECMG out of computational resources (0x000d)"
        ) > 0,
        "{t}"
    );
    assert!(
        n(by_status, "channel_error: unknown error (0x7000)") > 0,
        "{t}"
    );
    for kind in [
        "ecms",
        "bad_ecms",
        "bad_messages",
        "unexpected",
        "unanswered",
        "connection_errors",
    ] {
        assert!(n(t, kind) > 0, "no {kind}: {t}");
    }
    // the channels came back after each broken stream
    assert!(
        j["intervals"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| n(i, "connection_errors") > 0),
        "{j}"
    );
    // each channel broke once (its 20th request) and set up again before the end
    assert_eq!(n(t, "channels_up"), 2, "reconnected: {t}");
    assert_eq!(n(t, "streams_up"), 6, "reconnected: {t}");
    for want in [
        "bad ECMs",
        "unanswered",
        "stream_error: ECMG out of computational",
    ] {
        assert!(out.contains(want), "{want:?} not in the summary:\n{out}");
    }
    // the PNG plot (text drawn with a TrueType font found at run time)
    let png = std::fs::read(&plot).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
}

#[test]
fn an_ecmg_that_is_not_there_ends_the_run_early() {
    // a port nobody listens on
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let t0 = Instant::now();
    let o = loadtest(&[
        &format!("127.0.0.1:{port}"),
        "--super-cas-id",
        "4AE10000",
        "--duration",
        "60s",
    ]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}\n{err}");
    assert!(err.contains("no channel set up with the ECMG"), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());
}

#[test]
fn options_are_checked() {
    for (args, want) in [
        (&["--cw-size", "9"][..], "8 or 16"),
        (&["--ecmg-version", "4"][..], "2..=3"),
        (&["--channels", "0"][..], "1..=4096"),
        (&["--access-criteria", "xyz"][..], "not hex"),
        (&["--crypto-period", "10ms"][..], "out of range"),
        (&["-c", "1000", "-s", "100"][..], "ECM ids"),
    ] {
        let mut a = vec!["127.0.0.1:1", "--super-cas-id", "4AE10000"];
        a.extend_from_slice(args);
        let o = loadtest(&a);
        let (_, err) = text(&o);
        assert!(!o.status.success(), "{args:?} accepted");
        assert!(err.contains(want), "{args:?}: {want:?} not in {err}");
    }
}
