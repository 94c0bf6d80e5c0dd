//! The provisioning CLI end to end: `castmux init|package|card|event|keys` on a store in a
//! temp dir, checked through the binary's output and through the library.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use castmux::cas::store::{AuditQuery, Store};
use castmux::cas::{derive_card_key, CardFile, CardSerial};

mod pg_support;

use pg_support::{block_on, Backend};

struct Db {
    _dir: tempfile::TempDir,
    /// The store's file (SQLite); a path in the temp dir that is never made (PostgreSQL).
    path: PathBuf,
    /// What `--db` is given: the file, or the database's URL.
    at: String,
}

impl Db {
    fn on(backend: Backend) -> Db {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("castmux.db");
        let at = match backend {
            Backend::Sqlite => path.to_str().expect("utf-8 temp dir").to_owned(),
            Backend::Postgres => pg_support::fresh_database(),
        };
        Db {
            _dir: dir,
            path,
            at,
        }
    }

    fn dir(&self) -> &Path {
        self.path.parent().expect("parent")
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_castmux"))
            .arg("--db")
            .arg(&self.at)
            .args(args)
            .env("CASTMUX_LOG", "warn")
            .env_remove("CASTMUX_DB")
            .output()
            .expect("run castmux")
    }

    /// Run and require success; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "castmux {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 stdout")
    }

    /// Run and require failure with `error: CODE:`; returns stderr.
    fn fails(&self, args: &[&str], code: &str) -> String {
        let out = self.run(args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "castmux {args:?} succeeded");
        assert!(
            err.contains(&format!("error: {code}: ")),
            "castmux {args:?}: expected {code}, got: {err}"
        );
        err
    }

    fn csv(&self) -> String {
        self.ok(&["card", "list", "--csv"])
    }

    fn store<T>(&self, f: impl AsyncFnOnce(&Store) -> T) -> T {
        pg_support::with_store(&self.at, f)
    }
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).expect("json output")
}

fn setup() -> Db {
    setup_on(Backend::Sqlite)
}

fn setup_on(backend: Backend) -> Db {
    let db = Db::on(backend);
    db.ok(&["init"]);
    for p in ["sport", "movies", "kids"] {
        db.ok(&["package", "add", p]);
    }
    db
}

