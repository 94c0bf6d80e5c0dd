//! UDP inputs and outputs over loopback: unicast (batched and single
//! syscalls), IPv6, multicast, RTP unwrapping, resync of broken datagrams.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use castmux::io::{
    Input, InputOptions, InputUrl, Output, OutputOptions, OutputUrl, PacketBatch, ReadStatus,
    TS_PACKET_SIZE,
};

/// Packet `i`: sync byte, PID 0x100, a counter in bytes 4..8, filler.
fn packet(i: u32) -> [u8; TS_PACKET_SIZE] {
    let mut p = [0xA5u8; TS_PACKET_SIZE];
    p[0] = 0x47;
    p[1] = 0x01;
    p[2] = 0x00;
    p[3] = 0x10 | (i & 0x0f) as u8;
    p[4..8].copy_from_slice(&i.to_be_bytes());
    p
}

fn stream(n: u32) -> Vec<u8> {
    (0..n).flat_map(packet).collect()
}

fn counter(p: &[u8; TS_PACKET_SIZE]) -> u32 {
    u32::from_be_bytes([p[4], p[5], p[6], p[7]])
}

/// Read until `want` packets arrived or `limit` passed; returns the counters.
fn collect(input: &mut Input, want: usize, limit: Duration) -> Vec<u32> {
    let mut batch = PacketBatch::with_capacity(100);
    let mut got = Vec::new();
    let end = Instant::now() + limit;
    while got.len() < want && Instant::now() < end {
        match input
            .read_batch(&mut batch, Duration::from_millis(2))
            .unwrap()
        {
            ReadStatus::Packets(n) => {
                assert_eq!(n, batch.len());
                got.extend(batch.packets().iter().map(counter));
            }
            ReadStatus::TimedOut => {}
            ReadStatus::EndOfStream => panic!("a UDP input never ends"),
        }
    }
    got
}

fn round_trip(input_url: &str, output_for: impl Fn(u16) -> String, single: bool) {
    let in_opts = InputOptions {
        force_single_syscalls: single,
        ..Default::default()
    };
    let mut input = Input::open(&InputUrl::parse(input_url).unwrap(), &in_opts).unwrap();
    assert!(input.is_live());
    let port = input.local_addr().unwrap().port();
    let out_opts = OutputOptions {
        force_single_syscalls: single,
        ..Default::default()
    };
    let out_url = OutputUrl::parse(&output_for(port)).unwrap();
    let mut output = Output::open(&out_url, &out_opts).unwrap();

    // Nothing sent yet: a live input times out instead of blocking.
    let mut batch = PacketBatch::with_capacity(8);
    let t = Instant::now();
    assert_eq!(
        input
            .read_batch(&mut batch, Duration::from_millis(20))
            .unwrap(),
        ReadStatus::TimedOut
    );
    assert!(t.elapsed() >= Duration::from_millis(15));

    // 1000 packets in uneven writes; the last datagram is short until flush.
    let data = stream(1000);
    let mut sent = 0;
    for (k, chunk) in data.chunks(TS_PACKET_SIZE * 45).enumerate() {
        output.write_batch(chunk).unwrap();
        sent += chunk.len() / TS_PACKET_SIZE;
        if k % 4 == 3 {
            // Let the receiver keep up: loopback drops when its buffer is full.
            let got = collect(&mut input, 0, Duration::ZERO);
            assert!(got.is_empty());
        }
    }
    assert_eq!(sent, 1000);
    output.flush().unwrap();
    let got = collect(&mut input, 1000, Duration::from_secs(3));
    assert_eq!(got, (0..1000).collect::<Vec<_>>());

    let s_out = out_opts.stats.snapshot();
    assert_eq!(s_out.packets_out, 1000);
    // 1000 = 142 * 7 + 6: 143 datagrams when pkt=7.
    let s_in = in_opts.stats.snapshot();
    assert_eq!(s_in.packets_in, 1000);
    assert_eq!(s_in.datagrams_in, s_out.datagrams_out);
    assert_eq!(
        (s_in.sync_losses, s_in.dropped_bytes, s_out.send_errors),
        (0, 0, 0)
    );
}

#[test]
fn unicast_batched() {
    round_trip(
        "udp://127.0.0.1:0",
        |p| format!("udp://127.0.0.1:{p}"),
        false,
    );
}

