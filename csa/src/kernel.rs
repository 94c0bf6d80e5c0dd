//! The C kernels: FFI declarations, CPU feature dispatch, and the one place
//! the crate calls into them.

use std::sync::atomic::{AtomicU8, Ordering};

use crate::key::ExpandedKey;

/// The C side's `struct castmux_csa_key` is [`ExpandedKey`] (`#[repr(C)]`).
type CKey = ExpandedKey;

type KernelFn = unsafe extern "C" fn(*const CKey, *const *mut u8, *const u8, usize);
type KeyedKernelFn = unsafe extern "C" fn(*const *const CKey, *const *mut u8, *const u8, usize);

/// One backend's entry points: one key for every payload, or a key per payload.
struct Kernels {
    scramble: KernelFn,
    descramble: KernelFn,
    scramble_keyed: KeyedKernelFn,
    descramble_keyed: KeyedKernelFn,
}

extern "C" {
    fn castmux_csa_u64_scramble(key: *const CKey, data: *const *mut u8, len: *const u8, n: usize);
    fn castmux_csa_u64_descramble(key: *const CKey, data: *const *mut u8, len: *const u8, n: usize);
    fn castmux_csa_u64_scramble_keyed(
        keys: *const *const CKey,
        data: *const *mut u8,
        len: *const u8,
        n: usize,
    );
    fn castmux_csa_u64_descramble_keyed(
        keys: *const *const CKey,
        data: *const *mut u8,
        len: *const u8,
        n: usize,
    );
    pub(crate) static castmux_csa_stream_sbox_truth_tables: [u32; 14];
    fn castmux_csa_stream_sbox_eval(out: *mut u32);
    pub(crate) static castmux_csa_block_sbox: [u8; 256];
}