fn cards_from_add_to_csv_round_trip(b: Backend) {
    let db = setup_on(b);
    let pk = json(&db.ok(&["package", "list", "--json"]));
    let bits: Vec<u64> = pk
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["bit"].as_u64().unwrap())
        .collect();
    assert_eq!(bits, [0, 1, 2], "lowest free bits in order");

    let out = db.ok(&[
        "card",
        "add",
        "--name",
        "Ivan Petrov",
        "--info",
        "Moscow, \"Pupkina\" 3-5",
        "--packages",
        "sport,kids",
        "--start",
        "2024-01-01",
        "--days",
        "30",
        "--pair",
        "1",
    ]);
    assert!(out.contains("2100000000"), "{out}");
    let out = db.ok(&[
        "card",
        "add",
        "--count",
        "100",
        "--access-criteria",
        "00000010",
        "--start",
        "1586693700",
        "--finish",
        "2030-01-01T12:30Z",
    ]);
    assert!(out.contains("2100000001..2100000100"), "{out}");

    let show = json(&db.ok(&["card", "show", "2100000000", "--json"]));
    assert_eq!(show["serial_no"], "2100000000");
    assert_eq!(show["name"], "Ivan Petrov");
    assert_eq!(show["access_criteria"], "00000101");
    assert_eq!(show["packages"], serde_json::json!(["sport", "kids"]));
    assert_eq!(show["start"], "1704067200");
    assert_eq!(show["finish"], (1704067200 + 30 * 86400).to_string());
    assert_eq!(show["pair"], "1");
    assert_eq!(show["state"], "enabled");
    let text = db.ok(&["card", "show", "2100000000"]);
    assert!(text.contains("2024-01-01T00:00:00Z"), "{text}");

    let list = json(&db.ok(&["card", "list", "--json"]));
    assert_eq!(list.as_array().unwrap().len(), 101);
    assert_eq!(list[100]["serial_no"], "2100000100");
    assert_eq!(list[100]["finish"], "1893501000");
    let csv = db.csv();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "serial_no,name,info,access_criteria,pair,start,finish"
    );
    assert_eq!(
        lines[1],
        "2100000000,Ivan Petrov,\"Moscow, \"\"Pupkina\"\" 3-5\",00000101,1,1704067200,1706659200"
    );
    assert_eq!(lines.len(), 102);
    let filtered = db.csv_filtered("petrov");
    assert_eq!(filtered.lines().count(), 2, "{filtered}");

    // set / disable / enable / remove
    let set = db.ok(&[
        "card",
        "set",
        "2100000005",
        "--name",
        "Marina",
        "--packages",
        "movies,kids",
        "--finish",
        "2031-01-01",
    ]);
    assert!(set.contains("Marina") && set.contains("00000110"), "{set}");
    let c5 = json(&db.ok(&["card", "show", "2100000005", "--json"]));
    assert_eq!(c5["finish"], "1924992000");
    assert_eq!(c5["start"], "1586693700", "unchanged fields stay");
    db.ok(&["card", "set", "2100000005", "--days", "10"]);
    let c5 = json(&db.ok(&["card", "show", "2100000005", "--json"]));
    assert_eq!(c5["finish"], (1586693700 + 10 * 86400).to_string());
    db.ok(&["card", "disable", "2100000007"]);
    let disabled = json(&db.ok(&["card", "list", "--json", "--filter", "state=disabled"]));
    assert_eq!(disabled.as_array().unwrap().len(), 1);
    assert_eq!(disabled[0]["serial_no"], "2100000007");
    db.ok(&["card", "enable", "2100000007"]);
    let disabled = json(&db.ok(&["card", "list", "--json", "--filter", "state=disabled"]));
    assert_eq!(disabled.as_array().unwrap().len(), 0);
    db.ok(&["card", "remove", "2100000009"]);
    db.fails(&["card", "show", "2100000009"], "SMARTCARD_NOT_FOUND");
    let kids = json(&db.ok(&["card", "list", "--json", "--filter", "package=kids"]));
    assert_eq!(kids.as_array().unwrap().len(), 2);

    // next allocation continues after the highest allocated serial
    let out = db.ok(&["card", "add"]);
    assert!(out.contains("2100000101"), "{out}");

    // export -> import into a fresh store gives the same cards
    let file = db.dir().join("cards.csv");
    db.ok(&["card", "export", file.to_str().unwrap()]);
    let exported = std::fs::read_to_string(&file).unwrap();
    assert_eq!(exported, db.csv());
    let fresh = setup_on(b);
    let out = fresh.ok(&["card", "import", file.to_str().unwrap()]);
    assert!(out.contains("101 new"), "{out}");
    assert_eq!(fresh.csv(), exported);
    // importing again overwrites, adds nothing
    let out = fresh.ok(&["card", "import", file.to_str().unwrap()]);
    assert!(out.contains("0 new, 101 updated"), "{out}");
    assert_eq!(fresh.csv(), exported);
}

impl Db {
    fn csv_filtered(&self, f: &str) -> String {
        self.ok(&["card", "list", "--csv", "--filter", f])
    }
}

