#!/usr/bin/env python3
"""Predicted cost of the CSA kernels' two inner loops on CPUs this machine is not.

The C kernel (csa/c/csa_kernel.c) is compiled to assembly once per x86 backend with
the flags build.rs uses; the stream cipher's clock loop (in stream_generate) and the
block cipher's round loop (the innermost loop of the scramble entry point with the
most S-box instructions: a round over BLOCK_NG lane groups) are cut out and handed to
llvm-mca for each CPU model. Printed: cycles per loop iteration and per lane, so
the backends compare at equal work. A model, not a measurement: use it to choose a
backend for a CPU family that is not at hand, then measure where one is.

Run: python3 scripts/kernel_mca.py [--cpu skylake-avx512 --cpu znver3 ...]
Needs gcc and llvm-mca (Debian: llvm), and a built csa crate (for csa_tables.h).
"""

import argparse
import glob
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNEL = os.path.join(ROOT, "csa", "c", "csa_kernel.c")
AVX512 = ["-mavx512f", "-mavx512bw", "-mavx512vbmi", "-mgfni", "-mavx512vl"]
AVX512BW = ["-mavx512f", "-mavx512bw", "-mavx512vl"]
# (backend, lanes, lane groups a block round runs together (BLOCK_NG in the C), defines,
# flags): as in csa/build.rs and csa_kernel.c.
BACKENDS = [
    ("sse2", 128, 2, ["CSA_WIDTH_128"], ["-msse2"]),
    ("avx2", 256, 2, ["CSA_WIDTH_256"], ["-mavx2"]),
    ("avx512bw256", 256, 2, ["CSA_WIDTH_256", "CSA_AVX512BW"], AVX512BW),
    ("avx512bw", 512, 2, ["CSA_WIDTH_512", "CSA_AVX512BW"], AVX512BW),
    ("avx512vl256", 256, 4, ["CSA_WIDTH_256", "CSA_AVX512VL"], AVX512),
    ("avx512", 512, 2, ["CSA_WIDTH_512"], AVX512),
]
SBOX_OPS = re.compile(r"\b(v?pshufb|vpermt2b|vpermi2b|vgf2p8affineqb|pinsrw|vpinsrw)\b")
LOGIC_OPS = re.compile(r"\b(vpternlog[dq]|v?pxor[dq]?|v?pand[dq]?|v?pandn[dq]?|v?por[dq]?)\b")


def tables_dir():
    hits = glob.glob(os.path.join(ROOT, "target", "*", "build", "castmux-csa-*", "out", "csa_tables.h"))
    if not hits:
        sys.exit("csa_tables.h not found: run `cargo build --release -p castmux-csa` first")
    return os.path.dirname(max(hits, key=os.path.getmtime))


def function(asm, name):
    start = asm.index(name + ":")
    end = asm.index("\t.size\t" + name.split(":")[0], start)
    return asm[start:end].split("\n")


def innermost_loops(lines):
    loops = []
    for i, line in enumerate(lines):
        m = re.match(r"^(\.L\d+):$", line)
        if not m:
            continue
        back = re.compile(r"^\s+j[a-z]+\s+" + re.escape(m.group(1)) + r"$")
        loops += [(i, j) for j in range(i + 1, len(lines)) if back.match(lines[j])]
    return [x for x in loops if not any(y != x and x[0] <= y[0] and y[1] <= x[1] for y in loops)]


def body(lines, loop):
    i, j = loop
    keep = lambda l: not re.match(r"^\.L\d+:", l) and not re.match(r"^\s+j[a-z]+\s", l) and not l.strip().startswith(".")
    return [l for l in lines[i + 1 : j] if keep(l)]


def richest(lines, pattern):
    loops = innermost_loops(lines)
    count = lambda lp: sum(1 for l in lines[lp[0] : lp[1]] if pattern.search(l))
    return body(lines, max(loops, key=count))


def mca(cpu, instructions, workdir):
    path = os.path.join(workdir, "loop.s")
    with open(path, "w") as f:
        f.write("\n".join(instructions) + "\n")
    out = subprocess.run(["llvm-mca", f"-mcpu={cpu}", "-iterations=200", path], capture_output=True, text=True)
    m = re.search(r"Total Cycles:\s+(\d+)", out.stdout)
    return int(m.group(1)) / 200 if m else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cpu", action="append", help="llvm-mca -mcpu model (repeatable)")
    cpus = ap.parse_args().cpu or ["skylake-avx512", "icelake-server", "znver3"]
    inc = tables_dir()
    with tempfile.TemporaryDirectory() as work:
        loops = {}
        for name, lanes, groups, defines, flags in BACKENDS:
            s = os.path.join(work, name + ".s")
            cmd = ["gcc", "-O3", "-fno-strict-aliasing", "-S", "-I", os.path.dirname(KERNEL), "-I", inc,
                   f"-DCSA_BACKEND={name}", *[f"-D{d}" for d in defines], *flags, KERNEL, "-o", s]
            subprocess.run(cmd, check=True)
            asm = open(s).read()
            stream = richest(function(asm, "stream_generate"), LOGIC_OPS)
            block = richest(function(asm, f"castmux_csa_{name}_scramble"), SBOX_OPS)
            loops[name] = (lanes, groups, stream, block)
        for cpu in cpus:
            print(f"\nllvm-mca -mcpu={cpu} (cycles per iteration; per lane in brackets, lower is better)")
            print(f"{'backend':<14}{'lanes':>6}{'stream clock':>22}{'block round (groups)':>30}")
            for name, (lanes, groups, stream, block) in loops.items():
                sc, bc = mca(cpu, stream, work), mca(cpu, block, work)
                # the block cipher is byte-sliced: a group is one vector, lanes / 8 payloads
                group = lanes // 8
                cell = lambda c, per: "n/a" if c is None else f"{c:8.1f} ({c / per:.3f})"
                block = f"{cell(bc, groups * group)} ({groups})"
                print(f"{name:<14}{lanes:>6}{cell(sc, lanes):>22}{block:>30}")


if __name__ == "__main__":
    main()
