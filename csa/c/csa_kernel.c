/*
 * castmux DVB-CSA2 batch kernel.
 *
 * One source, built once per lane width and instruction set by build.rs
 * (portable 64-bit, SSE2, AVX2, AVX-512; and AVX-512 again at 256 and 128
 * lanes with CSA_AVX512VL, whose calls cost less for small batches: the
 * 512-lane block S-box on a widened ymm/xmm, GFNI bit transposes, the
 * 128/256-lane gathers; and with CSA_AVX512BW at 512 and 256 lanes for the
 * AVX-512 CPUs without VBMI and GFNI, Skylake-SP and Cascade Lake: vpternlog
 * and 32 registers for the stream cipher, byte shuffles under mask registers
 * for the block S-box, the xmm transposes). A call processes up to LANES
 * payloads at once:
 *
 *  - the block cipher runs byte-sliced: byte j of every payload's block sits
 *    in one SIMD byte lane, so a round is a few XORs plus the S-box and its
 *    bit permutation (AVX-512: VBMI byte permutes for the S-box, GFNI for the
 *    permutation; AVX2: 16-entry byte shuffles; u64 and SSE2: table lookups,
 *    which at 128 bits measured as fast as SSSE3 shuffles);
 *  - the stream cipher runs bit-sliced: bit l of every word belongs to
 *    payload l, so its seven 5->2 S-boxes are boolean circuits of two-input
 *    gates derived by examples/stream_sbox_circuits.rs, which the AVX-512
 *    builds' compiler fuses into vpternlog.
 *
 * Payloads are gathered into a byte-sliced scratch area (rows[pos][lane]),
 * processed there and scattered back; each lane keeps its own length, so a
 * batch mixes payload lengths freely. Semantics match libdvbcsa: payloads
 * under 8 bytes are never passed here (the caller leaves them clear); full
 * blocks are chained through the block cipher, everything after the first
 * block is XORed with the stream cipher, a trailing partial block gets the
 * stream only.
 *
 * Two pairs of entry points: scramble/descramble with one key for every
 * payload (the key schedule byte broadcast to all lanes, the CW bits to all
 * words), and scramble_keyed/descramble_keyed with a key per payload, so one
 * call fills its lanes from many channels: the keys are byte-sliced like the
 * payloads (key_rows), the block cipher loads each round key as a row of
 * lanes, and the stream cipher takes its CW bits per lane from those rows.
 * Both pairs are the same drivers, inlined with or without the key rows.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "csa_kernel.h"

#ifndef CSA_BACKEND
#error "build.rs defines CSA_BACKEND (u64, sse2, avx2, avx512, avx512vl256, avx512vl128, avx512bw, avx512bw256)"
#endif

#define CSA_CAT2(a, b) a##b
#define CSA_CAT(a, b) CSA_CAT2(a, b)
#define CSA_FN(name) CSA_CAT(CSA_CAT(castmux_csa_, CSA_BACKEND), CSA_CAT(_, name))

#if defined(CSA_AVX512VL) && !defined(CSA_WIDTH_128) && !defined(CSA_WIDTH_256)
#error "CSA_AVX512VL is the 128- and 256-lane build with AVX-512 (VL, VBMI, GFNI)"
#endif
#if defined(CSA_AVX512BW) && !defined(CSA_WIDTH_512) && !defined(CSA_WIDTH_256)
#error "CSA_AVX512BW is the 512- and 256-lane build with AVX-512 (F, BW, VL) and no VBMI or GFNI"
#endif

/* The 512-lane build with VBMI and GFNI: byte permutes across the register,
 * GFNI bit transposes, qword gathers and scatters. */
#if defined(CSA_WIDTH_512) && !defined(CSA_AVX512BW)
#define CSA_VBMI512
#endif
/* Byte <-> bit and lane <-> row transposes by xmm unpacks (every x86 build
 * but CSA_VBMI512). */
#if defined(CSA_WIDTH_128) || defined(CSA_WIDTH_256) || defined(CSA_AVX512BW)
#define CSA_XMM_TRANSPOSES
#endif

#if defined(CSA_WIDTH_512)
#include <immintrin.h>
#ifdef CSA_AVX512BW
#define CSA_PSHUFB
#endif
#define WBYTES 64
#elif defined(CSA_WIDTH_256)
#include <immintrin.h>
#ifndef CSA_AVX512VL
#define CSA_PSHUFB
#endif
#define WBYTES 32
#elif defined(CSA_WIDTH_128)
#ifdef CSA_AVX512VL
#include <immintrin.h>
#else
#include <emmintrin.h>
#endif
#define WBYTES 16
#else
#define WBYTES 8
#endif

/* The AVX-512 builds (32 vector registers) run the stream cipher's clocks on
 * a cipher state held in registers (STREAM_LOCAL), the S-boxes as the
 * two-input-gate circuits, which GCC fuses into vpternlog. The 512-lane build
 * ran mux trees of vpternlog over the truth tables (seven an output) in a
 * state behind a pointer until December 2026: a block's 32 clocks took 50 ns
 * there against 29 ns now (C timing loop, README.md Performance). */
#if defined(CSA_WIDTH_512) || defined(CSA_AVX512VL) || defined(CSA_AVX512BW)
#define STREAM_LOCAL
#endif

/* A word of lanes. GCC/Clang vector extensions give &, |, ^, ~ at every width. */
typedef uint64_t W __attribute__((vector_size(WBYTES), aligned(WBYTES)));
typedef uint8_t WB __attribute__((vector_size(WBYTES), aligned(WBYTES)));

#define LANES (WBYTES * 8)
#define MAX_PAYLOAD 184
#define MAX_BLOCKS (MAX_PAYLOAD / 8)

static inline W w_zero(void) { return (W){0}; }
static inline W w_ones(void) { return ~w_zero(); }
static inline W w_load(const void *p) { W w; memcpy(&w, p, sizeof w); return w; }
static inline void w_store(void *p, W w) { memcpy(p, &w, sizeof w); }

/* ---------------------------------------------------------------------- */
/* Boolean helpers and the stream S-boxes.                                */

/* mux: c ? a : b */
static inline __attribute__((always_inline)) W mux(W c, W a, W b) { return b ^ (c & (a ^ b)); }
#define MUX(c, a, b) mux((c), (a), (b))

/* Truth tables of the stream S-boxes (SBOXn_B0/B1) and the block round's
 * GFNI permutation matrix, generated by build.rs from src/tables.rs. */
#include "csa_tables.h"

/* Two-input gates only: the derived circuits, about 20 gates an S-box where a
 * mux tree over the truth tables takes over 60 (14 vpternlog at 512 lanes). */
#define W_ANDN(a, b) (~(a) & (b))
#include "csa_stream_sboxes.h"
#define STREAM_SBOX(n, x4, x3, x2, x1, x0, o1, o0) stream_sbox##n((x4), (x3), (x2), (x1), (x0), (o1), (o0))

#ifdef CSA_EXPORT_TABLES
/* The compiled circuits on all 32 inputs at once (input x in lane x): out[2n + b]
 * is output bit b of S-box n + 1, lane x. Checked against tables.rs in tests. */
void castmux_csa_stream_sbox_eval(uint32_t out[14]) {
    W in[5];
    for (int i = 0; i < 5; i++) {
        uint64_t t = 0;
        for (int x = 0; x < 32; x++) t |= (uint64_t)((x >> i) & 1) << x;
        in[i] = (W){t};
    }
    W o[14];
    STREAM_SBOX(1, in[4], in[3], in[2], in[1], in[0], &o[1], &o[0]);
    STREAM_SBOX(2, in[4], in[3], in[2], in[1], in[0], &o[3], &o[2]);
    STREAM_SBOX(3, in[4], in[3], in[2], in[1], in[0], &o[5], &o[4]);
    STREAM_SBOX(4, in[4], in[3], in[2], in[1], in[0], &o[7], &o[6]);
    STREAM_SBOX(5, in[4], in[3], in[2], in[1], in[0], &o[9], &o[8]);
    STREAM_SBOX(6, in[4], in[3], in[2], in[1], in[0], &o[11], &o[10]);
    STREAM_SBOX(7, in[4], in[3], in[2], in[1], in[0], &o[13], &o[12]);
    for (int i = 0; i < 14; i++) out[i] = (uint32_t)o[i][0];
}

