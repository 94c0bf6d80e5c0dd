//! Derives the boolean circuits of the seven stream-cipher S-boxes (5 bits in,
//! 2 bits out) for the bit-sliced kernels and prints them as C
//! (`c/csa_stream_sboxes.h`). Only tables.rs goes in; every circuit is checked
//! against the table on all 32 inputs before it is printed.
//!
//! Run: `cargo run -p castmux-csa --example stream_sbox_circuits > csa/c/csa_stream_sboxes.h`
//!
//! The search: the cheapest formula (tree of AND, OR, XOR, ANDNOT and NOT) of
//! every 4-input function, by cost level; a 5-input output is split on one
//! input into two 4-input halves, recombined in one of a few forms; both
//! outputs of an S-box are chosen together, so shared subexpressions (merged
//! by the function they compute) are counted once.

#[allow(dead_code)]
mod tables {
    include!("../src/tables.rs");
}

use std::collections::HashMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Op {
    And,
    Or,
    Xor,
    /// `!a & b`, one instruction on x86 SIMD (PANDN).
    AndNot,
}

impl Op {
    fn apply(self, a: u32, b: u32) -> u32 {
        match self {
            Op::And => a & b,
            Op::Or => a | b,
            Op::Xor => a ^ b,
            Op::AndNot => !a & b,
        }
    }
}

/// The cheapest formula of every 4-input function (16-bit truth tables) up to `max_cost`.
struct Formulas {
    cost: Vec<u8>,
    how: Vec<Option<(Op, u16, u16)>>,
}

const VARS4: [u16; 4] = [0xaaaa, 0xcccc, 0xf0f0, 0xff00];

impl Formulas {
    fn search(max_cost: u8) -> Formulas {
        let mut cost = vec![u8::MAX; 1 << 16];
        let mut how = vec![None; 1 << 16];
        let mut levels: Vec<Vec<u16>> = vec![Vec::new()];
        for f in VARS4.into_iter().chain([0, 0xffff]) {
            cost[f as usize] = 0;
            levels[0].push(f);
        }
        for c in 1..=max_cost {
            let mut level = Vec::new();
            for a in 0..c {
                let b = c - 1 - a;
                for &g in &levels[a as usize] {
                    for &h in &levels[b as usize] {
                        for op in [Op::And, Op::Or, Op::Xor, Op::AndNot] {
                            let f = op.apply(g as u32, h as u32) as u16;
                            if cost[f as usize] == u8::MAX {
                                cost[f as usize] = c;
                                how[f as usize] = Some((op, g, h));
                                level.push(f);
                            }
                        }
                    }
                }
            }
            levels.push(level);
        }
        Formulas { cost, how }
    }
}

/// Truth table of input `i` of five.
fn var5(i: usize) -> u32 {
    (0..32u32)
        .filter(|x| x >> i & 1 == 1)
        .fold(0, |t, x| t | 1 << x)
}

/// The 4-input function left when input `v` of `f` is fixed to `bit` (inputs in order).
fn restrict(f: u32, v: usize, bit: u32) -> u16 {
    let mut out = 0u16;
    for y in 0..16u32 {
        let low = y & ((1 << v) - 1);
        let x = low | bit << v | (y >> v) << (v + 1);
        out |= ((f >> x & 1) as u16) << y;
    }
    out
}

/// A 4-input function of the inputs other than `v`, as a 5-input truth table.
fn lift(g: u16, v: usize) -> u32 {
    (0..32u32).fold(0, |t, x| {
        let y = (x & ((1 << v) - 1)) | (x >> (v + 1)) << v;
        t | ((g >> y & 1) as u32) << x
    })
}

/// A circuit under construction: nodes merged by the function they compute.
#[derive(Clone, Default)]
struct Circuit {
    nodes: Vec<(Op, u32, u32, u32)>,
    known: HashMap<u32, ()>,
}

impl Circuit {
    fn new() -> Circuit {
        let mut c = Circuit::default();
        for i in 0..5 {
            c.known.insert(var5(i), ());
        }
        c.known.insert(0, ());
        c.known.insert(u32::MAX, ());
        c
    }

    fn gate(&mut self, op: Op, a: u32, b: u32) -> u32 {
        let f = op.apply(a, b);
        if self.known.insert(f, ()).is_none() {
            self.nodes.push((op, a, b, f));
        }
        f
    }

    /// Builds 4-input function `g` (of the inputs other than `v`) from its formula.
    fn formula(&mut self, fm: &Formulas, g: u16, v: usize) -> u32 {
        match fm.how[g as usize] {
            None => lift(g, v),
            Some((op, a, b)) => {
                let a = self.formula(fm, a, v);
                let b = self.formula(fm, b, v);
                self.gate(op, a, b)
            }
        }
    }

