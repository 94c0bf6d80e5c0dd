//! The operator's web page in headless Chromium and headless Firefox, driven over the W3C
//! WebDriver protocol by hand (JSON over HTTP to chromedriver or geckodriver, with the raw
//! HTTP helpers of the API tests), against the real `castmux serve` binary and a store with
//! cards.
//!
//! The page is opened, the key entered, cards edited, added and disabled through the page,
//! and the store is checked with the CLI. A screenshot of each page is kept under
//! `target/web-screenshots/` (the README's pictures in docs/img are copies of Chromium's;
//! Firefox's are named `firefox-…`).
//!
//! Chromium and chromedriver are Debian's `chromium` and `chromium-driver`; Firefox is
//! Debian's `firefox-esr`, and geckodriver (which Debian does not package) is Mozilla's
//! crate, `cargo install geckodriver` (scripts/deps.sh installs all of them). A missing one
//! fails the test: it never skips.

mod cli_support;
mod http_support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use http_support::*;
use serde_json::{json, Value};

/// The W3C WebDriver key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// How long the page gets to show something.
const WAIT: Duration = Duration::from_secs(15);

/// A program on PATH, in cargo's bin directory or at a Debian path; a missing one fails
/// the test loudly.
fn program(name: &str, debian: &str) -> PathBuf {
    let cargo_bin = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|c| c.join("bin"));
    if let Ok(path) = std::env::var("PATH") {
        for dir in std::env::split_paths(&path).chain(cargo_bin) {
            let p = dir.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    let p = PathBuf::from(debian);
    assert!(
        p.is_file(),
        "{name} is missing: install the Debian packages chromium, chromium-driver and \
         firefox-esr, and `cargo install geckodriver` (scripts/deps.sh does); this test does \
         not skip"
    );
    p
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One request to chromedriver, read up to the end of its answer (chromedriver keeps the
/// connection open, so [`raw`]'s read to the close does not do here).
fn exchange(addr: SocketAddr, method: &str, path: &str, body: Option<Value>) -> Reply {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut s = TcpStream::connect(addr).expect("connect to chromedriver");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    loop {
        let n = s.read(&mut chunk).expect("chromedriver's answer");
        buf.extend_from_slice(&chunk[..n]);
        let framed = |r: &Reply| {
            r.header("content-length").is_some() || r.header("transfer-encoding").is_some()
        };
        match parse(&buf) {
            Some(r) if n == 0 || framed(&r) => return r,
            _ if n == 0 => panic!(
                "chromedriver closed without an answer: {:?}",
                String::from_utf8_lossy(&buf)
            ),
            _ => {}
        }
    }
}

/// The browsers the page is tested in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Browser {
    Chromium,
    Firefox,
}

impl Browser {
    /// A screenshot's file name: Chromium's are the README's, Firefox's prefixed.
    fn shot(self, name: &str) -> String {
        match self {
            Browser::Chromium => name.to_owned(),
            Browser::Firefox => format!("firefox-{name}"),
        }
    }
}

/// The browser's WebDriver server (chromedriver or geckodriver) as a child process;
/// killed on drop.
struct Driver {
    child: Child,
    addr: SocketAddr,
    browser: Browser,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    fn start(browser: Browser) -> Driver {
        let bin = match browser {
            Browser::Chromium => program("chromedriver", "/usr/bin/chromedriver"),
            Browser::Firefox => program("geckodriver", "/usr/local/bin/geckodriver"),
        };
        let port = free_port();
        let child = Command::new(&bin)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("run {}: {e}", bin.display()));
        let d = Driver {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            browser,
        };
        let t0 = Instant::now();
        loop {
            if TcpStream::connect(d.addr).is_ok() {
                let r = exchange(d.addr, "GET", "/status", None);
                if r.status == 200 && r.json()["value"]["ready"] == true {
                    return d;
                }
            }
            assert!(
                t0.elapsed() < WAIT,
                "{} did not become ready",
                bin.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A WebDriver call; the answer's `value`, or a panic naming the WebDriver error.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.try_call(method, path, body)
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"))
    }

    /// A WebDriver call; the answer's `value`, or the WebDriver error (`error` and
    /// `message`).
    fn try_call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, Value> {
        let r = exchange(self.addr, method, path, body);
        let v = r.json();
        if r.status == 200 {
            Ok(v["value"].clone())
        } else {
            Err(
                json!({"status": r.status, "error": v["value"]["error"], "message": v["value"]["message"]}),
            )
        }
    }

    fn session(&self) -> Session<'_> {
        let capabilities = match self.browser {
            Browser::Chromium => json!({
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": program("chromium", "/usr/bin/chromium"),
                    "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                             "--disable-gpu", "--window-size=1360,900", "--lang=en-US"],
                },
            }),
            Browser::Firefox => json!({
                "browserName": "firefox",
                "moz:firefoxOptions": {
                    "binary": program("firefox-esr", "/usr/bin/firefox-esr"),
                    "args": ["-headless", "-width=1360", "-height=900"],
                    "prefs": {"intl.accept_languages": "en-US"},
                },
            }),
        };
        let v = self.call(
            "POST",
            "/session",
            Some(json!({"capabilities": {"alwaysMatch": capabilities}})),
        );
        let id = v["sessionId"].as_str().expect("a session id").to_owned();
        let s = Session { driver: self, id };
        s.call(
            "POST",
            "/window/rect",
            Some(json!({"width": 1360, "height": 900})),
        );
        s
    }
}

/// One browser session; closed on drop.
struct Session<'a> {
    driver: &'a Driver,
    id: String,
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        let path = format!("/session/{}", self.id);
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.driver.call("DELETE", &path, None)
        }));
    }
}