const uint32_t castmux_csa_stream_sbox_truth_tables[14] = {
    SBOX1_B0, SBOX1_B1, SBOX2_B0, SBOX2_B1, SBOX3_B0, SBOX3_B1, SBOX4_B0,
    SBOX4_B1, SBOX5_B0, SBOX5_B1, SBOX6_B0, SBOX6_B1, SBOX7_B0, SBOX7_B1,
};
#endif

/* ---------------------------------------------------------------------- */
/* Bit-sliced stream cipher.                                              */

/* Shift registers as a window sliding down a 42-nibble array: during one
 * 8-byte block (32 clocks) register k of clock t is at index 31 - t + k;
 * after the block the 10 live nibbles move back to 32..41. */
#define REG_LEN 42

/* The cipher's other state. With STREAM_LOCAL a block's clocks work on a
 * local copy, which the compiler holds in registers, where a struct behind a
 * pointer is loaded and stored again every clock; it pays with 32 vector
 * registers and the two-input-gate S-boxes (the AVX-512 builds); with 16
 * registers it spills more than it saves. */
struct stream_regs {
    W x[4], y[4], z[4], d[4], e[4], f[4];
    W p, q, r;
};

struct stream_state {
    W a[REG_LEN][4];
    W b[REG_LEN][4];
    struct stream_regs g;
};

/* Loads the CW into the registers: bits[i][b] holds bit b of CW byte i, per lane. */
static void stream_load_bits(struct stream_state *s, W bits[8][8]) {
    /* The first clock reads indexes 32..41, and every clock writes the index
     * below the ones it reads before any clock reads it: only 40, 41 and the
     * other registers start as zeros. */
    memset(s->a[40], 0, sizeof s->a[0] * 2);
    memset(s->b[40], 0, sizeof s->b[0] * 2);
    memset(&s->g, 0, sizeof s->g);
    for (int i = 0; i < 4; i++) {
        for (int bit = 0; bit < 4; bit++) {
            /* register k (1-based) at index 31 + k; A from CW bytes 0..3, B from 4..7,
             * the high nibble first */
            s->a[32 + 2 * i][bit] = bits[i][4 + bit];
            s->a[33 + 2 * i][bit] = bits[i][bit];
            s->b[32 + 2 * i][bit] = bits[4 + i][4 + bit];
            s->b[33 + 2 * i][bit] = bits[4 + i][bit];
        }
    }
}

/* One CW for every lane. */
static void stream_load_key(struct stream_state *s, const uint8_t cw[8]) {
    W bits[8][8];
    for (int i = 0; i < 8; i++)
        for (int b = 0; b < 8; b++) bits[i][b] = ((cw[i] >> b) & 1) ? w_ones() : w_zero();
    stream_load_bits(s, bits);
}

/* One clock. `k` is the window base: register n is a[k + n]. With `init`,
 * in_a/in_b are the nibbles fed in; otherwise the two output bits are
 * returned in *o1 (bit 1: d2^d3) and *o0 (bit 0: d0^d1). */
static inline __attribute__((always_inline)) void
stream_clock(struct stream_state *s, struct stream_regs *g, int k, int init, const W *in_a, const W *in_b, W *o1, W *o0) {
    W (*A)[4] = s->a + k;
    W (*B)[4] = s->b + k;

    W extra[4];
    extra[0] = B[9][2] ^ B[6][3] ^ B[3][1] ^ B[8][0];
    extra[1] = B[5][3] ^ B[8][2] ^ B[4][0] ^ B[5][1];
    extra[2] = B[6][0] ^ B[8][1] ^ B[3][3] ^ B[4][2];
    extra[3] = B[3][0] ^ B[6][1] ^ B[7][2] ^ B[9][3];

    /* New register-1 nibbles go to index k - 1 (the window slides down). */
    W *na = A[0], *nb = B[0];
    W tb[4];
    for (int i = 0; i < 4; i++) {
        W va = A[10][i] ^ g->x[i];
        W vb = B[7][i] ^ B[10][i] ^ g->y[i];
        if (init) {
            va ^= g->d[i] ^ in_a[i];
            vb ^= in_b[i];
        }
        na[i] = va;
        tb[i] = vb;
    }
    /* p = 1: rotate the B input left by one bit. */
    nb[0] = MUX(g->p, tb[3], tb[0]);
    nb[1] = MUX(g->p, tb[0], tb[1]);
    nb[2] = MUX(g->p, tb[1], tb[2]);
    nb[3] = MUX(g->p, tb[2], tb[3]);

    W carry = g->r;
    for (int i = 0; i < 4; i++) {
        const W z = g->z[i], e = g->e[i];
        /* q = 1: F = Z + E + r (nibble add); q = 0: F = E. */
        /* majority(z, e, c) = z ^ ((z ^ c) & (z ^ e)), sharing both XORs */
        const W ze = z ^ e, zc = z ^ carry;
        g->d[i] = ze ^ extra[i];
        const W nf = e ^ (g->q & zc);
        carry = z ^ (zc & ze);
        g->e[i] = g->f[i];
        g->f[i] = nf;
    }
    g->r = MUX(g->q, carry, g->r);

    /* The S-boxes read A[1..9], which this clock has not changed, so they run
     * once the old x, y, z, p, q are used up and write their outputs straight
     * into them: fewer values live at once (16 registers). Inputs in the order
     * of tables.rs STREAM_SBOX_INPUTS (first = MSB). */
    STREAM_SBOX(1, A[4][0], A[1][2], A[6][1], A[7][3], A[9][0], &g->x[0], &g->z[2]);
    STREAM_SBOX(2, A[2][1], A[3][2], A[6][3], A[7][0], A[9][1], &g->x[1], &g->z[3]);
    STREAM_SBOX(3, A[1][3], A[2][0], A[5][1], A[5][3], A[6][2], &g->y[0], &g->x[2]);
    STREAM_SBOX(4, A[3][3], A[1][1], A[2][3], A[4][2], A[8][0], &g->y[1], &g->x[3]);
    STREAM_SBOX(5, A[5][2], A[4][3], A[6][0], A[8][1], A[9][2], &g->z[0], &g->y[2]);
    STREAM_SBOX(6, A[3][1], A[4][1], A[5][0], A[7][2], A[9][3], &g->z[1], &g->y[3]);
    STREAM_SBOX(7, A[2][2], A[3][0], A[7][1], A[8][2], A[8][3], &g->p, &g->q);

    if (!init) {
        *o1 = g->d[2] ^ g->d[3];
        *o0 = g->d[0] ^ g->d[1];
    }
}

#if defined(STREAM_LOCAL)
#define STREAM_REGS_BEGIN(st, rp) struct stream_regs local = (st)->g, *rp = &local
#define STREAM_REGS_END(st, rp) ((st)->g = local)
#else
#define STREAM_REGS_BEGIN(st, rp) struct stream_regs *rp = &(st)->g
#define STREAM_REGS_END(st, rp) ((void)0)
#endif

/* After a block: the 10 live nibbles of each register back to 32..41, as
 * vector moves: memmove compiled to REP MOVSQ (1280 bytes a register), which
 * cost 3-5 % of a block's clocks on Zen 4 (C timing loop). */
static inline void stream_slide(struct stream_state *s) {
    for (int i = 0; i < 10; i++)
        for (int j = 0; j < 4; j++) {
            s->a[32 + i][j] = s->a[i][j];
            s->b[32 + i][j] = s->b[i][j];
        }
}

/* Runs the 32 initialisation clocks; iv[byte][bit] bit-sliced. */
static void stream_init(struct stream_state *s, W iv[8][8]) {
    STREAM_REGS_BEGIN(s, g);
    for (int i = 0; i < 8; i++) {
        for (int j = 0; j < 4; j++) {
            const int k = 31 - 4 * i - j;
            /* even clocks: A takes the high nibble, B the low; odd: swapped */
            const W *hi = &iv[i][4], *lo = &iv[i][0];
            stream_clock(s, g, k, 1, (j & 1) ? lo : hi, (j & 1) ? hi : lo, NULL, NULL);
        }
    }
    STREAM_REGS_END(s, g);
    stream_slide(s);
}

