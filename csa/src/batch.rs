//! Scrambling and descrambling whole batches of 188-byte TS packets in place.
//!
//! Only the payload after the adaptation field is touched; the header and
//! adaptation field stay clear. Scrambling sets transport_scrambling_control
//! (10 even, 11 odd); descrambling reads it to pick the key and clears it.
//! Packets with a bad sync byte, no payload, or (when scrambling) already
//! scrambled are left untouched and counted, and never stop the others.

use crate::aes_modes::{self, AesKey, AesMode};
use crate::kernel::{self, Backend};
use crate::key::{ControlWord, ExpandedKey};
use crate::{scalar, Error};
use std::marker::PhantomData;

/// TS packet size.
pub const PACKET_SIZE: usize = 188;

/// Which key of the pair a packet uses (ISO/IEC 13818-1 transport_scrambling_control).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Parity {
    /// TSC `10`.
    Even,
    /// TSC `11`.
    Odd,
}

impl Parity {
    pub fn tsc_bits(self) -> u8 {
        match self {
            Parity::Even => 0b10,
            Parity::Odd => 0b11,
        }
    }

    pub fn flip(self) -> Parity {
        match self {
            Parity::Even => Parity::Odd,
            Parity::Odd => Parity::Even,
        }
    }

    fn index(self) -> usize {
        match self {
            Parity::Even => 0,
            Parity::Odd => 1,
        }
    }
}

/// The scrambling algorithm of a key context.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// DVB-CSA2 (8-byte CWs).
    Csa2,
    /// DVB-CISSA, ETSI TS 103 127 (AES-128-CBC, 16-byte keys).
    Cissa,
    /// ATIS-IDSA, ATIS-0800006 (AES-128-CBC, 16-byte keys).
    Idsa,
}

impl Algorithm {
    /// Control word length in bytes.
    pub fn key_len(self) -> usize {
        match self {
            Algorithm::Csa2 => 8,
            Algorithm::Cissa | Algorithm::Idsa => 16,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Csa2 => "csa2",
            Algorithm::Cissa => "cissa",
            Algorithm::Idsa => "idsa",
        }
    }
}

/// What a batch call did, packet by packet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// Packets whose payload went through the cipher (with the TSC set or cleared).
    pub processed: u64,
    /// Packets marked but with a payload too short for the cipher (under 8 bytes
    /// for CSA2, 16 for CISSA): left as they are, like libdvbcsa and TSDuck do.
    pub short_payload: u64,
    /// Packets without payload (adaptation field only, or an invalid AF length).
    pub no_payload: u64,
    /// Packets whose first byte is not 0x47.
    pub bad_sync: u64,
    /// Scramble: packets already scrambled (TSC != 00), passed through.
    pub already_scrambled: u64,
    /// Descramble: clear packets (TSC 00) passed through.
    pub clear: u64,
    /// Descramble: packets with the reserved TSC 01, passed through.
    pub reserved_tsc: u64,
}

impl std::ops::AddAssign for BatchStats {
    fn add_assign(&mut self, o: BatchStats) {
        self.processed += o.processed;
        self.short_payload += o.short_payload;
        self.no_payload += o.no_payload;
        self.bad_sync += o.bad_sync;
        self.already_scrambled += o.already_scrambled;
        self.clear += o.clear;
        self.reserved_tsc += o.reserved_tsc;
    }
}

/// Where the payload of a packet starts, or None when it has none.
pub fn payload_offset(pkt: &[u8; PACKET_SIZE]) -> Option<usize> {
    let afc = (pkt[3] >> 4) & 0b11;
    match afc {
        0b01 => Some(4),
        0b11 => {
            let start = 5 + pkt[4] as usize;
            (start < PACKET_SIZE).then_some(start)
        }
        _ => None,
    }
}

enum Keys {
    Csa {
        expanded: [ExpandedKey; 2],
    },
    Aes {
        mode: AesMode,
        // Boxed: AES round keys are larger than the CSA pair; allocated once per key change.
        keys: Box<[AesKey; 2]>,
    },
}

