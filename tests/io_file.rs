//! File and pipe inputs/outputs: round trip, resync of a damaged file,
//! stdin from a child process, write errors.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use castmux::io::{
    Input, InputOptions, InputUrl, Output, OutputOptions, OutputUrl, PacketBatch, ReadStatus,
    TS_PACKET_SIZE,
};

fn packet(i: u32) -> [u8; TS_PACKET_SIZE] {
    let mut p = [0x5Au8; TS_PACKET_SIZE];
    p[0] = 0x47;
    p[4..8].copy_from_slice(&i.to_be_bytes());
    p
}

fn counter(p: &[u8; TS_PACKET_SIZE]) -> u32 {
    u32::from_be_bytes([p[4], p[5], p[6], p[7]])
}

/// Compare without printing thousands of numbers on failure.
fn check_seq(got: &[u32], want: impl Iterator<Item = u32>) {
    let want: Vec<u32> = want.collect();
    if got != want.as_slice() {
        let at = got.iter().zip(&want).position(|(a, b)| a != b);
        panic!(
            "got {} packets, want {}; first difference at {at:?}: {:?}",
            got.len(),
            want.len(),
            at.map(|i| &got[i.saturating_sub(2)..(i + 3).min(got.len())])
        );
    }
}

fn read_all(input: &mut Input, cap: usize) -> Vec<u32> {
    let mut batch = PacketBatch::with_capacity(cap);
    let mut got = Vec::new();
    loop {
        match input
            .read_batch(&mut batch, Duration::from_millis(500))
            .unwrap()
        {
            ReadStatus::Packets(n) => {
                assert!(n > 0 && n == batch.len());
                got.extend(batch.packets().iter().map(counter));
            }
            ReadStatus::TimedOut => panic!("a file never times out"),
            ReadStatus::EndOfStream => return got,
        }
    }
}

#[test]
fn file_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.ts");
    let url = path.to_str().unwrap();
    let opts = OutputOptions::default();
    let mut out = Output::open(&OutputUrl::parse(url).unwrap(), &opts).unwrap();
    let mut batch = PacketBatch::with_capacity(100);
    for i in 0..5000u32 {
        if !batch.push(&packet(i)) {
            out.write_packets(&batch).unwrap();
            batch.clear();
            assert!(batch.push(&packet(i)));
        }
    }
    out.write_packets(&batch).unwrap();
    out.close(Duration::from_secs(1)).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 5000 * 188);
    assert_eq!(opts.stats.snapshot().packets_out, 5000);

    for cap in [1, 7, 64, 1000] {
        let in_opts = InputOptions::default();
        let mut input = Input::open(
            &InputUrl::parse(&format!("file://{url}")).unwrap(),
            &in_opts,
        )
        .unwrap();
        assert!(!input.is_live());
        check_seq(&read_all(&mut input, cap), 0..5000);
        let s = in_opts.stats.snapshot();
        assert_eq!(
            (s.packets_in, s.bytes_in, s.dropped_bytes),
            (5000, 5000 * 188, 0)
        );
    }
}

#[test]
fn damaged_file_resyncs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.ts");
    let mut bytes = b"junk before the stream".to_vec();
    for i in 0..100 {
        bytes.extend_from_slice(&packet(i));
    }
    // Cut a packet short, then 1000 bytes of garbage, then more packets.
    bytes.truncate(bytes.len() - 50);
    bytes.extend(std::iter::repeat_n(0x00u8, 1000));
    for i in 100..200 {
        bytes.extend_from_slice(&packet(i));
    }
    bytes.extend_from_slice(&[0x47, 1, 2]); // truncated tail
    std::fs::write(&path, &bytes).unwrap();
    let opts = InputOptions::default();
    let mut input = Input::open(&InputUrl::File(path), &opts).unwrap();
    let got = read_all(&mut input, 64);
    check_seq(&got, (0..99).chain(100..200));
    let s = opts.stats.snapshot();
    assert_eq!(s.sync_losses, 1);
    assert_eq!(s.dropped_bytes, 22 + 138 + 1000 + 3);
    assert_eq!(s.packets_in * 188 + s.dropped_bytes, bytes.len() as u64);
}