/* Generates 8 keystream bytes, bit-sliced: ks[byte][bit]. */
static void stream_generate(struct stream_state *s, W ks[8][8]) {
    STREAM_REGS_BEGIN(s, g);
    for (int i = 0; i < 8; i++) {
        for (int j = 0; j < 4; j++) {
            const int k = 31 - 4 * i - j;
            stream_clock(s, g, k, 0, NULL, NULL, &ks[i][7 - 2 * j], &ks[i][6 - 2 * j]);
        }
    }
    STREAM_REGS_END(s, g);
    stream_slide(s);
}

/* ---------------------------------------------------------------------- */
/* Byte-slice <-> bit-slice conversion (8 x 8 bit transposes).            */

/* Transposes an 8x8 bit matrix held as 8 bytes: out.byte[r].bit[c] = in.byte[c].bit[r]. */
static inline uint64_t transpose8(uint64_t x) {
    uint64_t t;
    t = (x ^ (x >> 7)) & 0x00AA00AA00AA00AAull;
    x ^= t ^ (t << 7);
    t = (x ^ (x >> 14)) & 0x0000CCCC0000CCCCull;
    x ^= t ^ (t << 14);
    t = (x ^ (x >> 28)) & 0x00000000F0F0F0F0ull;
    x ^= t ^ (t << 28);
    return x;
}

/* 8-lane groups of a call's `n` lanes worth converting between bytes and
 * bits: lanes past them hold nothing anyone reads, so small calls skip them
 * (the VBMI 512-lane keystream conversion, one pass over every lane, does not). */
#define USED_OCTETS(n) (((n) + 7) / 8)

/* One byte row of LANES lanes -> 8 bit words (bit b of every lane); lanes of
 * octets past USED_OCTETS(n) come out zero. */
static inline void row_to_bits(const uint8_t *row, W out[8], size_t n) {
    uint8_t tmp[8][WBYTES] __attribute__((aligned(64)));
    const size_t used = USED_OCTETS(n);
    if (used < WBYTES) memset(tmp, 0, sizeof tmp);
    for (size_t m = 0; m < used; m++) {
        uint64_t x;
        memcpy(&x, row + 8 * m, 8);
        x = transpose8(x);
        for (int b = 0; b < 8; b++) tmp[b][m] = (uint8_t)(x >> (8 * b));
    }
    for (int b = 0; b < 8; b++) out[b] = w_load(tmp[b]);
}

#if defined(CSA_VBMI512)
/* Transposes an 8x8 matrix of qwords held in 8 zmm: out[g].q[b] = in[b].q[g]. */
static inline void transpose_qwords(const __m512i in[8], __m512i out[8]) {
    __m512i t[8], u[8];
    for (int i = 0; i < 4; i++) {
        t[2 * i] = _mm512_unpacklo_epi64(in[2 * i], in[2 * i + 1]);     /* q0,q2,q4,q6 pairs */
        t[2 * i + 1] = _mm512_unpackhi_epi64(in[2 * i], in[2 * i + 1]); /* q1,q3,q5,q7 pairs */
    }
    const __m512i lo = _mm512_set_epi64(13, 12, 5, 4, 9, 8, 1, 0);
    const __m512i hi = _mm512_set_epi64(15, 14, 7, 6, 11, 10, 3, 2);
    for (int h = 0; h < 2; h++) {     /* rows 0-3, rows 4-7 */
        for (int o = 0; o < 2; o++) { /* from the lo / hi unpack */
            const __m512i a = t[4 * h + o], b = t[4 * h + 2 + o];
            u[4 * h + o] = _mm512_permutex2var_epi64(a, lo, b);     /* q(0|1), q(4|5) */
            u[4 * h + 2 + o] = _mm512_permutex2var_epi64(a, hi, b); /* q(2|3), q(6|7) */
        }
    }
    const __m512i first = _mm512_set_epi64(11, 10, 9, 8, 3, 2, 1, 0);
    const __m512i second = _mm512_set_epi64(15, 14, 13, 12, 7, 6, 5, 4);
    /* u[k] (k<4) holds rows 0-3 of columns c and c+4 where c = (k&1) + 2*(k>>1) */
    for (int k = 0; k < 4; k++) {
        const int c = (k & 1) + 2 * (k >> 1);
        out[c] = _mm512_permutex2var_epi64(u[k], first, u[4 + k]);
        out[c + 4] = _mm512_permutex2var_epi64(u[k], second, u[4 + k]);
    }
}

/* Byte permutation: dest byte 8m + (7 - b) <- source byte 8b + m (per zmm). */
static inline __m512i bits_to_rows_index(void) {
    uint8_t idx[64];
    for (int rep = 0; rep < 1; rep++)
        for (int b = 0; b < 8; b++)
            for (int m = 0; m < 8; m++) idx[8 * m + (7 - b)] = (uint8_t)(8 * b + m);
    return _mm512_loadu_si512(idx);
}

/* XORs 8 bit words (bit b of every lane) into one byte row of 512 lanes:
 * qword transpose, a byte shuffle, then GF2P8AFFINEQB transposes each 8x8
 * bit matrix in one instruction. */
static inline void bits_xor_row(const W in[8], uint8_t *row, size_t n) {
    (void)n;
    __m512i t[8];
    transpose_qwords((const __m512i *)in, t);
    const __m512i idx = bits_to_rows_index();
    const __m512i ident = _mm512_set1_epi64((long long)0x8040201008040201ull);
    for (int g = 0; g < 8; g++) {
        const __m512i q = _mm512_permutexvar_epi8(idx, t[g]);
        const __m512i bytes = _mm512_gf2p8affine_epi64_epi8(ident, q, 0);
        const __m512i r = _mm512_loadu_si512(row + 64 * g);
        _mm512_storeu_si512(row + 64 * g, _mm512_xor_si512(r, bytes));
    }
}
#elif defined(CSA_XMM_TRANSPOSES)
/* 8 rows of 16 bytes (r[j] = byte j of 16 lanes) -> 16 lanes of 8 bytes, two
 * per register (c[q]: lane 2q in the low half, 2q + 1 in the high), by
 * unpacks: bytes, words, dwords. */
static inline void transpose_8x16(const __m128i r[8], __m128i c[8]) {
    __m128i a[8], b[8];
    for (int j = 0; j < 4; j++) {
        a[2 * j] = _mm_unpacklo_epi8(r[2 * j], r[2 * j + 1]);     /* lanes 0-7, bytes 2j, 2j+1 */
        a[2 * j + 1] = _mm_unpackhi_epi8(r[2 * j], r[2 * j + 1]); /* lanes 8-15 */
    }
    for (int h = 0; h < 2; h++) {
        b[4 * h] = _mm_unpacklo_epi16(a[h], a[2 + h]);         /* lanes 8h+0..3, bytes 0-3 */
        b[4 * h + 1] = _mm_unpackhi_epi16(a[h], a[2 + h]);     /* lanes 8h+4..7, bytes 0-3 */
        b[4 * h + 2] = _mm_unpacklo_epi16(a[4 + h], a[6 + h]); /* lanes 8h+0..3, bytes 4-7 */
        b[4 * h + 3] = _mm_unpackhi_epi16(a[4 + h], a[6 + h]); /* lanes 8h+4..7, bytes 4-7 */
    }
    for (int q = 0; q < 4; q++) { /* lanes 4q..4q+3 */
        const __m128i lo = b[(q >> 1) * 4 + (q & 1)], hi = b[(q >> 1) * 4 + (q & 1) + 2];
        c[2 * q] = _mm_unpacklo_epi32(lo, hi);
        c[2 * q + 1] = _mm_unpackhi_epi32(lo, hi);
    }
}

