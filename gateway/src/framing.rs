//! Strict HTTP/1 request framing, checked on the raw request head before
//! anything routes on it, so that meshgate and the origins behind it can
//! never disagree about where one request ends and the next begins
//! (request smuggling).
//!
//! pingora's parser (httparse plus pingora's own validation) already
//! refuses most malformed heads with a bare 400 before any of our code
//! runs. But it also accepts or repairs some that a stricter or looser
//! origin could read differently: it drops `Content-Length` when
//! `Transfer-Encoding` is present, collapses duplicate or comma-listed equal
//! lengths, accepts bare LF line endings and `gzip, chunked`, and matches
//! `chunked` case-insensitively. The parsed header map hides most of that,
//! so [`check_head`] reads the raw bytes of the head as they arrived.
//!
//! This module decides; it does not answer. A violation becomes a pingora
//! error whose status the proxy's error path turns into the response, and
//! the connection is closed afterwards so no byte after the rejected head
//! is ever parsed as a request. HTTP/2 frames messages itself and is not
//! checked here.
//!
//! One response rule lives here too: an HTTP/1.0 client gets a body of
//! unknown length delimited by the close, never chunked
//! ([`close_unframed_for_http10`], [`Http10Framing`]).

use http::Version;
use meshgate_config::ListenerLimits;
use pingora::modules::http::{HttpModule, HttpModuleBuilder, HttpModules, Module};
use pingora::prelude::*;
use pingora::proxy::Session;

/// Limits on one request head, fixed when the listener starts (listener
/// limits change only on restart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HeadLimits {
    /// Most bytes in the head: request line, header lines and the blank
    /// line that ends the head, line endings included.
    pub(crate) max_bytes: usize,
    /// Most header lines.
    pub(crate) max_headers: usize,
}

impl From<&ListenerLimits> for HeadLimits {
    fn from(l: &ListenerLimits) -> Self {
        HeadLimits {
            max_bytes: l.max_header_bytes,
            max_headers: l.max_headers,
        }
    }
}

/// Why a request head is refused. Messages name line numbers (the request
/// line is line 1) and never echo the client's bytes into our logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Violation {
    #[error("request head is {len} bytes, the listener allows {max}")]
    HeadTooLarge { len: usize, max: usize },
    #[error("request has more than {max} header lines")]
    TooManyHeaders { max: usize },
    #[error("bare LF line ending at byte {at} of the request head")]
    BareLf { at: usize },
    #[error("bare CR at byte {at} of the request head")]
    BareCr { at: usize },
    #[error("obsolete line folding on line {line}")]
    ObsFold { line: usize },
    #[error("header line {line} has no colon")]
    MissingColon { line: usize },
    #[error("whitespace before the colon on line {line}")]
    SpaceBeforeColon { line: usize },
    #[error("invalid header name on line {line}")]
    InvalidName { line: usize },
    #[error("control character in the header value on line {line}")]
    ControlInValue { line: usize },
    #[error("content-length together with transfer-encoding")]
    LengthAndEncoding,
    #[error("more than one content-length header")]
    DuplicateLength,
    #[error("malformed content-length")]
    InvalidLength,
    #[error("more than one transfer-encoding header")]
    DuplicateEncoding,
    #[error("transfer-encoding other than exactly \"chunked\"")]
    UnsupportedEncoding,
    #[error("transfer-encoding in a request older than HTTP/1.1")]
    EncodingBeforeHttp11,
    #[error("HTTP/1.1 request without a host header")]
    MissingHost,
    #[error("more than one host header")]
    DuplicateHost,
}

impl Violation {
    /// The status the client gets: 431 for the listener's size and count
    /// limits, 400 for everything else.
    pub(crate) fn status(&self) -> u16 {
        match self {
            Violation::HeadTooLarge { .. } | Violation::TooManyHeaders { .. } => 431,
            _ => 400,
        }
    }
}

/// Largest `Content-Length` accepted: the most a signed 64-bit length (Go,
/// Java, nginx's `off_t`) can hold, so no origin parses a value we accepted
/// as an error or as something else.
const MAX_CONTENT_LENGTH: u64 = i64::MAX as u64;

