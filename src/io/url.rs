//! Input and output addresses: `udp://`, `rtp://`, `srt://`, `http://`, file paths and `-`.
//!
//! Parsing never touches the network (host names are resolved when the
//! input or output is opened) and never logs; every error names the URL and
//! says what a valid one looks like.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// Default number of TS packets per UDP datagram (7 × 188 = 1316 bytes).
pub const DEFAULT_PACKETS_PER_DATAGRAM: usize = 7;
/// Default SRT latency, as srt-live-transmit uses.
pub const DEFAULT_SRT_LATENCY: Duration = Duration::from_millis(120);

/// A URL that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("empty input/output: give udp://GROUP:PORT, srt://HOST:PORT, http://HOST:PORT/PATH, a file path, or - for stdin/stdout")]
    Empty,
    #[error("`{url}`: unsupported scheme `{scheme}://`; use udp://, rtp:// (input), srt://, http://, file://, a plain path, or - (https: put a TLS proxy in front)")]
    Scheme { url: String, scheme: String },
    #[error(
        "`{url}`: missing port; write HOST:PORT, for example udp://239.1.1.1:1234 or srt://:9000"
    )]
    MissingPort { url: String },
    // what the user wrote is shown masked too: a bad address or value may hold a secret
    #[error("`{url}`: bad port `{}`; a port is a number from 1 to 65535 (0, any free port, only where we bind)", mask(.port))]
    BadPort { url: String, port: String },
    #[error("`{url}`: bad address `{}`: {expected}", mask(.addr))]
    BadAddress {
        url: String,
        addr: String,
        expected: &'static str,
    },
    #[error("`{url}`: unknown option `{key}`; options accepted here: {accepted}")]
    UnknownOption {
        url: String,
        key: String,
        accepted: &'static str,
    },
    #[error("`{url}`: bad value `{}` for `{key}`: {expected}", mask(.value))]
    BadOption {
        url: String,
        key: String,
        value: String,
        expected: &'static str,
    },
}

/// Which end of an SRT connection we are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SrtMode {
    /// We connect to `host:port`.
    Caller,
    /// We bind `host:port` (any address when the host is empty) and wait for a caller.
    Listener,
}

/// `srt://HOST:PORT[?mode=caller|listener&latency=MS&passphrase=SECRET]`.
///
/// The mode defaults to listener when HOST is empty (`srt://:9000`) and to
/// caller otherwise.
#[derive(Clone, PartialEq, Eq)]
pub struct SrtUrl {
    /// As written, for messages (the passphrase is masked).
    pub url: String,
    /// Peer host for a caller, local bind address for a listener (empty: any).
    pub host: String,
    pub port: u16,
    pub mode: SrtMode,
    /// Receive and peer latency (SRTO_LATENCY), default 120 ms.
    pub latency: Duration,
    /// AES-128 passphrase (10 to 79 characters), none by default.
    pub passphrase: Option<String>,
    /// Stream id a caller sends (SRTO_STREAMID), none by default.
    pub stream_id: Option<String>,
}

impl fmt::Debug for SrtUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SrtUrl")
            .field("url", &self.url)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("mode", &self.mode)
            .field("latency", &self.latency)
            .field("passphrase", &self.passphrase.as_ref().map(|_| "***"))
            .field("stream_id", &self.stream_id)
            .finish()
    }
}

/// `udp://[SOURCE@]ADDR:PORT[?iface=...]` as an input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpInputUrl {
    pub url: String,
    /// Group (multicast) or local bind address (unicast; unspecified for `udp://:PORT`).
    pub addr: SocketAddr,
    /// Source address for source-specific multicast (IGMPv3 / MLDv2).
    pub source: Option<IpAddr>,
    /// Interface to join on: an IPv4 address for IPv4 groups; an interface
    /// name or index for IPv6 groups. Default: the kernel picks.
    pub iface: Option<String>,
}

impl UdpInputUrl {
    /// The address is a multicast group.
    pub fn is_multicast(&self) -> bool {
        self.addr.ip().is_multicast()
    }
}

/// `udp://HOST:PORT[?ttl=N&iface=ADDR&pkt=7]` as an output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpOutputUrl {
    pub url: String,
    pub host: String,
    pub port: u16,
    /// Multicast TTL / hop limit; default 1 (kernel default) when absent.
    pub ttl: Option<u32>,
    /// Multicast egress interface (IPv4 address, or IPv6 interface name/index).
    pub iface: Option<String>,
    /// TS packets per datagram, 1..=7, default 7.
    pub packets_per_datagram: usize,
}

/// The most clients an HTTP-TS output serves at once unless `?max_clients=` says otherwise.
pub const DEFAULT_HTTP_MAX_CLIENTS: usize = 100;
/// The most `?max_clients=` may ask for (each client holds a socket and a task).
pub const MAX_HTTP_CLIENTS: usize = 10_000;

