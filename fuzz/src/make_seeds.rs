//! Writes the seed corpora under fuzz/seeds/TARGET/ from the committed sample streams and
//! from castmux's own encoders (so each seed is a valid input the fuzzer mutates from).
//! Built by `cargo fuzz build` with the targets; run from fuzz/:
//! `target/x86_64-unknown-linux-gnu/release/make_seeds`. Seeds are kept to a few KB each.

use std::fs;
use std::path::Path;

use castmux::cas::ecm::{build_ecm, EcmParams};
use castmux::cas::emm::build_emm;
use castmux::cas::{
    build_emm2, build_group_emm, AccessCriteria, CardSerial, GroupId, Key128, ServiceKeyRing,
};
use castmux::scramble::Cw;
use castmux::simulcrypt::{ChannelIds, CpCw, CwProvision, EcmgMessage, EmmgMessage, StreamIds};
use castmux::softcard::newcamd::frame::{seal, FrameHeader, Message};
use castmux::softcard::newcamd::messages::{ecm_answer, Login};
use castmux::softcard::newcamd::{CardData, CwPair};
use castmux::ts::{PacketRef, SectionAssembler};
use castmux_fuzz::card::{entitlements, service_keys, CARD_KEY, CAS, NOW, SERIAL};
use castmux_fuzz::{newcamd_key, PACKET};

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new("seeds").join(target);
    fs::create_dir_all(&dir).expect("seed directory");
    fs::write(dir.join(name), bytes).expect("seed file");
}

/// The PSI packets (one per PSI PID) and the first `es` packets after them of a sample.
fn sample_packets(file: &str, es: usize) -> (Vec<u8>, Vec<u8>) {
    let ts = fs::read(Path::new("../samples").join(file)).expect("sample stream");
    let mut psi = Vec::new();
    let mut psi_pids = Vec::new();
    let mut rest = Vec::new();
    for p in ts.chunks_exact(PACKET).take(5000) {
        let pkt: &[u8; PACKET] = p.try_into().expect("188 bytes");
        let r = PacketRef::new(pkt);
        let pid = r.pid();
        let is_psi = r.pusi() && matches!(r.payload(), Ok([0, t, ..]) if *t <= 2);
        if is_psi && !psi_pids.contains(&pid) && psi_pids.len() < 8 {
            psi_pids.push(pid);
            psi.extend_from_slice(p);
        } else if !psi.is_empty() && rest.len() < es * PACKET && !psi_pids.contains(&pid) {
            rest.extend_from_slice(p);
        }
    }
    (psi, rest)
}

fn ts_seeds() {
    for (file, name) in [("spts.ts", "spts"), ("mpts.ts", "mpts")] {
        let (psi, es) = sample_packets(file, 16);
        write(
            "ts_packets",
            name,
            &[psi.clone(), es[..4 * PACKET].to_vec()].concat(),
        );
        // the analyzer: a batch size, then the same packets
        write(
            "analyzer",
            name,
            &[&[7u8][..], &psi, &es[..4 * PACKET]].concat(),
        );
        // sections for psi_section: flags (no repair), version, no private data
        for (i, p) in psi.chunks_exact(PACKET).enumerate() {
            let mut a = SectionAssembler::psi();
            let pkt: &[u8; PACKET] = p.try_into().expect("188 bytes");
            a.push(pkt, |r| {
                if let Ok(s) = r {
                    let seed = [&[0u8, 5, 0][..], s.bytes()].concat();
                    write("psi_section", &format!("{name}-{i}"), &seed);
                }
            });
        }
        // scrambler: flags, fail mask, batch size, then the stream
        for (flags, fail, batch) in [(0x00u8, 0x00u8, 7u8), (0x35, 0x05, 0), (0x1D, 0x02, 3)] {
            let seed = [&[flags, fail, batch][..], &psi, &es].concat();
            write("scrambler", &format!("{name}-{flags:02x}"), &seed);
        }
    }
}