/// Checks one HTTP/1 request head on an early phase, before routing.
///
/// On a violation the connection is marked not to be kept alive and the
/// returned error carries `HTTPStatus(400 or 431)`; the caller returns it
/// so pingora's error path answers and drops the connection. On success,
/// pipelining is allowed on the connection: each pipelined request comes
/// back through this check, and pingora answers them in order (RFC 9112
/// section 9.3.2) instead of dropping the connection after the first.
pub(crate) fn enforce(session: &mut Session, limits: HeadLimits) -> Result<()> {
    let Some(h1) = session.as_downstream().as_http1() else {
        return Ok(());
    };
    let head = h1.get_headers_raw_bytes();
    match check_head(&head, session.req_header().version, limits) {
        Ok(()) => {
            session.set_pipelining_enabled(true);
            Ok(())
        }
        Err(v) => {
            // Never read past this head: whatever follows it is exactly
            // what a smuggling attempt wants parsed as the next request.
            session.set_keepalive(None);
            let status = v.status();
            Err(
                Error::because(ErrorType::HTTPStatus(status), "request head rejected", v)
                    .into_down(),
            )
        }
    }
}

/// An HTTP/1.0 client cannot read chunked encoding, and pingora sends a
/// response without a length chunked. Such a response goes to an HTTP/1.0
/// client delimited by the connection's close instead, as nginx sends it:
/// this, from `response_filter`, closes the connection after it, and
/// [`Http10Framing`] takes the chunked encoding off the final head.
pub(crate) fn close_unframed_for_http10(session: &mut Session, resp: &ResponseHeader) {
    if session.as_downstream().as_http1().is_some()
        && session.req_header().version == Version::HTTP_10
        && !resp.headers.contains_key(http::header::CONTENT_LENGTH)
    {
        session.set_keepalive(None);
    }
}

/// The downstream module that sends an HTTP/1.0 client a body of unknown
/// length without chunked encoding (see [`close_unframed_for_http10`]). A
/// module, because for an HTTP/2 upstream pingora adds the encoding after
/// `response_filter` has run; modules see the head as it is written.
pub(crate) struct Http10Framing;

impl Http10Framing {
    /// The module list of our proxies: this one alone (pingora's default
    /// list holds only a compression module, and it is switched off).
    pub(crate) fn install(modules: &mut HttpModules) {
        modules.add_module(Box::new(Http10Framing));
    }
}

impl HttpModuleBuilder for Http10Framing {
    fn init(&self) -> Module {
        Box::new(Http10Request { http10: false })
    }
}

/// Per request: whether the client spoke HTTP/1.0.
struct Http10Request {
    http10: bool,
}

#[async_trait::async_trait]
impl HttpModule for Http10Request {
    async fn request_header_filter(&mut self, req: &mut RequestHeader) -> Result<()> {
        self.http10 = req.version == Version::HTTP_10;
        Ok(())
    }

