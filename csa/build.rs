//! Builds the C kernel once per lane width. Only a C compiler is needed:
//! no system library, no network.

fn main() {
    let target_arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    println!("cargo:rerun-if-changed=c");

    let mut common = cc::Build::new();
    common
        .include("c")
        .opt_level(3)
        .flag_if_supported("-fno-strict-aliasing");
    common
        .clone()
        .file("c/tables.c")
        .compile("castmux_csa_tables");

    let mut backends: Vec<(&str, &str, &[&str])> = vec![("u64", "CSA_WIDTH_64", &[])];
    if target_arch == "x86_64" {
        backends.push(("sse2", "CSA_WIDTH_128", &["-msse2"]));
        backends.push(("avx2", "CSA_WIDTH_256", &["-mavx2"]));
        backends.push((
            "avx512",
            "CSA_WIDTH_512",
            &[
                "-mavx512f",
                "-mavx512bw",
                "-mavx512vbmi",
                "-mgfni",
                "-mavx512vl",
            ],
        ));
        println!("cargo:rustc-cfg=csa_x86_backends");
    }
    println!("cargo::rustc-check-cfg=cfg(csa_x86_backends)");
    for (name, width, flags) in backends {
        let mut b = common.clone();
        b.file("c/csa_kernel.c")
            .define("CSA_BACKEND", name)
            .define(width, None);
        if name == "u64" {
            b.define("CSA_EXPORT_TABLES", None);
        }
        for f in flags {
            b.flag(f);
        }
        b.compile(&format!("castmux_csa_{name}"));
    }
}