    /// Builds `f` split on input `v` in one of the forms (None if it does not apply).
    fn split(&mut self, fm: &Formulas, f: u32, v: usize, form: usize) -> Option<u32> {
        let (f0, f1) = (restrict(f, v, 0), restrict(f, v, 1));
        let x = var5(v);
        let ok = |g: u16| fm.cost[g as usize] != u8::MAX;
        let out = match form {
            // f0 ^ (x & (f0 ^ f1))
            0 if ok(f0) && ok(f0 ^ f1) => {
                let a = self.formula(fm, f0, v);
                let d = self.formula(fm, f0 ^ f1, v);
                let t = self.gate(Op::And, x, d);
                self.gate(Op::Xor, a, t)
            }
            // f1 ^ (!x & (f0 ^ f1))
            1 if ok(f1) && ok(f0 ^ f1) => {
                let a = self.formula(fm, f1, v);
                let d = self.formula(fm, f0 ^ f1, v);
                let t = self.gate(Op::AndNot, x, d);
                self.gate(Op::Xor, a, t)
            }
            // f0 ⊆ f1: f0 | (x & f1)
            2 if f0 & !f1 == 0 && ok(f0) && ok(f1) => {
                let a = self.formula(fm, f0, v);
                let b = self.formula(fm, f1, v);
                let t = self.gate(Op::And, x, b);
                self.gate(Op::Or, a, t)
            }
            // f1 ⊆ f0: f1 | (!x & f0)
            3 if f1 & !f0 == 0 && ok(f0) && ok(f1) => {
                let a = self.formula(fm, f1, v);
                let b = self.formula(fm, f0, v);
                let t = self.gate(Op::AndNot, x, b);
                self.gate(Op::Or, a, t)
            }
            // (x & f1) | (!x & f0)
            4 if ok(f0) && ok(f1) => {
                let a = self.formula(fm, f1, v);
                let b = self.formula(fm, f0, v);
                let t = self.gate(Op::And, x, a);
                let u = self.gate(Op::AndNot, x, b);
                self.gate(Op::Or, t, u)
            }
            _ => return None,
        };
        debug_assert_eq!(out, f);
        Some(out)
    }
}

/// Evaluates the circuit's nodes on one input, from the inputs' values.
fn check(c: &Circuit, outputs: [u32; 2], sbox: &[u8; 32]) {
    for x in 0..32u32 {
        let mut val: HashMap<u32, bool> = HashMap::new();
        for i in 0..5 {
            val.insert(var5(i), x >> i & 1 == 1);
        }
        val.insert(0, false);
        val.insert(u32::MAX, true);
        for &(op, a, b, f) in &c.nodes {
            let (a, b) = (val[&a] as u32, val[&b] as u32);
            val.insert(f, op.apply(a, b) & 1 == 1);
        }
        for (bit, o) in outputs.iter().enumerate() {
            assert_eq!(val[o] as u8, sbox[x as usize] >> bit & 1, "input {x}");
        }
    }
}

fn main() {
    let fm = Formulas::search(8);
    println!(
        "/* Generated by csa/examples/stream_sbox_circuits.rs from src/tables.rs; do not edit."
    );
    println!(
        " * The stream cipher's seven S-boxes as circuits of AND, OR, XOR, ANDNOT (W_ANDN(a, b)"
    );
    println!(" * = ~a & b) and NOT; x4 is the most significant index bit (the first input in");
    println!(
        " * tables.rs STREAM_SBOX_INPUTS), *o0 and *o1 the output bits. Checked on all 32 inputs"
    );
    println!(" * by the generator and again, compiled, by tests/kernel_vs_scalar.rs. */");
    let mut total = 0;
    for (n, sbox) in tables::STREAM_SBOX.iter().enumerate() {
        let tt = |bit: usize| (0..32).fold(0u32, |t, x| t | ((sbox[x] >> bit & 1) as u32) << x);
        let (t0, t1) = (tt(0), tt(1));
        let mut best: Option<(Circuit, [u32; 2])> = None;
        for (v0, form0) in (0..5).flat_map(|v| (0..5).map(move |f| (v, f))) {
            for (v1, form1) in (0..5).flat_map(|v| (0..5).map(move |f| (v, f))) {
                for first in 0..2 {
                    let mut c = Circuit::new();
                    let (a, b) = if first == 0 {
                        (c.split(&fm, t0, v0, form0), c.split(&fm, t1, v1, form1))
                    } else {
                        let b = c.split(&fm, t1, v1, form1);
                        (c.split(&fm, t0, v0, form0), b)
                    };
                    let (Some(a), Some(b)) = (a, b) else { continue };
                    if best
                        .as_ref()
                        .is_none_or(|(bc, _)| c.nodes.len() < bc.nodes.len())
                    {
                        best = Some((c, [a, b]));
                    }
                }
            }
        }
        let (c, outs) = best.expect("every output splits");
        check(&c, outs, sbox);
        total += c.nodes.len();
        emit(n + 1, &c, outs);
    }
    println!("/* {total} gates in all. */");
}

fn emit(n: usize, c: &Circuit, outs: [u32; 2]) {
    let mut names: HashMap<u32, String> = HashMap::new();
    for i in 0..5 {
        names.insert(var5(i), format!("x{i}"));
    }
    names.insert(0, "w_zero()".into());
    println!("static inline __attribute__((always_inline)) void");
    println!("stream_sbox{n}(W x4, W x3, W x2, W x1, W x0, W *o1, W *o0) {{");
    for (i, &(op, a, b, f)) in c.nodes.iter().enumerate() {
        let name = format!("t{i}");
        let expr = if b == u32::MAX && op == Op::Xor {
            format!("~{}", names[&a])
        } else if a == u32::MAX && op == Op::Xor {
            format!("~{}", names[&b])
        } else {
            let (a, b) = (&names[&a], &names[&b]);
            match op {
                Op::And => format!("{a} & {b}"),
                Op::Or => format!("{a} | {b}"),
                Op::Xor => format!("{a} ^ {b}"),
                Op::AndNot => format!("W_ANDN({a}, {b})"),
            }
        };
        println!("    const W {name} = {expr};");
        names.insert(f, name);
    }
    println!("    *o0 = {};", names[&outs[0]]);
    println!("    *o1 = {};", names[&outs[1]]);
    println!("}}");
}