/// A key context: the even and the odd key, expanded once per key change.
/// It holds no scratch space and is a few hundred bytes.
pub struct KeyContext {
    keys: Keys,
    backend: Option<Backend>,
}

impl std::fmt::Debug for KeyContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyContext")
            .field("algorithm", &self.algorithm())
            .field("keys", &"<redacted>")
            .finish()
    }
}

impl KeyContext {
    /// A DVB-CSA2 context with an even and an odd CW.
    pub fn csa2(even: &ControlWord, odd: &ControlWord) -> Self {
        let expanded = [ExpandedKey::new(even), ExpandedKey::new(odd)];
        KeyContext {
            keys: Keys::Csa { expanded },
            backend: None,
        }
    }

    /// An AES context (CISSA or IDSA) with an even and an odd 16-byte key.
    pub fn aes(algorithm: Algorithm, even: &[u8; 16], odd: &[u8; 16]) -> Result<Self, Error> {
        let mode = match algorithm {
            Algorithm::Cissa => AesMode::Cissa,
            Algorithm::Idsa => AesMode::Idsa,
            Algorithm::Csa2 => {
                return Err(Error::WrongKeyLength {
                    algorithm: "csa2",
                    expected: 8,
                    got: 16,
                })
            }
        };
        Ok(KeyContext {
            keys: Keys::Aes {
                mode,
                keys: Box::new([AesKey::new(even), AesKey::new(odd)]),
            },
            backend: None,
        })
    }

    /// Builds a context from raw key bytes of the algorithm's length.
    pub fn from_bytes(algorithm: Algorithm, even: &[u8], odd: &[u8]) -> Result<Self, Error> {
        let want = algorithm.key_len();
        for k in [even, odd] {
            if k.len() != want {
                return Err(Error::WrongKeyLength {
                    algorithm: algorithm.name(),
                    expected: want,
                    got: k.len(),
                });
            }
        }
        match algorithm {
            Algorithm::Csa2 => {
                let e = ControlWord::from_bytes(even.try_into().expect("checked length"));
                let o = ControlWord::from_bytes(odd.try_into().expect("checked length"));
                Ok(KeyContext::csa2(&e, &o))
            }
            _ => KeyContext::aes(
                algorithm,
                even.try_into().expect("checked length"),
                odd.try_into().expect("checked length"),
            ),
        }
    }

    pub fn algorithm(&self) -> Algorithm {
        match &self.keys {
            Keys::Csa { .. } => Algorithm::Csa2,
            Keys::Aes {
                mode: AesMode::Cissa,
                ..
            } => Algorithm::Cissa,
            Keys::Aes {
                mode: AesMode::Idsa,
                ..
            } => Algorithm::Idsa,
        }
    }

    /// Replaces one CSA2 CW of the pair (the other keeps working).
    pub fn set_csa2(&mut self, parity: Parity, cw: &ControlWord) -> Result<(), Error> {
        match &mut self.keys {
            Keys::Csa { expanded } => {
                expanded[parity.index()] = ExpandedKey::new(cw);
                Ok(())
            }
            Keys::Aes { .. } => Err(Error::WrongKeyLength {
                algorithm: self.algorithm().name(),
                expected: 16,
                got: 8,
            }),
        }
    }

    /// Replaces one key of the pair from raw bytes of the algorithm's length.
    pub fn set_key(&mut self, parity: Parity, key: &[u8]) -> Result<(), Error> {
        let algorithm = self.algorithm();
        if key.len() != algorithm.key_len() {
            return Err(Error::WrongKeyLength {
                algorithm: algorithm.name(),
                expected: algorithm.key_len(),
                got: key.len(),
            });
        }
        match &mut self.keys {
            Keys::Csa { .. } => self.set_csa2(
                parity,
                &ControlWord::from_bytes(key.try_into().expect("checked length")),
            ),
            Keys::Aes { keys, .. } => {
                keys[parity.index()] = AesKey::new(key.try_into().expect("checked length"));
                Ok(())
            }
        }
    }

