//! Trace context on the wire: W3C `traceparent`/`tracestate` in and out,
//! B3 (single `b3` header or `X-B3-*`) accepted in and answered in kind.
//!
//! Everything here reads untrusted headers, so parsing is strict and
//! total: anything malformed is treated as absent (a new trace starts),
//! never as an error of the request.

use std::fmt;

use http::HeaderMap;
use meshgate_policy::random::{Random, SplitMix64};

/// A 16-byte trace id, never all zeros.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct TraceId(pub(crate) [u8; 16]);

/// An 8-byte span id, never all zeros.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct SpanId(pub(crate) [u8; 8]);

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Appends `bytes` as lower-case hex. Ids are written on every proxied
/// request (`traceparent`, `x-request-id`, the access log), so this avoids
/// the formatter's per-byte padding machinery, and appends each id's digits
/// at once rather than a character at a time.
pub(crate) fn push_hex(out: &mut String, bytes: &[u8]) {
    for id in bytes.chunks(16) {
        out.push_str(hex(&mut [0; 32], id));
    }
}

/// The two lower-case hex digits of `b`.
fn hex_pair(b: u8) -> [u8; 2] {
    [
        HEX_DIGITS[usize::from(b >> 4)],
        HEX_DIGITS[usize::from(b & 0x0f)],
    ]
}

/// An id (at most 16 bytes are taken) as hex, written into `buf`.
fn hex<'b>(buf: &'b mut [u8; 32], bytes: &[u8]) -> &'b str {
    for (pair, &b) in buf.chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&hex_pair(b));
    }
    let len = (bytes.len() * 2).min(buf.len());
    std::str::from_utf8(&buf[..len]).unwrap_or_default()
}

/// Ids (at most 16 bytes) as hex through one `write_str`.
fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    f.write_str(hex(&mut [0; 32], bytes))
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

thread_local! {
    static IDS: std::cell::RefCell<SplitMix64> = std::cell::RefCell::new(SplitMix64::new(seed()));
}

/// A seed from the OS, so that processes started at the same instant do
/// not mint the same ids; the clock only if the OS has no randomness.
fn seed() -> u64 {
    getrandom::u64().unwrap_or_else(|_| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x5eed, |d| d.as_nanos() as u64)
    })
}

fn random_u64() -> u64 {
    IDS.with(|r| {
        let mut r = r.borrow_mut();
        loop {
            let v = r.next_u64();
            if v != 0 {
                return v;
            }
        }
    })
}

impl TraceId {
    /// A new random trace id.
    pub(crate) fn random() -> Self {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&random_u64().to_be_bytes());
        b[8..].copy_from_slice(&random_u64().to_be_bytes());
        TraceId(b)
    }

    /// The root sampling decision for `ratio`: the same for the same trace
    /// id in every process, so two hops that both start deciding agree.
    /// Uses the id's low 8 bytes, which W3C asks to be random.
    pub(crate) fn sampled_at(&self, ratio: f64) -> bool {
        if ratio >= 1.0 {
            return true;
        }
        if ratio.is_nan() || ratio <= 0.0 {
            return false;
        }
        let mut low = [0u8; 8];
        low.copy_from_slice(&self.0[8..]);
        let x = (u64::from_be_bytes(low) >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
        x < ratio
    }
}

impl SpanId {
    /// A new random span id.
    pub(crate) fn random() -> Self {
        SpanId(random_u64().to_be_bytes())
    }
}

/// Where a request's trace context came from; the upstream gets the same
/// format back (always with a `traceparent`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// None came, or what came was invalid: a new trace.
    New,
    /// A valid `traceparent`.
    W3c,
    /// The single `b3` header.
    B3Single,
    /// `X-B3-TraceId`, `X-B3-SpanId`, `X-B3-Sampled`.
    B3Multi,
}

