//! The head-end bench's floor: a bare UDP forwarder run in castmux's place, on the same
//! core, against the same sender and receiver, so what the Linux kernel's network stack costs
//! on this machine at this moment is measured beside castmux instead of remembered. It does what castmux's data
//! plane does with the sockets and nothing else: epoll, on castmux's default cadence (while
//! traffic flows, a round every 3 ms), recvmmsg from every ready channel, and one write per
//! channel and round (UDP GSO for several datagrams, a plain send for one) on that channel's
//! own connected socket. No cipher, no PSI, no copies. The bench binary runs it when started
//! again with [`ENV`] set (`base,channels,out_port`).

use std::io::IoSliceMut;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::socket::{
    recvmmsg, sendmsg, ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage,
};

pub const ENV: &str = "CASTMUX_BENCH_FORWARDER";
/// castmux's default `--read-interval`.
const INTERVAL: Duration = Duration::from_millis(3);
/// Datagrams per recvmmsg, as castmux.
const VLEN: usize = 64;
const SLOT: usize = 2048;

/// Runs the forwarder and exits when this process was started as one; returns otherwise.
pub fn run_if_asked() {
    let Ok(spec) = std::env::var(ENV) else {
        return;
    };
    let v: Vec<u16> = spec
        .split(',')
        .map(|x| {
            x.parse()
                .expect("CASTMUX_BENCH_FORWARDER: base,channels,out_port")
        })
        .collect();
    let [base, channels, out_port] = v[..] else {
        panic!("CASTMUX_BENCH_FORWARDER: base,channels,out_port");
    };
    forward(base, channels as usize, out_port)
}

fn forward(base: u16, channels: usize, out_port: u16) -> ! {
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).expect("epoll");
    let mut inputs = Vec::with_capacity(channels);
    let mut outputs = Vec::with_capacity(channels);
    for i in 0..channels {
        let s = UdpSocket::bind(("127.0.0.1", base + i as u16)).expect("bind input");
        s.set_nonblocking(true).unwrap();
        // castmux's default receive buffer
        let _ = socket2::SockRef::from(&s).set_recv_buffer_size(8 << 20);
        epoll
            .add(&s, EpollEvent::new(EpollFlags::EPOLLIN, i as u64))
            .expect("epoll_ctl");
        inputs.push(s);
        let o = UdpSocket::bind("127.0.0.1:0").expect("bind output");
        o.connect(("127.0.0.1", out_port)).expect("connect output");
        outputs.push(o);
    }
    // what the bench waits for before it sends
    eprintln!("headend: running (the bare forwarder, {channels} channels)");
    let mut slab = vec![0u8; VLEN * SLOT];
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(VLEN, None);
    // room for every channel: one epoll_wait a round sees them all, as castmux drains its
    let mut events = vec![EpollEvent::empty(); channels.max(1)];
    let mut lens = [0usize; VLEN];
    let mut next_read: Option<Instant> = None;
    loop {
        if let Some(t) = next_read {
            let now = Instant::now();
            if t > now {
                std::thread::sleep(t - now);
            }
        }
        let round = Instant::now();
        let timeout = if next_read.is_some() {
            EpollTimeout::ZERO
        } else {
            EpollTimeout::NONE
        };
        let n = match epoll.wait(&mut events, timeout) {
            Ok(n) => n,
            Err(Errno::EINTR) => 0,
            Err(e) => panic!("epoll_wait: {e}"),
        };
        let mut moved = false;
        for ev in &events[..n] {
            let i = ev.data() as usize;
            loop {
                let got = {
                    let mut slots = slab.chunks_exact_mut(SLOT);
                    let mut iovs: [[IoSliceMut<'_>; 1]; VLEN] =
                        std::array::from_fn(|_| [IoSliceMut::new(slots.next().unwrap())]);
                    match recvmmsg(
                        inputs[i].as_raw_fd(),
                        &mut headers,
                        iovs.iter_mut(),
                        MsgFlags::MSG_DONTWAIT,
                        None,
                    ) {
                        Ok(msgs) => {
                            let mut k = 0;
                            for m in msgs {
                                lens[k] = m.bytes;
                                k += 1;
                            }
                            k
                        }
                        Err(_) => 0,
                    }
                };
                if got == 0 {
                    break;
                }
                moved = true;
                send(&outputs[i], &slab, &lens[..got]);
                if got < VLEN {
                    break;
                }
            }
        }
        next_read = moved.then(|| round + INTERVAL);
    }
}

/// Datagrams a GSO write carries at most: 24 of up to SLOT bytes stay inside 64 KB.
const GSO_MAX: usize = 24;

/// One write for a channel's datagrams: GSO when they are several of one size; one send
/// each when they are not, or when the kernel refuses GSO (as castmux steps down).
fn send(out: &UdpSocket, slab: &[u8], lens: &[usize]) {
    let fd = out.as_raw_fd();
    for (c, chunk) in lens.chunks(GSO_MAX).enumerate() {
        let mut all = [std::io::IoSlice::new(&[]); GSO_MAX];
        for (k, &l) in chunk.iter().enumerate() {
            let at = (GSO_MAX * c + k) * SLOT;
            all[k] = std::io::IoSlice::new(&slab[at..at + l.min(SLOT)]);
        }
        let iovs = &all[..chunk.len()];
        let gso = chunk.len() > 1 && chunk.iter().all(|&l| l == chunk[0]);
        let sent = gso && {
            let size = chunk[0] as u16;
            let cmsg = [ControlMessage::UdpGsoSegments(&size)];
            sendmsg::<()>(fd, iovs, &cmsg, MsgFlags::empty(), None).is_ok()
        };
        if !sent {
            for iov in iovs {
                let _ = sendmsg::<()>(fd, std::slice::from_ref(iov), &[], MsgFlags::empty(), None);
            }
        }
    }
}