/* transpose8() on both halves. */
static inline __m128i transpose8_x2(__m128i x) {
    __m128i t;
    t = _mm_and_si128(_mm_xor_si128(x, _mm_srli_epi64(x, 7)), _mm_set1_epi64x(0x00AA00AA00AA00AAll));
    x = _mm_xor_si128(x, _mm_xor_si128(t, _mm_slli_epi64(t, 7)));
    t = _mm_and_si128(_mm_xor_si128(x, _mm_srli_epi64(x, 14)), _mm_set1_epi64x(0x0000CCCC0000CCCCll));
    x = _mm_xor_si128(x, _mm_xor_si128(t, _mm_slli_epi64(t, 14)));
    t = _mm_and_si128(_mm_xor_si128(x, _mm_srli_epi64(x, 28)), _mm_set1_epi64x(0x00000000F0F0F0F0ll));
    return _mm_xor_si128(x, _mm_xor_si128(t, _mm_slli_epi64(t, 28)));
}

/* XORs 8 bit words (bit b of every lane) into one byte row: bytes m of the 8
 * words gathered per qword (a byte transpose), then an 8x8 bit transpose per
 * qword gives the bytes of lanes 8m..8m+7. */
static inline void bits_xor_row(const W in[8], uint8_t *row, size_t n) {
    if (USED_OCTETS(n) <= 4) {
        /* a few lanes: a u64 transpose per octet costs less than a 16-octet chunk */
        for (size_t m = 0; m < USED_OCTETS(n); m++) {
            uint64_t x = 0, y;
            for (int b = 0; b < 8; b++) x |= (uint64_t)((const uint8_t *)&in[b])[m] << (8 * b);
            x = transpose8(x);
            memcpy(&y, row + 8 * m, 8);
            y ^= x;
            memcpy(row + 8 * m, &y, 8);
        }
        return;
    }
    for (size_t h = 0; h < (USED_OCTETS(n) + 15) / 16; h++) {
        __m128i r[8], c[8];
#if defined(CSA_AVX512VL)
        /* GF2P8AFFINEQB with the identity as data transposes each qword taken
         * as a matrix, rows in reverse byte order: the words go in reversed. */
        for (int b = 0; b < 8; b++) r[b] = _mm_loadu_si128((const __m128i *)((const uint8_t *)&in[7 - b] + 16 * h));
        transpose_8x16(r, c);
        const __m128i ident = _mm_set1_epi64x((long long)0x8040201008040201ull);
        for (int q = 0; q < 8; q++) {
            __m128i *dst = (__m128i *)(row + 8 * (16 * h + 2 * q));
            _mm_store_si128(dst, _mm_xor_si128(_mm_load_si128(dst), _mm_gf2p8affine_epi64_epi8(ident, c[q], 0)));
        }
#else
        for (int b = 0; b < 8; b++) r[b] = _mm_loadu_si128((const __m128i *)((const uint8_t *)&in[b] + 16 * h));
        transpose_8x16(r, c);
        for (int q = 0; q < 8; q++) {
            __m128i *dst = (__m128i *)(row + 8 * (16 * h + 2 * q));
            _mm_store_si128(dst, _mm_xor_si128(_mm_load_si128(dst), transpose8_x2(c[q])));
        }
#endif
    }
}
#else
/* XORs 8 bit words (bit b of every lane) into one byte row. */
static inline void bits_xor_row(const W in[8], uint8_t *row, size_t n) {
    uint8_t tmp[8][WBYTES] __attribute__((aligned(64)));
    for (int b = 0; b < 8; b++) w_store(tmp[b], in[b]);
    for (size_t m = 0; m < USED_OCTETS(n); m++) {
        uint64_t x = 0, y;
        for (int b = 0; b < 8; b++) x |= (uint64_t)tmp[b][m] << (8 * b);
        x = transpose8(x);
        memcpy(&y, row + 8 * m, 8);
        y ^= x;
        memcpy(row + 8 * m, &y, 8);
    }
}
#endif

/* ---------------------------------------------------------------------- */
/* Byte-sliced block cipher.                                              */

#if defined(CSA_VBMI512)
struct block_tables {
    __m512i sbox[4];
    __m512i perm_matrix;
};

static void block_tables_init(struct block_tables *t) {
    for (int i = 0; i < 4; i++) t->sbox[i] = _mm512_loadu_si512(castmux_csa_block_sbox + 64 * i);
    t->perm_matrix = _mm512_set1_epi64((long long)CSA_PERM_MATRIX);
}

/* s = SBOX[x] for 64 bytes at once; p = the bit permutation of s. */
static inline __attribute__((always_inline)) void
block_sbox(const struct block_tables *t, W x, W *s, W *p) {
    const __m512i xi = (__m512i)x;
    const __m512i lo = _mm512_permutex2var_epi8(t->sbox[0], xi, t->sbox[1]);
    const __m512i hi = _mm512_permutex2var_epi8(t->sbox[2], xi, t->sbox[3]);
    const __m512i sv = _mm512_mask_blend_epi8(_mm512_movepi8_mask(xi), lo, hi);
    *s = (W)sv;
    *p = (W)_mm512_gf2p8affine_epi64_epi8(sv, t->perm_matrix, 0);
}
#define KEY_BROADCAST(k) ((W)_mm512_set1_epi8((char)(k)))
#elif defined(CSA_AVX512VL)
/* The 512-lane S-box on the ymm/xmm widened to a zmm (the upper lanes are
 * garbage, their results dropped): two VPERMT2B of 128 entries, a blend on
 * bit 7, then GFNI permutes the bits at the build's width. Measured as fast
 * as four ymm VPERMT2B of 64 entries and three blends, in fewer instructions. */
struct block_tables {
    __m512i sbox[4];
    __m256i perm_matrix;
};

static void block_tables_init(struct block_tables *t) {
    for (int i = 0; i < 4; i++) t->sbox[i] = _mm512_loadu_si512(castmux_csa_block_sbox + 64 * i);
    t->perm_matrix = _mm256_set1_epi64x((long long)CSA_PERM_MATRIX);
}

static inline __attribute__((always_inline)) void
block_sbox(const struct block_tables *t, W x, W *s, W *p) {
#if defined(CSA_WIDTH_256)
    const __m512i xi = _mm512_castsi256_si512((__m256i)x);
#else
    const __m512i xi = _mm512_castsi128_si512((__m128i)x);
#endif
    const __m512i lo = _mm512_permutex2var_epi8(t->sbox[0], xi, t->sbox[1]);
    const __m512i hi = _mm512_permutex2var_epi8(t->sbox[2], xi, t->sbox[3]);
    const __m256i sv = _mm512_castsi512_si256(_mm512_mask_blend_epi8(_mm512_movepi8_mask(xi), lo, hi));
    const __m256i pv = _mm256_gf2p8affine_epi64_epi8(sv, t->perm_matrix, 0);
#if defined(CSA_WIDTH_256)
    *s = (W)sv;
    *p = (W)pv;
#else
    *s = (W)_mm256_castsi256_si128(sv);
    *p = (W)_mm256_castsi256_si128(pv);
#endif
}
#if defined(CSA_WIDTH_256)
#define KEY_BROADCAST(k) ((W)_mm256_set1_epi8((char)(k)))
#else
#define KEY_BROADCAST(k) ((W)_mm_set1_epi8((char)(k)))
#endif
#elif defined(CSA_PSHUFB)
/* Byte shuffles (PSHUFB/VPSHUFB: 16-entry lookups, per 128-bit lane) look up
 * the 256-entry S-box as 16 tables of 16 (T[h][l] = SBOX[16h + l]), selected by
 * the high nibble: a shuffle per table indexed by x (zero where bit 7 of the
 * index is set, so x picks among T[0..7] and x ^ 0x80 among T[8..15]), then
 * a tree of byte blends on bits 4, 5, 6 and an OR for bit 7. The round's bit
 * permutation is linear, so p = P(s & 0x0f) ^ P(s & 0xf0): two more shuffles.
 * The AVX-512BW builds blend under mask registers, three bit tests a round
 * (VPBLENDVB has no 512-bit form; at 256 bits it is two uops on Intel). */