/// `http://[ADDR]:PORT/PATH[?max_clients=N]` as an output: a listener on ADDR:PORT (any
/// address when ADDR is empty) serving the stream at PATH to every client that asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpOutputUrl {
    pub url: String,
    /// The address to listen on (port 0: any free port, logged).
    pub addr: SocketAddr,
    /// The path served, starting with `/` (a client's query string is ignored).
    pub path: String,
    /// Clients served at once; one more gets 503. Default [`DEFAULT_HTTP_MAX_CLIENTS`].
    pub max_clients: usize,
}

/// `http://[USER:PASS@]HOST[:PORT]/PATH[?QUERY]` as an input: the stream a server sends
/// for a GET of PATH?QUERY (port 80 when none is written).
#[derive(Clone, PartialEq, Eq)]
pub struct HttpInputUrl {
    /// As written, with the password masked.
    pub url: String,
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    /// The request target: the path and query as written, `/` when none.
    pub target: String,
    /// `USER:PASS@` of the URL, sent as HTTP Basic authentication.
    pub credentials: Option<(String, String)>,
}

impl fmt::Debug for HttpInputUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpInputUrl")
            .field("url", &self.url)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("target", &mask(&self.target))
            .field("credentials", &self.credentials.as_ref().map(|_| "***"))
            .finish()
    }
}

/// Where packets come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputUrl {
    /// UDP unicast or multicast; RTP-wrapped TS is detected per datagram.
    Udp(UdpInputUrl),
    Srt(SrtUrl),
    /// An HTTP-TS stream fetched with GET (reconnected when it ends).
    Http(HttpInputUrl),
    File(PathBuf),
    /// `-`
    Stdin,
}

/// Where packets go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputUrl {
    Udp(UdpOutputUrl),
    Srt(SrtUrl),
    /// An HTTP-TS listener path.
    Http(HttpOutputUrl),
    File(PathBuf),
    /// `-`
    Stdout,
}

impl std::str::FromStr for InputUrl {
    type Err = UrlError;
    fn from_str(s: &str) -> Result<Self, UrlError> {
        InputUrl::parse(s)
    }
}

impl std::str::FromStr for OutputUrl {
    type Err = UrlError;
    fn from_str(s: &str) -> Result<Self, UrlError> {
        OutputUrl::parse(s)
    }
}

impl InputUrl {
    /// Parse an input: `udp://…`, `rtp://…` (same as udp), `srt://…`, `http://…`,
    /// `file://PATH`, a path, or `-`.
    pub fn parse(s: &str) -> Result<Self, UrlError> {
        match split_scheme(s)? {
            Target::Dash => Ok(InputUrl::Stdin),
            Target::Path(p) => Ok(InputUrl::File(p)),
            Target::Scheme("udp" | "rtp", rest) => parse_udp_input(s, rest).map(InputUrl::Udp),
            Target::Scheme("srt", rest) => parse_srt(s, rest).map(InputUrl::Srt),
            Target::Scheme("http", rest) => parse_http_input(s, rest).map(InputUrl::Http),
            Target::Scheme(scheme, _) => Err(UrlError::Scheme {
                url: mask(s),
                scheme: scheme.to_owned(),
            }),
        }
    }

    /// A short text for logs and errors (passphrases masked).
    pub fn display(&self) -> String {
        match self {
            InputUrl::Udp(u) => u.url.clone(),
            InputUrl::Srt(u) => u.url.clone(),
            InputUrl::Http(u) => u.url.clone(),
            InputUrl::File(p) => p.display().to_string(),
            InputUrl::Stdin => "- (stdin)".to_owned(),
        }
    }
}

impl OutputUrl {
    /// Parse an output: `udp://…`, `srt://…`, `http://…` (a listener), `file://PATH`, a
    /// path, or `-`.
    pub fn parse(s: &str) -> Result<Self, UrlError> {
        match split_scheme(s)? {
            Target::Dash => Ok(OutputUrl::Stdout),
            Target::Path(p) => Ok(OutputUrl::File(p)),
            Target::Scheme("udp", rest) => parse_udp_output(s, rest).map(OutputUrl::Udp),
            Target::Scheme("srt", rest) => parse_srt(s, rest).map(OutputUrl::Srt),
            Target::Scheme("http", rest) => parse_http_output(s, rest).map(OutputUrl::Http),
            Target::Scheme(scheme, _) => Err(UrlError::Scheme {
                url: mask(s),
                scheme: scheme.to_owned(),
            }),
        }
    }

    /// A short text for logs and errors (passphrases masked).
    pub fn display(&self) -> String {
        match self {
            OutputUrl::Udp(u) => u.url.clone(),
            OutputUrl::Srt(u) => u.url.clone(),
            OutputUrl::Http(u) => u.url.clone(),
            OutputUrl::File(p) => p.display().to_string(),
            OutputUrl::Stdout => "- (stdout)".to_owned(),
        }
    }
}