fn import_with_a_bad_row_changes_nothing_and_names_the_line(b: Backend) {
    let db = setup_on(b);
    db.ok(&["card", "add", "--count", "3", "--packages", "sport"]);
    let before = db.csv();
    let mut text = String::from("serial_no,name,info,access_criteria,pair,start,finish\n");
    // line 1 is the header; rows are lines 2..=70 and line 57 carries a bad start
    for line in 2..=70 {
        let start = if line == 57 {
            "12:00 yesterday"
        } else {
            "1586693700"
        };
        text.push_str(&format!(
            "{},Name {line},Info,00000001,0,{start},1589285580\n",
            2200000000u64 + line
        ));
    }
    // the first row overwrites an existing card: that must not happen either
    text = text.replacen("2200000002", "2100000000", 1);
    let file = db.dir().join("bad.csv");
    std::fs::write(&file, &text).unwrap();
    let err = db.fails(&["card", "import", file.to_str().unwrap()], "START_ERROR");
    assert!(
        err.contains("line 57") && err.contains("field start"),
        "{err}"
    );
    assert_eq!(db.csv(), before, "store unchanged");

    // other bad rows: each names its code and line
    let cases = [
        ("0000000x", "ACCESS_CRITERIA_ERROR", "access_criteria"),
        ("pair2", "PAIR_ERROR", "pair"),
        ("finish-early", "FINISH_ERROR", "finish"),
        ("serial", "SERIAL_ERROR", "serial_no"),
    ];
    for (what, code, field) in cases {
        let row = match what {
            "0000000x" => "2300000000,a,b,0000000x,0,1586693700,1589285580",
            "pair2" => "2300000000,a,b,00000001,2,1586693700,1589285580",
            "finish-early" => "2300000000,a,b,00000001,0,1589285580,1586693700",
            _ => "23000x0000,a,b,00000001,0,1586693700,1589285580",
        };
        let text = format!(
            "serial_no,name,info,access_criteria,pair,start,finish\n2300000001,ok,,00000001,0,1,2\n{row}\n"
        );
        std::fs::write(&file, text).unwrap();
        let err = db.fails(&["card", "import", file.to_str().unwrap()], code);
        assert!(
            err.contains("line 3") && err.contains(&format!("field {field}")),
            "{err}"
        );
        assert_eq!(db.csv(), before, "store unchanged after {code}");
    }
    std::fs::write(
        &file,
        "serial_no,name,info,access_criteria,pair,start\n1,a,b,1,0,1\n",
    )
    .unwrap();
    db.fails(&["card", "import", file.to_str().unwrap()], "CSV_ERROR");
    std::fs::write(&file, "serial,name\n").unwrap();
    db.fails(&["card", "import", file.to_str().unwrap()], "CSV_ERROR");
    assert_eq!(db.csv(), before);
}

fn every_named_error(b: Backend) {
    let none = Db::on(b);
    let err = none.fails(&["card", "list"], "STORE_NOT_FOUND");
    assert!(err.contains("castmux init"), "{err}");
    assert!(!none.path.exists(), "a failed open creates no file");

    let db = setup_on(b);
    db.fails(&["init"], "STORE_EXISTS");
    db.ok(&["card", "add", "--serial", "2100000050"]);
    db.ok(&[
        "event",
        "add",
        "final",
        "--start",
        "2030-06-01T18:00Z",
        "--end",
        "2030-06-01T21:00Z",
    ]);
    let before = db.csv();
    // the export-key case writes (would write) into the test's own directory, never a
    // system path such as /dev/null
    let never = db.dir().join("never.json");
    let never_s = never.to_str().expect("utf-8 path");
    let bad: &[(&[&str], &str)] = &[
        (
            &["card", "add", "--access-criteria", "0000000201"],
            "ACCESS_CRITERIA_ERROR",
        ),
        (&["card", "add", "--start", "tomorrow"], "START_ERROR"),
        (&["card", "add", "--finish", "2024-02-30"], "FINISH_ERROR"),
        (
            &[
                "card",
                "add",
                "--start",
                "2024-01-02",
                "--finish",
                "2024-01-01",
            ],
            "FINISH_ERROR",
        ),
        (&["card", "add", "--days", "many"], "FINISH_ERROR"),
        (&["card", "add", "--pair", "2"], "PAIR_ERROR"),
        (
            &["card", "add", "--serial", "2100000050"],
            "SMARTCARD_EXISTS",
        ),
        (
            &["card", "add", "--serial", "2100000049", "--count", "5"],
            "SMARTCARD_EXISTS",
        ),
        (&["card", "add", "--serial", "21x"], "SERIAL_ERROR"),
        (&["card", "add", "--count", "0"], "COUNT_ERROR"),
        (&["card", "add", "--count", "lots"], "COUNT_ERROR"),
        (
            &["card", "add", "--packages", "sport,news"],
            "PACKAGE_NOT_FOUND",
        ),
        (&["card", "show", "2100000001"], "SMARTCARD_NOT_FOUND"),
        (
            &["card", "set", "2100000001", "--name", "x"],
            "SMARTCARD_NOT_FOUND",
        ),
        (&["card", "set", "2100000050", "--pair", "x"], "PAIR_ERROR"),
        (
            &["card", "set", "2100000050", "--finish", "2000-01-01"],
            "FINISH_ERROR",
        ),
        (&["card", "disable", "2100000001"], "SMARTCARD_NOT_FOUND"),
        (&["card", "enable", "2100000001"], "SMARTCARD_NOT_FOUND"),
        (&["card", "remove", "2100000001"], "SMARTCARD_NOT_FOUND"),
        (
            &["card", "export-key", "2100000001", "-o", never_s],
            "SMARTCARD_NOT_FOUND",
        ),
        (
            &["card", "grant-event", "2100000050", "cup"],
            "EVENT_NOT_FOUND",
        ),
        (
            &["card", "grant-event", "2100000001", "final"],
            "SMARTCARD_NOT_FOUND",
        ),
        (&["package", "add", "sport"], "PACKAGE_EXISTS"),
        (&["package", "add", "news", "--bit", "1"], "PACKAGE_EXISTS"),
        (&["package", "add", "news", "--bit", "64"], "BIT_ERROR"),
        (&["package", "add", "a,b"], "NAME_ERROR"),
        (
            &["keys", "rotate", "--package", "news"],
            "PACKAGE_NOT_FOUND",
        ),
        (
            &[
                "event",
                "add",
                "final",
                "--start",
                "2030-01-01",
                "--end",
                "2030-01-02",
            ],
            "EVENT_EXISTS",
        ),
        (
            &[
                "event",
                "add",
                "cup",
                "--start",
                "2030-01-02",
                "--end",
                "2030-01-01",
            ],
            "FINISH_ERROR",
        ),
        (
            &["event", "add", "cup", "--start", "x", "--end", "2030-01-01"],
            "START_ERROR",
        ),
        (&["keys", "schedule", "soon"], "ROTATE_ERROR"),
    ];
    for (args, code) in bad {
        db.fails(args, code);
    }
    assert_eq!(db.csv(), before, "no failed command changed a card");
    // the failed export left no file, not even a temporary one
    let names: Vec<String> = std::fs::read_dir(db.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.contains("never.json")), "{names:?}");
    let pk = json(&db.ok(&["package", "list", "--json"]));
    assert_eq!(pk.as_array().unwrap().len(), 3);

    if b == Backend::Postgres {
        return;
    }
    // a file that is not a store
    let junk = Db::on(b);
    std::fs::write(&junk.path, vec![0x55u8; 8192]).unwrap();
    junk.fails(&["card", "list"], "STORE_ERROR");
}