#[cfg(csa_x86_backends)]
extern "C" {
    fn castmux_csa_sse2_scramble(key: *const CKey, data: *const *mut u8, len: *const u8, n: usize);
    fn castmux_csa_sse2_descramble(
        key: *const CKey,
        data: *const *mut u8,
        len: *const u8,
        n: usize,
    );
    fn castmux_csa_sse2_scramble_keyed(
        keys: *const *const CKey,
        data: *const *mut u8,
        len: *const u8,
        n: usize,
    );
    fn castmux_csa_sse2_descramble_keyed(
        keys: *const *const CKey,
        data: *const *mut u8,
        len: *const u8,
        n: usize,
    );
    fn castmux_csa_avx2_scramble(key: *const CKey, data: *const *mut u8, len: *const u8, n: usize);
    fn castmux_csa_avx2_descramble(
        key: *const CKey,
        data: *const *mut u8,
        len: *const u8,
        n: usize,
    );
    fn castmux_csa_avx2_scramble_keyed(
        keys: *const *const CKey,
        data: *const *mut u8,
        len: *const u8,
        n: usize,
    );
    fn castmux_csa_avx2_descramble_keyed(
        keys: *const *const CKey,
        data: *const *mut u8,
        len: *const u8,
        n: usize,
    );
    fn castmux_csa_avx512_scramble(
        key: *const CKey,
        data: *const *mut u8,
        len: *const u8,
        n: usize,
    );
    fn castmux_csa_avx512_descramble(
        key: *const CKey,
        data: *const *mut u8,
        len: *const u8,
        n: usize,
    );
    fn castmux_csa_avx512_scramble_keyed(
        keys: *const *const CKey,
        data: *const *mut u8,
        len: *const u8,
        n: usize,
    );
    fn castmux_csa_avx512_descramble_keyed(
        keys: *const *const CKey,
        data: *const *mut u8,
        len: *const u8,
        n: usize,
    );
    fn castmux_csa_avx512vl256_scramble(
        key: *const CKey,
        data: *const *mut u8,
        len: *const u8,
        n: usize,
    );
    fn castmux_csa_avx512vl256_descramble(
        key: *const CKey,
        data: *const *mut u8,
        len: *const u8,
        n: usize,
    );
    fn castmux_csa_avx512vl256_scramble_keyed(
        keys: *const *const CKey,
        data: *const *mut u8,
        len: *const u8,
        n: usize,
    );
    fn castmux_csa_avx512vl256_descramble_keyed(
        keys: *const *const CKey,
        data: *const *mut u8,
        len: *const u8,
        n: usize,
    );
    fn castmux_csa_avx512vl128_scramble(
        key: *const CKey,
        data: *const *mut u8,
        len: *const u8,
        n: usize,
    );
    fn castmux_csa_avx512vl128_descramble(
        key: *const CKey,
        data: *const *mut u8,
        len: *const u8,
        n: usize,
    );
    fn castmux_csa_avx512vl128_scramble_keyed(
        keys: *const *const CKey,
        data: *const *mut u8,
        len: *const u8,
        n: usize,
    );
    fn castmux_csa_avx512vl128_descramble_keyed(
        keys: *const *const CKey,
        data: *const *mut u8,
        len: *const u8,
        n: usize,
    );
    fn castmux_csa_avx512bw_scramble(
        key: *const CKey,
        data: *const *mut u8,
        len: *const u8,
        n: usize,
    );
    fn castmux_csa_avx512bw_descramble(
        key: *const CKey,
        data: *const *mut u8,
        len: *const u8,
        n: usize,
    );
    fn castmux_csa_avx512bw_scramble_keyed(
        keys: *const *const CKey,
        data: *const *mut u8,
        len: *const u8,
        n: usize,
    );
    fn castmux_csa_avx512bw_descramble_keyed(
        keys: *const *const CKey,
        data: *const *mut u8,
        len: *const u8,
        n: usize,
    );
    fn castmux_csa_avx512bw256_scramble(
        key: *const CKey,
        data: *const *mut u8,
        len: *const u8,
        n: usize,
    );
    fn castmux_csa_avx512bw256_descramble(
        key: *const CKey,
        data: *const *mut u8,
        len: *const u8,
        n: usize,
    );
    fn castmux_csa_avx512bw256_scramble_keyed(
        keys: *const *const CKey,
        data: *const *mut u8,
        len: *const u8,
        n: usize,
    );
    fn castmux_csa_avx512bw256_descramble_keyed(
        keys: *const *const CKey,
        data: *const *mut u8,
        len: *const u8,
        n: usize,
    );
}

/// Calls of up to this many payloads run on [`Backend::Avx512Vl256`] when
/// [`Backend::Avx512`] is the automatic choice ([`Backend::for_batch`]). The
/// 128-lane kernel is not used there: on the Zen 4 it was measured on, its
/// calls cost what a 256-lane call does up to 32 payloads (within the noise,
/// either way) and more above.
const VL256_UP_TO: usize = 256;

/// Calls of up to this many payloads run on [`Backend::Avx512Bw256`] when
/// [`Backend::Avx512Bw`] is the automatic choice. Its CPUs (Skylake-SP,
/// Cascade Lake) run zmm operations at full width, so the 512-lane build's
/// block rounds cost half per payload; llvm-mca's Skylake-SP model
/// (`scripts/kernel_mca.py`) puts the 256-lane call cheaper only while its
/// cheaper stream cipher outweighs that: up to one lane group of 32.
const BW256_UP_TO: usize = 32;