enum Target<'a> {
    Dash,
    Path(PathBuf),
    Scheme(&'a str, &'a str),
}

fn split_scheme(s: &str) -> Result<Target<'_>, UrlError> {
    let t = s.trim();
    if t.is_empty() {
        return Err(UrlError::Empty);
    }
    if t == "-" {
        return Ok(Target::Dash);
    }
    match t.split_once("://") {
        Some((scheme, rest))
            if !scheme.is_empty()
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '-' || c == '.') =>
        {
            if scheme.eq_ignore_ascii_case("file") {
                if rest.is_empty() {
                    return Err(UrlError::Empty);
                }
                return Ok(Target::Path(PathBuf::from(rest)));
            }
            Ok(Target::Scheme(scheme, rest))
        }
        _ => Ok(Target::Path(PathBuf::from(t))),
    }
}

/// Split `authority[/][?query]` and iterate the query's `key=value` pairs.
fn split_query(rest: &str) -> (&str, Vec<(&str, &str)>) {
    let (auth, query) = match rest.split_once('?') {
        Some((a, q)) => (a, q),
        None => (rest, ""),
    };
    let auth = auth.trim_end_matches('/');
    let pairs = query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
        .collect();
    (auth, pairs)
}

/// `host:port`, `[v6]:port`, `:port`.
fn split_host_port<'a>(url: &str, auth: &'a str) -> Result<(&'a str, u16), UrlError> {
    let (host, port) = if let Some(after) = auth.strip_prefix('[') {
        let (h, tail) = after.split_once(']').ok_or_else(|| UrlError::BadAddress {
            url: mask(url),
            addr: auth.to_owned(),
            expected: "an IPv6 address in brackets needs a closing `]`, e.g. [ff15::1]:1234",
        })?;
        let p = tail
            .strip_prefix(':')
            .ok_or_else(|| UrlError::MissingPort { url: mask(url) })?;
        (h, p)
    } else {
        let (h, p) = auth
            .rsplit_once(':')
            .ok_or_else(|| UrlError::MissingPort { url: mask(url) })?;
        if h.contains(':') {
            return Err(UrlError::BadAddress {
                url: mask(url),
                addr: h.to_owned(),
                expected: "write IPv6 addresses in brackets, e.g. udp://[ff15::1]:1234",
            });
        }
        (h, p)
    };
    if port.is_empty() {
        return Err(UrlError::MissingPort { url: mask(url) });
    }
    match port.parse::<u16>() {
        Ok(p) => Ok((host, p)),
        _ => Err(UrlError::BadPort {
            url: mask(url),
            port: port.to_owned(),
        }),
    }
}

fn parse_ip(url: &str, s: &str, expected: &'static str) -> Result<IpAddr, UrlError> {
    s.parse::<IpAddr>().map_err(|_| UrlError::BadAddress {
        url: mask(url),
        addr: s.to_owned(),
        expected,
    })
}

fn parse_udp_input(url: &str, rest: &str) -> Result<UdpInputUrl, UrlError> {
    let (auth, query) = split_query(rest);
    let (source, auth) = match auth.split_once('@') {
        Some((src, a)) => (Some(src), a),
        None => (None, auth),
    };
    let (host, port) = split_host_port(url, auth)?;
    let ip = if host.is_empty() {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    } else {
        parse_ip(
            url,
            host,
            "a UDP input takes an IP address (a multicast group or a local address), not a host name",
        )?
    };
    let source = match source {
        None => None,
        Some(src) => {
            let src = src.trim_start_matches('[').trim_end_matches(']');
            let sip = parse_ip(
                url,
                src,
                "the source of udp://SOURCE@GROUP:PORT must be an IP address",
            )?;
            if !ip.is_multicast() {
                return Err(UrlError::BadAddress {
                    url: mask(url),
                    addr: host.to_owned(),
                    expected: "a source (SOURCE@) only makes sense with a multicast group",
                });
            }
            if sip.is_ipv4() != ip.is_ipv4() {
                return Err(UrlError::BadAddress {
                    url: mask(url),
                    addr: src.to_owned(),
                    expected: "the source and the group must both be IPv4 or both IPv6",
                });
            }
            Some(sip)
        }
    };
    let mut iface = None;
    for (k, v) in query {
        match k {
            "iface" | "localaddr" => {
                if ip.is_ipv4() {
                    parse_ip(
                        url,
                        v,
                        "iface= for an IPv4 group is the local interface's IPv4 address",
                    )?;
                } else if v.is_empty() {
                    return Err(bad_opt(
                        url,
                        k,
                        v,
                        "an interface name or index, e.g. iface=eth0",
                    ));
                }
                iface = Some(v.to_owned());
            }
            _ => {
                return Err(UrlError::UnknownOption {
                    url: mask(url),
                    key: k.to_owned(),
                    accepted: "iface",
                })
            }
        }
    }
    Ok(UdpInputUrl {
        url: mask(url),
        addr: SocketAddr::new(ip, port),
        source,
        iface,
    })
}