#if defined(CSA_WIDTH_512)
typedef __m512i V;
typedef __mmask64 K;
#define V_TABLE(p) _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(p)))
#define V_SHUF _mm512_shuffle_epi8
#define V_SRL16 _mm512_srli_epi16
#define V_SET1(b) _mm512_set1_epi8((char)(b))
#define V_XOR _mm512_xor_si512
#define V_OR _mm512_or_si512
#define V_AND _mm512_and_si512
/* k: lanes whose byte has bit `b` set; blend: b where k is set, else a */
#define K_BIT(x, b) _mm512_test_epi8_mask((x), V_SET1(1 << (b)))
#define K_BLEND(a, b, k) _mm512_mask_blend_epi8((k), (a), (b))
#else
typedef __m256i V;
#define V_TABLE(p) _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(p)))
#define V_SHUF _mm256_shuffle_epi8
#define V_SLL16 _mm256_slli_epi16
#define V_SRL16 _mm256_srli_epi16
#define V_SET1(b) _mm256_set1_epi8((char)(b))
#define V_XOR _mm256_xor_si256
#define V_OR _mm256_or_si256
#define V_AND _mm256_and_si256
#if defined(CSA_AVX512BW)
typedef __mmask32 K;
#define K_BIT(x, b) _mm256_test_epi8_mask((x), V_SET1(1 << (b)))
#define K_BLEND(a, b, k) _mm256_mask_blend_epi8((k), (a), (b))
#else
/* VPBLENDVB reads only bit 7 of each mask byte; through the intrinsic GCC
 * first widens the mask with a compare, one more instruction per blend level. */
static inline __m256i v_blend(__m256i a, __m256i b, __m256i m) {
    __m256i r;
    __asm__("vpblendvb %3, %2, %1, %0" : "=x"(r) : "x"(a), "xm"(b), "x"(m));
    return r;
}
typedef __m256i K;
#define K_BIT(x, b) V_SLL16((x), 7 - (b))
#define K_BLEND(a, b, k) v_blend((a), (b), (k))
#endif
#endif
struct block_tables {
    V sbox[16];
    V perm_lo, perm_hi;
};

static void block_tables_init(struct block_tables *t) {
    for (int h = 0; h < 16; h++) t->sbox[h] = V_TABLE(castmux_csa_block_sbox + 16 * h);
    t->perm_lo = V_TABLE(castmux_csa_block_perm_nibbles);
    t->perm_hi = V_TABLE(castmux_csa_block_perm_nibbles + 16);
}

static inline __attribute__((always_inline)) void
block_sbox(const struct block_tables *t, W x, W *s, W *p) {
    const V xv = (V)x, xh = V_XOR(xv, V_SET1(0x80));
    const K m4 = K_BIT(xv, 4), m5 = K_BIT(xv, 5), m6 = K_BIT(xv, 6);
    V u[8], v[4], w[2];
    for (int j = 0; j < 8; j++) {
        const V idx = j < 4 ? xv : xh;
        u[j] = K_BLEND(V_SHUF(t->sbox[2 * j], idx), V_SHUF(t->sbox[2 * j + 1], idx), m4);
    }
    for (int j = 0; j < 4; j++) v[j] = K_BLEND(u[2 * j], u[2 * j + 1], m5);
    for (int j = 0; j < 2; j++) w[j] = K_BLEND(v[2 * j], v[2 * j + 1], m6);
    const V sv = V_OR(w[0], w[1]);
    const V nib = V_SET1(0x0f);
    *s = (W)sv;
    *p = (W)V_OR(V_SHUF(t->perm_lo, V_AND(sv, nib)), V_SHUF(t->perm_hi, V_AND(V_SRL16(sv, 4), nib)));
}
#define KEY_BROADCAST(k) ((W)V_SET1(k))
#elif defined(CSA_WIDTH_128)
/* SSE2 has no byte shuffle: table lookups, 16 a round. One 16-bit table holds
 * s | p << 8, the indexes are taken from two 64-bit halves in registers and the
 * entries inserted as words (PINSRW), so nothing goes through memory that a
 * vector load would have to wait for (stores of bytes read back as a vector
 * stall). */
struct block_tables {
    uint16_t sp[256];
};

static void block_tables_init(struct block_tables *t) {
    for (int i = 0; i < 256; i++)
        t->sp[i] = (uint16_t)(castmux_csa_block_sbox[i] | castmux_csa_block_perm_sbox[i] << 8);
}

static inline __attribute__((always_inline)) void
block_sbox(const struct block_tables *t, W x, W *s, W *p) {
    const __m128i xv = (__m128i)x;
    const uint64_t lo = (uint64_t)_mm_cvtsi128_si64(xv);
    const uint64_t hi = (uint64_t)_mm_cvtsi128_si64(_mm_unpackhi_epi64(xv, xv));
    __m128i a = _mm_setzero_si128(), b = _mm_setzero_si128();
#define SP_INSERT(i)                                                         \
    a = _mm_insert_epi16(a, t->sp[(lo >> (8 * (i))) & 0xff], (i));          \
    b = _mm_insert_epi16(b, t->sp[(hi >> (8 * (i))) & 0xff], (i));
    SP_INSERT(0) SP_INSERT(1) SP_INSERT(2) SP_INSERT(3)
    SP_INSERT(4) SP_INSERT(5) SP_INSERT(6) SP_INSERT(7)
#undef SP_INSERT
    const __m128i low = _mm_set1_epi16(0xff);
    *s = (W)_mm_packus_epi16(_mm_and_si128(a, low), _mm_and_si128(b, low));
    *p = (W)_mm_packus_epi16(_mm_srli_epi16(a, 8), _mm_srli_epi16(b, 8));
}
#define KEY_BROADCAST(k) ((W)_mm_set1_epi8((char)(k)))
#else
/* Portable 64-bit words: lookups in one 16-bit table (s | p << 8), the word
 * built in a register; byte stores read back as a word would stall. */
struct block_tables {
    uint16_t sp[256];
};

static void block_tables_init(struct block_tables *t) {
    for (int i = 0; i < 256; i++)
        t->sp[i] = (uint16_t)(castmux_csa_block_sbox[i] | castmux_csa_block_perm_sbox[i] << 8);
}

static inline __attribute__((always_inline)) void
block_sbox(const struct block_tables *t, W x, W *s, W *p) {
    const uint64_t xv = x[0];
    uint64_t sv = 0, pv = 0;
    for (int i = 0; i < 8; i++) {
        const uint64_t e = t->sp[(xv >> (8 * i)) & 0xff];
        sv |= (e & 0xff) << (8 * i);
        pv |= (e >> 8) << (8 * i);
    }
    *s = (W){sv};
    *p = (W){pv};
}
#define KEY_BROADCAST(k) ((W){(uint64_t)(k) * 0x0101010101010101ull})
#endif

static inline W load_group(const uint8_t *row, int g) { return w_load(row + g * WBYTES); }
static inline void store_group(uint8_t *row, int g, W w) { w_store(row + g * WBYTES, w); }

/* A struct castmux_csa_key per lane, byte-sliced by key_rows(): rows[r][lane] is
 * byte r of the lane's key, rows 0..7 its CW and rows 8..63 its schedule. */
#define KEY_ROWS 64
#define KEY_ROW_KK 8
_Static_assert(sizeof(struct castmux_csa_key) == KEY_ROWS, "castmux_csa_key is cw[8] + kk[56]");

/* The round keys of one group of WBYTES lanes: the one key's schedule broadcast
 * (rows == NULL), or each lane's own from the byte-sliced key rows. The drivers
 * are inlined with rows a constant NULL in the one-key entry points, so those
 * keep the broadcast and never test rows. */
struct round_keys {
    const uint8_t *kk;
    const uint8_t (*rows)[LANES];
    int g;
};

static inline __attribute__((always_inline)) W round_key(const struct round_keys *k, int i) {
    return k->rows ? load_group(k->rows[KEY_ROW_KK + i], k->g) : KEY_BROADCAST(k->kk[i]);
}

/* r[g][0..8] are R1..R8 of group g (byte j of the block in r[g][j]). The ng
 * groups' rounds are interleaved: a round is a chain of dependent steps, so a
 * group alone leaves the SIMD units idle between them. */