    /// Pins this context to one CSA backend (tests and benches); None = the process-wide choice.
    pub fn with_backend(mut self, backend: Option<Backend>) -> Self {
        self.backend = backend;
        self
    }

    /// Scrambles every clear packet with payload under the key of `parity`.
    pub fn scramble(&self, packets: &mut [u8], parity: Parity) -> Result<BatchStats, Error> {
        self.scramble_with(packets, |_| parity)
    }

    /// Scrambles with a parity chosen per packet (index in the batch), so a
    /// CW switch can fall inside a batch.
    pub fn scramble_with(
        &self,
        packets: &mut [u8],
        mut parity_of: impl FnMut(usize) -> Parity,
    ) -> Result<BatchStats, Error> {
        self.run(packets, true, |i, tsc| {
            if tsc == 0 {
                Ok(parity_of(i))
            } else {
                Err(Skip::AlreadyScrambled)
            }
        })
    }

    /// Scrambles only the packets `parity_of` selects (by index in the batch) under the
    /// parity it returns; the others are left untouched and counted as `clear`. Lets a
    /// caller keep PSI, ECM and unselected PIDs of a mixed batch out of the cipher.
    pub fn scramble_selected(
        &self,
        packets: &mut [u8],
        parity_of: impl FnMut(usize) -> Option<Parity>,
    ) -> Result<BatchStats, Error> {
        self.run(packets, true, scramble_rule(parity_of))
    }

    /// Descrambles only the scrambled packets `select` picks (by index in the batch), each
    /// with the key its TSC bits name; the others are left untouched and counted as `clear`.
    /// Lets a caller skip packets whose key it does not have.
    pub fn descramble_selected(
        &self,
        packets: &mut [u8],
        select: impl FnMut(usize) -> bool,
    ) -> Result<BatchStats, Error> {
        self.run(packets, false, descramble_rule(select))
    }

    /// Descrambles every scrambled packet with the key its TSC bits name and clears the TSC.
    pub fn descramble(&self, packets: &mut [u8]) -> Result<BatchStats, Error> {
        self.run(packets, false, descramble_rule(|_| true))
    }

    /// One batch call: the packets are gathered into lane sets of this
    /// context's backend, flushed when full and once more at the end.
    fn run(
        &self,
        packets: &mut [u8],
        scramble: bool,
        decide: impl FnMut(usize, u8) -> Result<Parity, Skip>,
    ) -> Result<BatchStats, Error> {
        let mut store = LaneStore::new();
        let mut lanes = Lanes::new(&mut store, self.backend, scramble);
        let stats = self.push_packets(packets, &mut lanes, decide)?;
        lanes.flush();
        Ok(stats)
    }

    /// Applies the packet rules (sync byte, `decide` on the TSC bits, payload
    /// after the adaptation field, short payloads left clear), sets or clears
    /// the TSC, and hands each payload to the cipher: AES right away, CSA to
    /// `lanes`, which runs it when its lane set is full or flushed. The bytes
    /// stay borrowed by `lanes` until then.
    fn push_packets<'a>(
        &'a self,
        packets: &'a mut [u8],
        lanes: &mut Lanes<'a>,
        mut decide: impl FnMut(usize, u8) -> Result<Parity, Skip>,
    ) -> Result<BatchStats, Error> {
        let scramble = lanes.scramble;
        if !packets.len().is_multiple_of(PACKET_SIZE) {
            return Err(Error::NotPacketMultiple { len: packets.len() });
        }
        let mut stats = BatchStats::default();
        let min_len = match self.keys {
            Keys::Csa { .. } => 8,
            Keys::Aes { .. } => 16,
        };
        for (i, pkt) in packets.chunks_exact_mut(PACKET_SIZE).enumerate() {
            let pkt: &mut [u8; PACKET_SIZE] = pkt.try_into().expect("chunks of 188");
            if pkt[0] != 0x47 {
                stats.bad_sync += 1;
                continue;
            }
            let tsc = pkt[3] >> 6;
            let parity = match decide(i, tsc) {
                Ok(p) => p,
                Err(Skip::AlreadyScrambled) => {
                    stats.already_scrambled += 1;
                    continue;
                }
                Err(Skip::Clear) => {
                    stats.clear += 1;
                    continue;
                }
                Err(Skip::Reserved) => {
                    stats.reserved_tsc += 1;
                    continue;
                }
            };
            let Some(start) = payload_offset(pkt) else {
                stats.no_payload += 1;
                continue;
            };
            pkt[3] = (pkt[3] & 0x3f) | if scramble { parity.tsc_bits() << 6 } else { 0 };
            let payload = &mut pkt[start..];
            if payload.len() < min_len {
                stats.short_payload += 1;
                continue;
            }
            stats.processed += 1;
            match &self.keys {
                Keys::Aes { mode, keys } => {
                    let key = &keys[parity.index()];
                    if scramble {
                        aes_modes::scramble_payload(*mode, key, payload);
                    } else {
                        aes_modes::descramble_payload(*mode, key, payload);
                    }
                }
                Keys::Csa { expanded } => lanes.push(payload, &expanded[parity.index()]),
            }
        }
        Ok(stats)
    }
}