fn export_key_writes_a_private_card_file_with_the_derived_key(b: Backend) {
    let db = setup_on(b);
    db.ok(&[
        "card",
        "add",
        "--packages",
        "sport,movies",
        "--start",
        "2024-01-01",
        "--finish",
        "2030-01-01",
    ]);
    db.ok(&[
        "event",
        "add",
        "final",
        "--start",
        "2030-06-01T18:00Z",
        "--end",
        "2030-06-01T21:00Z",
    ]);
    db.ok(&["card", "grant-event", "2100000000", "final"]);
    let file = db.dir().join("card.json");
    db.ok(&[
        "card",
        "export-key",
        "2100000000",
        "-o",
        file.to_str().unwrap(),
    ]);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "card.json mode {mode:o}");
    }
    let card: CardFile = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(card.serial, CardSerial(2100000000));
    assert_eq!(card.ca_system_id, 0x5510);
    let (root, keys, changed) = db.store(async |s| {
        (
            s.root_key().clone(),
            s.service_keys().await.unwrap(),
            s.emm_cards().await.unwrap(),
        )
    });
    assert_eq!(card.card_key, derive_card_key(&root, card.serial));
    let e = &card.entitlements;
    assert_eq!(e.access.0, 0b011);
    assert_eq!(
        (e.start, e.finish, e.pair, e.enabled),
        (1704067200, 1893456000, 0, true)
    );
    assert_eq!(e.events.len(), 1);
    assert_eq!(
        e.events[0].bit.get(),
        3,
        "the event took the lowest free bit"
    );
    assert_eq!(e.events[0].start, 1906567200);
    // current and next key of bits 0, 1 (packages) and 3 (the event), not of bit 2
    let want: Vec<_> = keys.iter().filter(|k| k.bit.get() != 2).cloned().collect();
    assert_eq!(want.len(), 6);
    assert_eq!(card.service_keys, want);
    // the EMMG's view agrees
    let (records, _) = changed;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].card_key, card.card_key);
    assert_eq!(&records[0].entitlements, e);
}