/// A CSA implementation. `Scalar` is the plain Rust reference; the others
/// are the C bitslice kernel built for one lane width each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    Scalar,
    /// Portable 64-bit words, 64 payloads per call.
    U64,
    /// SSE2, 128 payloads per call; the block S-box by table lookups (at this
    /// width as fast as byte shuffles, measured).
    Sse2,
    /// AVX2, 256 payloads per call; the block S-box by byte shuffles.
    Avx2,
    /// AVX-512 (F, BW, VL, VBMI, GFNI), 512 payloads per call.
    Avx512,
    /// The AVX-512 kernel at 256 lanes (ymm; the same CPU features): a call
    /// costs less than a 512-lane one, so calls of up to 256 payloads run here
    /// when AVX-512 is the automatic choice ([`Backend::for_batch`]).
    Avx512Vl256,
    /// The AVX-512 kernel at 128 lanes (xmm; the same CPU features); forced
    /// only (measured no cheaper than 256 lanes, README.md Performance).
    Avx512Vl128,
    /// AVX-512 without VBMI and GFNI (F, BW, VL: Skylake-SP, Cascade Lake),
    /// 512 payloads per call: the stream cipher as the AVX-512 kernel's, the
    /// block S-box by byte shuffles under mask registers.
    Avx512Bw,
    /// The AVX-512BW kernel at 256 lanes (ymm; the same CPU features), for
    /// calls of up to 32 payloads when [`Backend::Avx512Bw`] is the automatic
    /// choice ([`Backend::for_batch`]).
    Avx512Bw256,
}