fn simulcrypt_seeds() {
    let mut all = Vec::new();
    let mut n = 0;
    let mut put = |bytes: Vec<u8>| {
        all.extend_from_slice(&bytes);
        write("simulcrypt_tlv", &format!("msg-{n}"), &bytes);
        n += 1;
    };
    for v in [2u8, 3] {
        let mut b = Vec::new();
        EcmgMessage::ChannelSetup {
            channel_id: 1,
            super_cas_id: 0x0B00_0001,
        }
        .encode(v, &mut b)
        .expect("encodes");
        put(b);
        let mut b = Vec::new();
        EcmgMessage::CwProvision(CwProvision {
            channel_id: 1,
            stream_id: 1,
            cp_number: 7,
            cw_encryption: None,
            cp_cw: vec![
                CpCw {
                    cp_number: 7,
                    cw: Cw::from_slice(&[1; 8]).expect("8 bytes"),
                },
                CpCw {
                    cp_number: 8,
                    cw: Cw::from_slice(&[2; 8]).expect("8 bytes"),
                },
            ],
            cp_duration: Some(100),
            access_criteria: Some(vec![0, 0, 0, 1]),
        })
        .encode(v, &mut b)
        .expect("encodes");
        put(b);
        let mut b = Vec::new();
        EmmgMessage::DataProvision {
            client_id: 0x0B00_0001,
            channel_id: Some(1),
            stream_id: Some(1),
            data_id: 1,
            datagrams: vec![vec![0x82, 0x70, 2, 0, 0]],
        }
        .encode(v, &mut b)
        .expect("encodes");
        put(b);
        let mut b = Vec::new();
        EmmgMessage::StreamBwRequest {
            ids: StreamIds {
                client_id: 1,
                channel_id: 1,
                stream_id: 1,
            },
            bandwidth: Some(64),
        }
        .encode(v, &mut b)
        .expect("encodes");
        put(b);
        let mut b = Vec::new();
        EmmgMessage::ChannelError {
            ids: ChannelIds {
                client_id: 1,
                channel_id: 1,
            },
            status: vec![7],
            info: vec![vec![0, 1]],
        }
        .encode(v, &mut b)
        .expect("encodes");
        put(b);
    }
    write("simulcrypt_tlv", "stream", &all);
}

fn newcamd_seeds() {
    let key = newcamd_key();
    let login = Login {
        user: "dummy".into(),
        crypt_password: "$1$abcdefgh$XJbbSvfWrv8yKMEcVKvbl/".into(),
    }
    .encode()
    .expect("encodes");
    let card = CardData {
        user_id: 1,
        caid: CAS,
        serial: SERIAL,
        providers: vec![(0, [0; 8])],
    }
    .encode()
    .expect("encodes");
    let answer = ecm_answer(0x80, Some(&CwPair::from_bytes(&[3; 16]))).expect("encodes");
    let ecm = Message::from_bytes(&[0x80, 0x70, 4, 1, 2, 3, 4]).expect("a message");
    let header = FrameHeader {
        msg_id: 1,
        service_id: 101,
        caid: CAS,
        provider_id: 0,
    };
    for (name, m) in [
        ("login", &login),
        ("card", &card),
        ("answer", &answer),
        ("ecm", &ecm),
    ] {
        let frame = seal(&header, m, &key, &[9; 15]).expect("seals");
        write(
            "newcamd",
            &format!("wire-{name}"),
            &[&[0u8][..], &frame].concat(),
        );
        // the harness seals: IV, then header (10 bytes) and message in clear
        let mut plain = vec![1u8];
        plain.extend_from_slice(&[9; 8]);
        plain.extend_from_slice(&[0, 1, 0, 101, 0x4A, 0xE1, 0, 0, 0, 0]);
        plain.extend_from_slice(m.as_bytes());
        write("newcamd", &format!("plain-{name}"), &plain);
    }
}