static inline __attribute__((always_inline)) void
block_encrypt_groups(const struct block_tables *t, const struct round_keys *k, W r[][8], const int ng) {
    for (int i = 0; i < 56; i++) {
        for (int g = 0; g < ng; g++) {
            W s, p;
            W *q = r[g];
            block_sbox(t, round_key(&k[g], i) ^ q[7], &s, &p);
            const W r1 = q[0];
            const W n8 = r1 ^ s, n7 = q[7], n6 = q[6] ^ p, n5 = q[5], n4 = q[4] ^ r1, n3 = q[3] ^ r1,
                    n2 = q[2] ^ r1, n1 = q[1];
            q[0] = n1; q[1] = n2; q[2] = n3; q[3] = n4; q[4] = n5; q[5] = n6; q[6] = n7; q[7] = n8;
        }
    }
}

static inline __attribute__((always_inline)) void
block_decrypt_groups(const struct block_tables *t, const struct round_keys *k, W r[][8], const int ng) {
    for (int i = 55; i >= 0; i--) {
        for (int g = 0; g < ng; g++) {
            W s, p;
            W *q = r[g];
            block_sbox(t, round_key(&k[g], i) ^ q[6], &s, &p);
            const W tt = q[7] ^ s;
            const W n1 = tt, n2 = q[0], n3 = q[1] ^ tt, n4 = q[2] ^ tt, n5 = q[3] ^ tt, n6 = q[4],
                    n7 = q[5] ^ p, n8 = q[6];
            q[0] = n1; q[1] = n2; q[2] = n3; q[3] = n4; q[4] = n5; q[5] = n6; q[6] = n7; q[7] = n8;
        }
    }
}

/* Groups the drivers run together (AVX-512 two: 256- and 512-lane calls 9-14 %
 * faster than one at a time in a C timing loop, four no better; the AVX-512VL builds
 * four, measured as fast as two), the last groups of a call in a pair and
 * alone as they fall. */
#if defined(CSA_WIDTH_512)
#define BLOCK_NG 2
#elif defined(CSA_AVX512VL)
#define BLOCK_NG 4
#else
#define BLOCK_NG 2
#endif

/* Runs STEP(g0, ng) over groups 0..ngroups, BLOCK_NG at a time while they last. */
#define FOR_GROUPS(ngroups, STEP)                                          \
    for (int g0 = 0; g0 < (ngroups);) {                                    \
        const int left = (ngroups) - g0;                                   \
        if (left >= BLOCK_NG) {                                            \
            STEP(g0, BLOCK_NG);                                            \
            g0 += BLOCK_NG;                                                \
        } else if (BLOCK_NG > 2 && left >= 2) {                            \
            STEP(g0, 2);                                                   \
            g0 += 2;                                                       \
        } else {                                                           \
            STEP(g0, 1);                                                   \
            g0 += 1;                                                       \
        }                                                                  \
    }

/* ---------------------------------------------------------------------- */
/* Batch driver.                                                          */

struct scratch {
    /* rows[pos][lane]: byte pos of every payload */
    uint8_t rows[MAX_PAYLOAD][LANES] __attribute__((aligned(64)));
    /* full[k][lane] = 0xff when block k is a full block of that payload */
    uint8_t full[MAX_BLOCKS + 1][LANES] __attribute__((aligned(64)));
};

/* Transposes 8 lanes x 8 bytes: out[j] byte i = in[i] byte j. */
static inline void transpose8x8_bytes(uint64_t x[8]) {
    for (int i = 0; i < 4; i++) {
        const uint64_t t = ((x[i] >> 32) ^ x[i + 4]) & 0x00000000FFFFFFFFull;
        x[i] ^= t << 32;
        x[i + 4] ^= t;
    }
    for (int i = 0; i < 8; i += (i & 1) ? 3 : 1) { /* 0,1,4,5 */
        const uint64_t t = ((x[i] >> 16) ^ x[i + 2]) & 0x0000FFFF0000FFFFull;
        x[i] ^= t << 16;
        x[i + 2] ^= t;
    }
    for (int i = 0; i < 8; i += 2) {
        const uint64_t t = ((x[i] >> 8) ^ x[i + 1]) & 0x00FF00FF00FF00FFull;
        x[i] ^= t << 8;
        x[i + 1] ^= t;
    }
}

#if defined(CSA_VBMI512)
static inline __m512i byte_transpose_index(void) {
    uint8_t idx[64];
    for (int i = 0; i < 8; i++)
        for (int j = 0; j < 8; j++) idx[8 * j + i] = (uint8_t)(8 * i + j);
    return _mm512_loadu_si512(idx);
}
#endif

#if defined(CSA_XMM_TRANSPOSES)
/* 16 lanes of 8 bytes (x[i] low half) -> 8 rows of 16 lanes (v[j] = byte j of
 * lanes 0..15), by unpacks: bytes, words, dwords, qwords. */
static inline void transpose_16x8(const __m128i x[16], __m128i t[8], __m128i u[8], __m128i v[8]) {
    for (int i = 0; i < 8; i++) t[i] = _mm_unpacklo_epi8(x[2 * i], x[2 * i + 1]); /* lanes 2i,2i+1 */
    for (int i = 0; i < 4; i++) {
        u[2 * i] = _mm_unpacklo_epi16(t[2 * i], t[2 * i + 1]);     /* lanes 4i..4i+3, bytes 0-3 */
        u[2 * i + 1] = _mm_unpackhi_epi16(t[2 * i], t[2 * i + 1]); /* bytes 4-7 */
    }
    __m128i w[8];
    for (int h = 0; h < 2; h++) {     /* lanes 0-7, 8-15 */
        for (int o = 0; o < 2; o++) { /* bytes 0-3, 4-7 */
            const __m128i a = u[4 * h + o], b = u[4 * h + 2 + o];
            w[4 * h + 2 * o] = _mm_unpacklo_epi32(a, b);     /* bytes 4o, 4o+1 of 8 lanes */
            w[4 * h + 2 * o + 1] = _mm_unpackhi_epi32(a, b); /* bytes 4o+2, 4o+3 */
        }
    }
    for (int j = 0; j < 4; j++) {
        v[2 * j] = _mm_unpacklo_epi64(w[j], w[4 + j]);
        v[2 * j + 1] = _mm_unpackhi_epi64(w[j], w[4 + j]);
    }
}
#endif

/* Lanes whose block k is a full 8-byte block, as a byte mask per lane. */
static void full_masks(struct scratch *sc, const uint8_t *len, size_t n, unsigned blocks) {
    for (unsigned k = 0; k <= blocks && k <= MAX_BLOCKS; k++) {
        /* up to the last group the block cipher loads */
        const size_t lanes = (n + WBYTES - 1) / WBYTES * WBYTES;
        for (size_t l = 0; l < lanes; l++) sc->full[k][l] = (l < n && len[l] >= 8 * k + 8) ? 0xff : 0;
    }
}

/* Payloads -> rows[pos][lane]. The VBMI 512-lane build gathers each lane's full blocks with
 * masked qword gathers straight from the packets, then an in-register 8x8
 * byte transpose and a qword transpose; elsewhere 8x8 byte transposes on
 * u64s. The trailing partial block is copied byte by byte. Bytes past a
 * lane's end are left as they are: nothing reads them back. */