impl Backend {
    /// Every backend, slowest first at full batches ([`Backend::best`] takes
    /// the last this CPU runs); the narrow AVX-512 kernels come before the
    /// full-width one, which [`Backend::for_batch`] narrows per call.
    pub const ALL: [Backend; 9] = [
        Backend::Scalar,
        Backend::U64,
        Backend::Sse2,
        Backend::Avx2,
        Backend::Avx512Bw256,
        Backend::Avx512Bw,
        Backend::Avx512Vl128,
        Backend::Avx512Vl256,
        Backend::Avx512,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Backend::Scalar => "scalar",
            Backend::U64 => "u64",
            Backend::Sse2 => "sse2",
            Backend::Avx2 => "avx2",
            Backend::Avx512 => "avx512",
            Backend::Avx512Vl256 => "avx512vl256",
            Backend::Avx512Vl128 => "avx512vl128",
            Backend::Avx512Bw => "avx512bw",
            Backend::Avx512Bw256 => "avx512bw256",
        }
    }

    pub fn from_name(name: &str) -> Option<Backend> {
        Backend::ALL
            .into_iter()
            .find(|b| b.name().eq_ignore_ascii_case(name.trim()))
    }

    /// Payloads per kernel call (1 for the scalar path).
    pub fn lanes(self) -> usize {
        match self {
            Backend::Scalar => 1,
            Backend::U64 => 64,
            Backend::Sse2 => 128,
            Backend::Avx2 => 256,
            Backend::Avx512 => 512,
            Backend::Avx512Vl256 => 256,
            Backend::Avx512Vl128 => 128,
            Backend::Avx512Bw => 512,
            Backend::Avx512Bw256 => 256,
        }
    }

    /// Whether this build and this CPU can run the backend.
    pub fn is_supported(self) -> bool {
        match self {
            Backend::Scalar | Backend::U64 => true,
            #[cfg(csa_x86_backends)]
            Backend::Sse2 => std::is_x86_feature_detected!("sse2"),
            #[cfg(csa_x86_backends)]
            Backend::Avx2 => std::is_x86_feature_detected!("avx2"),
            #[cfg(csa_x86_backends)]
            Backend::Avx512 | Backend::Avx512Vl256 | Backend::Avx512Vl128 => {
                std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512bw")
                    && std::is_x86_feature_detected!("avx512vbmi")
                    && std::is_x86_feature_detected!("avx512vl")
                    && std::is_x86_feature_detected!("gfni")
            }
            #[cfg(csa_x86_backends)]
            Backend::Avx512Bw | Backend::Avx512Bw256 => {
                std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512bw")
                    && std::is_x86_feature_detected!("avx512vl")
            }
            #[cfg(not(csa_x86_backends))]
            _ => false,
        }
    }

    /// Every backend this CPU runs, scalar first.
    pub fn supported() -> Vec<Backend> {
        Backend::ALL
            .into_iter()
            .filter(|b| b.is_supported())
            .collect()
    }

    /// The fastest backend this CPU runs.
    pub fn best() -> Backend {
        Backend::ALL
            .into_iter()
            .rev()
            .find(|b| b.is_supported() && *b != Backend::Scalar)
            .unwrap_or(Backend::Scalar)
    }

    /// The backend that runs one call of `n` payloads cheapest when `self` is
    /// the automatic choice: the 256-lane build of an AVX-512 kernel for a
    /// small call, `self` otherwise. A call costs a fixed part (the bit-sliced
    /// stream cipher over every lane of the width) plus a part per payload;
    /// measured with the `csa-batch` groups of `benches/csa.rs` (README.md,
    /// Performance) for the VBMI builds, modelled for the AVX-512BW ones
    /// ([`BW256_UP_TO`]).
    pub fn for_batch(self, n: usize) -> Backend {
        match self {
            Backend::Avx512 if n <= VL256_UP_TO => Backend::Avx512Vl256,
            Backend::Avx512Bw if n <= BW256_UP_TO => Backend::Avx512Bw256,
            b => b,
        }
    }

    fn kernels(self) -> Option<Kernels> {
        match self {
            Backend::Scalar => None,
            Backend::U64 => Some(Kernels {
                scramble: castmux_csa_u64_scramble,
                descramble: castmux_csa_u64_descramble,
                scramble_keyed: castmux_csa_u64_scramble_keyed,
                descramble_keyed: castmux_csa_u64_descramble_keyed,
            }),
            #[cfg(csa_x86_backends)]
            Backend::Sse2 => Some(Kernels {
                scramble: castmux_csa_sse2_scramble,
                descramble: castmux_csa_sse2_descramble,
                scramble_keyed: castmux_csa_sse2_scramble_keyed,
                descramble_keyed: castmux_csa_sse2_descramble_keyed,
            }),
            #[cfg(csa_x86_backends)]
            Backend::Avx2 => Some(Kernels {
                scramble: castmux_csa_avx2_scramble,
                descramble: castmux_csa_avx2_descramble,
                scramble_keyed: castmux_csa_avx2_scramble_keyed,
                descramble_keyed: castmux_csa_avx2_descramble_keyed,
            }),
            #[cfg(csa_x86_backends)]
            Backend::Avx512 => Some(Kernels {
                scramble: castmux_csa_avx512_scramble,
                descramble: castmux_csa_avx512_descramble,
                scramble_keyed: castmux_csa_avx512_scramble_keyed,
                descramble_keyed: castmux_csa_avx512_descramble_keyed,
            }),
            #[cfg(csa_x86_backends)]
            Backend::Avx512Vl256 => Some(Kernels {
                scramble: castmux_csa_avx512vl256_scramble,
                descramble: castmux_csa_avx512vl256_descramble,
                scramble_keyed: castmux_csa_avx512vl256_scramble_keyed,
                descramble_keyed: castmux_csa_avx512vl256_descramble_keyed,
            }),
            #[cfg(csa_x86_backends)]
            Backend::Avx512Vl128 => Some(Kernels {
                scramble: castmux_csa_avx512vl128_scramble,
                descramble: castmux_csa_avx512vl128_descramble,
                scramble_keyed: castmux_csa_avx512vl128_scramble_keyed,
                descramble_keyed: castmux_csa_avx512vl128_descramble_keyed,
            }),
            #[cfg(csa_x86_backends)]
            Backend::Avx512Bw => Some(Kernels {
                scramble: castmux_csa_avx512bw_scramble,
                descramble: castmux_csa_avx512bw_descramble,
                scramble_keyed: castmux_csa_avx512bw_scramble_keyed,
                descramble_keyed: castmux_csa_avx512bw_descramble_keyed,
            }),
            #[cfg(csa_x86_backends)]
            Backend::Avx512Bw256 => Some(Kernels {
                scramble: castmux_csa_avx512bw256_scramble,
                descramble: castmux_csa_avx512bw256_descramble,
                scramble_keyed: castmux_csa_avx512bw256_scramble_keyed,
                descramble_keyed: castmux_csa_avx512bw256_descramble_keyed,
            }),
            #[cfg(not(csa_x86_backends))]
            _ => None,
        }
    }
}