fn keys_rotate_and_every_key_operation_is_audited_without_key_material(b: Backend) {
    let db = setup_on(b);
    let status = db.ok(&["keys", "status"]);
    assert!(
        status.contains("sport") && status.contains("v1") && status.contains("v2"),
        "{status}"
    );
    let before = db.store(async |s| s.service_keys().await.unwrap());
    assert_eq!(before.len(), 6);
    let out = db.ok(&["keys", "rotate", "--package", "movies"]);
    assert!(out.contains("bit 1: current v2, next v3"), "{out}");
    db.ok(&["keys", "rotate"]);
    let after = db.store(async |s| s.service_keys().await.unwrap());
    let versions: Vec<(u8, u32)> = after.iter().map(|k| (k.bit.get(), k.version)).collect();
    assert_eq!(versions, [(0, 2), (0, 3), (1, 3), (1, 4), (2, 2), (2, 3)]);
    // the old next key is now the current one, unchanged
    assert_eq!(after[0].key, before[1].key);
    let status = db.ok(&["keys", "status"]);
    assert!(
        status
            .lines()
            .any(|l| l.contains("movies") && l.contains("v3") && l.contains("v4")),
        "{status}"
    );
    // rotation schedule: nothing due right after a rotation, everything a day later
    db.ok(&["keys", "schedule", "12h"]);
    let now = castmux::cas::store::time::now();
    let (none, due) = db.store(async |s| {
        (
            s.rotate_due(now).await.unwrap(),
            s.rotate_due(now + 86_400).await.unwrap(),
        )
    });
    assert!(none.is_empty());
    assert_eq!(due.len(), 3);
    db.ok(&["card", "add", "--packages", "sport"]);
    let file = db.dir().join("card.json");
    db.ok(&[
        "card",
        "export-key",
        "2100000000",
        "-o",
        file.to_str().unwrap(),
    ]);

    let (root, keys, audit) = db.store(async |s| {
        let mut audit: Vec<(String, String, String)> = s
            .audit_log(&AuditQuery {
                limit: 100_000,
                ..AuditQuery::default()
            })
            .await
            .unwrap()
            .into_iter()
            .map(|e| (e.action, e.subject, e.detail))
            .collect();
        audit.reverse();
        (s.root_key().clone(), s.service_keys().await.unwrap(), audit)
    });
    let actions: Vec<&str> = audit.iter().map(|a| a.0.as_str()).collect();
    for want in [
        "store.init",
        "root-key.create",
        "package.add",
        "service-key.create",
        "service-key.rotate",
        "keys.schedule",
        "card.add",
        "card.export-key",
    ] {
        assert!(actions.contains(&want), "no {want} in {actions:?}");
    }
    assert_eq!(
        actions
            .iter()
            .filter(|a| **a == "service-key.rotate")
            .count(),
        7
    );
    let card_key = derive_card_key(&root, CardSerial(2100000000)).expose_hex();
    let mut secrets = vec![root.expose_hex(), card_key];
    secrets.extend(keys.iter().map(|k| k.key.expose_hex()));
    for (a, s, d) in &audit {
        let row = format!("{a} {s} {d}").to_lowercase();
        for k in &secrets {
            assert!(!row.contains(k.as_str()), "key material in audit row {row}");
        }
    }
    if b == Backend::Postgres {
        return;
    }
    // the raw file: once compacted (VACUUM drops stale page copies, the checkpoint empties
    // the WAL) the root key sits in the settings row once and nowhere else
    block_on(async {
        use sqlx::Connection;
        let mut c = sqlx::sqlite::SqliteConnection::connect_with(
            &sqlx::sqlite::SqliteConnectOptions::new().filename(&db.path),
        )
        .await
        .unwrap();
        sqlx::query("VACUUM").execute(&mut c).await.unwrap();
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&mut c)
            .await
            .unwrap();
        c.close().await.unwrap();
    });
    let mut bytes = std::fs::read(&db.path).unwrap();
    if let Ok(wal) = std::fs::read(db.path.with_extension("db-wal")) {
        bytes.extend(wal);
    }
    let hex = root.expose_hex();
    let hits = bytes
        .windows(hex.len())
        .filter(|w| *w == hex.as_bytes())
        .count();
    assert_eq!(
        hits, 1,
        "root key hex found {hits} times in the store files"
    );
}

