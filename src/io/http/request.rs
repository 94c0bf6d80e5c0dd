//! The request head an HTTP-TS listener accepts: check (is the head complete?) then parse,
//! within fixed bounds, never panicking and never logging. Only what a streaming endpoint
//! needs is kept: the method (GET or HEAD), the path and the version; header values are
//! checked for shape and otherwise ignored.

/// The longest request head taken (request line and headers); longer is refused (431).
pub const MAX_HEAD: usize = 8 * 1024;
/// The most header lines taken; more is refused (431).
pub const MAX_HEADERS: usize = 64;

/// What a client asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// The stream.
    Get,
    /// Only the response head (probes, monitoring).
    Head,
}

/// A parsed request head, borrowing from the bytes read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHead<'a> {
    pub method: Method,
    /// The path, without the query string (as sent: not %-decoded).
    pub path: &'a str,
    /// The query string after `?`, if any.
    pub query: Option<&'a str>,
}

/// Why a request head is refused; [`RequestError::status`] gives the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("the request head is larger than {MAX_HEAD} bytes")]
    TooLarge,
    #[error("more than {MAX_HEADERS} header lines")]
    TooManyHeaders,
    #[error("malformed request line")]
    BadRequestLine,
    #[error("malformed header line")]
    BadHeader,
    #[error("only GET and HEAD are served")]
    Method,
    #[error("only HTTP/1.0 and HTTP/1.1 are served")]
    Version,
}

impl RequestError {
    /// The status code and reason phrase to answer with.
    pub fn status(&self) -> (u16, &'static str) {
        match self {
            RequestError::TooLarge | RequestError::TooManyHeaders => {
                (431, "Request Header Fields Too Large")
            }
            RequestError::BadRequestLine | RequestError::BadHeader => (400, "Bad Request"),
            RequestError::Method => (405, "Method Not Allowed"),
            RequestError::Version => (505, "HTTP Version Not Supported"),
        }
    }
}

/// Where the head in `buf` ends (the index after its blank line), if it is complete.
/// Lines may end in CRLF or a bare LF.
fn head_end(buf: &[u8]) -> Option<usize> {
    let mut line_start = 0;
    for (i, &b) in buf.iter().enumerate() {
        if b == b'\n' {
            let line = &buf[line_start..i];
            if (line.is_empty() || line == b"\r") && line_start > 0 {
                return Some(i + 1);
            }
            line_start = i + 1;
        }
    }
    None
}