enum Skip {
    AlreadyScrambled,
    Clear,
    Reserved,
}

/// The scramble rule: a packet `parity_of` selects is scrambled if it is clear.
fn scramble_rule(
    mut parity_of: impl FnMut(usize) -> Option<Parity>,
) -> impl FnMut(usize, u8) -> Result<Parity, Skip> {
    move |i, tsc| match parity_of(i) {
        None => Err(Skip::Clear),
        Some(p) if tsc == 0 => Ok(p),
        Some(_) => Err(Skip::AlreadyScrambled),
    }
}

/// The descramble rule: a packet `select` picks is descrambled with the key its TSC names.
fn descramble_rule(
    mut select: impl FnMut(usize) -> bool,
) -> impl FnMut(usize, u8) -> Result<Parity, Skip> {
    move |i, tsc| match tsc {
        _ if !select(i) => Err(Skip::Clear),
        0b10 => Ok(Parity::Even),
        0b11 => Ok(Parity::Odd),
        0b00 => Err(Skip::Clear),
        _ => Err(Skip::Reserved),
    }
}

/// The backend a batch uses and how it was chosen: `pinned` by the caller, it
/// runs every payload (no scalar shortcut for a lone payload; one the CPU
/// cannot run falls back to the process-wide choice); `automatic` (neither
/// pinned nor forced process-wide), each call may take a narrower kernel
/// ([`Backend::for_batch`]).
struct Resolved {
    backend: Backend,
    pinned: bool,
    automatic: bool,
}

fn resolve_backend(choice: Option<Backend>) -> Resolved {
    match choice {
        Some(backend) if backend.is_supported() => Resolved {
            backend,
            pinned: true,
            automatic: false,
        },
        _ => {
            let (backend, forced) = kernel::selection();
            Resolved {
                backend,
                pinned: choice.is_some(),
                automatic: choice.is_none() && !forced,
            }
        }
    }
}

/// Max lanes of any backend.
const MAX_LANES: usize = 512;

/// The storage of a lane set: payload pointers, lengths and keys waiting for
/// a kernel call. It holds no borrow itself: only a [`Lanes`] writes and reads
/// it, and `Lanes::new` empties it, so a [`MultiBatch`] keeps one across runs.
struct LaneStore {
    ptrs: [*mut u8; MAX_LANES],
    lens: [u8; MAX_LANES],
    keys: [*const ExpandedKey; MAX_LANES],
    n: usize,
}

// SAFETY: the pointers are only dereferenced by the `Lanes` that stored them,
// while it holds the borrows they came from; outside such a run they are stale
// and never read (`Lanes::new` resets `n`). Moving the store to another thread
// between runs moves nothing that can be reached.
unsafe impl Send for LaneStore {}