static unsigned gather(struct scratch *sc, uint8_t *const *data, const uint8_t *len, size_t n) {
    unsigned max_len = 0;
    for (size_t l = 0; l < n; l++)
        if (len[l] > max_len) max_len = len[l];
    const unsigned blocks = (max_len + 7) / 8;
    full_masks(sc, len, n, blocks);
#if defined(CSA_VBMI512)
    uint8_t *ptrs[LANES] __attribute__((aligned(64)));
    for (size_t l = 0; l < LANES; l++) ptrs[l] = l < n ? data[l] : 0;
    const size_t groups = (n + 63) / 64;
    const __m512i perm = byte_transpose_index();
    for (unsigned k = 0; k < blocks; k++) {
        const __m512i off = _mm512_set1_epi64(8 * (long long)k);
        for (size_t g = 0; g < groups; g++) {
            __m512i in[8], out[8];
            const __mmask64 full = _mm512_movepi8_mask(_mm512_load_si512(&sc->full[k][64 * g]));
            for (int q = 0; q < 8; q++) {
                const __m512i addr = _mm512_add_epi64(_mm512_load_si512(&ptrs[64 * g + 8 * q]), off);
                const __mmask8 m = (__mmask8)(full >> (8 * q));
                in[q] = _mm512_permutexvar_epi8(
                    perm, _mm512_mask_i64gather_epi64(_mm512_setzero_si512(), m, addr, (void *)0, 1));
            }
            transpose_qwords(in, out);
            for (int j = 0; j < 8; j++) _mm512_store_si512(&sc->rows[8 * k + j][64 * g], out[j]);
        }
    }
#elif defined(CSA_XMM_TRANSPOSES)
    for (unsigned k = 0; k < blocks; k++) {
        for (size_t m = 0; m < (n + 15) / 16; m++) {
            __m128i x[16], t[8], u[8], v[8];
            for (int i = 0; i < 16; i++) {
                const size_t l = 16 * m + i;
                x[i] = l < n && sc->full[k][l] ? _mm_loadl_epi64((const __m128i *)(data[l] + 8 * k))
                                                : _mm_setzero_si128();
            }
            transpose_16x8(x, t, u, v);
            for (int j = 0; j < 8; j++) _mm_store_si128((__m128i *)&sc->rows[8 * k + j][16 * m], v[j]);
        }
    }
#else
    for (unsigned k = 0; k < blocks; k++) {
        for (size_t m = 0; m < (n + 7) / 8; m++) {
            uint64_t x[8] = {0};
            for (int i = 0; i < 8; i++) {
                const size_t l = 8 * m + i;
                if (l < n && sc->full[k][l]) memcpy(&x[i], data[l] + 8 * k, 8);
            }
            transpose8x8_bytes(x);
            for (int j = 0; j < 8; j++) memcpy(&sc->rows[8 * k + j][8 * m], &x[j], 8);
        }
    }
#endif
    for (size_t l = 0; l < n; l++) {
        const unsigned ln = len[l], start = ln & ~7u;
        for (unsigned pos = start; pos < ln; pos++) sc->rows[pos][l] = data[l][pos];
    }
    return blocks * 8;
}

/* rows[pos][lane] -> payloads, the inverse of gather (masked scatters in the VBMI 512-lane build). */
static void scatter(struct scratch *sc, uint8_t *const *data, const uint8_t *len, size_t n, unsigned max_len) {
    const unsigned blocks = max_len / 8;
#if defined(CSA_VBMI512)
    uint8_t *ptrs[LANES] __attribute__((aligned(64)));
    for (size_t l = 0; l < LANES; l++) ptrs[l] = l < n ? data[l] : 0;
    const size_t groups = (n + 63) / 64;
    const __m512i perm = byte_transpose_index();
    for (unsigned k = 0; k < blocks; k++) {
        const __m512i off = _mm512_set1_epi64(8 * (long long)k);
        for (size_t g = 0; g < groups; g++) {
            __m512i in[8], out[8];
            const __mmask64 full = _mm512_movepi8_mask(_mm512_load_si512(&sc->full[k][64 * g]));
            for (int j = 0; j < 8; j++) in[j] = _mm512_load_si512(&sc->rows[8 * k + j][64 * g]);
            transpose_qwords(in, out);
            for (int q = 0; q < 8; q++) {
                const __m512i addr = _mm512_add_epi64(_mm512_load_si512(&ptrs[64 * g + 8 * q]), off);
                const __mmask8 m = (__mmask8)(full >> (8 * q));
                _mm512_mask_i64scatter_epi64((void *)0, m, addr, _mm512_permutexvar_epi8(perm, out[q]), 1);
            }
        }
    }
#elif defined(CSA_XMM_TRANSPOSES)
    for (unsigned k = 0; k < blocks; k++) {
        for (size_t m = 0; m < (n + 15) / 16; m++) {
            __m128i r[8], c[8];
            for (int j = 0; j < 8; j++) r[j] = _mm_load_si128((const __m128i *)&sc->rows[8 * k + j][16 * m]);
            transpose_8x16(r, c);
            for (int i = 0; i < 16; i++) {
                const size_t l = 16 * m + i;
                if (l >= n || !sc->full[k][l]) continue;
                if (i & 1)
                    _mm_storeh_pd((double *)(data[l] + 8 * k), _mm_castsi128_pd(c[i >> 1]));
                else
                    _mm_storel_epi64((__m128i *)(data[l] + 8 * k), c[i >> 1]);
            }
        }
    }
#else
    for (unsigned k = 0; k < blocks; k++) {
        for (size_t m = 0; m < (n + 7) / 8; m++) {
            uint64_t x[8];
            for (int j = 0; j < 8; j++) memcpy(&x[j], &sc->rows[8 * k + j][8 * m], 8);
            transpose8x8_bytes(x);
            for (int i = 0; i < 8; i++) {
                const size_t l = 8 * m + i;
                if (l < n && sc->full[k][l]) memcpy(data[l] + 8 * k, &x[i], 8);
            }
        }
    }
#endif
    for (size_t l = 0; l < n; l++) {
        const unsigned ln = len[l], start = ln & ~7u;
        for (unsigned pos = start; pos < ln; pos++) data[l][pos] = sc->rows[pos][l];
    }
}

/* Each lane's key, byte-sliced into rows[KEY_ROWS][LANES] with 8x8 byte
 * transposes (the same as gather() does for payloads), up to the last group
 * of WBYTES lanes the call uses: lanes past n get zeros, lanes past that
 * group nothing (nothing reads them). */
static void key_rows(const struct castmux_csa_key *const *keys, size_t n, uint8_t (*rows)[LANES]) {
    const size_t octets = (n + WBYTES - 1) / WBYTES * WBYTES / 8;
    for (size_t m = 0; m < octets; m++) {
        for (int q = 0; q < KEY_ROWS / 8; q++) {
            uint64_t x[8] = {0};
            for (int i = 0; i < 8; i++) {
                const size_t l = 8 * m + i;
                if (l < n) memcpy(&x[i], (const uint8_t *)keys[l] + 8 * q, 8);
            }
            transpose8x8_bytes(x);
            for (int j = 0; j < 8; j++) memcpy(&rows[8 * q + j][8 * m], &x[j], 8);
        }
    }
}

/* XORs the keystream into rows 8.. of every lane, seeded by rows 0..7 (the
 * first block), from registers loaded with the CW. */
static inline __attribute__((always_inline)) void
stream_run(struct scratch *sc, struct stream_state *st, unsigned max_len, size_t n) {
    W iv[8][8], ks[8][8];
    for (int j = 0; j < 8; j++) row_to_bits(sc->rows[j], iv[j], n);
    stream_init(st, iv);
    for (unsigned pos = 8; pos < max_len; pos += 8) {
        stream_generate(st, ks);
        for (int j = 0; j < 8; j++) bits_xor_row(ks[j], sc->rows[pos + j], n);
    }
}

/* The one CW `cw` in every lane. */
static void stream_xor_rows(struct scratch *sc, const uint8_t cw[8], unsigned max_len, size_t n) {
    struct stream_state st;
    stream_load_key(&st, cw);
    stream_run(sc, &st, max_len, n);
}

/* Each lane's own CW, from key rows 0..7. */
static void stream_xor_rows_keyed(struct scratch *sc, const uint8_t (*krows)[LANES],
                                  unsigned max_len, size_t n) {
    struct stream_state st;
    W bits[8][8];
    for (int i = 0; i < 8; i++) row_to_bits(krows[i], bits[i], n);
    stream_load_bits(&st, bits);
    stream_run(sc, &st, max_len, n);
}

/* Block k of groups g0..g0+ng in place: chained with block k + 1 (already
 * encrypted), encrypted, kept only in lanes where it is a full block. */
static inline __attribute__((always_inline)) void
encrypt_block_groups(const struct block_tables *t, const struct castmux_csa_key *key,
                     const uint8_t (*krows)[LANES], struct scratch *sc, int k, int blocks, int g0,
                     const int ng) {
    struct round_keys rk[BLOCK_NG];
    W r[BLOCK_NG][8], old[BLOCK_NG][8];
    for (int g = 0; g < ng; g++) {
        rk[g] = (struct round_keys){krows ? NULL : key->kk, krows, g0 + g};
        const W next = load_group(sc->full[k + 1], g0 + g);
        for (int j = 0; j < 8; j++) {
            old[g][j] = load_group(sc->rows[8 * k + j], g0 + g);
            W chained = k + 1 < blocks ? load_group(sc->rows[8 * (k + 1) + j], g0 + g) & next : w_zero();
            r[g][j] = old[g][j] ^ chained;
        }
    }
    block_encrypt_groups(t, rk, r, ng);
    for (int g = 0; g < ng; g++) {
        const W here = load_group(sc->full[k], g0 + g);
        for (int j = 0; j < 8; j++) store_group(sc->rows[8 * k + j], g0 + g, MUX(here, r[g][j], old[g][j]));
    }
}