/// 0 = not chosen yet, else 1 + index in Backend::ALL, plus [`FORCED`] when
/// `CASTMUX_CSA_BACKEND` or [`force_backend`] chose it.
static SELECTED: AtomicU8 = AtomicU8::new(0);
const FORCED: u8 = 0x80;

/// The environment variable that forces a backend (`scalar`, `u64`, `sse2`,
/// `avx2`, `avx512`, `avx512vl256`, `avx512vl128`, `avx512bw`, `avx512bw256`).
pub const BACKEND_ENV: &str = "CASTMUX_CSA_BACKEND";

/// The backend in use: forced by [`force_backend`] or `CASTMUX_CSA_BACKEND`,
/// else the fastest the CPU supports. A forced backend the CPU cannot run
/// falls back to the best one.
pub fn selected_backend() -> Backend {
    selection().0
}

/// The process-wide backend, and whether it was forced (a forced backend runs
/// every call; an automatic one is narrowed per call by [`Backend::for_batch`]).
pub(crate) fn selection() -> (Backend, bool) {
    match SELECTED.load(Ordering::Relaxed) {
        0 => {
            let forced = std::env::var(BACKEND_ENV)
                .ok()
                .and_then(|v| Backend::from_name(&v))
                .filter(|b| b.is_supported());
            let chosen = forced.unwrap_or_else(Backend::best);
            store(chosen, forced.is_some());
            (chosen, forced.is_some())
        }
        n => (Backend::ALL[((n & !FORCED) - 1) as usize], n & FORCED != 0),
    }
}

/// Forces a backend for the whole process (tests and benches); `None` goes
/// back to automatic choice. Returns false, changing nothing, when the CPU
/// cannot run it.
pub fn force_backend(backend: Option<Backend>) -> bool {
    match backend {
        Some(b) if !b.is_supported() => false,
        Some(b) => {
            store(b, true);
            true
        }
        None => {
            SELECTED.store(0, Ordering::Relaxed);
            true
        }
    }
}

fn store(b: Backend, forced: bool) {
    let idx = Backend::ALL.iter().position(|x| *x == b).unwrap_or(0);
    SELECTED.store(
        (idx as u8 + 1) | if forced { FORCED } else { 0 },
        Ordering::Relaxed,
    );
}

/// Runs one kernel call over up to `backend.lanes()` payloads, all under `key`.
///
/// # Safety
/// `ptrs[i]` must point at `lens[i]` writable bytes (8..=184), valid for the
/// whole call, that nothing else reads or writes meanwhile and that no two
/// entries overlap; `backend` must be supported (a forced backend is checked
/// with [`Backend::is_supported`] before it gets here).
pub(crate) unsafe fn run(
    backend: Backend,
    scramble: bool,
    key: &ExpandedKey,
    ptrs: &[*mut u8],
    lens: &[u8],
) {
    check_lanes(backend, ptrs.len(), lens);
    let Some(k) = backend.kernels() else {
        return;
    };
    let f = if scramble { k.scramble } else { k.descramble };
    // SAFETY: the kernel reads `n` pointers and lengths from the two arrays,
    // touches exactly `lens[i]` bytes behind `ptrs[i]` (the caller's contract),
    // reads the 64 bytes of `key` (`#[repr(C)]`, the C struct's layout), and
    // runs on a CPU that supports `backend` (the caller's contract).
    unsafe {
        f(
            key,
            ptrs.as_ptr(),
            lens.as_ptr(),
            ptrs.len().min(lens.len()),
        )
    }
}