fn bad_opt(url: &str, key: &str, value: &str, expected: &'static str) -> UrlError {
    UrlError::BadOption {
        url: mask(url),
        key: key.to_owned(),
        value: value.to_owned(),
        expected,
    }
}

fn parse_udp_output(url: &str, rest: &str) -> Result<UdpOutputUrl, UrlError> {
    let (auth, query) = split_query(rest);
    let (host, port) = split_host_port(url, auth)?;
    if port == 0 {
        return Err(UrlError::BadPort {
            url: mask(url),
            port: "0".to_owned(),
        });
    }
    if host.is_empty() {
        return Err(UrlError::BadAddress {
            url: mask(url),
            addr: auth.to_owned(),
            expected: "a UDP output needs a destination host, e.g. udp://239.1.1.1:1234",
        });
    }
    let mut out = UdpOutputUrl {
        url: mask(url),
        host: host.to_owned(),
        port,
        ttl: None,
        iface: None,
        packets_per_datagram: DEFAULT_PACKETS_PER_DATAGRAM,
    };
    for (k, v) in query {
        match k {
            "ttl" => {
                out.ttl = Some(
                    v.parse::<u8>()
                        .map_err(|_| bad_opt(url, k, v, "a hop count from 0 to 255"))?
                        .into(),
                )
            }
            "iface" | "localaddr" => {
                if v.is_empty() {
                    return Err(bad_opt(
                        url,
                        k,
                        v,
                        "a local IPv4 address, or an IPv6 interface name/index",
                    ));
                }
                out.iface = Some(v.to_owned())
            }
            "pkt" => {
                out.packets_per_datagram = match v.parse::<usize>() {
                    Ok(n @ 1..=7) => n,
                    _ => {
                        return Err(bad_opt(
                            url,
                            k,
                            v,
                            "TS packets per datagram, 1 to 7 (default 7)",
                        ))
                    }
                }
            }
            _ => {
                return Err(UrlError::UnknownOption {
                    url: mask(url),
                    key: k.to_owned(),
                    accepted: "ttl, iface, pkt",
                })
            }
        }
    }
    Ok(out)
}

fn parse_srt(url: &str, rest: &str) -> Result<SrtUrl, UrlError> {
    let (auth, query) = split_query(rest);
    let (host, port) = split_host_port(url, auth)?;
    let mut mode = None;
    let mut latency = DEFAULT_SRT_LATENCY;
    let mut passphrase = None;
    let mut stream_id = None;
    for (k, v) in &query {
        match *k {
            "mode" => {
                mode = Some(match *v {
                    "caller" | "client" => SrtMode::Caller,
                    "listener" | "server" => SrtMode::Listener,
                    _ => return Err(bad_opt(url, k, v, "caller or listener")),
                })
            }
            "latency" => {
                latency = Duration::from_millis(
                    v.parse::<u32>()
                        .map_err(|_| bad_opt(url, k, v, "milliseconds, e.g. latency=120"))?
                        .into(),
                )
            }
            "passphrase" => {
                if !(10..=79).contains(&v.len()) {
                    return Err(bad_opt(
                        url,
                        k,
                        "***",
                        "SRT passphrases are 10 to 79 characters long",
                    ));
                }
                passphrase = Some((*v).to_owned())
            }
            "streamid" => {
                if v.len() > 512 {
                    return Err(bad_opt(url, k, v, "at most 512 characters"));
                }
                stream_id = Some((*v).to_owned())
            }
            _ => {
                return Err(UrlError::UnknownOption {
                    url: mask(url),
                    key: (*k).to_owned(),
                    accepted: "mode, latency, passphrase, streamid",
                })
            }
        }
    }
    let mode = mode.unwrap_or(if host.is_empty() {
        SrtMode::Listener
    } else {
        SrtMode::Caller
    });
    if mode == SrtMode::Caller && port == 0 {
        return Err(UrlError::BadPort {
            url: mask(url),
            port: "0".to_owned(),
        });
    }
    if mode == SrtMode::Caller && host.is_empty() {
        return Err(UrlError::BadAddress {
            url: mask(url),
            addr: auth.to_owned(),
            expected: "an SRT caller needs the listener's host, e.g. srt://203.0.113.5:9000",
        });
    }
    Ok(SrtUrl {
        url: mask(url),
        host: host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
        port,
        mode,
        latency,
        passphrase,
        stream_id,
    })
}