#[test]
fn unicast_single_syscalls_and_pkt() {
    round_trip(
        "udp://127.0.0.1:0",
        |p| format!("udp://127.0.0.1:{p}?pkt=3"),
        true,
    );
}

#[test]
fn unicast_ipv6() {
    round_trip("udp://[::1]:0", |p| format!("udp://[::1]:{p}"), false);
}

#[test]
fn datagram_count_follows_pkt() {
    let in_opts = InputOptions::default();
    let mut input = Input::open(&InputUrl::parse("udp://127.0.0.1:0").unwrap(), &in_opts).unwrap();
    let port = input.local_addr().unwrap().port();
    let out_opts = OutputOptions::default();
    let url = OutputUrl::parse(&format!("udp://127.0.0.1:{port}?pkt=7")).unwrap();
    let mut output = Output::open(&url, &out_opts).unwrap();
    output.write_batch(&stream(10)).unwrap();
    // 7 sent, 3 held back.
    assert_eq!(out_opts.stats.snapshot().datagrams_out, 1);
    assert_eq!(collect(&mut input, 7, Duration::from_secs(2)).len(), 7);
    output.write_batch(&stream(4)).unwrap();
    // 3 + 4 make a full datagram.
    assert_eq!(out_opts.stats.snapshot().datagrams_out, 2);
    output.write_batch(&stream(1)).unwrap();
    output.flush().unwrap();
    assert_eq!(out_opts.stats.snapshot().datagrams_out, 3);
    assert_eq!(collect(&mut input, 8, Duration::from_secs(2)).len(), 8);
    assert!(output.write_batch(&[0x47; 100]).is_err());
}

/// A write of many datagrams (sent as UDP GSO where the kernel offers it, and
/// beyond one GSO send's limit) arrives as whole 7-packet datagrams, in order,
/// with the held tail first.
#[test]
fn one_write_of_many_datagrams_arrives_datagram_by_datagram() {
    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let _ = socket2::SockRef::from(&rx).set_recv_buffer_size(4 << 20);
    let port = rx.local_addr().unwrap().port();
    let out_opts = OutputOptions::default();
    let url = OutputUrl::parse(&format!("udp://127.0.0.1:{port}")).unwrap();
    let mut output = Output::open(&url, &out_opts).unwrap();
    let data = stream(3 + 7 * 80 + 2);
    output.write_batch(&data[..3 * TS_PACKET_SIZE]).unwrap();
    assert_eq!(out_opts.stats.snapshot().datagrams_out, 0);
    output.write_batch(&data[3 * TS_PACKET_SIZE..]).unwrap();
    // the tail completed by 4 packets, 79 more whole datagrams; 5 packets held
    assert_eq!(out_opts.stats.snapshot().datagrams_out, 80);
    let mut buf = [0u8; 65536];
    let mut next = 0u32;
    for d in 0..80 {
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(n, 7 * TS_PACKET_SIZE, "datagram {d}");
        for p in buf[..n].chunks_exact(TS_PACKET_SIZE) {
            assert_eq!(counter(p.try_into().unwrap()), next);
            next += 1;
        }
    }
    output.flush().unwrap();
    assert_eq!(rx.recv(&mut buf).unwrap(), 5 * TS_PACKET_SIZE);
    let s = out_opts.stats.snapshot();
    assert_eq!(
        (s.datagrams_out, s.packets_out, s.send_errors),
        (81, 565, 0)
    );
}

/// Coalescing (as the shared data plane sets it): whole datagrams wait for a second one,
/// or until the oldest is due at the next write; flush sends everything, in order.
#[test]
fn coalescing_gathers_datagrams_and_holds_none_too_long() {
    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let port = rx.local_addr().unwrap().port();
    let out_opts = OutputOptions::default();
    let url = OutputUrl::parse(&format!("udp://127.0.0.1:{port}")).unwrap();
    let mut output = Output::open(&url, &out_opts).unwrap();
    output.set_udp_coalesce(2, Duration::from_millis(50));
    let data = stream(7 * 3 + 3 + 5);
    let p = |n: usize| n * TS_PACKET_SIZE;
    let sent = || out_opts.stats.snapshot().datagrams_out;
    output.write_batch(&data[..p(7)]).unwrap();
    assert_eq!(sent(), 0, "one datagram waits for a second");
    output.write_batch(&data[p(7)..p(14)]).unwrap();
    assert_eq!(sent(), 2, "two go together");
    output.write_batch(&data[p(14)..p(21)]).unwrap();
    assert_eq!(sent(), 2);
    std::thread::sleep(Duration::from_millis(60));
    output.write_batch(&data[p(21)..p(24)]).unwrap();
    assert_eq!(sent(), 3, "the held datagram was due");
    output.write_batch(&data[p(24)..]).unwrap();
    assert_eq!(
        sent(),
        3,
        "8 packets held: a datagram not yet due, and a tail"
    );
    output.flush().unwrap();
    assert_eq!(sent(), 5);
    let mut buf = [0u8; 4096];
    let mut next = 0u32;
    for want in [7, 7, 7, 7, 1] {
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(n, want * TS_PACKET_SIZE);
        for q in buf[..n].chunks_exact(TS_PACKET_SIZE) {
            assert_eq!(counter(q.try_into().unwrap()), next);
            next += 1;
        }
    }
    assert_eq!(next, 29);
}