/* Block k of groups g0..g0+ng in place: decrypted, XORed with block k + 1 (still
 * ciphertext), kept only in lanes where it is a full block. */
static inline __attribute__((always_inline)) void
decrypt_block_groups(const struct block_tables *t, const struct castmux_csa_key *key,
                     const uint8_t (*krows)[LANES], struct scratch *sc, int k, int blocks, int g0,
                     const int ng) {
    struct round_keys rk[BLOCK_NG];
    W r[BLOCK_NG][8], old[BLOCK_NG][8];
    for (int g = 0; g < ng; g++) {
        rk[g] = (struct round_keys){krows ? NULL : key->kk, krows, g0 + g};
        for (int j = 0; j < 8; j++) r[g][j] = old[g][j] = load_group(sc->rows[8 * k + j], g0 + g);
    }
    block_decrypt_groups(t, rk, r, ng);
    for (int g = 0; g < ng; g++) {
        const W here = load_group(sc->full[k], g0 + g), next = load_group(sc->full[k + 1], g0 + g);
        for (int j = 0; j < 8; j++) {
            W chained = k + 1 < blocks ? load_group(sc->rows[8 * (k + 1) + j], g0 + g) & next : w_zero();
            store_group(sc->rows[8 * k + j], g0 + g, MUX(here, r[g][j] ^ chained, old[g][j]));
        }
    }
}

/* Blocks k0..k0+nk of group g in place, decrypted together: unlike
 * encryption (each block chained to the one after it, already encrypted),
 * every block decrypts on its own, so a call with fewer groups than BLOCK_NG
 * interleaves blocks instead (the AVX-512VL and AVX-512BW builds, whose small
 * calls have a group or two). Block k + 1 is still ciphertext when block k
 * reads it (stored in order, after every block of the set is decrypted). */
static inline __attribute__((always_inline)) void
decrypt_blocks_of_group(const struct block_tables *t, const struct castmux_csa_key *key,
                        const uint8_t (*krows)[LANES], struct scratch *sc, int k0, const int nk,
                        int blocks, int g) {
    struct round_keys rk[BLOCK_NG];
    W r[BLOCK_NG][8], old[BLOCK_NG][8];
    for (int b = 0; b < nk; b++) {
        rk[b] = (struct round_keys){krows ? NULL : key->kk, krows, g};
        for (int j = 0; j < 8; j++) r[b][j] = old[b][j] = load_group(sc->rows[8 * (k0 + b) + j], g);
    }
    block_decrypt_groups(t, rk, r, nk);
    for (int b = 0; b < nk; b++) {
        const int k = k0 + b;
        const W here = load_group(sc->full[k], g), next = load_group(sc->full[k + 1], g);
        for (int j = 0; j < 8; j++) {
            W chained = k + 1 < blocks ? load_group(sc->rows[8 * (k + 1) + j], g) & next : w_zero();
            store_group(sc->rows[8 * k + j], g, MUX(here, r[b][j] ^ chained, old[b][j]));
        }
    }
}

/* The two drivers. `key` is the one key of every lane, or NULL with `krows`
 * holding a key per lane (key_rows()). Inlined into each entry point, so the
 * one-key entry points are compiled with krows a constant NULL. */
static inline __attribute__((always_inline)) void
scramble_lanes(const struct castmux_csa_key *key, const uint8_t (*krows)[LANES], uint8_t *const *data,
               const uint8_t *len, size_t n) {
    struct scratch sc; /* ~110 KB at 512 lanes: on the stack, not per-thread TLS */
    struct block_tables t;
    block_tables_init(&t);
    const unsigned max_len = gather(&sc, data, len, n);
    const int blocks = (int)(max_len / 8);
    const int ngroups = (int)((n + WBYTES - 1) / WBYTES);
    /* Block cipher, chained from the last block to the first. */
    for (int k = blocks - 1; k >= 0; k--) {
#define ENCRYPT_STEP(g0, ng) encrypt_block_groups(&t, key, krows, &sc, k, blocks, (g0), (ng))
        FOR_GROUPS(ngroups, ENCRYPT_STEP)
#undef ENCRYPT_STEP
    }
    if (krows)
        stream_xor_rows_keyed(&sc, krows, max_len, n);
    else
        stream_xor_rows(&sc, key->cw, max_len, n);
    scatter(&sc, data, len, n, max_len);
}

static inline __attribute__((always_inline)) void
descramble_lanes(const struct castmux_csa_key *key, const uint8_t (*krows)[LANES],
                 uint8_t *const *data, const uint8_t *len, size_t n) {
    struct scratch sc; /* ~110 KB at 512 lanes: on the stack, not per-thread TLS */
    struct block_tables t;
    block_tables_init(&t);
    const unsigned max_len = gather(&sc, data, len, n);
    const int blocks = (int)(max_len / 8);
    const int ngroups = (int)((n + WBYTES - 1) / WBYTES);
    if (krows)
        stream_xor_rows_keyed(&sc, krows, max_len, n);
    else
        stream_xor_rows(&sc, key->cw, max_len, n);
    /* Block cipher: every block decrypts on its own, then XORs the next ciphertext block. */
#if defined(CSA_AVX512VL) || defined(CSA_AVX512BW)
    if (ngroups < BLOCK_NG) {
        for (int g = 0; g < ngroups; g++) {
#define DECRYPT_BLOCKS_STEP(k0, nk) decrypt_blocks_of_group(&t, key, krows, &sc, (k0), (nk), blocks, g)
            FOR_GROUPS(blocks, DECRYPT_BLOCKS_STEP)
#undef DECRYPT_BLOCKS_STEP
        }
    } else
#endif
    for (int k = 0; k < blocks; k++) {
#define DECRYPT_STEP(g0, ng) decrypt_block_groups(&t, key, krows, &sc, k, blocks, (g0), (ng))
        FOR_GROUPS(ngroups, DECRYPT_STEP)
#undef DECRYPT_STEP
    }
    scatter(&sc, data, len, n, max_len);
}

size_t CSA_FN(lanes)(void) { return LANES; }

/* One key for every payload. */
void CSA_FN(scramble)(const struct castmux_csa_key *key, uint8_t *const *data, const uint8_t *len,
                      size_t n) {
    if (n == 0) return;
    scramble_lanes(key, NULL, data, len, n > LANES ? LANES : n);
}

void CSA_FN(descramble)(const struct castmux_csa_key *key, uint8_t *const *data, const uint8_t *len,
                        size_t n) {
    if (n == 0) return;
    descramble_lanes(key, NULL, data, len, n > LANES ? LANES : n);
}

/* A key per payload: keys[i] for data[i]. The keys are byte-sliced once per
 * call (16 KB at 256 lanes, 32 KB at 512); the cipher then loads a round key
 * row where the one-key path broadcasts a byte. */
void CSA_FN(scramble_keyed)(const struct castmux_csa_key *const *keys, uint8_t *const *data,
                            const uint8_t *len, size_t n) {
    uint8_t krows[KEY_ROWS][LANES] __attribute__((aligned(64)));
    if (n == 0) return;
    if (n > LANES) n = LANES;
    key_rows(keys, n, krows);
    scramble_lanes(NULL, (const uint8_t (*)[LANES])krows, data, len, n);
}

void CSA_FN(descramble_keyed)(const struct castmux_csa_key *const *keys, uint8_t *const *data,
                              const uint8_t *len, size_t n) {
    uint8_t krows[KEY_ROWS][LANES] __attribute__((aligned(64)));
    if (n == 0) return;
    if (n > LANES) n = LANES;
    key_rows(keys, n, krows);
    descramble_lanes(NULL, (const uint8_t (*)[LANES])krows, data, len, n);
}