/// Hide the secrets in a URL kept for messages: every `passphrase=` value (a repeated
/// key is as secret as the first), in errors as much as in the URL shown for a good one,
/// and `password=` (a PostgreSQL store URL's), and the password of an `http://USER:PASS@`
/// or `postgres://USER:PASS@` URL (all of a `TOKEN@` without a colon).
/// Also for URLs kept as written (a head-end file's channel spec) whenever they are shown.
pub fn mask(url: &str) -> String {
    let mut url = mask_userinfo(url);
    for key in ["passphrase=", "password="] {
        url = mask_values(&url, key);
    }
    url
}

/// Every `KEY` value in `url` (up to the next `&`) as `***`.
fn mask_values(url: &str, key: &str) -> String {
    let mut out = String::with_capacity(url.len());
    let mut rest = url;
    while let Some(i) = rest.find(key) {
        let start = i + key.len();
        out.push_str(&rest[..start]);
        out.push_str("***");
        rest = &rest[rest[start..].find('&').map_or(rest.len(), |e| start + e)..];
    }
    out.push_str(rest);
    out
}

/// `http(s)://USER:PASS@HOST…` → `http(s)://USER:***@HOST…` (and `postgres://`); other URLs as they are (a
/// `udp://SOURCE@GROUP` names an address, not a secret).
fn mask_userinfo(url: &str) -> String {
    let t = url.trim_start();
    let lead = &url[..url.len() - t.len()];
    let Some((scheme, rest)) = t.split_once("://") else {
        return url.to_owned();
    };
    if !["http", "https", "postgres", "postgresql"]
        .iter()
        .any(|s| scheme.eq_ignore_ascii_case(s))
    {
        return url.to_owned();
    }
    let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..auth_end].rfind('@') else {
        return url.to_owned();
    };
    let masked = match rest[..at].split_once(':') {
        Some((user, _)) => format!("{user}:***"),
        None => "***".to_owned(),
    };
    format!("{lead}{scheme}://{masked}{}", &rest[at..])
}

/// `HOST[:PORT]` or `[V6][:PORT]` of an HTTP URL, with `default_port` when none is written.
fn split_http_authority<'a>(
    url: &str,
    auth: &'a str,
    default_port: u16,
) -> Result<(&'a str, u16), UrlError> {
    let has_port = match auth.strip_prefix('[') {
        Some(after) => after.split_once(']').is_some_and(|(_, t)| !t.is_empty()),
        None => auth.contains(':'),
    };
    if has_port {
        split_host_port(url, auth)
    } else {
        Ok((auth, default_port))
    }
}

/// Split `AUTHORITY/PATH?QUERY` (the part after `http://`) into the authority and the rest
/// (`/` when empty); a fragment (`#…`) is the browser's, never sent.
fn split_http(rest: &str) -> (&str, String) {
    let rest = rest.split_once('#').map_or(rest, |(r, _)| r);
    let i = rest.find(['/', '?']).unwrap_or(rest.len());
    let (auth, target) = rest.split_at(i);
    let target = if target.starts_with('/') {
        target.to_owned()
    } else {
        format!("/{target}")
    };
    (auth, target)
}

fn parse_http_input(url: &str, rest: &str) -> Result<HttpInputUrl, UrlError> {
    let (auth, target) = split_http(rest);
    let (userinfo, hostport) = match auth.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, auth),
    };
    let (host, port) = split_http_authority(url, hostport, 80)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(UrlError::BadAddress {
            url: mask(url),
            addr: hostport.to_owned(),
            expected: "an HTTP input needs the server's host, e.g. http://192.0.2.7:8000/ch1",
        });
    }
    if port == 0 {
        return Err(UrlError::BadPort {
            url: mask(url),
            port: "0".to_owned(),
        });
    }
    if target.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(UrlError::BadAddress {
            url: mask(url),
            addr: target,
            expected: "the path may not hold spaces or control characters; write them %-encoded",
        });
    }
    let credentials = userinfo.map(|u| match u.split_once(':') {
        Some((user, pass)) => (user.to_owned(), pass.to_owned()),
        None => (u.to_owned(), String::new()),
    });
    Ok(HttpInputUrl {
        url: mask(url),
        host: host.to_owned(),
        port,
        target,
        credentials,
    })
}