impl Session<'_> {
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.driver
            .call(method, &format!("/session/{}{path}", self.id), body)
    }

    fn go(&self, url: &str) {
        self.call("POST", "/url", Some(json!({ "url": url })));
    }

    /// Run a script in the page (its arguments as `arguments[i]`) and answer its result.
    fn run(&self, script: &str, args: Value) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
    }

    /// The element `css` finds, waiting for it to exist and be shown.
    fn find(&self, css: &str) -> String {
        let t0 = Instant::now();
        loop {
            let found = self.driver.try_call(
                "POST",
                &format!("/session/{}/execute/sync", self.id),
                Some(json!({
                    "script": "const e = document.querySelector(arguments[0]); \
                               return e && e.getClientRects().length ? e : null;",
                    "args": [css],
                })),
            );
            // the page may redraw between the script finding the element and the answer
            // naming it (Firefox then says stale): look again
            let v = match found {
                Ok(v) => v,
                Err(err) if err["error"] == "stale element reference" => Value::Null,
                Err(err) => panic!("finding {css:?}: {err}"),
            };
            if let Some(id) = v.get(ELEMENT).and_then(Value::as_str) {
                return id.to_owned();
            }
            assert!(t0.elapsed() < WAIT, "the page shows no {css:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Calls on the element `css` finds (`(method, path after the element, body)`); all
    /// of them again on a fresh find if the page redrew the element in between. The last
    /// call's value.
    fn on(&self, css: &str, calls: &[(&str, &str, Option<Value>)]) -> Value {
        let t0 = Instant::now();
        'again: loop {
            let e = self.find(css);
            let mut last = Value::Null;
            for (method, tail, body) in calls {
                let path = format!("/session/{}/element/{e}{tail}", self.id);
                match self.driver.try_call(method, &path, body.clone()) {
                    Ok(v) => last = v,
                    Err(err)
                        if err["error"] == "stale element reference" && t0.elapsed() < WAIT =>
                    {
                        continue 'again
                    }
                    Err(err) => panic!("{method} {tail} on {css:?}: {err}"),
                }
            }
            return last;
        }
    }

    fn click(&self, css: &str) {
        self.on(css, &[("POST", "/click", Some(json!({})))]);
    }

    /// Replace the text of the input `css` with `text`, typed as keys.
    fn type_into(&self, css: &str, text: &str) {
        let mut calls = vec![("POST", "/clear", Some(json!({})))];
        if !text.is_empty() {
            calls.push(("POST", "/value", Some(json!({ "text": text }))));
        }
        self.on(css, &calls);
    }

    fn text(&self, css: &str) -> String {
        self.on(css, &[("GET", "/text", None)])
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Wait until the element `css` shows a text containing `want`.
    fn wait_text(&self, css: &str, want: &str) -> String {
        let t0 = Instant::now();
        loop {
            let t = self.text(css);
            if t.contains(want) {
                return t;
            }
            assert!(t0.elapsed() < WAIT, "{css:?} shows {t:?}, never {want:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether the checkbox `css` is checked.
    fn checked(&self, css: &str) -> bool {
        self.on(css, &[("GET", "/selected", None)]) == true
    }

    /// Save a PNG of the window as `target/web-screenshots/NAME.png` (Firefox's as
    /// `firefox-NAME.png`).
    fn screenshot(&self, name: &str) -> PathBuf {
        let name = self.driver.browser.shot(name);
        // let the page finish painting what it just changed
        std::thread::sleep(Duration::from_millis(300));
        let b64 = self.call("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().expect("base64 PNG"))
            .expect("base64");
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, &png).unwrap();
        path
    }
}

/// `target/web-screenshots`, beside the tests' own scratch directory.
fn screenshot_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
        .join("web-screenshots")
}

fn card(db: &Path, serial: &str) -> Value {
    serde_json::from_str(&castmux(db, &["card", "show", serial, "--json"])).unwrap()
}

/// 2031-01-01 00:00 UTC.
const NEW_FINISH: i64 = 1_924_992_000;

#[test]
fn the_page_is_served_with_its_policy_and_without_cookies() {
    let dir = tempfile::tempdir().unwrap();
    let db = seed_store(dir.path());
    let srv = serve(&db, &[]);

    let page = get(srv.addr, "/");
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    let csp = page.header("content-security-policy").expect("a CSP");
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"));
    assert!(page.header("set-cookie").is_none());
    assert!(page.text().contains("/ui/app.js"));
    for (path, ty) in [
        ("/ui/app.js", "text/javascript"),
        ("/ui/app.css", "text/css"),
    ] {
        let r = get(srv.addr, path);
        assert_eq!(r.status, 200, "{path}");
        assert!(r.header("content-type").unwrap().starts_with(ty), "{path}");
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
        assert!(!r.body.is_empty());
    }
    // the files are public, the data is not
    assert_eq!(get(srv.addr, "/api/v1/cards").status, 401);
    // a CAS-only server has no channel status: the page shows its CAS pages only
    let r = api(srv.addr, "GET", "/api/v1/status", None);
    assert_eq!(r.status, 404);
}

#[test]
fn csv_export_and_import_over_rest_are_the_cli_s() {
    let dir = tempfile::tempdir().unwrap();
    let db = seed_store(dir.path());
    let srv = serve(&db, &[]);

    let r = api(srv.addr, "GET", "/api/v1/cards.csv", None);
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/csv"));
    assert_eq!(
        r.text(),
        castmux(&db, &["card", "export"]),
        "the CLI's export"
    );
    let filtered = api(srv.addr, "GET", "/api/v1/cards.csv?q=nobody", None);
    assert_eq!(filtered.text().lines().count(), 1, "the header only");

    let csv = "serial_no,name,info,access_criteria,pair,start,finish\n\
               2100000000,Ivan Petrov,moved,00000001,0,1586693700,1589285580\n\
               2100000050,New One,,00000100,1,1586693700,1589285580\n";
    let post = |body: &str, ty: &str| {
        request(
            srv.addr,
            "POST",
            "/api/v1/cards.csv?name=billing.csv",
            &[("X-API-Key", KEY), ("Content-Type", ty)],
            Some(body.as_bytes()),
        )
    };
    // JSON content type, or text/plain a foreign form could send: refused
    assert_eq!(post(csv, "text/plain").status, 415);
    // a bad row: nothing written, the row and field named
    let bad = csv.replace("00000100", "2");
    let r = post(&bad, "text/csv");
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.error(), "ACCESS_CRITERIA_ERROR");
    assert_eq!(card(&db, "2100000000")["info"], "Zeleenaya street 123-234");

    let r = post(csv, "text/csv; charset=utf-8");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"imported": 2, "inserted": 1, "updated": 1})
    );
    assert_eq!(card(&db, "2100000000")["info"], "moved");
    assert_eq!(card(&db, "2100000050")["access_criteria"], "00000100");
    let audit = api(srv.addr, "GET", "/api/v1/audit?action=card.import", None).json();
    assert_eq!(audit["entries"][0]["subject"], "http:billing.csv");
    // a change from a foreign page is refused like every other
    let r = request(
        srv.addr,
        "POST",
        "/api/v1/cards.csv",
        &[
            ("X-API-Key", KEY),
            ("Content-Type", "text/csv"),
            ("Origin", "http://evil.example"),
        ],
        Some(csv.as_bytes()),
    );
    assert_eq!(r.status, 403);
}