    async fn response_header_filter(
        &mut self,
        resp: &mut ResponseHeader,
        _end_of_stream: bool,
    ) -> Result<()> {
        if self.http10 {
            resp.remove_header(&http::header::TRANSFER_ENCODING);
        }
        Ok(())
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

/// Checks the raw bytes of one request head, from the request line through
/// the blank line that ends it. `version` is the version pingora parsed
/// from the request line.
///
/// It runs on every HTTP/1 request, so it reads each byte about twice: once
/// to find the line's end (checking the CRLF), once through a table of
/// byte classes for the header's name or value. A head with several faults
/// gets the first one met, line by line.
pub(crate) fn check_head(
    head: &[u8],
    version: Version,
    limits: HeadLimits,
) -> Result<(), Violation> {
    if head.len() > limits.max_bytes {
        return Err(Violation::HeadTooLarge {
            len: head.len(),
            max: limits.max_bytes,
        });
    }
    let mut request_line_seen = false;
    let mut headers = 0usize;
    let mut length: Option<&[u8]> = None;
    let mut lengths = 0usize;
    let mut encoding: Option<&[u8]> = None;
    let mut encodings = 0usize;
    let mut hosts = 0usize;
    let mut at = 0;
    let mut number = 0;
    while at < head.len() {
        number += 1;
        let (end, next) = line_end(head, at)?;
        let line = &head[at..end];
        at = next;
        if !request_line_seen {
            // RFC 9112 section 2.2: empty lines before the request line are
            // ignored (a client may send a CRLF after a request body).
            request_line_seen = !line.is_empty();
            continue;
        }
        let Some(&first) = line.first() else {
            // The blank line ends the head; whatever follows must still
            // end its lines with CRLF.
            while at < head.len() {
                at = line_end(head, at)?.1;
            }
            break;
        };
        if first == b' ' || first == b'\t' {
            return Err(Violation::ObsFold { line: number });
        }
        headers += 1;
        if headers > limits.max_headers {
            return Err(Violation::TooManyHeaders {
                max: limits.max_headers,
            });
        }
        let name_len = line
            .iter()
            .position(|&b| BYTE_CLASS[usize::from(b)] != TCHAR)
            .unwrap_or(line.len());
        if line.get(name_len) != Some(&b':') || name_len == 0 {
            return Err(bad_name(line, number));
        }
        let (name, value) = (&line[..name_len], &line[name_len + 1..]);
        if value.iter().any(|&b| BYTE_CLASS[usize::from(b)] == CONTROL) {
            return Err(Violation::ControlInValue { line: number });
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            lengths += 1;
            length = Some(value);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            encodings += 1;
            encoding = Some(value);
        } else if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
        }
    }

    // RFC 9112 section 3.2: an HTTP/1.1 request names its host exactly
    // once (HTTP/1.0 may leave it out).
    if hosts > 1 {
        return Err(Violation::DuplicateHost);
    }
    if hosts == 0 && version >= Version::HTTP_11 {
        return Err(Violation::MissingHost);
    }

    if lengths > 0 && encodings > 0 {
        return Err(Violation::LengthAndEncoding);
    }
    if lengths > 1 {
        return Err(Violation::DuplicateLength);
    }
    if let Some(v) = length {
        content_length(framing_value(v)).ok_or(Violation::InvalidLength)?;
    }
    if let Some(v) = encoding {
        if version < Version::HTTP_11 {
            return Err(Violation::EncodingBeforeHttp11);
        }
        if encodings > 1 {
            return Err(Violation::DuplicateEncoding);
        }
        if framing_value(v) != b"chunked" {
            return Err(Violation::UnsupportedEncoding);
        }
    }
    Ok(())
}

/// The line starting at `from`: where its CRLF starts and where the next
/// line starts (both the head's length for a last line without one).
/// Every CR must start a CRLF and every LF must end one.
fn line_end(head: &[u8], from: usize) -> Result<(usize, usize), Violation> {
    for (at, &b) in head.iter().enumerate().skip(from) {
        // Most bytes are above both: one comparison each.
        if b > b'\r' {
            continue;
        }
        if b == b'\n' {
            return Err(Violation::BareLf { at });
        }
        if b == b'\r' {
            return match head.get(at + 1) {
                Some(b'\n') => Ok((at, at + 2)),
                _ => Err(Violation::BareCr { at }),
            };
        }
    }
    Ok((head.len(), head.len()))
}

/// Why a header line's name is refused (the slow path: only for a head
/// that is refused anyway).
fn bad_name(line: &[u8], number: usize) -> Violation {
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return Violation::MissingColon { line: number };
    };
    let name = &line[..colon];
    if name.last().is_some_and(|&b| b == b' ' || b == b'\t') {
        Violation::SpaceBeforeColon { line: number }
    } else {
        Violation::InvalidName { line: number }
    }
}

/// A `tchar` (RFC 9110 section 5.6.2): allowed in a header name.
const TCHAR: u8 = 1;
/// A control character other than HTAB, or DEL: never allowed in a header
/// value.
const CONTROL: u8 = 2;