/// Damage far past the first read, where a locked regular file is read straight into the
/// batch: every batch size gives the packets and counters the resync gives.
#[test]
fn damage_deep_in_a_file_resyncs_at_every_batch_size() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("deep.ts");
    let mut bytes = b"junk".to_vec();
    let mut want = Vec::new();
    let mut dropped = 4u64;
    let mut next = 0u32;
    let good = |bytes: &mut Vec<u8>, want: &mut Vec<u32>, next: &mut u32, n: u32| {
        for _ in 0..n {
            bytes.extend_from_slice(&packet(*next));
            want.push(*next);
            *next += 1;
        }
    };
    good(&mut bytes, &mut want, &mut next, 1500);
    // a packet cut short (its 100 bytes dropped) and 700 bytes of garbage
    bytes.extend_from_slice(&packet(99_999)[..100]);
    bytes.extend(std::iter::repeat_n(0x00u8, 700));
    dropped += 800;
    good(&mut bytes, &mut want, &mut next, 2100);
    // a bad sync byte in the middle of a run: that packet is dropped, and the one before
    // it too (taken as cut short, its successor's sync byte being wrong)
    want.pop();
    dropped += 188;
    let mut bad = packet(99_998);
    bad[0] = 0x48;
    bytes.extend_from_slice(&bad);
    dropped += 188;
    good(&mut bytes, &mut want, &mut next, 1777);
    bytes.extend_from_slice(&[0x47, 1, 2, 3, 4]); // truncated tail
    dropped += 5;
    std::fs::write(&path, &bytes).unwrap();

    for cap in [1, 7, 127, 128, 200, 512, 1000, 4096] {
        let opts = InputOptions::default();
        let mut input = Input::open(&InputUrl::File(path.clone()), &opts).unwrap();
        let got = read_all(&mut input, cap);
        println!("batch of {cap}");
        check_seq(&got, want.iter().copied());
        let s = opts.stats.snapshot();
        assert_eq!(s.sync_losses, 2, "batch of {cap}");
        assert_eq!(s.dropped_bytes, dropped, "batch of {cap}");
        assert_eq!(s.bytes_in, bytes.len() as u64, "batch of {cap}");
        assert_eq!(s.packets_in, want.len() as u64, "batch of {cap}");
    }
}

#[test]
fn missing_file_names_the_path() {
    let err = Input::open(
        &InputUrl::parse("/nonexistent/dir/in.ts").unwrap(),
        &InputOptions::default(),
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("/nonexistent/dir/in.ts"), "{msg}");
}

#[test]
fn full_disk_is_a_typed_error() {
    let mut out = Output::open(
        &OutputUrl::parse("/dev/full").unwrap(),
        &OutputOptions::default(),
    )
    .unwrap();
    let data: Vec<u8> = (0..2000).flat_map(packet).collect();
    let res = out.write_batch(&data).and_then(|_| out.flush());
    let err = res.unwrap_err();
    assert!(err.to_string().contains("/dev/full"), "{err}");
}

/// Runs this test binary as a child: stdin -> castmux -> stdout, and checks
/// both ends from the parent. The child part is selected by an env var.
#[test]
fn stdin_to_stdout_through_a_child() {
    if std::env::var_os("CASTMUX_IO_CHILD").is_some() {
        return child_copy();
    }
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "stdin_to_stdout_through_a_child",
            "--nocapture",
            "--quiet",
        ])
        .env("CASTMUX_IO_CHILD", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        for i in 0..3000 {
            stdin.write_all(&packet(i)).unwrap();
            if i % 1000 == 999 {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(out.status.success());
    // The test harness may print its own lines: take the TS from the first sync.
    let start = out.stdout.iter().position(|&b| b == 0x47).unwrap();
    let ts = &out.stdout[start..start + 3000 * 188];
    let got: Vec<u32> = ts
        .chunks_exact(188)
        .map(|c| counter(c.try_into().unwrap()))
        .collect();
    check_seq(&got, 0..3000);
}

fn child_copy() {
    let mut input = Input::open(&InputUrl::Stdin, &InputOptions::default()).unwrap();
    let mut output = Output::open(&OutputUrl::Stdout, &OutputOptions::default()).unwrap();
    let mut batch = PacketBatch::with_capacity(50);
    let mut timeouts = 0;
    loop {
        match input
            .read_batch(&mut batch, Duration::from_millis(5))
            .unwrap()
        {
            ReadStatus::Packets(_) => output.write_packets(&batch).unwrap(),
            ReadStatus::TimedOut => {
                timeouts += 1;
                output.flush().unwrap();
            }
            ReadStatus::EndOfStream => break,
        }
    }
    output.flush().unwrap();
    // The pauses in the writer show up as timeouts: stdin is polled.
    assert!(timeouts > 0);
}