#[test]
fn a_csv_import_has_its_own_body_limit() {
    let dir = tempfile::tempdir().unwrap();
    let db = seed_store(dir.path());
    let srv = serve(&db, &["--max-body", "1024", "--max-import", "8192"]);
    let rows = |n: u64| {
        let mut t = String::from("serial_no,name,info,access_criteria,pair,start,finish\n");
        for i in 0..n {
            t.push_str(&format!(
                "{},Subscriber {i},Street {i},00000001,0,1586693700,1589285580\n",
                2_100_001_000 + i
            ));
        }
        t
    };
    let post = |body: &str| {
        request(
            srv.addr,
            "POST",
            "/api/v1/cards.csv",
            &[("X-API-Key", KEY), ("Content-Type", "text/csv")],
            Some(body.as_bytes()),
        )
    };
    // over --max-body, under --max-import: taken
    let fits = rows(60);
    assert!(fits.len() > 1024 && fits.len() < 8192);
    let r = post(&fits);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["inserted"], 60);
    // over --max-import: 413, nothing written
    let big = rows(200);
    assert!(big.len() > 8192);
    let r = post(&big);
    assert_eq!(r.status, 413);
    assert_eq!(r.error(), "BODY_TOO_LARGE");
    let page = api(srv.addr, "GET", "/api/v1/cards?limit=1000", None).json();
    assert_eq!(page["cards"].as_array().unwrap().len(), 61);
    // every other call keeps --max-body
    let name = "x".repeat(1100);
    let r = api(
        srv.addr,
        "PATCH",
        "/api/v1/cards/2100000000",
        Some(json!({ "name": name })),
    );
    assert_eq!(r.status, 413);
}