impl LaneStore {
    fn new() -> Self {
        LaneStore {
            ptrs: [std::ptr::null_mut(); MAX_LANES],
            lens: [0; MAX_LANES],
            keys: [std::ptr::null(); MAX_LANES],
            n: 0,
        }
    }
}

/// A lane set in use: payloads and their keys, borrowed for `'a`, gathered
/// whatever their key until a kernel call is full. A full set runs at once;
/// the rest runs at [`Lanes::flush`] or on drop, so no payload outlives its
/// borrow unprocessed.
struct Lanes<'a> {
    store: &'a mut LaneStore,
    /// The backend of a full lane set, and how it was chosen.
    backend: Backend,
    pinned: bool,
    automatic: bool,
    lanes: usize,
    scramble: bool,
    /// Kernel calls made, and the payloads they ran.
    calls: u64,
    payloads: u64,
    /// The store's pointers come from these borrows.
    _borrows: PhantomData<(&'a mut [u8], &'a ExpandedKey)>,
}

impl<'a> Lanes<'a> {
    fn new(store: &'a mut LaneStore, backend: Option<Backend>, scramble: bool) -> Self {
        let Resolved {
            backend,
            pinned,
            automatic,
        } = resolve_backend(backend);
        store.n = 0;
        Lanes {
            store,
            backend,
            pinned,
            automatic,
            lanes: backend.lanes().min(MAX_LANES),
            scramble,
            calls: 0,
            payloads: 0,
            _borrows: PhantomData,
        }
    }

    /// Queues a payload (8..=184 bytes) under `key`; runs the set when it is full.
    fn push(&mut self, payload: &'a mut [u8], key: &'a ExpandedKey) {
        debug_assert!((8..=184).contains(&payload.len()));
        if self.backend == Backend::Scalar {
            scalar_payload(self.scramble, key, payload);
            return;
        }
        let s = &mut *self.store;
        s.ptrs[s.n] = payload.as_mut_ptr();
        s.lens[s.n] = payload.len() as u8;
        s.keys[s.n] = key;
        s.n += 1;
        if s.n == self.lanes {
            self.flush();
        }
    }

    /// Runs the queued payloads in one kernel call: the one-key kernel when
    /// they all share a key, the keyed one otherwise; a lone payload goes the
    /// scalar way unless the backend is pinned. On the automatic backend a
    /// partial set takes the narrowest kernel that runs it cheapest.
    fn flush(&mut self) {
        let s = &mut *self.store;
        let n = std::mem::take(&mut s.n);
        if n == 0 {
            return;
        }
        let (ptrs, lens, keys) = (&s.ptrs[..n], &s.lens[..n], &s.keys[..n]);
        if n == 1 && !self.pinned {
            // SAFETY: the pointer, length and key were taken in `push` from a
            // `&'a mut [u8]` and a `&'a ExpandedKey`; `self` lives within 'a, so
            // both are alive, and the payload was moved into `push`, so nothing
            // else reaches its bytes.
            let (payload, key) = unsafe {
                (
                    std::slice::from_raw_parts_mut(ptrs[0], lens[0] as usize),
                    &*keys[0],
                )
            };
            scalar_payload(self.scramble, key, payload);
        } else {
            let backend = if self.automatic {
                self.backend.for_batch(n)
            } else {
                self.backend
            };
            if keys.iter().all(|&k| std::ptr::eq(k, keys[0])) {
                // SAFETY: as above for every entry: disjoint payloads (each was an
                // exclusive borrow) of 8..=184 bytes, live keys; `backend` is
                // supported (`resolve_backend`; `for_batch` narrows AVX-512 only
                // to kernels of the same CPU features) and has `n` lanes or more.
                unsafe { kernel::run(backend, self.scramble, &*keys[0], ptrs, lens) }
            } else {
                // SAFETY: as for `kernel::run` above.
                unsafe { kernel::run_keyed(backend, self.scramble, keys, ptrs, lens) }
            }
            self.calls += 1;
            self.payloads += n as u64;
        }
    }
}