fn killed_bulk_add_leaves_the_store_empty_or_complete(b: Backend) {
    let db = setup_on(b);
    let mut outcomes = (0, 0);
    let mut cards = 0u64;
    for i in 0..24u64 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_castmux"))
            .arg("--db")
            .arg(&db.at)
            .args(["card", "add", "--count", "10000", "--packages", "sport"])
            .env("CASTMUX_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // spread the kill over start-up, the transaction and the commit
        std::thread::sleep(std::time::Duration::from_millis(2 + i * 3));
        let _ = child.kill(); // SIGKILL on unix
        let status = child.wait().unwrap();
        if b == Backend::Postgres {
            // its server process may still be committing what the client sent
            pg_support::wait_for_other_sessions(&db.at);
        }
        let (count, check) = db.store(async |s| {
            let (cards, _) = s.emm_cards().await.unwrap();
            (cards.len() as u64, s.integrity_check().await.unwrap())
        });
        assert_eq!(check, "ok", "integrity after kill {i}");
        assert!(
            count == cards || count == cards + 10_000,
            "after kill {i} ({status:?}): {count} cards, was {cards}"
        );
        if count == cards {
            outcomes.0 += 1;
        } else {
            outcomes.1 += 1;
        }
        cards = count;
    }
    println!(
        "24 kills: {} left nothing, {} left 10000 cards",
        outcomes.0, outcomes.1
    );
}

fn fifty_thousand_cards_in_seconds(b: Backend) {
    let db = setup_on(b);
    let t0 = Instant::now();
    let out = db.ok(&[
        "card",
        "add",
        "--count",
        "50000",
        "--packages",
        "sport,movies",
    ]);
    let took = t0.elapsed();
    println!(
        "card add --count 50000: {:.2} s (process included); {}",
        took.as_secs_f64(),
        out.trim()
    );
    assert!(took.as_secs() < 30, "took {took:?}");
    let t0 = Instant::now();
    let show = json(&db.ok(&["card", "show", "2100049999", "--json"]));
    println!(
        "card show among 50000: {:.1} ms (process included)",
        t0.elapsed().as_secs_f64() * 1e3
    );
    assert_eq!(show["access_criteria"], "00000011");
    let (n, seq) = db.store(async |s| {
        let (cards, seq) = s.emm_cards().await.unwrap();
        (cards.len(), seq)
    });
    assert_eq!(n, 50_000);
    // the change feed: one card changed since
    db.ok(&["card", "set", "2100000042", "--packages", "kids"]);
    db.ok(&["card", "remove", "2100000043"]);
    let (changed, seq2) = db.store(async |s| s.cards_changed_since(seq).await.unwrap());
    assert!(seq2 > seq);
    let serials: Vec<u64> = changed.iter().map(|c| c.serial.0).collect();
    assert_eq!(serials, [2100000042, 2100000043]);
    assert_eq!(changed[0].entitlements.access.0, 0b100);
    assert!(
        !changed[1].entitlements.enabled,
        "a removed card comes back disabled"
    );
}

#[test]
fn a_locked_store_fails_with_store_locked_and_stays_unchanged() {
    let db = setup();
    db.ok(&["card", "add"]);
    let before = db.csv();
    let started = Instant::now();
    block_on(async {
        use sqlx::Connection;
        let mut conn = sqlx::sqlite::SqliteConnection::connect_with(
            &sqlx::sqlite::SqliteConnectOptions::new().filename(&db.path),
        )
        .await
        .unwrap();
        // another writer holds the write lock for the whole command
        let tx = conn.begin_with("BEGIN IMMEDIATE").await.unwrap();
        let path = db.path.clone();
        let out = tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_castmux"))
                .arg("--db")
                .arg(&path)
                .args(["card", "add", "--count", "10"])
                .env("CASTMUX_LOG", "warn")
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(err.contains("error: STORE_LOCKED: "), "{err}");
        tx.rollback().await.unwrap();
    });
    println!(
        "STORE_LOCKED after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(db.csv(), before);
}

on_every_backend!(
    cards_from_add_to_csv_round_trip,
    import_with_a_bad_row_changes_nothing_and_names_the_line,
    every_named_error,
    export_key_writes_a_private_card_file_with_the_derived_key,
    keys_rotate_and_every_key_operation_is_audited_without_key_material,
    killed_bulk_add_leaves_the_store_empty_or_complete,
    fifty_thousand_cards_in_seconds,
);