fn parse_http_output(url: &str, rest: &str) -> Result<HttpOutputUrl, UrlError> {
    let (auth, target) = split_http(rest);
    if auth.contains('@') {
        return Err(UrlError::BadAddress {
            url: mask(url),
            // never the text itself: it may be a password
            addr: "USER:PASS@".to_owned(),
            expected: "an HTTP output serves without a login; leave USER:PASS@ out",
        });
    }
    let (host, port) = split_http_authority(url, auth, 80)?;
    let ip = if host.is_empty() {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    } else {
        parse_ip(
            url,
            host.trim_start_matches('[').trim_end_matches(']'),
            "an HTTP output listens on a local IP address (0.0.0.0 for all), not a host name",
        )?
    };
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, q),
        None => (target.as_str(), ""),
    };
    if path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(UrlError::BadAddress {
            url: mask(url),
            addr: path.to_owned(),
            expected: "the path may not hold spaces or control characters",
        });
    }
    let mut max_clients = DEFAULT_HTTP_MAX_CLIENTS;
    for kv in query.split('&').filter(|kv| !kv.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        match k {
            "max_clients" => {
                max_clients = match v.parse::<usize>() {
                    Ok(n @ 1..=MAX_HTTP_CLIENTS) => n,
                    _ => {
                        return Err(bad_opt(
                            url,
                            k,
                            v,
                            "clients served at once, 1 to 10000 (default 100)",
                        ))
                    }
                }
            }
            _ => {
                return Err(UrlError::UnknownOption {
                    url: mask(url),
                    key: k.to_owned(),
                    accepted: "max_clients",
                })
            }
        }
    }
    Ok(HttpOutputUrl {
        url: mask(url),
        addr: SocketAddr::new(ip, port),
        path: path.to_owned(),
        max_clients,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv6Addr;

    fn udp_in(s: &str) -> UdpInputUrl {
        match InputUrl::parse(s).unwrap() {
            InputUrl::Udp(u) => u,
            other => panic!("{s}: {other:?}"),
        }
    }

    #[test]
    fn udp_inputs() {
        let u = udp_in("udp://239.1.2.3:1234");
        assert_eq!(u.addr, "239.1.2.3:1234".parse().unwrap());
        assert!(u.is_multicast());
        assert_eq!(u.source, None);

        let u = udp_in("udp://10.0.0.1@232.1.1.1:5000?iface=192.168.1.2");
        assert_eq!(u.source, Some("10.0.0.1".parse().unwrap()));
        assert_eq!(u.iface.as_deref(), Some("192.168.1.2"));

        let u = udp_in("udp://[ff15::1]:1234?iface=lo");
        assert_eq!(u.addr.ip(), "ff15::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(u.iface.as_deref(), Some("lo"));

        let u = udp_in("udp://[2001:db8::1]@[ff35::1]:1234");
        assert!(u.source.unwrap().is_ipv6());

        let u = udp_in("udp://:1234");
        assert_eq!(u.addr, "0.0.0.0:1234".parse().unwrap());
        assert!(!u.is_multicast());

        let u = udp_in("rtp://127.0.0.1:1234/");
        assert_eq!(u.addr, "127.0.0.1:1234".parse().unwrap());
    }

    #[test]
    fn udp_input_errors() {
        let e = |s| InputUrl::parse(s).unwrap_err();
        assert!(matches!(e("udp://239.1.1.1"), UrlError::MissingPort { .. }));
        assert!(matches!(
            e("udp://239.1.1.1:"),
            UrlError::MissingPort { .. }
        ));
        assert!(matches!(
            e("udp://239.1.1.1:99999"),
            UrlError::BadPort { .. }
        ));
        assert_eq!(udp_in("udp://127.0.0.1:0").addr.port(), 0);
        assert!(matches!(
            e("udp://example.com:1234"),
            UrlError::BadAddress { .. }
        ));
        assert!(matches!(
            e("udp://ff15::1:1234"),
            UrlError::BadAddress { .. }
        ));
        assert!(matches!(
            e("udp://1.2.3.4@10.0.0.1:1234"),
            UrlError::BadAddress { .. }
        ));
        assert!(matches!(
            e("udp://[::1]@239.1.1.1:1234"),
            UrlError::BadAddress { .. }
        ));
        assert!(matches!(
            e("udp://239.1.1.1:1234?ttl=3"),
            UrlError::UnknownOption { .. }
        ));
        assert!(matches!(
            e("udp://239.1.1.1:1234?iface=eth0"),
            UrlError::BadAddress { .. }
        ));
        assert!(matches!(e("https://x:1/a"), UrlError::Scheme { .. }));
        assert!(matches!(e(""), UrlError::Empty));
        let msg = e("udp://239.1.1.1").to_string();
        assert!(
            msg.contains("udp://239.1.1.1") && msg.contains("HOST:PORT"),
            "{msg}"
        );
    }

    #[test]
    fn paths_and_dash() {
        assert_eq!(InputUrl::parse("-").unwrap(), InputUrl::Stdin);
        assert_eq!(OutputUrl::parse("-").unwrap(), OutputUrl::Stdout);
        assert_eq!(
            InputUrl::parse("/tmp/a.ts").unwrap(),
            InputUrl::File("/tmp/a.ts".into())
        );
        assert_eq!(
            OutputUrl::parse("file:///tmp/b.ts").unwrap(),
            OutputUrl::File("/tmp/b.ts".into())
        );
        assert_eq!(
            InputUrl::parse("relative/c:d.ts").unwrap(),
            InputUrl::File("relative/c:d.ts".into())
        );
    }

    #[test]
    fn udp_outputs() {
        let OutputUrl::Udp(u) =
            OutputUrl::parse("udp://239.0.0.1:1234?ttl=4&iface=10.0.0.2&pkt=5").unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (u.host.as_str(), u.port, u.ttl, u.packets_per_datagram),
            ("239.0.0.1", 1234, Some(4), 5)
        );
        assert_eq!(u.iface.as_deref(), Some("10.0.0.2"));
        let OutputUrl::Udp(u) = OutputUrl::parse("udp://localhost:1234").unwrap() else {
            panic!()
        };
        assert_eq!(u.packets_per_datagram, 7);
        let e = |s| OutputUrl::parse(s).unwrap_err();
        assert!(matches!(
            e("udp://1.2.3.4:5?pkt=8"),
            UrlError::BadOption { .. }
        ));
        assert!(matches!(
            e("udp://1.2.3.4:5?pkt=0"),
            UrlError::BadOption { .. }
        ));
        assert!(matches!(
            e("udp://1.2.3.4:5?ttl=256"),
            UrlError::BadOption { .. }
        ));
        assert!(matches!(e("udp://:5"), UrlError::BadAddress { .. }));
        assert!(matches!(e("udp://1.2.3.4:0"), UrlError::BadPort { .. }));
        assert!(matches!(e("srt://1.2.3.4:0"), UrlError::BadPort { .. }));
        assert!(matches!(e("rtp://1.2.3.4:5"), UrlError::Scheme { .. }));
    }

    #[test]
    fn srt_urls() {
        let InputUrl::Srt(s) = InputUrl::parse("srt://:9000").unwrap() else {
            panic!()
        };
        assert_eq!(
            (s.mode, s.port, s.host.as_str()),
            (SrtMode::Listener, 9000, "")
        );
        assert_eq!(s.latency, DEFAULT_SRT_LATENCY);
        let OutputUrl::Srt(s) =
            OutputUrl::parse("srt://example.net:9000?latency=200&passphrase=0123456789abc")
                .unwrap()
        else {
            panic!()
        };
        assert_eq!(s.mode, SrtMode::Caller);
        assert_eq!(s.latency, Duration::from_millis(200));
        assert_eq!(s.passphrase.as_deref(), Some("0123456789abc"));
        assert!(!s.url.contains("0123456789abc"));
        assert!(!format!("{s:?}").contains("0123456789abc"));
        let InputUrl::Srt(s) = InputUrl::parse("srt://127.0.0.1:9000?mode=listener").unwrap()
        else {
            panic!()
        };
        assert_eq!(s.mode, SrtMode::Listener);
        let InputUrl::Srt(s) = InputUrl::parse("srt://[::1]:9000").unwrap() else {
            panic!()
        };
        assert_eq!(s.host, "::1");
        let e = |s| InputUrl::parse(s).unwrap_err();
        assert!(matches!(
            e("srt://:9000?mode=caller"),
            UrlError::BadAddress { .. }
        ));
        assert!(matches!(
            e("srt://h:9000?mode=rendezvous"),
            UrlError::BadOption { .. }
        ));
        assert!(matches!(
            e("srt://h:9000?passphrase=short"),
            UrlError::BadOption { .. }
        ));
        assert!(matches!(
            e("srt://h:9000?latency=abc"),
            UrlError::BadOption { .. }
        ));
        assert!(!e("srt://h:9000?passphrase=short")
            .to_string()
            .contains("short"));
    }

    #[test]
    fn no_error_or_display_shows_a_passphrase() {
        // found by the url fuzz target: errors kept the URL unmasked, and only the first
        // of two passphrase= keys was masked while the last one is the one used
        let secret = "0123456789abc";
        for bad in [
            "srt://h:x?passphrase=0123456789abc",
            "rtp://h:9000?mode=caller&passphrase=0123456789abc",
            "udp://239.1.1.1:1234?passphrase=0123456789abc",
            "srt://h:9000?passphrase=0123456789abc&colour=red",
            // an HTTP path's bad character: the error named the path with its query
            "http://0.0.0.0:8100/ch1?ma\0clients=&passphrase=0123456789abc",
            "http://192.0.2.7:8000/a b?passphrase=0123456789abc",
        ] {
            let e = InputUrl::parse(bad).unwrap_err().to_string();
            assert!(!e.contains(secret), "{e}");
        }
        // an HTTP input's request target is kept as written (the server gets it), but its
        // Debug masks it like the URL
        let u = InputUrl::parse("http://h:8000/a?passphrase=0123456789abc").unwrap();
        assert!(!format!("{u:?}").contains(secret), "{u:?}");
        let OutputUrl::Srt(s) =
            OutputUrl::parse("srt://h:9000?passphrase=aaaaaaaaaa&passphrase=0123456789abc")
                .unwrap()
        else {
            panic!()
        };
        assert_eq!(s.passphrase.as_deref(), Some(secret));
        assert!(!s.url.contains(secret), "{}", s.url);
        assert!(!s.url.contains("aaaaaaaaaa"), "{}", s.url);
    }

    #[test]
    fn http_outputs() {
        let OutputUrl::Http(u) = OutputUrl::parse("http://0.0.0.0:8100/ch1").unwrap() else {
            panic!()
        };
        assert_eq!(u.addr, "0.0.0.0:8100".parse().unwrap());
        assert_eq!(
            (u.path.as_str(), u.max_clients),
            ("/ch1", DEFAULT_HTTP_MAX_CLIENTS)
        );
        let OutputUrl::Http(u) = OutputUrl::parse("http://[::1]:0/a/b.ts?max_clients=5").unwrap()
        else {
            panic!()
        };
        assert_eq!(u.addr, "[::1]:0".parse().unwrap());
        assert_eq!((u.path.as_str(), u.max_clients), ("/a/b.ts", 5));
        let OutputUrl::Http(u) = OutputUrl::parse("http://:8100").unwrap() else {
            panic!()
        };
        assert_eq!((u.addr.port(), u.path.as_str()), (8100, "/"));
        let e = |s| OutputUrl::parse(s).unwrap_err();
        assert!(matches!(
            e("http://example.com:8100/x"),
            UrlError::BadAddress { .. }
        ));
        assert!(matches!(
            e("http://:8100/x?max_clients=0"),
            UrlError::BadOption { .. }
        ));
        assert!(matches!(
            e("http://:8100/x?max_clients=10001"),
            UrlError::BadOption { .. }
        ));
        assert!(matches!(
            e("http://:8100/x?colour=red"),
            UrlError::UnknownOption { .. }
        ));
        assert!(matches!(e("http://:99999/x"), UrlError::BadPort { .. }));
        assert!(matches!(
            e("http://u:secret@:8100/x"),
            UrlError::BadAddress { .. }
        ));
        assert!(!e("http://u:secret@:8100/x").to_string().contains("secret"));
        let msg = e("http://example.com:8100/x").to_string();
        assert!(
            msg.contains("http://example.com:8100/x") && msg.contains("0.0.0.0"),
            "{msg}"
        );
    }

    #[test]
    fn http_inputs_and_their_masked_credentials() {
        let InputUrl::Http(u) = InputUrl::parse("http://127.0.0.1:8100/ch1?token=a&b=c").unwrap()
        else {
            panic!()
        };
        assert_eq!((u.host.as_str(), u.port), ("127.0.0.1", 8100));
        assert_eq!(u.target, "/ch1?token=a&b=c");
        assert_eq!(u.credentials, None);
        let InputUrl::Http(u) = InputUrl::parse("http://example.net").unwrap() else {
            panic!()
        };
        assert_eq!(
            (u.host.as_str(), u.port, u.target.as_str()),
            ("example.net", 80, "/")
        );
        let InputUrl::Http(u) = InputUrl::parse("http://bob:s3cr3t@[::1]:81/x#frag").unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (u.host.as_str(), u.port, u.target.as_str()),
            ("::1", 81, "/x")
        );
        assert_eq!(u.credentials, Some(("bob".to_owned(), "s3cr3t".to_owned())));
        assert_eq!(u.url, "http://bob:***@[::1]:81/x#frag");
        assert!(!format!("{u:?}").contains("s3cr3t"));
        assert!(!InputUrl::Http(u).display().contains("s3cr3t"));
        assert_eq!(mask("http://tok3n@h:1/x"), "http://***@h:1/x");
        assert_eq!(
            mask("udp://10.0.0.1@239.1.1.1:5000"),
            "udp://10.0.0.1@239.1.1.1:5000"
        );
        assert_eq!(mask("http://h:1/x?a=b@c"), "http://h:1/x?a=b@c");
        let e = |s| InputUrl::parse(s).unwrap_err();
        assert!(matches!(e("http://:8100/x"), UrlError::BadAddress { .. }));
        assert!(matches!(e("http://h:0/x"), UrlError::BadPort { .. }));
        assert!(matches!(e("http://h:1/a b"), UrlError::BadAddress { .. }));
        let msg = e("http://bob:s3cr3t@h:0/x").to_string();
        assert!(
            !msg.contains("s3cr3t") && msg.contains("bob:***@h:0"),
            "{msg}"
        );
    }
}