/// A fake of the head-end's channel status API, put into the page by replacing its
/// `fetch` (the product has no test route): two channels whose bitrate moves with time.
const FAKE_HEADEND: &str = r#"
const real = window.fetch;
const t0 = Date.now();
window.fetch = (path, init) => {
  const s = (Date.now() - t0) / 1000;
  const json = (v) => Promise.resolve(new Response(JSON.stringify(v),
    { status: 200, headers: { 'Content-Type': 'application/json' } }));
  if (path === '/api/v1/status') {
    return json({ version: '0.1.0', uptime_s: 93784, channels: 2, on_air: 1 });
  }
  if (path === '/api/v1/channels') {
    return json([
      { name: 'sport', state: 'running', on_air: true, restarts: 1,
        input: { url: 'udp://239.1.1.1:1234', bitrate_bps: 4000000 + 500000 * Math.sin(s), packets: 1000, cc_errors: 0 },
        output: { bitrate_bps: 4200000 + 500000 * Math.sin(s), packets: 1040 },
        scrambled_ratio: 0.985, crypto_period: 42, key_switches: 41, degraded_holds: 0,
        ecm_age_s: [0.3], ecmg_links: [{ addr: '10.0.0.5:43000', active: '10.0.0.5:43000', up: true }] },
      { name: 'news', state: 'restarting', on_air: false, restarts: 3,
        input: { url: 'srt://10.0.0.9:9000', bitrate_bps: 0, packets: 0, cc_errors: 7 },
        output: { bitrate_bps: 0, packets: 0 },
        scrambled_ratio: 0, crypto_period: 0, key_switches: 0, degraded_holds: 2,
        ecm_age_s: [null], last_error: 'ECMG 10.0.0.6:43000: connection refused',
        ecmg_links: [{ addr: '10.0.0.6:43000', active: '10.0.0.7:43000', up: false }] },
    ]);
  }
  return real(path, init);
};
"#;

#[test]
fn an_operator_edits_cards_through_the_page_in_chromium() {
    edits_cards_through_the_page(Browser::Chromium);
}

#[test]
fn an_operator_edits_cards_through_the_page_in_firefox() {
    edits_cards_through_the_page(Browser::Firefox);
}