impl Drop for Lanes<'_> {
    fn drop(&mut self) {
        self.flush();
    }
}

fn scalar_payload(scramble: bool, key: &ExpandedKey, payload: &mut [u8]) {
    if scramble {
        scalar::scramble_payload(key, payload);
    } else {
        scalar::descramble_payload(key, payload);
    }
}

/// Scrambles and descrambles packets of many key contexts in one pass, so the
/// CSA kernel sees full lane sets whatever key each payload uses: the batch
/// for a worker thread that serves many channels, each handing over a few
/// packets per wake-up.
///
/// `MultiBatch` is the reusable storage (two lane sets of pointers, lengths
/// and keys, about 17 KB, allocated once in [`MultiBatch::new`]); each pass is
/// a [`MultiRun`] from [`MultiBatch::begin`], which borrows the packet buffers
/// and key contexts pushed into it until it ends:
///
/// ```
/// # use csa::{ControlWord, KeyContext, MultiBatch, Parity};
/// let cw = |b| ControlWord::from_bytes([b; 8]);
/// let channels = [KeyContext::csa2(&cw(1), &cw(2)), KeyContext::csa2(&cw(3), &cw(4))];
/// let mut buffers = vec![vec![0u8; 188 * 8], vec![0u8; 188 * 12]];
/// for buf in &mut buffers {
///     for p in buf.chunks_exact_mut(188) {
///         p[0] = 0x47;
///         p[3] = 0x10;
///     }
/// }
/// let mut batch = MultiBatch::new(); // once per worker thread
/// let mut run = batch.begin(); // once per wake-up
/// for (ctx, buf) in channels.iter().zip(&mut buffers) {
///     let packets = buf.len() / 188;
///     let stats = run.scramble(ctx, buf, Parity::Even).unwrap(); // counted now, ciphered later
///     assert_eq!(stats.processed as usize, packets);
/// }
/// let pass = run.finish(); // the last, partial lane set
/// assert_eq!(pass.packets.processed, 20);
/// assert!(pass.kernel_calls <= 1); // 20 payloads, 64 lanes or more (0 on the scalar path)
/// ```
///
/// The per-packet rules are [`KeyContext`]'s (the same code): whole 188-byte
/// packets, the payload after the adaptation field, TSC set or cleared,
/// short payloads left clear, bad sync / no payload / already scrambled
/// skipped and counted. Each push returns its own [`BatchStats`] at once; the
/// CSA cipher runs when a lane set is full and at [`MultiRun::finish`] (or
/// when the run is dropped), so the kernel is called `ceil(payloads / lanes)`
/// times per direction. AES contexts (CISSA, IDSA) are processed at the push,
/// payload by payload. The batch's backend is used for every context (a
/// context's own [`KeyContext::with_backend`] is not consulted).
pub struct MultiBatch {
    backend: Option<Backend>,
    /// The scramble and the descramble lane sets.
    stores: Box<[LaneStore; 2]>,
}

impl std::fmt::Debug for MultiBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MultiBatch")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

impl Default for MultiBatch {
    fn default() -> Self {
        MultiBatch::new()
    }
}

impl MultiBatch {
    /// A batch on the process-wide backend ([`crate::selected_backend`]).
    pub fn new() -> Self {
        MultiBatch {
            backend: None,
            stores: Box::new([LaneStore::new(), LaneStore::new()]),
        }
    }

    /// Pins the batch to one CSA backend (tests and benches); None = the process-wide choice.
    pub fn with_backend(mut self, backend: Option<Backend>) -> Self {
        self.backend = backend;
        self
    }

    /// Payloads per kernel call on this batch's backend (1 for the scalar path).
    pub fn lanes(&self) -> usize {
        resolve_backend(self.backend).backend.lanes()
    }

    /// Starts a pass. Everything pushed into it stays borrowed until it ends.
    pub fn begin(&mut self) -> MultiRun<'_> {
        let [enc, dec] = &mut *self.stores;
        MultiRun {
            scramble: Lanes::new(enc, self.backend, true),
            descramble: Lanes::new(dec, self.backend, false),
            stats: BatchStats::default(),
        }
    }
}