/// Runs one kernel call over up to `backend.lanes()` payloads, payload `i`
/// under `keys[i]`.
///
/// # Safety
/// As for [`run`]; besides, `keys` has an entry per payload and each points
/// at an [`ExpandedKey`] that stays alive and unchanged for the whole call.
pub(crate) unsafe fn run_keyed(
    backend: Backend,
    scramble: bool,
    keys: &[*const ExpandedKey],
    ptrs: &[*mut u8],
    lens: &[u8],
) {
    check_lanes(backend, ptrs.len(), lens);
    debug_assert_eq!(keys.len(), ptrs.len());
    let Some(k) = backend.kernels() else {
        return;
    };
    let f = if scramble {
        k.scramble_keyed
    } else {
        k.descramble_keyed
    };
    let n = ptrs.len().min(lens.len()).min(keys.len());
    // SAFETY: as in `run`; besides, the kernel reads `n` key pointers, each
    // at a live 64-byte `#[repr(C)]` key for the whole call (the caller's contract).
    unsafe { f(keys.as_ptr(), ptrs.as_ptr(), lens.as_ptr(), n) }
}

fn check_lanes(backend: Backend, n: usize, lens: &[u8]) {
    debug_assert_eq!(n, lens.len());
    debug_assert!(n <= backend.lanes());
    debug_assert!(lens.iter().all(|&l| (8..=184).contains(&l)));
}

/// The S-box truth tables the C kernel was built with (checked against tables.rs in tests).
pub fn kernel_stream_sbox_truth_tables() -> [u32; 14] {
    // SAFETY: an immutable, initialised C array of 14 u32 defined in csa_kernel.c.
    unsafe { castmux_csa_stream_sbox_truth_tables }
}

/// The stream S-box circuits of the two-input-gate kernels (u64, SSE2, AVX2)
/// evaluated on all 32 inputs, as truth tables like
/// [`kernel_stream_sbox_truth_tables`] (checked against tables.rs in tests).
pub fn kernel_stream_sbox_circuits() -> [u32; 14] {
    let mut out = [0u32; 14];
    // SAFETY: the C function writes exactly 14 u32 to `out` and reads nothing else.
    unsafe { castmux_csa_stream_sbox_eval(out.as_mut_ptr()) };
    out
}

/// The block S-box the C kernel was built with (checked against tables.rs in tests).
pub fn kernel_block_sbox() -> [u8; 256] {
    // SAFETY: an immutable, initialised C array of 256 bytes generated by build.rs (csa_tables.c).
    unsafe { castmux_csa_block_sbox }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn for_batch_narrows_only_the_wide_avx512_kernels_and_only_to_one_that_holds_the_call() {
        for b in Backend::ALL {
            for n in 1..=b.lanes() {
                let narrowed = b.for_batch(n);
                assert!(narrowed.lanes() >= n, "{b:?} n={n} -> {narrowed:?}");
                if b != Backend::Avx512 && b != Backend::Avx512Bw {
                    assert_eq!(narrowed, b);
                }
                // the narrow kernels need the features the wide one does
                assert_eq!(narrowed.is_supported(), b.is_supported(), "{b:?} n={n}");
            }
        }
        assert_eq!(Backend::Avx512.for_batch(512), Backend::Avx512);
        assert_eq!(Backend::Avx512Bw.for_batch(33), Backend::Avx512Bw);
        assert_eq!(Backend::Avx512Bw.for_batch(32), Backend::Avx512Bw256);
    }

    #[test]
    fn every_backend_is_found_by_its_name() {
        for b in Backend::ALL {
            assert_eq!(Backend::from_name(b.name()), Some(b));
            assert_eq!(Backend::from_name(&b.name().to_uppercase()), Some(b));
        }
    }
}