fn is_token(s: &[u8]) -> bool {
    !s.is_empty()
        && s.iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Check then parse: `Ok(None)` while the head is incomplete (and within [`MAX_HEAD`]),
/// else the head and the number of bytes it took.
pub fn parse_request(buf: &[u8]) -> Result<Option<(RequestHead<'_>, usize)>, RequestError> {
    // blank lines before the request line are tolerated (RFC 9112, 2.2)
    let lead = buf
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(buf.len());
    let Some(end) = head_end(&buf[lead..]).map(|e| e + lead) else {
        return if buf.len() >= MAX_HEAD {
            Err(RequestError::TooLarge)
        } else {
            Ok(None)
        };
    };
    if end > MAX_HEAD {
        return Err(RequestError::TooLarge);
    }
    let mut lines = buf[lead..end]
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let request_line = lines.next().ok_or(RequestError::BadRequestLine)?;
    let head = parse_request_line(request_line)?;
    let mut headers = 0;
    for line in lines.filter(|l| !l.is_empty()) {
        headers += 1;
        if headers > MAX_HEADERS {
            return Err(RequestError::TooManyHeaders);
        }
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or(RequestError::BadHeader)?;
        // a name is a token: no folding (leading space), no space before the colon
        if !is_token(&line[..colon]) {
            return Err(RequestError::BadHeader);
        }
        if line[colon + 1..]
            .iter()
            .any(|&b| b == 0 || b == b'\r' || b == b'\n')
        {
            return Err(RequestError::BadHeader);
        }
    }
    Ok(Some((head, end)))
}

fn parse_request_line(line: &[u8]) -> Result<RequestHead<'_>, RequestError> {
    let line = std::str::from_utf8(line).map_err(|_| RequestError::BadRequestLine)?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(RequestError::BadRequestLine);
    };
    match version.strip_prefix("HTTP/") {
        Some("1.0" | "1.1") => {}
        Some(v)
            if v.len() == 3
                && v.as_bytes()[0].is_ascii_digit()
                && v.as_bytes()[1] == b'.'
                && v.as_bytes()[2].is_ascii_digit() =>
        {
            return Err(RequestError::Version)
        }
        Some("2" | "3") => return Err(RequestError::Version),
        _ => return Err(RequestError::BadRequestLine),
    }
    if !is_token(method.as_bytes()) {
        return Err(RequestError::BadRequestLine);
    }
    let method = match method {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        _ => return Err(RequestError::Method),
    };
    // origin form (/path), or the absolute form a proxy sends (http://host/path)
    let origin = if target.starts_with('/') {
        target
    } else if let Some(rest) = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("HTTP://"))
    {
        rest.find('/').map_or("/", |i| &rest[i..])
    } else {
        return Err(RequestError::BadRequestLine);
    };
    if origin
        .bytes()
        .any(|b| b.is_ascii_control() || !b.is_ascii() || b == b'#')
    {
        return Err(RequestError::BadRequestLine);
    }
    let (path, query) = match origin.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (origin, None),
    };
    Ok(RequestHead {
        method,
        path,
        query,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> (RequestHead<'_>, usize) {
        parse_request(s.as_bytes()).unwrap().unwrap()
    }

    fn err(s: &[u8]) -> RequestError {
        parse_request(s).unwrap_err()
    }

    #[test]
    fn requests_as_curl_ffmpeg_and_vlc_send_them() {
        let curl = "GET /ch1 HTTP/1.1\r\nHost: 127.0.0.1:8100\r\nUser-Agent: curl/8\r\nAccept: */*\r\n\r\n";
        let (h, n) = ok(curl);
        assert_eq!(
            (h.method, h.path, h.query, n),
            (Method::Get, "/ch1", None, curl.len())
        );
        let (h, _) = ok("GET /ch1?token=x&y HTTP/1.0\n\n");
        assert_eq!((h.path, h.query), ("/ch1", Some("token=x&y")));
        let (h, _) = ok("\r\nHEAD http://host:1/a/b HTTP/1.1\r\nIcy-MetaData: 1\r\n\r\nextra");
        assert_eq!((h.method, h.path), (Method::Head, "/a/b"));
        let (h, _) = ok("GET http://host HTTP/1.1\r\n\r\n");
        assert_eq!(h.path, "/");
    }

    #[test]
    fn incomplete_heads_wait_within_the_bound() {
        assert_eq!(parse_request(b""), Ok(None));
        assert_eq!(parse_request(b"GET /ch1 HTTP/1.1\r\nHost: x\r\n"), Ok(None));
        assert_eq!(parse_request(b"\r\n\r\n"), Ok(None));
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.resize(MAX_HEAD, b'a');
        assert_eq!(parse_request(&big), Err(RequestError::TooLarge));
        big.extend_from_slice(b"\r\n\r\n");
        assert_eq!(parse_request(&big), Err(RequestError::TooLarge));
    }

    #[test]
    fn garbage_is_refused_with_the_right_status() {
        assert_eq!(
            err(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\n\n"),
            RequestError::BadRequestLine
        );
        assert_eq!(err(b"hello\r\n\r\n"), RequestError::BadRequestLine);
        assert_eq!(
            err(b"GET  /x HTTP/1.1\r\n\r\n"),
            RequestError::BadRequestLine
        );
        assert_eq!(err(b"GET x HTTP/1.1\r\n\r\n"), RequestError::BadRequestLine);
        assert_eq!(
            err(b"GET /x HTTP/1.1 extra\r\n\r\n"),
            RequestError::BadRequestLine
        );
        assert_eq!(
            err(b"GET /\x01 HTTP/1.1\r\n\r\n"),
            RequestError::BadRequestLine
        );
        assert_eq!(err(b"POST /x HTTP/1.1\r\n\r\n"), RequestError::Method);
        assert_eq!(err(b"GET /x HTTP/2.0\r\n\r\n"), RequestError::Version);
        assert_eq!(
            err(b"GET /x HTTX/1.1\r\n\r\n"),
            RequestError::BadRequestLine
        );
        assert_eq!(
            err(b"GET /x HTTP/1.1\r\nNoColon\r\n\r\n"),
            RequestError::BadHeader
        );
        assert_eq!(
            err(b"GET /x HTTP/1.1\r\n folded: x\r\n\r\n"),
            RequestError::BadHeader
        );
        assert_eq!(
            err(b"GET /x HTTP/1.1\r\nA b: x\r\n\r\n"),
            RequestError::BadHeader
        );
        let many = format!(
            "GET / HTTP/1.1\r\n{}\r\n",
            "A: b\r\n".repeat(MAX_HEADERS + 1)
        );
        assert_eq!(err(many.as_bytes()), RequestError::TooManyHeaders);
        assert_eq!(RequestError::TooLarge.status().0, 431);
        assert_eq!(RequestError::Method.status().0, 405);
    }
}
