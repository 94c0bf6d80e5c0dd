/* castmux DVB-CSA2 kernel interface, shared by every backend. */
#ifndef CASTMUX_CSA_KERNEL_H
#define CASTMUX_CSA_KERNEL_H
#include <stddef.h>
#include <stdint.h>

/* One CW, expanded once per CW change (mirrors csa::ExpandedKey). */
struct castmux_csa_key {
    uint8_t cw[8];
    uint8_t kk[56];
};

/* The block cipher S-box, defined once in tables.c. */
extern const uint8_t castmux_csa_block_sbox[256];

#endif
