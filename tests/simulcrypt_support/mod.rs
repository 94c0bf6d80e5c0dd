//! Shared helpers of the SimulCrypt socket tests: a test ECM builder, a background tokio
//! runtime running servers, and a blocking raw-socket peer.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use castmux::simulcrypt::access::access_criteria_from_bytes;
use castmux::simulcrypt::tlv::frame_len;
use castmux::simulcrypt::{
    EcmBuildError, EcmBuildRequest, EcmBuilder, EcmgMessage, EcmgServer, EcmgServerConfig,
    EcmgServerStats, EmmgMessage,
};
use tokio::sync::oneshot;

/// Builds a test ECM section: table_id, 0x70, length, then CP_number (2), even CW, odd CW,
/// the access criteria mask (8). In clear: only for tests.
pub struct TestBuilder;

impl EcmBuilder for TestBuilder {
    fn build(&self, req: &EcmBuildRequest<'_>, out: &mut Vec<u8>) -> Result<(), EcmBuildError> {
        let mut body = Vec::new();
        body.extend_from_slice(&req.cp_number.to_be_bytes());
        body.extend_from_slice(req.even.as_bytes());
        body.extend_from_slice(req.odd.as_bytes());
        body.extend_from_slice(&req.access_criteria.0.to_be_bytes());
        out.push(req.table_id());
        out.push(0x70 | (body.len() >> 8) as u8);
        out.push(body.len() as u8);
        out.extend_from_slice(&body);
        Ok(())
    }
}

/// What a test ECM says.
#[derive(Debug, PartialEq, Eq)]
pub struct TestEcm {
    pub table_id: u8,
    pub cp: u16,
    pub even: Vec<u8>,
    pub odd: Vec<u8>,
    pub access: u64,
}

pub fn parse_test_ecm(s: &[u8]) -> TestEcm {
    assert!(s.len() >= 3 + 2 + 16 + 8, "short test ECM: {s:02x?}");
    let b = &s[3..];
    TestEcm {
        table_id: s[0],
        cp: u16::from_be_bytes([b[0], b[1]]),
        even: b[2..10].to_vec(),
        odd: b[10..18].to_vec(),
        access: u64::from_be_bytes(b[18..26].try_into().unwrap()),
    }
}

/// Check the AC form the test builder relies on.
pub fn ac(bytes: &[u8]) -> u64 {
    access_criteria_from_bytes(bytes).unwrap().0
}

/// A multi-thread runtime kept for the test's life.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A running ECMG server; dropping `stop` (or sending on it) stops it.
pub struct RunningEcmg {
    pub addr: SocketAddr,
    pub stats: Arc<EcmgServerStats>,
    pub stop: Option<oneshot::Sender<()>>,
    pub done: Option<tokio::task::JoinHandle<()>>,
}

impl RunningEcmg {
    /// Stop the server and wait until its connections are gone.
    pub fn kill(&mut self, rt: &tokio::runtime::Runtime) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(d) = self.done.take() {
            let _ = rt.block_on(d);
        }
    }
}

pub fn start_ecmg(
    rt: &tokio::runtime::Runtime,
    addr: SocketAddr,
    config: EcmgServerConfig,
) -> RunningEcmg {
    let server = rt
        .block_on(EcmgServer::bind(addr, config, Arc::new(TestBuilder)))
        .unwrap();
    let addr = server.local_addr().unwrap();
    let stats = server.stats();
    let (tx, rx) = oneshot::channel::<()>();
    let done = rt.spawn(server.run(async move {
        let _ = rx.await;
    }));
    RunningEcmg {
        addr,
        stats,
        stop: Some(tx),
        done: Some(done),
    }
}

/// Poll `f` until true or `timeout` (generous: the CI machine is shared).
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    f()
}

/// A blocking raw peer speaking bytes.
pub struct Raw {
    pub sock: TcpStream,
    pub sent: Vec<u8>,
    pub received: Vec<u8>,
}

impl Raw {
    pub fn connect(addr: SocketAddr) -> Raw {
        let sock = TcpStream::connect(addr).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        sock.set_nodelay(true).unwrap();
        Raw {
            sock,
            sent: Vec::new(),
            received: Vec::new(),
        }
    }

    pub fn send_bytes(&mut self, b: &[u8]) {
        self.sock.write_all(b).unwrap();
        self.sent.extend_from_slice(b);
    }

    pub fn send_ecmg(&mut self, version: u8, m: &EcmgMessage) {
        let mut b = Vec::new();
        m.encode(version, &mut b).unwrap();
        self.send_bytes(&b);
    }

    pub fn send_emmg(&mut self, version: u8, m: &EmmgMessage) {
        let mut b = Vec::new();
        m.encode(version, &mut b).unwrap();
        self.send_bytes(&b);
    }