fn cas_seeds() {
    let ring = ServiceKeyRing::from_keys(service_keys());
    let mut ecm = Vec::new();
    build_ecm(
        &ring,
        &EcmParams {
            ca_system_id: CAS,
            access: AccessCriteria(0b11),
            period: 4,
            timestamp: NOW,
            even: &[1, 2, 3, 6, 4, 5, 6, 15],
            odd: &[9, 8, 7, 24, 6, 5, 4, 15],
        },
        &mut ecm,
    )
    .expect("builds");
    let mut emm = Vec::new();
    let card_key = Key128::from_bytes(CARD_KEY);
    let keys = service_keys();
    build_emm(
        CardSerial(SERIAL),
        &card_key,
        2,
        &entitlements(),
        &keys,
        &mut emm,
    )
    .expect("builds");
    let chunk = |op: u8, bytes: &[u8]| {
        let mut v = vec![op, 0];
        v.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
        v.extend_from_slice(bytes);
        v
    };
    // raw: the EMM then the ECM, as a card sees them on air
    write(
        "cas_card",
        "emm-ecm",
        &[chunk(1, &emm), chunk(0, &ecm)].concat(),
    );
    // sealed ECM: op, minute, access, content key, nonce, a version per package, body
    let mut body = Vec::new();
    body.extend_from_slice(&4u64.to_be_bytes());
    body.extend_from_slice(&NOW.to_be_bytes());
    body.push(8);
    body.extend_from_slice(&[1, 2, 3, 6, 4, 5, 6, 15, 9, 8, 7, 24, 6, 5, 4, 15]);
    let mut s = vec![2u8, 0];
    s.extend_from_slice(&0b11u64.to_be_bytes());
    s.extend_from_slice(&[0x33; 16]);
    s.extend_from_slice(&[0x44; 12]);
    s.extend_from_slice(&[1, 1]);
    s.extend_from_slice(&body);
    write("cas_card", "sealed-ecm", &s);
    // sealed EMM: op, minute, sequence, part, parts, nonce, body (from the built EMM's shape)
    let mut b = Vec::new();
    b.extend_from_slice(&0b11u64.to_be_bytes());
    b.extend_from_slice(&(NOW - 10).to_be_bytes());
    b.extend_from_slice(&(NOW + 10_000).to_be_bytes());
    b.extend_from_slice(&[0, 1, 0, 1]);
    b.push(5);
    b.extend_from_slice(&3u32.to_be_bytes());
    b.extend_from_slice(&[0x77; 16]);
    let mut s = vec![3u8, 0, 9, 0, 1];
    s.extend_from_slice(&[0x55; 12]);
    s.extend_from_slice(&(b.len() as u16).to_be_bytes());
    s.extend_from_slice(&b);
    write("cas_card", "sealed-emm", &s);
}

/// cas_group_emm: the card's unique EMM of format 2 then its group's EMM, raw (op 0) and
/// as the harness seals them (ops 1 and 2: the content in clear), and a round trip (op 3).
fn group_emm_seeds() {
    let card_key = Key128::from_bytes(CARD_KEY);
    let group_key = Key128::from_bytes([0x6B; 16]);
    let group = GroupId::of(CardSerial(SERIAL));
    let mut unique = Vec::new();
    build_emm2(
        CardSerial(SERIAL),
        &card_key,
        2,
        &entitlements(),
        Some(&group_key),
        &mut unique,
    )
    .expect("builds");
    let keys = service_keys();
    let mut grp = Vec::new();
    build_group_emm(CAS, group, &group_key, 3, &keys, &mut grp).expect("builds");
    let chunk = |op: u8, bytes: &[u8]| {
        let mut v = vec![op, 0];
        v.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
        v.extend_from_slice(bytes);
        v
    };
    write(
        "cas_group_emm",
        "raw-unique-group",
        &[chunk(0, &unique), chunk(0, &grp)].concat(),
    );
    // sealed unique (op 1 | 0x40: the group key appended): sequence, part byte, content
    let ent = entitlements();
    let mut body = Vec::new();
    body.extend_from_slice(&ent.access.0.to_be_bytes());
    body.extend_from_slice(&((NOW - 86_400) as u32).to_be_bytes());
    body.extend_from_slice(&((NOW + 86_400) as u32).to_be_bytes());
    body.extend_from_slice(&[0b101, 0]);
    let mut s = vec![0x41, 0, 5, 0];
    s.extend_from_slice(&(body.len() as u16).to_be_bytes());
    s.extend_from_slice(&body);
    // sealed group (op 2): sequence, part, parts, nonce, content (keys)
    let mut body = vec![keys.len() as u8];
    for k in &keys {
        body.push(k.bit.get());
        body.extend_from_slice(&k.version.to_be_bytes());
        body.extend_from_slice(&[0x33; 16]);
    }
    s.extend_from_slice(&[2, 0, 6, 0, 1]);
    s.extend_from_slice(&[7; 12]);
    s.extend_from_slice(&(body.len() as u16).to_be_bytes());
    s.extend_from_slice(&body);
    write("cas_group_emm", "sealed-unique-group", &s);
    // a round trip: op 3, minute, then the builder inputs (zeros where short)
    write("cas_group_emm", "round-trip", &[3, 0, 0, 0, 0, 0, 0, 0, 0, 0x0F, 1, 2, 3]);
}

