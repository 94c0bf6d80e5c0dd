//! The built-in CAS through the real binary (issue 4's proof): init -> packages -> card A
//! entitled, B not, C expired -> scramble a sample with 1 s crypto periods and the
//! built-in CAS -> descramble with A gives every ES packet back byte for byte; B and C
//! descramble nothing and the refusals are reported. A card exported before it was
//! entitled learns its rights from its EMM in the stream.

mod cli_support;

use std::collections::BTreeSet;
use std::path::Path;

use cli_support::*;

fn db_args<'a>(db: &'a Path, args: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["--db", s(db)];
    v.extend_from_slice(args);
    v
}

/// Descramble `input` with `card`; returns (output packets, --stats JSON). Cards that
/// are refused leave packets scrambled, which is an error without --allow-scrambled
/// (tests/softcard_play.rs checks that exit status); here the counters are checked.
fn play(dir: &Path, card: &Path, input: &Path, name: &str) -> (Vec<Packet>, serde_json::Value) {
    let out = dir.join(format!("{name}.clear.ts"));
    let res = castmux(&[
        "descramble",
        "--card",
        s(card),
        "-i",
        s(input),
        "-o",
        s(&out),
        "--stats",
        "--allow-scrambled",
    ]);
    assert!(
        res.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&res.stderr)
    );
    let stats = serde_json::from_slice(&res.stdout).expect("stats JSON");
    (packets(&out), stats)
}

#[test]
fn builtin_cas_entitled_card_descrambles_and_others_are_refused() {
    let dir = tmp();
    let d = dir.path();
    let db = d.join("cas.db");
    ok(&db_args(&db, &["init"]));
    ok(&db_args(&db, &["package", "add", "news"]));
    ok(&db_args(&db, &["package", "add", "sport"]));
    ok(&db_args(
        &db,
        &[
            "card",
            "add",
            "--serial",
            "2100000001",
            "--packages",
            "news",
            "--days",
            "30",
        ],
    ));
    ok(&db_args(
        &db,
        &[
            "card",
            "add",
            "--serial",
            "2100000002",
            "--packages",
            "sport",
            "--days",
            "30",
        ],
    ));
    ok(&db_args(
        &db,
        &[
            "card",
            "add",
            "--serial",
            "2100000003",
            "--packages",
            "news",
            "--start",
            "2020-01-01",
            "--finish",
            "2020-02-01",
        ],
    ));
    // D is exported while it has only sport, then moved to news: its EMM tells it
    ok(&db_args(
        &db,
        &[
            "card",
            "add",
            "--serial",
            "2100000004",
            "--packages",
            "sport",
            "--days",
            "30",
        ],
    ));
    let cards: Vec<_> = ["a", "b", "c", "d"]
        .iter()
        .zip(2100000001u64..)
        .map(|(n, serial)| {
            let f = d.join(format!("{n}.json"));
            ok(&db_args(
                &db,
                &["card", "export-key", &serial.to_string(), "-o", s(&f)],
            ));
            f
        })
        .collect();
    ok(&db_args(
        &db,
        &["card", "set", "2100000004", "--packages", "news"],
    ));

    let scrambled = d.join("out.ts");
    let input = sample("spts.ts");
    // the news channel, scrambled under the built-in CAS, to `out`; then `extra`
    let scramble_news = |out: &std::path::Path, extra: &[&str]| {
        let mut args = vec![
            "scramble",
            "-i",
            s(&input),
            "-o",
            s(out),
            "--cas",
            "builtin",
            "--packages",
            "news",
            "--crypto-period",
            "1s",
            "--emm-bitrate",
            "100k",
        ];
        args.extend_from_slice(extra);
        ok(&db_args(&db, &args));
    };
    scramble_news(&scrambled, &[]);
    let out = packets(&scrambled);
    let psi_out = psi(&out);
    assert_eq!(psi_out.program_ca.get(&1), Some(&vec![(0x5510, 0x1FF0)]));
    assert_eq!(psi_out.cat_ca, vec![(0x5510, 0x1FF1)]);
    let es = BTreeSet::from([0x100u16, 0x101]);
    let want = on_pids(&packets(&input), &es);
    assert!(on_pids(&out, &es)
        .iter()
        .all(|p| tsc(p) != 0 || !has_payload(p)));

    // A: entitled -> every ES packet back
    let (clear, st) = play(d, &cards[0], &scrambled, "a");
    assert_eq!(st["refusals"], 0, "{st}");
    assert!(st["parity_flips"].as_u64().unwrap() >= 3, "{st}");
    assert!(on_pids(&clear, &es) == want, "A: descrambled ES differs");

    // B: not entitled, C: expired -> nothing descrambled, the refusal said
    for (card, name, why) in [(&cards[1], "b", "entitled"), (&cards[2], "c", "expired")] {
        let (clear, st) = play(d, card, &scrambled, name);
        assert_eq!(st["descrambled"], 0, "{name}: {st}");
        assert!(st["refusals"].as_u64().unwrap() > 0, "{name}: {st}");
        let said = st["last_refusal"].as_str().unwrap_or("").to_lowercase();
        assert!(said.contains(why), "{name}: {said}");
        let got = on_pids(&clear, &es);
        assert!(
            got.iter().all(|p| tsc(p) != 0 || !has_payload(p)),
            "{name}: clear ES"
        );
    }

    // D: entitled by its EMM; from the first descrambled packet on, all of it is right,
    // and the card file now holds the new rights
    let (clear, st) = play(d, &cards[3], &scrambled, "d");
    assert!(st["emms"].as_u64().unwrap() > 0, "{st}");
    assert!(
        st["descrambled"].as_u64().unwrap() > 1000,
        "D learned news from its EMM: {st}"
    );
    let got = on_pids(&clear, &es);
    let first = got
        .iter()
        .position(|p| tsc(p) == 0 && has_payload(p))
        .unwrap();
    assert!(got[first..] == want[first..], "D: descrambled ES differs");
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cards[3]).unwrap()).unwrap();
    assert_eq!(saved["entitlements"]["access"], "00000001", "{saved}");
    // the EMMs were group EMMs (0x84) and slim unique ones (0x83), several to a packet
    let grouped = emm_tables(&out);
    assert!(
        grouped.contains(&0x83) && grouped.contains(&0x84),
        "{grouped:?}"
    );
    assert!(!grouped.contains(&0x82), "{grouped:?}");

    // --emm-format unique: the format-1 EMMs of older castmux versions, which A still reads
    let unique = d.join("unique.ts");
    scramble_news(&unique, &["--emm-format", "unique"]);
    assert_eq!(
        emm_tables(&packets(&unique)),
        BTreeSet::from([0x82]),
        "unique EMMs only"
    );
    let (clear, st) = play(d, &cards[0], &unique, "a2");
    assert_eq!(st["refusals"], 0, "{st}");
    assert!(on_pids(&clear, &es) == want, "A: descrambled ES differs");
}