/// One pass of a [`MultiBatch`]: packet buffers and key contexts pushed for
/// `'a`, their CSA payloads run in full lane sets. End it with
/// [`MultiRun::finish`] (dropping it does the same). Leaking it with
/// `mem::forget` leaves the payloads of the last partial sets unprocessed
/// with their TSC already set or cleared.
///
/// A pushed buffer stays borrowed until the pass ends, so it can be neither
/// pushed twice nor read before its payloads have run:
///
/// ```compile_fail
/// # use csa::{ControlWord, KeyContext, MultiBatch, Parity};
/// # let ctx = KeyContext::csa2(&ControlWord::from_bytes([1; 8]), &ControlWord::from_bytes([2; 8]));
/// let mut buf = vec![0u8; 188];
/// let mut batch = MultiBatch::new();
/// let mut run = batch.begin();
/// run.scramble(&ctx, &mut buf, Parity::Even).unwrap();
/// let peek = buf[4]; // error: `buf` is still borrowed by the pass
/// run.finish();
/// ```
pub struct MultiRun<'a> {
    scramble: Lanes<'a>,
    descramble: Lanes<'a>,
    stats: BatchStats,
}

impl std::fmt::Debug for MultiRun<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MultiRun")
            .field("backend", &self.scramble.backend)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<'a> MultiRun<'a> {
    /// Scrambles every clear packet with payload of `packets` under `ctx`'s key of `parity`.
    pub fn scramble(
        &mut self,
        ctx: &'a KeyContext,
        packets: &'a mut [u8],
        parity: Parity,
    ) -> Result<BatchStats, Error> {
        self.scramble_selected(ctx, packets, |_| Some(parity))
    }

    /// As [`KeyContext::scramble_selected`]: the packets `parity_of` selects (by index in
    /// `packets`) are scrambled under `ctx`'s key of the parity it returns, the others are
    /// left untouched and counted as `clear`.
    pub fn scramble_selected(
        &mut self,
        ctx: &'a KeyContext,
        packets: &'a mut [u8],
        parity_of: impl FnMut(usize) -> Option<Parity>,
    ) -> Result<BatchStats, Error> {
        let stats = ctx.push_packets(packets, &mut self.scramble, scramble_rule(parity_of))?;
        self.stats += stats;
        Ok(stats)
    }

    /// Descrambles every scrambled packet of `packets` with `ctx`'s key its TSC names.
    pub fn descramble(
        &mut self,
        ctx: &'a KeyContext,
        packets: &'a mut [u8],
    ) -> Result<BatchStats, Error> {
        self.descramble_selected(ctx, packets, |_| true)
    }

    /// As [`KeyContext::descramble_selected`]: only the scrambled packets `select` picks.
    pub fn descramble_selected(
        &mut self,
        ctx: &'a KeyContext,
        packets: &'a mut [u8],
        select: impl FnMut(usize) -> bool,
    ) -> Result<BatchStats, Error> {
        let stats = ctx.push_packets(packets, &mut self.descramble, descramble_rule(select))?;
        self.stats += stats;
        Ok(stats)
    }

    /// Runs the partial lane sets and says what the pass did.
    pub fn finish(mut self) -> PassStats {
        self.scramble.flush();
        self.descramble.flush();
        let (enc, dec) = (&self.scramble, &self.descramble);
        PassStats {
            packets: self.stats,
            kernel_calls: enc.calls + dec.calls,
            kernel_payloads: enc.payloads + dec.payloads,
        }
    }
}

/// What a [`MultiRun`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PassStats {
    /// The packets: the sum of every push's stats.
    pub packets: BatchStats,
    /// CSA kernel calls (a lone payload run by the scalar path is not one).
    pub kernel_calls: u64,
    /// The payloads those calls ran: the lanes filled, out of
    /// `kernel_calls * MultiBatch::lanes()`.
    pub kernel_payloads: u64,
}