fn text_seeds() {
    write(
        "csv_import",
        "tvcas",
        b"serial_no,name,info,access_criteria,pair,start,finish\n\
          2100000001,\"Ivanov, Ivan\",flat 5,00000001,0,2024-01-01,2025-01-01T00:00:00Z\n\
          2100000002,Petrov,\"say \"\"hi\"\"\",00000011,1,1700000000,1800000000\n",
    );
    write(
        "csv_import",
        "state",
        b"\xef\xbb\xbfserial_no,name,info,access_criteria,pair,start,finish,state\r\n\
          2100000003,a,,00000001,0,2024-01-01,2024-02-01,disabled\r\n",
    );
    let doc = fs::read_to_string("../docs/headend.md").expect("docs/headend.md");
    let toml = doc
        .split("```toml\n")
        .nth(1)
        .and_then(|t| t.split("```").next())
        .expect("the example in docs/headend.md");
    write(
        "headend_toml",
        "docs-example",
        &[b"\0", toml.as_bytes()].concat(),
    );
    write(
        "headend_toml",
        "users",
        b"\x01[[user]]\nname = \"oscam\"\npassword = \"secret\"\n\n[[user]]\nname = \"tv\"\npassword = \"x:y\"\nau = false\n",
    );
    for (i, u) in [
        "udp://239.1.1.1:1234",
        "udp://10.0.0.5@232.1.1.1:5000?iface=192.168.1.2",
        "udp://[ff15::1]:1234?ttl=4&pkt=7",
        "udp://:1234",
        "rtp://239.1.1.1:1234",
        "srt://203.0.113.5:9000?mode=caller&latency=200&passphrase=0123456789abc",
        "srt://:9000?mode=listener&streamid=live/1",
        "file:///srv/rec/a.ts",
        "-",
        "http://0.0.0.0:8100/ch1?max_clients=50",
        "http://bob:s3cr3t@[2001:db8::7]:8000/live/ch1.ts?token=a#x",
    ]
    .iter()
    .enumerate()
    {
        write("url", &format!("url-{i}"), u.as_bytes());
    }
}

fn rtp_seeds() {
    let (psi, es) = sample_packets("spts.ts", 14);
    let stream = [psi, es].concat();
    let mut seed = vec![6u8];
    for (seq, seven) in stream.chunks(7 * PACKET).enumerate() {
        let mut d = vec![0x80, 33];
        d.extend_from_slice(&(seq as u16).to_be_bytes());
        d.extend_from_slice(&[0, 0, 0, 1, 0xCA, 0xFE, 0xBA, 0xBE]);
        d.extend_from_slice(seven);
        seed.extend_from_slice(&(d.len() as u16).to_be_bytes());
        seed.extend_from_slice(&d);
    }
    write("rtp_sync", "rtp", &seed);
    // raw TS with garbage in front and a packet cut in two across datagrams
    let mut seed = vec![15u8];
    let mut raw = vec![0x47, 0x12, 0x00];
    raw.extend_from_slice(&stream[..5 * PACKET + 100]);
    seed.extend_from_slice(&(raw.len() as u16).to_be_bytes());
    seed.extend_from_slice(&raw);
    let tail = &stream[5 * PACKET + 100..7 * PACKET];
    seed.extend_from_slice(&(tail.len() as u16).to_be_bytes());
    seed.extend_from_slice(tail);
    write("rtp_sync", "raw-split", &seed);
}

/// Keys as requests present them (first byte: 0 = X-API-Key, else Authorization) and
/// TVCAS field text for the answer encoder.
fn http_seeds() {
    for (i, seed) in [
        &b"\x00mysecretkey123"[..],
        b"\x01Bearer mysecretkey123",
        b"\x01Basic YmlsbGluZzpteXNlY3JldGtleTEyMw==",
        b"\x01Basic !!",
        "\u{2}Петрова Зинаида, Зелёная 38/5 \"a\" 😀".as_bytes(),
    ]
    .iter()
    .enumerate()
    {
        write("http_api", &format!("http-{i}"), seed);
    }
}

/// Request heads as clients send them to an HTTP-TS listener, and a few broken ones.
fn http_ts_seeds() {
    for (i, seed) in [
        &b"GET /ch1 HTTP/1.1\r\nHost: 127.0.0.1:8100\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n"[..],
        b"GET /ch1?token=x HTTP/1.1\r\nUser-Agent: Lavf/60.16.100\r\nAccept: */*\r\nRange: bytes=0-\r\nConnection: close\r\nHost: h\r\nIcy-MetaData: 1\r\n\r\n",
        b"HEAD http://h:1/ch1 HTTP/1.0\n\n",
        b"\r\nGET / HTTP/1.1\r\n folded: x\r\n\r\n",
        b"POST /ch1 HTTP/2.0\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    ]
    .iter()
    .enumerate()
    {
        write("http_ts_request", &format!("req-{i}"), seed);
    }
}

fn main() {
    http_seeds();
    http_ts_seeds();
    ts_seeds();
    simulcrypt_seeds();
    newcamd_seeds();
    cas_seeds();
    group_emm_seeds();
    text_seeds();
    rtp_seeds();
}