/// The trace context a request arrived with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Incoming {
    /// The caller's trace and span; `None` starts a new trace.
    pub(crate) parent: Option<(TraceId, SpanId)>,
    /// The caller's sampling decision, if it made one.
    pub(crate) sampled: Option<bool>,
    /// `tracestate`, kept only with a valid `traceparent`.
    pub(crate) tracestate: Option<String>,
    pub(crate) format: Format,
}

impl Incoming {
    const NONE: Incoming = Incoming {
        parent: None,
        sampled: None,
        tracestate: None,
        format: Format::New,
    };
}

pub(crate) const TRACEPARENT: &str = "traceparent";
pub(crate) const TRACESTATE: &str = "tracestate";
pub(crate) const B3: &str = "b3";
pub(crate) const B3_TRACE_ID: &str = "x-b3-traceid";
pub(crate) const B3_SPAN_ID: &str = "x-b3-spanid";
pub(crate) const B3_PARENT_SPAN_ID: &str = "x-b3-parentspanid";
pub(crate) const B3_SAMPLED: &str = "x-b3-sampled";
pub(crate) const B3_FLAGS: &str = "x-b3-flags";

/// Every header this module reads or writes, for removing stale copies.
pub(crate) const B3_HEADERS: [&str; 6] = [
    B3,
    B3_TRACE_ID,
    B3_SPAN_ID,
    B3_PARENT_SPAN_ID,
    B3_SAMPLED,
    B3_FLAGS,
];

/// Whether `name` (lower case) is `traceparent`, `tracestate` or B3.
pub(crate) fn is_trace_header(name: &str) -> bool {
    name == TRACEPARENT || name == TRACESTATE || is_b3_header(name)
}

/// Whether `name` (lower case) is one of the B3 headers.
pub(crate) fn is_b3_header(name: &str) -> bool {
    B3_HEADERS.contains(&name)
}

/// The most list members W3C allows in `tracestate`.
const TRACESTATE_MAX_MEMBERS: usize = 32;
/// Longest `tracestate` passed on (32 members of 256 bytes, with commas).
const TRACESTATE_MAX_BYTES: usize = 8192;

/// Reads the request's trace context: a `traceparent` if there is one (a
/// malformed one starts a new trace, and its `tracestate` is dropped, as
/// W3C requires), otherwise B3.
pub(crate) fn extract(headers: &HeaderMap) -> Incoming {
    // Most requests carry no trace headers: one pass over the names
    // settles that without a hashed lookup per header this module reads.
    if !headers.keys().any(|k| is_trace_header(k.as_str())) {
        return Incoming::NONE;
    }
    let mut tp = headers.get_all(TRACEPARENT).iter();
    if let Some(first) = tp.next() {
        // Two traceparent headers cannot both be right.
        let parsed = match tp.next() {
            None => parse_traceparent(first.as_bytes()),
            Some(_) => None,
        };
        let Some((trace, span, sampled)) = parsed else {
            return Incoming::NONE;
        };
        return Incoming {
            parent: Some((trace, span)),
            sampled: Some(sampled),
            tracestate: tracestate(headers),
            format: Format::W3c,
        };
    }
    if let Some(b3) = headers.get(B3) {
        return parse_b3_single(b3.as_bytes()).unwrap_or(Incoming::NONE);
    }
    parse_b3_multi(headers)
}

/// A W3C `traceparent` value: `(trace id, parent id, sampled)`.
///
/// Version `00` must be exactly 55 characters; a higher version may carry
/// more fields after a `-`, of which only the first four are read (W3C's
/// forward-compatibility rule). Version `ff`, upper-case hex and all-zero
/// ids are invalid.
pub(crate) fn parse_traceparent(v: &[u8]) -> Option<(TraceId, SpanId, bool)> {
    if v.len() < 55 {
        return None;
    }
    let version = hex_byte_lower(&v[0..2])?;
    if version == 0xff {
        return None;
    }
    if version == 0 && v.len() != 55 {
        return None;
    }
    if v.len() > 55 && v[55] != b'-' {
        return None;
    }
    if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let trace = TraceId(hex_lower::<16>(&v[3..35])?);
    let span = SpanId(hex_lower::<8>(&v[36..52])?);
    let flags = hex_byte_lower(&v[53..55])?;
    if trace.0 == [0; 16] || span.0 == [0; 8] {
        return None;
    }
    Some((trace, span, flags & 1 == 1))
}

