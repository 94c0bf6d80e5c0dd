//! The system libdvbcsa (Debian `libdvbcsa-dev`) through FFI: the reference
//! the kernels are checked against and the baseline of the benches.
//! Built only with the `libdvbcsa` feature.

use std::os::raw::{c_uint, c_void};

#[repr(C)]
struct BsBatch {
    data: *mut u8,
    len: c_uint,
}

#[link(name = "dvbcsa")]
extern "C" {
    fn dvbcsa_key_alloc() -> *mut c_void;
    fn dvbcsa_key_free(key: *mut c_void);
    fn dvbcsa_key_set(cw: *const u8, key: *mut c_void);
    fn dvbcsa_encrypt(key: *const c_void, data: *mut u8, len: c_uint);
    fn dvbcsa_decrypt(key: *const c_void, data: *mut u8, len: c_uint);
    fn dvbcsa_bs_key_alloc() -> *mut c_void;
    fn dvbcsa_bs_key_free(key: *mut c_void);
    fn dvbcsa_bs_key_set(cw: *const u8, key: *mut c_void);
    fn dvbcsa_bs_batch_size() -> c_uint;
    fn dvbcsa_bs_encrypt(key: *const c_void, pcks: *const BsBatch, maxlen: c_uint);
    fn dvbcsa_bs_decrypt(key: *const c_void, pcks: *const BsBatch, maxlen: c_uint);
}

/// libdvbcsa's one-packet-at-a-time API with one CW.
pub struct LibDvbCsa {
    key: *mut c_void,
}

impl LibDvbCsa {
    pub fn new(cw: &[u8; 8]) -> Self {
        // SAFETY: dvbcsa_key_alloc returns an owned, aligned key context (or
        // null on OOM, checked below); dvbcsa_key_set reads 8 bytes of `cw`.
        unsafe {
            let key = dvbcsa_key_alloc();
            assert!(!key.is_null(), "libdvbcsa: out of memory");
            dvbcsa_key_set(cw.as_ptr(), key);
            LibDvbCsa { key }
        }
    }

    pub fn encrypt(&self, data: &mut [u8]) {
        // SAFETY: libdvbcsa touches exactly `len` bytes of `data`.
        unsafe { dvbcsa_encrypt(self.key, data.as_mut_ptr(), data.len() as c_uint) }
    }

    pub fn decrypt(&self, data: &mut [u8]) {
        // SAFETY: libdvbcsa touches exactly `len` bytes of `data`.
        unsafe { dvbcsa_decrypt(self.key, data.as_mut_ptr(), data.len() as c_uint) }
    }
}

impl Drop for LibDvbCsa {
    fn drop(&mut self) {
        // SAFETY: `key` came from dvbcsa_key_alloc and is freed once.
        unsafe { dvbcsa_key_free(self.key) }
    }
}

/// libdvbcsa's parallel bitslice API with one CW.
pub struct LibDvbCsaBs {
    key: *mut c_void,
    batch: Vec<BsBatch>,
}

impl LibDvbCsaBs {
    pub fn new(cw: &[u8; 8]) -> Self {
        // SAFETY: as for LibDvbCsa::new, with the bitslice key context.
        unsafe {
            let key = dvbcsa_bs_key_alloc();
            assert!(!key.is_null(), "libdvbcsa: out of memory");
            dvbcsa_bs_key_set(cw.as_ptr(), key);
            LibDvbCsaBs {
                key,
                batch: Vec::new(),
            }
        }
    }

    /// Packets per libdvbcsa bitslice call in this build.
    pub fn batch_size() -> usize {
        // SAFETY: a pure query.
        unsafe { dvbcsa_bs_batch_size() as usize }
    }

    fn run(&mut self, payloads: &mut [&mut [u8]], encrypt: bool) {
        let size = Self::batch_size();
        for chunk in payloads.chunks_mut(size) {
            self.batch.clear();
            for p in chunk.iter_mut() {
                self.batch.push(BsBatch {
                    data: p.as_mut_ptr(),
                    len: p.len() as c_uint,
                });
            }
            self.batch.push(BsBatch {
                data: std::ptr::null_mut(),
                len: 0,
            });
            // SAFETY: the batch array is null-terminated, each entry points at
            // `len` bytes of a distinct live slice, and maxlen 184 is what
            // libdvbcsa documents for TS payloads.
            unsafe {
                if encrypt {
                    dvbcsa_bs_encrypt(self.key, self.batch.as_ptr(), 184);
                } else {
                    dvbcsa_bs_decrypt(self.key, self.batch.as_ptr(), 184);
                }
            }
        }
    }

    pub fn encrypt(&mut self, payloads: &mut [&mut [u8]]) {
        self.run(payloads, true)
    }

    pub fn decrypt(&mut self, payloads: &mut [&mut [u8]]) {
        self.run(payloads, false)
    }
}

impl Drop for LibDvbCsaBs {
    fn drop(&mut self) {
        // SAFETY: `key` came from dvbcsa_bs_key_alloc and is freed once.
        unsafe { dvbcsa_bs_key_free(self.key) }
    }
}