/// The table_id of each EMM section that begins in a packet of PID 0x1FF1 (first ones
/// after the pointer_field; sections packed behind it are not looked at).
fn emm_tables(pkts: &[Packet]) -> BTreeSet<u8> {
    pkts.iter()
        .filter(|p| pid(p) == 0x1FF1 && p[1] & 0x40 != 0 && p[3] & 0x30 == 0x10)
        .filter_map(|p| p.get(5 + usize::from(p[4])).copied())
        .collect()
}

#[test]
fn builtin_cas_needs_packages_and_a_store() {
    let dir = tmp();
    let db = dir.path().join("none.db");
    let input = sample("spts.ts");
    let out = dir.path().join("o.ts");
    let res = castmux(&db_args(
        &db,
        &[
            "scramble",
            "-i",
            s(&input),
            "-o",
            s(&out),
            "--cas",
            "builtin",
            "--packages",
            "news",
        ],
    ));
    assert!(!res.status.success());
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(err.contains("castmux init"), "{err}");
    ok(&db_args(&db, &["init"]));
    let res = castmux(&db_args(
        &db,
        &[
            "scramble",
            "-i",
            s(&input),
            "-o",
            s(&out),
            "--cas",
            "builtin",
        ],
    ));
    assert!(!res.status.success());
    assert!(String::from_utf8_lossy(&res.stderr).contains("--packages"));
    let res = castmux(&db_args(
        &db,
        &[
            "scramble",
            "-i",
            s(&input),
            "-o",
            s(&out),
            "--cas",
            "builtin",
            "--packages",
            "nope",
        ],
    ));
    assert!(!res.status.success());
    assert!(String::from_utf8_lossy(&res.stderr).contains("PACKAGE_NOT_FOUND"));
}