    /// One whole message, or None when the peer closed.
    pub fn read_frame(&mut self) -> Option<Vec<u8>> {
        let mut buf = Vec::new();
        loop {
            if let Ok(Some(n)) = frame_len(&buf) {
                let f = buf[..n].to_vec();
                assert_eq!(n, buf.len(), "one message at a time in these tests");
                self.received.extend_from_slice(&f);
                return Some(f);
            }
            let mut chunk = [0u8; 4096];
            let want = match frame_len(&buf) {
                Ok(None) if buf.len() >= 5 => {
                    5 + usize::from(u16::from_be_bytes([buf[3], buf[4]])) - buf.len()
                }
                _ => 5 - buf.len().min(5),
            }
            .max(1);
            match self.sock.read(&mut chunk[..want.min(4096)]) {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    pub fn read_ecmg(&mut self) -> Option<EcmgMessage> {
        self.read_frame()
            .map(|f| EcmgMessage::decode(&f).expect("valid message").1)
    }

    pub fn read_emmg(&mut self) -> Option<EmmgMessage> {
        self.read_frame()
            .map(|f| EmmgMessage::decode(&f).expect("valid message").1)
    }
}

/// The channel_status a fake ECMG answers: 100 ms ECM repetition, 10 ms min CP, one CW
/// ahead, two per message; `max_streams` and `max_comp_time` (ms) as given.
pub fn channel_status(
    channel_id: u16,
    max_streams: u16,
    max_comp_time: u16,
) -> castmux::simulcrypt::ChannelStatus {
    castmux::simulcrypt::ChannelStatus {
        channel_id,
        section_tspkt_flag: false,
        ac_delay_start: None,
        ac_delay_stop: None,
        delay_start: 0,
        delay_stop: 0,
        transition_delay_start: None,
        transition_delay_stop: None,
        ecm_rep_period: 100,
        max_streams,
        min_cp_duration: 10,
        lead_cw: 1,
        cw_per_msg: 2,
        max_comp_time,
    }
}

/// How a [`fake_ecmg`] behaves.
#[derive(Debug, Clone, Copy)]
pub struct FakeEcmg {
    /// The one ECMG<->SCS version it speaks; a message in another version gets a
    /// channel_error `unsupported protocol version` (0x0002) in this version and the
    /// connection stays open, as TSDuck's tsecmg does (it speaks 2 by default).
    pub version: u8,
    /// Answer every CW_provision with a stream_error of this error_status instead of an ECM.
    pub refuse_cw: Option<u16>,
}

/// A fake ECMG serving any number of connections, one at a time each on its own task:
/// channel_status and stream_status as asked, ECM_responses built by [`TestBuilder`] (or
/// the refusal of [`FakeEcmg::refuse_cw`]). Gives its address; it runs for the runtime's life.
pub fn fake_ecmg(rt: &tokio::runtime::Runtime, fake: FakeEcmg) -> SocketAddr {
    use castmux::cas::AccessCriteria;
    use castmux::simulcrypt::conn::FrameReader;
    use castmux::simulcrypt::CwProvision;
    use tokio::io::AsyncWriteExt;

    let l = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = l.local_addr().unwrap();
    rt.spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (rd, mut wr) = s.into_split();
                let mut r = FrameReader::new(rd);
                while let Ok(Some(f)) = r.next().await {
                    let Ok((v, m)) = EcmgMessage::decode(&f) else {
                        return;
                    };
                    let reply = if v != fake.version {
                        Some(EcmgMessage::ChannelError {
                            channel_id: m.channel_id(),
                            status: vec![0x0002],
                            info: Vec::new(),
                        })
                    } else {
                        match m {
                            EcmgMessage::ChannelSetup { channel_id, .. }
                            | EcmgMessage::ChannelTest { channel_id } => Some(
                                EcmgMessage::ChannelStatus(channel_status(channel_id, 1, 100)),
                            ),
                            EcmgMessage::StreamSetup {
                                channel_id,
                                stream_id,
                                ecm_id,
                                ..
                            } => Some(EcmgMessage::StreamStatus {
                                channel_id,
                                stream_id,
                                ecm_id,
                                access_criteria_transfer_mode: false,
                            }),
                            EcmgMessage::CwProvision(CwProvision {
                                channel_id,
                                stream_id,
                                ..
                            }) if fake.refuse_cw.is_some() => Some(EcmgMessage::StreamError {
                                channel_id,
                                stream_id,
                                status: vec![fake.refuse_cw.unwrap_or_default()],
                                info: Vec::new(),
                            }),
                            EcmgMessage::CwProvision(cp) => {
                                let cw_of = |n: u16| {
                                    cp.cp_cw.iter().find(|x| x.cp_number == n).map(|x| &x.cw)
                                };
                                let (Some(cur), Some(next)) =
                                    (cw_of(cp.cp_number), cw_of(cp.cp_number.wrapping_add(1)))
                                else {
                                    return;
                                };
                                let (even, odd) = if cp.cp_number.is_multiple_of(2) {
                                    (cur, next)
                                } else {
                                    (next, cur)
                                };
                                let req = EcmBuildRequest {
                                    super_cas_id: 0,
                                    ecm_id: 1,
                                    cp_number: cp.cp_number,
                                    even,
                                    odd,
                                    access_criteria_bytes: &[],
                                    access_criteria: AccessCriteria(0),
                                    cp_duration: None,
                                };
                                let mut datagram = Vec::new();
                                TestBuilder.build(&req, &mut datagram).unwrap();
                                Some(EcmgMessage::EcmResponse {
                                    channel_id: cp.channel_id,
                                    stream_id: cp.stream_id,
                                    cp_number: cp.cp_number,
                                    datagram,
                                })
                            }
                            EcmgMessage::ChannelClose { .. } => return,
                            _ => None,
                        }
                    };
                    if let Some(m) = reply {
                        let mut b = Vec::new();
                        m.encode(fake.version, &mut b).unwrap();
                        if wr.write_all(&b).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}