/// The class of every byte: [`TCHAR`], [`CONTROL`] or 0 (anything else).
static BYTE_CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = if (c < 0x20 && c != b'\t') || c == 0x7f {
            CONTROL
        } else if c.is_ascii_alphanumeric() {
            TCHAR
        } else {
            match c {
                b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-' | b'.' | b'^'
                | b'_' | b'`' | b'|' | b'~' => TCHAR,
                _ => 0,
            }
        };
        b += 1;
    }
    t
};

/// The value of a framing header as we accept it: after the colon, at most
/// one space, then the value with nothing around it. The RFC allows any
/// SP/HTAB there, but tabs and padding around `Transfer-Encoding` and
/// `Content-Length` are classic smuggling probes and no real client sends
/// them. Returns the bytes to compare; anything left over fails the
/// comparison.
fn framing_value(raw: &[u8]) -> &[u8] {
    raw.strip_prefix(b" ").unwrap_or(raw)
}

/// `1*DIGIT`, at most [`MAX_CONTENT_LENGTH`]; no sign, spaces or lists.
fn content_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    let mut n = 0u64;
    for &b in v {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    (n <= MAX_CONTENT_LENGTH).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMITS: HeadLimits = HeadLimits {
        max_bytes: 1024,
        max_headers: 8,
    };

    fn check(head: &str) -> Result<(), Violation> {
        check_head(head.as_bytes(), Version::HTTP_11, LIMITS)
    }

    fn with_headers(lines: &[&str]) -> String {
        let mut s = String::from("POST /x HTTP/1.1\r\nHost: a\r\n");
        for l in lines {
            s.push_str(l);
            s.push_str("\r\n");
        }
        s.push_str("\r\n");
        s
    }

    #[test]
    fn plain_heads_pass() {
        assert_eq!(check("GET / HTTP/1.1\r\nHost: a\r\n\r\n"), Ok(()));
        assert_eq!(check("\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"), Ok(()));
        assert_eq!(
            check_head(b"GET / HTTP/1.0\r\n\r\n", Version::HTTP_10, LIMITS),
            Ok(())
        );
        for ok in [
            "Content-Length: 0",
            "content-length: 42",
            "Content-Length:7",
            "Content-Length: 007",
            "Content-Length: 9223372036854775807",
            "Transfer-Encoding: chunked",
            "TRANSFER-ENCODING:chunked",
            "X-Tab: a\tb",
            "X-Empty:",
            "X-Obs-Text: caf\u{e9}",
            "X-Odd-Name!#$%&'*+.^_`|~: v",
        ] {
            assert_eq!(check(&with_headers(&[ok])), Ok(()), "{ok}");
        }
    }

    #[test]
    fn framing_headers_are_exact() {
        use Violation::*;
        let cases: &[(&[&str], Violation)] = &[
            (
                &["Content-Length: 3", "Transfer-Encoding: chunked"],
                LengthAndEncoding,
            ),
            (
                &["Transfer-Encoding: chunked", "Content-Length: 3"],
                LengthAndEncoding,
            ),
            (&["Content-Length: 3", "Content-Length: 3"], DuplicateLength),
            (&["Content-Length: 3, 3"], InvalidLength),
            (&["Content-Length: +3"], InvalidLength),
            (&["Content-Length: -3"], InvalidLength),
            (&["Content-Length: 1 2"], InvalidLength),
            (&["Content-Length: "], InvalidLength),
            (&["Content-Length:"], InvalidLength),
            (&["Content-Length: 0x3"], InvalidLength),
            (&["Content-Length:  3"], InvalidLength),
            (&["Content-Length:\t3"], InvalidLength),
            (&["Content-Length: 3 "], InvalidLength),
            (&["Content-Length: 9223372036854775808"], InvalidLength),
            (&["Content-Length: 99999999999999999999999"], InvalidLength),
            (&["Transfer-Encoding: gzip, chunked"], UnsupportedEncoding),
            (
                &["Transfer-Encoding: chunked, identity"],
                UnsupportedEncoding,
            ),
            (
                &["Transfer-Encoding: chunked, chunked"],
                UnsupportedEncoding,
            ),
            (&["Transfer-Encoding: xchunked"], UnsupportedEncoding),
            (&["Transfer-Encoding: Chunked"], UnsupportedEncoding),
            (&["Transfer-Encoding:\tchunked"], UnsupportedEncoding),
            (&["Transfer-Encoding:  chunked"], UnsupportedEncoding),
            (&["Transfer-Encoding: chunked "], UnsupportedEncoding),
            (&["Transfer-Encoding: "], UnsupportedEncoding),
            (
                &["Transfer-Encoding: chunked", "Transfer-Encoding: chunked"],
                DuplicateEncoding,
            ),
        ];
        for (lines, want) in cases {
            assert_eq!(check(&with_headers(lines)), Err(want.clone()), "{lines:?}");
        }
    }

    #[test]
    fn http_1_1_names_its_host_once() {
        assert_eq!(
            check("GET / HTTP/1.1\r\nX: a\r\n\r\n"),
            Err(Violation::MissingHost)
        );
        assert_eq!(
            check("GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n"),
            Err(Violation::DuplicateHost)
        );
        assert_eq!(
            check_head(
                b"GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n",
                Version::HTTP_10,
                LIMITS
            ),
            Err(Violation::DuplicateHost)
        );
    }

    #[test]
    fn transfer_encoding_needs_http_1_1() {
        let head = with_headers(&["Transfer-Encoding: chunked"]);
        assert_eq!(
            check_head(head.as_bytes(), Version::HTTP_10, LIMITS),
            Err(Violation::EncodingBeforeHttp11)
        );
    }

    #[test]
    fn line_syntax() {
        use Violation::*;
        let cases: &[(&str, Violation)] = &[
            ("GET / HTTP/1.1\nHost: a\r\n\r\n", BareLf { at: 14 }),
            ("GET / HTTP/1.1\r\nHost: a\r\n\n", BareLf { at: 25 }),
            ("GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n", BareCr { at: 23 }),
            ("GET / HTTP/1.1\r\nHost: a\r\n\r\n\r", BareCr { at: 27 }),
            ("GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n", ObsFold { line: 3 }),
            ("GET / HTTP/1.1\r\n\tHost: a\r\n\r\n", ObsFold { line: 2 }),
            ("GET / HTTP/1.1\r\nHost\r\n\r\n", MissingColon { line: 2 }),
            (
                "GET / HTTP/1.1\r\nHost : a\r\n\r\n",
                SpaceBeforeColon { line: 2 },
            ),
            (
                "GET / HTTP/1.1\r\nHost\t: a\r\n\r\n",
                SpaceBeforeColon { line: 2 },
            ),
            ("GET / HTTP/1.1\r\n: a\r\n\r\n", InvalidName { line: 2 }),
            ("GET / HTTP/1.1\r\nX(Y): a\r\n\r\n", InvalidName { line: 2 }),
            ("GET / HTTP/1.1\r\nX Y: a\r\n\r\n", InvalidName { line: 2 }),
            (
                "GET / HTTP/1.1\r\nX: a\0b\r\n\r\n",
                ControlInValue { line: 2 },
            ),
            (
                "GET / HTTP/1.1\r\nX: a\x01\r\n\r\n",
                ControlInValue { line: 2 },
            ),
            (
                "GET / HTTP/1.1\r\nX: \x0bchunked\r\n\r\n",
                ControlInValue { line: 2 },
            ),
            (
                "GET / HTTP/1.1\r\nX: a\x7f\r\n\r\n",
                ControlInValue { line: 2 },
            ),
        ];
        for (head, want) in cases {
            assert_eq!(check(head), Err(want.clone()), "{head:?}");
        }
    }

    #[test]
    fn limits_are_inclusive() {
        let base = "GET / HTTP/1.1\r\nHost: a\r\nX: \r\n\r\n";
        let fill = LIMITS.max_bytes - base.len();
        let exact = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
            "a".repeat(fill)
        );
        assert_eq!(exact.len(), LIMITS.max_bytes);
        assert_eq!(check(&exact), Ok(()));
        let over = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
            "a".repeat(fill + 1)
        );
        assert_eq!(
            check(&over),
            Err(Violation::HeadTooLarge {
                len: LIMITS.max_bytes + 1,
                max: LIMITS.max_bytes
            })
        );
        assert_eq!(Violation::HeadTooLarge { len: 0, max: 0 }.status(), 431);

        let names: Vec<String> = (0..LIMITS.max_headers)
            .map(|i| format!("X{i}: v"))
            .collect();
        let mut lines: Vec<&str> = names.iter().map(String::as_str).collect();
        // with_headers adds Host, so leave room for it.
        lines.pop();
        assert_eq!(check(&with_headers(&lines)), Ok(()));
        lines.push("One-Too-Many: v");
        assert_eq!(
            check(&with_headers(&lines)),
            Err(Violation::TooManyHeaders {
                max: LIMITS.max_headers
            })
        );
        assert_eq!(Violation::TooManyHeaders { max: 0 }.status(), 431);
        assert_eq!(Violation::LengthAndEncoding.status(), 400);
    }

    /// What the head check accepts, written the plain way (one rule per
    /// pass over the whole head), for heads without framing headers.
    fn accepted_by_plain_rules(head: &[u8]) -> bool {
        let endings_ok = head.iter().enumerate().all(|(i, &b)| match b {
            b'\r' => head.get(i + 1) == Some(&b'\n'),
            b'\n' => i > 0 && head[i - 1] == b'\r',
            _ => true,
        });
        if head.len() > LIMITS.max_bytes || !endings_ok {
            return false;
        }
        let text: Vec<&[u8]> = head.split(|&b| b == b'\n').collect();
        let mut lines = text
            .iter()
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .skip_while(|l| l.is_empty());
        lines.next();
        let fields: Vec<&[u8]> = lines.take_while(|l| !l.is_empty()).collect();
        fields.len() <= LIMITS.max_headers
            && fields.iter().all(|l| {
                let Some(colon) = l.iter().position(|&b| b == b':') else {
                    return false;
                };
                let (name, value) = (&l[..colon], &l[colon + 1..]);
                !name.is_empty()
                    && name
                        .iter()
                        .all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
                    && value
                        .iter()
                        .all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
            })
    }

    proptest! {
        #[test]
        fn accepts_what_the_plain_rules_accept(
            lines in proptest::collection::vec(
                proptest::collection::vec(
                    prop_oneof![
                        12 => proptest::sample::select(b"aZ9-: \t\0\x7f(".to_vec()),
                        1 => proptest::sample::select(b"\r\n".to_vec()),
                    ],
                    0..10,
                ),
                0..6,
            ),
            ending in proptest::sample::select(vec!["", "\r\n", "\r\n\r\n"]),
        ) {
            let mut head = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
            head.extend_from_slice(&lines.join(&b"\r\n"[..]));
            head.extend_from_slice(ending.as_bytes());
            prop_assert_eq!(
                check_head(&head, Version::HTTP_11, LIMITS).is_ok(),
                accepted_by_plain_rules(&head),
                "{:?}", String::from_utf8_lossy(&head)
            );
        }

        #[test]
        fn never_panics(head in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = check_head(&head, Version::HTTP_11, LIMITS);
        }

        #[test]
        fn well_formed_heads_pass(
            fields in proptest::collection::vec(("[A-Za-z0-9-]{1,16}", "[ -~]{0,24}"), 0..7),
        ) {
            let mut head = String::from("GET /p HTTP/1.1\r\nHost: a\r\n");
            for (name, value) in &fields {
                // Framing headers have rules of their own, tested above.
                let n = name.to_ascii_lowercase();
                prop_assume!(n != "content-length" && n != "transfer-encoding" && n != "host");
                head.push_str(&format!("{name}: {value}\r\n"));
            }
            head.push_str("\r\n");
            prop_assert_eq!(check_head(head.as_bytes(), Version::HTTP_11, LIMITS), Ok(()));
        }
    }
}