fn edits_cards_through_the_page(browser: Browser) {
    let driver = Driver::start(browser);
    let dir = tempfile::tempdir().unwrap();
    let db = seed_store(dir.path());
    castmux(
        &db,
        &[
            "card",
            "add",
            "--serial",
            "2100000001",
            "--name",
            "Maria Ivanova",
            "--info",
            "Lesnaya 7",
            "--packages",
            "basic",
            "--start",
            "2026-01-01",
            "--finish",
            "2027-01-01",
        ],
    );
    castmux(
        &db,
        &[
            "event",
            "add",
            "final",
            "--start",
            "2026-07-19",
            "--end",
            "2026-07-20",
        ],
    );
    let srv = serve(&db, &[]);
    let base = format!("http://{}", srv.addr);
    let s = driver.session();

    // the key is asked; a wrong one is refused and asked again
    s.go(&format!("{base}/"));
    s.find("#key");
    s.screenshot("login");
    s.type_into("#key", "not-the-key");
    s.click("#login-form button");
    s.wait_text("#login-error", "refused");
    s.type_into("#key", KEY);
    s.click("#login-form button");

    // no head-end on castmux serve: the page lands on the cards, the dashboard says so
    s.wait_text("#cards tbody", "Ivan Petrov");
    assert_eq!(
        s.run("return location.hash", json!([])),
        "",
        "landed on cards by itself"
    );
    s.find("#view-cards");
    s.click("#nav a[data-view=dashboard]");
    s.wait_text("#no-headend", "No head-end");
    assert_eq!(
        s.text("#nav a[data-view=dashboard]"),
        "Dashboard (no head-end)"
    );
    s.screenshot("dashboard-no-headend");

    // the key is in this tab's sessionStorage, never in a cookie
    assert_eq!(
        s.run(
            "return sessionStorage.getItem('castmux.api-key')",
            json!([])
        ),
        KEY
    );
    assert_eq!(s.run("return document.cookie", json!([])), "");
    assert_eq!(s.call("GET", "/cookie", None), json!([]));

    // edit the seed card: drop sport (bits 4 and 6 have no package, so the page sends
    // criteria), and a new finish
    s.click("#nav a[data-view=cards]");
    s.click("tr[data-serial='2100000000'] button");
    s.wait_text("#edit-serial", "2100000000");
    assert!(s.checked("#edit-packages input[value=sport]"));
    assert!(s.checked("#edit-packages input[value=bit4]"));
    s.click("#edit-packages input[value=sport]");
    s.type_into("#edit-finish", "2031-01-01 00:00Z");
    s.screenshot("cards");
    s.click("#card-edit button[type=submit]");
    s.wait_text("#flash", "saved");
    let c = card(&db, "2100000000");
    assert_eq!(c["access_criteria"], "01010001", "{c}");
    assert_eq!(c["finish"], NEW_FINISH.to_string());
    assert_eq!(c["start"], "1586693700", "an untouched field is not sent");
    assert_eq!(c["name"], "Ivan Petrov");

    // the second card: add sport by name, rename, grant the event, disable
    s.click("tr[data-serial='2100000001'] button");
    s.wait_text("#edit-serial", "2100000001");
    s.click("#edit-packages input[value=sport]");
    s.type_into("#edit-name", "Maria Petrova");
    s.click("#card-edit button[type=submit]");
    s.wait_text("#flash", "saved");
    s.click("#edit-grant");
    s.wait_text("#edit-events", "final");
    s.click("#edit-toggle");
    s.wait_text("#edit-state", "disabled");
    let c = card(&db, "2100000001");
    assert_eq!(c["packages"], json!(["basic", "sport"]), "{c}");
    assert_eq!(c["name"], "Maria Petrova");
    assert_eq!(c["state"], "disabled");
    assert_eq!(c["events"].as_array().map(Vec::len), Some(1), "{c}");

    // add many: thirty cards from 2100000100 with basic, valid 30 days
    s.click("#card-add-open");
    s.type_into("#add-count", "30");
    s.type_into("#add-serial", "2100000100");
    s.type_into("#add-name", "batch");
    s.type_into("#add-days", "30");
    s.click("#add-packages input[value=basic]");
    s.click("#card-add button[type=submit]");
    s.wait_text("#flash", "Added 30 cards: 2100000100..2100000129");
    let page = api(srv.addr, "GET", "/api/v1/cards?q=batch", None).json();
    let batch = page["cards"].as_array().unwrap();
    assert_eq!(batch.len(), 30);
    assert!(batch.iter().all(|c| c["packages"] == json!(["basic"])));

    // search, then paging through 32 cards 25 at a time
    s.type_into("#card-q", "Petrov");
    s.click("#card-search button[type=submit]");
    s.wait_text("#cards-page", "page 1, 2 cards");
    s.type_into("#card-q", "");
    s.run(
        "document.getElementById('card-limit').value = '25'",
        json!([]),
    );
    s.click("#card-search button[type=submit]");
    s.wait_text("#cards-page", "page 1, 25 cards");
    s.click("#cards-next");
    s.wait_text("#cards-page", "page 2, 7 cards");
    s.find("tr[data-serial='2100000129']");
    s.click("#cards-prev");
    s.wait_text("#cards-page", "page 1, 25 cards");
    s.find("tr[data-serial='2100000000']");

    // a CSV import through the page's file input (hidden behind its label, as file inputs
    // are; WebDriver types the path into it)
    let csv = dir.path().join("billing.csv");
    std::fs::write(
        &csv,
        "serial_no,name,info,access_criteria,pair,start,finish\n\
         2100000200,Imported One,Sadovaya 1,00000100,0,1767225600,1798761600\n\
         2100000001,Maria Petrova,Lesnaya 9,00000101,0,1767225600,1798761600\n",
    )
    .unwrap();
    let input = s.call(
        "POST",
        "/element",
        Some(json!({"using": "css selector", "value": "#csv-file"})),
    )[ELEMENT]
        .as_str()
        .unwrap()
        .to_owned();
    s.call(
        "POST",
        &format!("/element/{input}/value"),
        Some(json!({ "text": csv.to_str().unwrap() })),
    );
    s.wait_text(
        "#flash",
        "Imported 2 cards from billing.csv: 1 new, 1 updated",
    );
    assert_eq!(card(&db, "2100000200")["name"], "Imported One");
    assert_eq!(card(&db, "2100000001")["info"], "Lesnaya 9");

    // delete: found by search, confirmed in the browser's dialog
    s.type_into("#card-q", "Imported");
    s.click("#card-search button[type=submit]");
    s.wait_text("#cards-page", "page 1, 1 card");
    s.click("tr[data-serial='2100000200'] button");
    s.wait_text("#edit-serial", "2100000200");
    s.click("#edit-delete");
    let question = s.call("GET", "/alert/text", None);
    assert!(
        question
            .as_str()
            .unwrap()
            .contains("Delete card 2100000200"),
        "{question}"
    );
    s.call("POST", "/alert/accept", Some(json!({})));
    s.wait_text("#flash", "Card 2100000200 deleted");
    let r = api(srv.addr, "GET", "/api/v1/cards/2100000200", None);
    assert_eq!(r.status, 404);

    // the other pages
    s.click("#nav a[data-view=packages]");
    s.wait_text("#packages tbody", "sport");
    s.wait_text("#events tbody", "final");
    s.screenshot("packages");
    s.click("#nav a[data-view=keys]");
    s.wait_text("#keys tbody", "basic");
    s.screenshot("keys");
    s.click("#nav a[data-view=audit]");
    s.wait_text("#audit tbody", "card.disable");
    s.type_into("#audit-action", "card.set");
    s.click("#audit-search button[type=submit]");
    s.wait_text("#audit-page", "2 entries");
    let shown = s.text("#audit tbody");
    assert!(!shown.contains("card.disable"), "{shown}");
    s.type_into("#audit-action", "");
    s.click("#audit-search button[type=submit]");
    s.wait_text("#audit-page", "page 1");
    s.screenshot("audit");

    // the dashboard's drawing, fed a fake of the channel status API through the page's
    // fetch: channels, their numbers, and a chart that grows with each poll
    s.click("#nav a[data-view=dashboard]");
    s.run(FAKE_HEADEND, json!([]));
    s.wait_text("#channels tbody", "sport");
    let rows = s.text("#channels tbody");
    for want in [
        "udp://239.1.1.1:1234",
        "98.5 %",
        "0.3 s",
        "none yet",
        "10.0.0.7:43000",
        "on air",
        "off air",
        "restarting",
    ] {
        assert!(rows.contains(want), "{want:?} not in {rows:?}");
    }
    assert_eq!(s.text("#nav a[data-view=dashboard]"), "Dashboard");
    let why = s.run(
        "return document.querySelector('tr[data-channel=news] td:nth-child(2) span').title",
        json!([]),
    );
    assert_eq!(why, "ECMG 10.0.0.6:43000: connection refused");
    let t0 = Instant::now();
    loop {
        let points = s.run(
            "const p = document.querySelector('#chart polyline.out'); \
             return p ? p.getAttribute('points').split(' ').length : 0",
            json!([]),
        );
        if points.as_u64().unwrap_or(0) >= 4 {
            break;
        }
        assert!(t0.elapsed() < WAIT * 2, "the chart did not grow: {points}");
        std::thread::sleep(Duration::from_millis(500));
    }
    s.screenshot("dashboard");

    // another origin (the same server as http://localhost:PORT) cannot change a card even
    // with the key: the browser asks first (X-API-Key is not a simple header) and the
    // server grants no cross-origin access; without the header the change has no key
    s.go(&format!("http://localhost:{}/", srv.addr.port()));
    s.find("#key");
    let target = format!("{base}/api/v1/cards/2100000000/disable");
    for (mode, headers) in [("cors", json!({"X-API-Key": KEY})), ("no-cors", json!({}))] {
        let r = s.call(
            "POST",
            "/execute/async",
            Some(json!({
                "script": "const done = arguments[arguments.length - 1]; \
                           fetch(arguments[0], { method: 'POST', mode: arguments[1], headers: arguments[2] }) \
                             .then((r) => done('answered ' + r.status + ' ' + r.type), (e) => done('refused ' + e.name));",
                "args": [target, mode, headers],
            })),
        );
        let r = r.as_str().unwrap().to_owned();
        assert!(
            r == "refused TypeError" || r == "answered 0 opaque",
            "{mode}: {r}"
        );
    }
    assert_eq!(card(&db, "2100000000")["state"], "enabled");
}