/// `tracestate`, all header lines joined; dropped whole when it is not
/// printable ASCII, has more than 32 members or is very long, since a
/// malformed list must not be passed on.
fn tracestate(headers: &HeaderMap) -> Option<String> {
    let mut out = String::new();
    for v in headers.get_all(TRACESTATE) {
        let text = v.to_str().ok()?.trim();
        if text.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(text);
    }
    let printable = out
        .bytes()
        .all(|b| b == b' ' || b == b'\t' || b.is_ascii_graphic());
    let members = out.split(',').filter(|m| !m.trim().is_empty()).count();
    let well_formed = out
        .split(',')
        .filter(|m| !m.trim().is_empty())
        .all(|m| m.split_once('=').is_some_and(|(k, _)| !k.trim().is_empty()));
    (!out.is_empty()
        && printable
        && well_formed
        && members <= TRACESTATE_MAX_MEMBERS
        && out.len() <= TRACESTATE_MAX_BYTES)
        .then_some(out)
}

/// The single `b3` header: `TRACEID-SPANID[-SAMPLED[-PARENTID]]`, or a
/// bare sampling decision `0`, `1` or `d` (debug, which means sampled).
/// Trace ids of 16 hex digits are widened to 32 with leading zeros.
pub(crate) fn parse_b3_single(v: &[u8]) -> Option<Incoming> {
    let text = std::str::from_utf8(v).ok()?.trim();
    let decision = |s: &str| match s {
        "1" | "d" => Some(true),
        "0" => Some(false),
        _ => None,
    };
    let mut parts = text.split('-');
    let first = parts.next()?;
    let Some(second) = parts.next() else {
        return Some(Incoming {
            sampled: Some(decision(first)?),
            ..Incoming::NONE
        });
    };
    let trace = b3_trace_id(first)?;
    let span = SpanId(hex_any::<8>(second)?);
    let sampled = match parts.next() {
        Some(s) => Some(decision(s)?),
        None => None,
    };
    if let Some(p) = parts.next() {
        hex_any::<8>(p)?;
    }
    if parts.next().is_some() || span.0 == [0; 8] {
        return None;
    }
    Some(Incoming {
        parent: Some((trace, span)),
        sampled,
        tracestate: None,
        format: Format::B3Single,
    })
}

/// `X-B3-TraceId` and `X-B3-SpanId` (both or neither), `X-B3-Sampled`
/// (`1`, `0`, `true`, `false`) and `X-B3-Flags: 1` (debug: sampled).
pub(crate) fn parse_b3_multi(headers: &HeaderMap) -> Incoming {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let debug = text(B3_FLAGS) == Some("1");
    let sampled = if debug {
        Some(true)
    } else {
        match text(B3_SAMPLED) {
            Some("1" | "true") => Some(true),
            Some("0" | "false") => Some(false),
            _ => None,
        }
    };
    let ids = match (text(B3_TRACE_ID), text(B3_SPAN_ID)) {
        (Some(t), Some(s)) => b3_trace_id(t)
            .zip(hex_any::<8>(s).map(SpanId))
            .filter(|(_, s)| s.0 != [0; 8]),
        _ => None,
    };
    match ids {
        Some(parent) => Incoming {
            parent: Some(parent),
            sampled,
            tracestate: None,
            format: Format::B3Multi,
        },
        // A decision without ids still binds the new trace.
        None => Incoming {
            sampled,
            ..Incoming::NONE
        },
    }
}

/// A B3 trace id: 32 or 16 hex digits (either case), not all zeros.
fn b3_trace_id(s: &str) -> Option<TraceId> {
    let id = match s.len() {
        32 => hex_any::<16>(s)?,
        16 => {
            let low = hex_any::<8>(s)?;
            let mut b = [0u8; 16];
            b[8..].copy_from_slice(&low);
            b
        }
        _ => return None,
    };
    (id != [0; 16]).then_some(TraceId(id))
}