#[test]
fn multicast_loopback() {
    // Group 239.255.42.x joined on the loopback interface; the sender picks
    // lo with iface=127.0.0.1 and keeps IP_MULTICAST_LOOP on (the default).
    round_trip(
        "udp://239.255.42.17:0?iface=127.0.0.1",
        |p| format!("udp://239.255.42.17:{p}?iface=127.0.0.1&ttl=1"),
        false,
    );
}

#[test]
fn multicast_source_specific() {
    round_trip(
        "udp://127.0.0.1@232.255.42.18:0?iface=127.0.0.1",
        |p| format!("udp://232.255.42.18:{p}?iface=127.0.0.1"),
        false,
    );
}

#[test]
fn rtp_unwrap_and_gaps() {
    let opts = InputOptions::default();
    let mut input = Input::open(&InputUrl::parse("rtp://127.0.0.1:0").unwrap(), &opts).unwrap();
    let dest = input.local_addr().unwrap();
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let data = stream(70);
    // 10 datagrams of 7 packets; sequence 100..=110 with 105 missing.
    for (k, chunk) in data.chunks(7 * TS_PACKET_SIZE).enumerate() {
        let seq = 100 + k as u16 + u16::from(k >= 5);
        let mut d = vec![0x80, 33];
        d.extend_from_slice(&seq.to_be_bytes());
        d.extend_from_slice(&(k as u32 * 3000).to_be_bytes());
        d.extend_from_slice(&0x1234_5678u32.to_be_bytes());
        if k == 2 {
            // One datagram with a CSRC and a header extension.
            d[0] |= 0x11;
            d.extend_from_slice(&[9, 9, 9, 9, 0xbe, 0xde, 0, 1, 1, 2, 3, 4]);
        }
        d.extend_from_slice(chunk);
        tx.send_to(&d, dest).unwrap();
    }
    let got = collect(&mut input, 70, Duration::from_secs(2));
    assert_eq!(got, (0..70).collect::<Vec<_>>());
    let s = opts.stats.snapshot();
    assert_eq!((s.rtp_gaps, s.datagrams_in, s.dropped_bytes), (1, 10, 0));
}

#[test]
fn resync_across_broken_datagrams() {
    let opts = InputOptions::default();
    let mut input = Input::open(&InputUrl::parse("udp://127.0.0.1:0").unwrap(), &opts).unwrap();
    let dest = input.local_addr().unwrap();
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let data = stream(40);
    // Odd-sized datagrams (packets split across them), then garbage, then more.
    for chunk in data[..20 * TS_PACKET_SIZE].chunks(500) {
        tx.send_to(chunk, dest).unwrap();
    }
    tx.send_to(&[0x13; 333], dest).unwrap();
    for chunk in data[20 * TS_PACKET_SIZE..].chunks(7 * TS_PACKET_SIZE) {
        tx.send_to(chunk, dest).unwrap();
    }
    let got = collect(&mut input, 40, Duration::from_secs(2));
    assert_eq!(got, (0..40).collect::<Vec<_>>());
    let s = opts.stats.snapshot();
    assert_eq!((s.sync_losses, s.dropped_bytes), (1, 333));
}

#[test]
fn bind_conflict_is_a_clear_error() {
    let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
    let url = format!("udp://127.0.0.1:{}", taken.local_addr().unwrap().port());
    let err = Input::open(&InputUrl::parse(&url).unwrap(), &InputOptions::default()).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(&url) && msg.contains("cannot bind"), "{msg}");
}