/// The dashboard on a real head-end (`castmux headend` with `[http]`): the channel is
/// listed from the live status API, and the page's buttons restart it, disable it (each
/// confirmed in the browser's dialog) and enable it again; the head-end does each.
#[test]
fn an_operator_restarts_and_disables_a_channel_from_the_dashboard() {
    restarts_and_disables_a_channel(Browser::Chromium);
}

#[test]
fn an_operator_restarts_and_disables_a_channel_from_the_dashboard_in_firefox() {
    restarts_and_disables_a_channel(Browser::Firefox);
}

fn restarts_and_disables_a_channel(browser: Browser) {
    let driver = Driver::start(browser);
    let dir = tempfile::tempdir().unwrap();
    let db = seed_store(dir.path());
    let out = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let cfg = dir.path().join("headend.toml");
    std::fs::write(
        &cfg,
        format!(
            "[http]\nlisten = \"127.0.0.1:0\"\n\n[[channel]]\nname = \"sport\"\n\
             input = \"udp://127.0.0.1:{}\"\noutput = \"udp://127.0.0.1:{}\"\n\
             cw = \"11223366445566EF:0102030609080716\"\n\
             # no input is sent: the run scrambles nothing, which is fine here\n\
             allow_unscrambled = true\n",
            free_port(),
            out.local_addr().unwrap().port()
        ),
    )
    .unwrap();
    let srv = headend(&db, &cfg);
    let channel = |field: &str| -> Value {
        let r = api(srv.addr, "GET", "/api/v1/channels/sport", None);
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()[field].clone()
    };
    let wait_for = |field: &str, want: Value| {
        let t0 = Instant::now();
        while channel(field) != want {
            assert!(t0.elapsed() < WAIT, "{field} never became {want}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_for("state", json!("running"));

    let s = driver.session();
    s.go(&format!("http://{}/", srv.addr));
    s.type_into("#key", KEY);
    s.click("#login-form button");
    s.wait_text("#channels tbody", "sport");

    s.click("tr[data-channel=sport] button[data-command=restart]");
    let question = s.call("GET", "/alert/text", None);
    assert!(
        question.as_str().unwrap().contains("Restart channel sport"),
        "{question}"
    );
    s.call("POST", "/alert/accept", Some(json!({})));
    wait_for("restarts", json!(1));
    wait_for("state", json!("running"));

    s.click("tr[data-channel=sport] button[data-command=disable]");
    s.call("POST", "/alert/accept", Some(json!({})));
    wait_for("state", json!("disabled"));
    s.wait_text("tr[data-channel=sport]", "Enable");
    s.screenshot("dashboard-headend");
    s.click("tr[data-channel=sport] button[data-command=enable]");
    wait_for("state", json!("running"));
    s.wait_text("tr[data-channel=sport]", "Disable");
    let (status, _) = srv.stop();
    assert!(status.success(), "{status:?}");
}