fn nibble(c: u8, upper_ok: bool) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' if upper_ok => Some(c - b'A' + 10),
        _ => None,
    }
}

fn hex_into<const N: usize>(s: &[u8], upper_ok: bool) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = (nibble(pair[0], upper_ok)? << 4) | nibble(pair[1], upper_ok)?;
    }
    Some(out)
}

fn hex_lower<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    hex_into::<N>(s, false)
}

fn hex_any<const N: usize>(s: &str) -> Option<[u8; N]> {
    hex_into::<N>(s.as_bytes(), true)
}

fn hex_byte_lower(s: &[u8]) -> Option<u8> {
    hex_lower::<1>(s).map(|b| b[0])
}

/// `traceparent` for a span: version 00.
pub(crate) fn traceparent(trace: TraceId, span: SpanId, sampled: bool) -> String {
    let mut out = String::with_capacity(55);
    out.push_str("00-");
    push_hex(&mut out, &trace.0);
    out.push('-');
    push_hex(&mut out, &span.0);
    out.push_str(if sampled { "-01" } else { "-00" });
    out
}

/// The single `b3` header for a span whose parent is `parent`.
pub(crate) fn b3_single(trace: TraceId, span: SpanId, sampled: bool, parent: SpanId) -> String {
    format!(
        "{trace}-{span}-{}-{parent}",
        if sampled { '1' } else { '0' }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).expect("header value"));
        }
        h
    }

    #[test]
    fn bytes_are_appended_as_lower_case_hex_of_any_length() {
        let bytes: Vec<u8> = (0..=40u8).map(|i| i.wrapping_mul(37)).collect();
        let want: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let mut out = String::from("id=");
        push_hex(&mut out, &bytes);
        assert_eq!(out, format!("id={want}"));
        push_hex(&mut out, &[]);
        assert_eq!(out, format!("id={want}"));
    }

    #[test]
    fn a_valid_traceparent_is_read_with_its_flags() {
        let (t, s, sampled) = parse_traceparent(TP.as_bytes()).expect("valid");
        assert_eq!(t.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(s.to_string(), "00f067aa0ba902b7");
        assert!(sampled);
        let unsampled = TP.replace("-01", "-00");
        assert_eq!(
            parse_traceparent(unsampled.as_bytes()).map(|p| p.2),
            Some(false)
        );
        // Other flag bits do not change the sampled bit.
        let other = TP.replace("-01", "-02");
        assert_eq!(
            parse_traceparent(other.as_bytes()).map(|p| p.2),
            Some(false)
        );
        let both = TP.replace("-01", "-03");
        assert_eq!(parse_traceparent(both.as_bytes()).map(|p| p.2), Some(true));
    }

    #[test]
    fn traceparent_written_is_read_back() {
        let (t, s, _) = parse_traceparent(TP.as_bytes()).expect("valid");
        assert_eq!(traceparent(t, s, true), TP);
        assert_eq!(traceparent(t, s, false), TP.replace("-01", "-00"));
        for _ in 0..100 {
            let (t, s) = (TraceId::random(), SpanId::random());
            let text = traceparent(t, s, false);
            assert_eq!(parse_traceparent(text.as_bytes()), Some((t, s, false)));
            assert_eq!(text[3..35], t.to_string());
            assert_eq!(format!("{s:?}"), text[36..52]);
        }
        let header = headers(&[("X-B3-Sampled", "1")]);
        assert!(header.keys().any(|k| is_trace_header(k.as_str())));
        assert!(!is_trace_header("x-b3-unknown") && is_b3_header("x-b3-flags"));
    }

    #[test]
    fn malformed_traceparents_are_refused() {
        let bad = [
            "",
            "00",
            // upper-case hex
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01",
            // all-zero ids
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            // version ff is forbidden
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            // version 00 has exactly four fields
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-011",
            // wrong separators and lengths
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            // a higher version still needs a `-` after the four fields
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        ];
        for b in bad {
            assert_eq!(
                parse_traceparent(b.as_bytes()),
                None,
                "{b:?} must be refused"
            );
        }
    }

    #[test]
    fn future_versions_are_read_by_their_first_four_fields() {
        let v = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-holds";
        let (t, s, sampled) = parse_traceparent(v.as_bytes()).expect("forward compatible");
        assert_eq!(t.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(s.to_string(), "00f067aa0ba902b7");
        assert!(sampled);
        let exact = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        assert!(parse_traceparent(exact.as_bytes()).is_some());
    }

    #[test]
    fn tracestate_is_kept_only_beside_a_valid_traceparent() {
        let h = headers(&[
            ("traceparent", TP),
            ("tracestate", "congo=t61rcWkgMzE"),
            ("tracestate", "rojo=00f067aa0ba902b7"),
        ]);
        let i = extract(&h);
        assert_eq!(i.format, Format::W3c);
        assert_eq!(
            i.tracestate.as_deref(),
            Some("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")
        );
        let bad = headers(&[
            ("traceparent", "00-zz"),
            ("tracestate", "congo=t61rcWkgMzE"),
        ]);
        assert_eq!(extract(&bad), Incoming::NONE);
        let many: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
        let h = headers(&[("traceparent", TP), ("tracestate", &many.join(","))]);
        assert_eq!(extract(&h).tracestate, None, "more than 32 members");
        let h = headers(&[("traceparent", TP), ("tracestate", "no-equals-sign")]);
        assert_eq!(extract(&h).tracestate, None);
    }

    #[test]
    fn two_traceparents_start_a_new_trace() {
        let h = headers(&[("traceparent", TP), ("traceparent", TP)]);
        assert_eq!(extract(&h), Incoming::NONE);
    }

    #[test]
    fn traceparent_wins_over_b3() {
        let h = headers(&[
            ("traceparent", TP),
            ("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
        ]);
        let i = extract(&h);
        assert_eq!(i.format, Format::W3c);
        assert_eq!(
            i.parent.map(|p| p.0.to_string()).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        // An invalid traceparent is not rescued by B3: a new trace starts.
        let h = headers(&[
            ("traceparent", "garbage"),
            ("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
        ]);
        assert_eq!(extract(&h), Incoming::NONE);
    }

    #[test]
    fn b3_single_header_forms() {
        let full = "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90";
        let i = extract(&headers(&[("b3", full)]));
        assert_eq!(i.format, Format::B3Single);
        let (t, s) = i.parent.expect("ids");
        assert_eq!(t.to_string(), "80f198ee56343ba864fe8b2a57d3eff7");
        assert_eq!(s.to_string(), "e457b5a2e4d86bd1");
        assert_eq!(i.sampled, Some(true));

        let deferred = parse_b3_single(b"80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1")
            .expect("ids without a decision");
        assert_eq!(deferred.sampled, None);
        let short = parse_b3_single(b"a3ce929d0e0e4736-00f067aa0ba902b7-0").expect("64-bit id");
        assert_eq!(
            short.parent.map(|p| p.0.to_string()).as_deref(),
            Some("0000000000000000a3ce929d0e0e4736")
        );
        assert_eq!(short.sampled, Some(false));
        let debug = parse_b3_single(b"a3ce929d0e0e4736-00f067aa0ba902b7-d").expect("debug");
        assert_eq!(debug.sampled, Some(true));
        let deny = parse_b3_single(b"0").expect("a bare decision");
        assert_eq!((deny.parent, deny.sampled), (None, Some(false)));
        let upper = parse_b3_single(b"A3CE929D0E0E4736-00F067AA0BA902B7-1").expect("upper hex");
        assert_eq!(
            upper.parent.map(|p| p.1.to_string()).as_deref(),
            Some("00f067aa0ba902b7")
        );

        for bad in [
            "",
            "2",
            "a3ce929d0e0e4736",
            "a3ce929d0e0e4736-00f067aa0ba902b7-2",
            "a3ce929d0e0e473-00f067aa0ba902b7-1",
            "a3ce929d0e0e4736-00f067aa0ba902b-1",
            "a3ce929d0e0e4736-0000000000000000-1",
            "00000000000000000000000000000000-00f067aa0ba902b7-1",
            "a3ce929d0e0e4736-00f067aa0ba902b7-1-xyz",
            "a3ce929d0e0e4736-00f067aa0ba902b7-1-05e3ac9a4f6e3b90-more",
        ] {
            assert_eq!(
                parse_b3_single(bad.as_bytes()),
                None,
                "{bad:?} must be refused"
            );
        }
        assert_eq!(extract(&headers(&[("b3", "nonsense")])), Incoming::NONE);
    }

    #[test]
    fn b3_multiple_headers() {
        let h = headers(&[
            ("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ("x-b3-sampled", "1"),
        ]);
        let i = extract(&h);
        assert_eq!(i.format, Format::B3Multi);
        let (t, s) = i.parent.expect("ids");
        assert_eq!(t.to_string(), "463ac35c9f6413ad48485a3953bb6124");
        assert_eq!(s.to_string(), "a2fb4a1d1a96d312");
        assert_eq!(i.sampled, Some(true));

        let h = headers(&[
            ("x-b3-traceid", "463ac35c9f6413ad"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ("x-b3-sampled", "false"),
        ]);
        let i = extract(&h);
        assert_eq!(i.sampled, Some(false));
        assert_eq!(
            i.parent.map(|p| p.0.to_string()).as_deref(),
            Some("0000000000000000463ac35c9f6413ad")
        );
        let debug = headers(&[
            ("x-b3-traceid", "463ac35c9f6413ad"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ("x-b3-sampled", "0"),
            ("x-b3-flags", "1"),
        ]);
        assert_eq!(extract(&debug).sampled, Some(true), "debug means sampled");
        // A trace id without a span id is not a context.
        let half = headers(&[("x-b3-traceid", "463ac35c9f6413ad")]);
        assert_eq!(extract(&half), Incoming::NONE);
        let decision = headers(&[("x-b3-sampled", "0")]);
        assert_eq!(
            extract(&decision),
            Incoming {
                sampled: Some(false),
                ..Incoming::NONE
            }
        );
        assert_eq!(extract(&HeaderMap::new()), Incoming::NONE);
    }

    #[test]
    fn ids_print_as_lower_hex_and_round_trip() {
        for _ in 0..100 {
            let t = TraceId::random();
            let s = SpanId::random();
            assert_ne!(t.0, [0; 16]);
            assert_ne!(s.0, [0; 8]);
            let tp = traceparent(t, s, true);
            assert_eq!(parse_traceparent(tp.as_bytes()), Some((t, s, true)));
            let tp = traceparent(t, s, false);
            assert_eq!(parse_traceparent(tp.as_bytes()), Some((t, s, false)));
            let b3 = b3_single(t, s, true, SpanId::random());
            let back = parse_b3_single(b3.as_bytes()).expect("our b3 parses");
            assert_eq!(back.parent, Some((t, s)));
        }
    }

    #[test]
    fn ratio_sampling_is_decided_by_the_trace_id() {
        let low = |v: u64| {
            let mut b = [0xabu8; 16];
            b[8..].copy_from_slice(&v.to_be_bytes());
            TraceId(b)
        };
        assert!(low(0).sampled_at(0.5));
        assert!(!low(u64::MAX).sampled_at(0.5));
        assert!(low(u64::MAX).sampled_at(1.0));
        assert!(!low(0).sampled_at(0.0));
        assert!(!low(0).sampled_at(f64::NAN));
        assert!(low(u64::MAX / 10).sampled_at(0.11));
        assert!(!low(u64::MAX / 10).sampled_at(0.09));
        // Over many random ids the share follows the ratio.
        let n = 20_000;
        let hits = (0..n)
            .filter(|_| TraceId::random().sampled_at(0.25))
            .count();
        assert!((4_000..6_000).contains(&hits), "{hits} of {n} at 0.25");
    }
}
