//! The few OTLP messages meshgate sends, encoded by hand in protobuf wire
//! format: `ExportTraceServiceRequest` → `ResourceSpans` → `ScopeSpans` →
//! `Span` (with `KeyValue` attributes and a `Status`). Field numbers are
//! those of `opentelemetry/proto/trace/v1/trace.proto` and
//! `.../collector/trace/v1/trace_service.proto`; the end-to-end test decodes
//! what we send with the official generated classes.
//!
//! A generated-code crate would bring a protobuf runtime and a build step
//! for six messages; the wire format of these is small and stable.

use super::context::{SpanId, TraceId};

/// `Span.SpanKind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Server = 2,
    Client = 3,
}

/// An attribute value (`AnyValue`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Str(String),
    Int(i64),
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Str(s.to_owned())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Str(s)
    }
}

impl From<i64> for Value {
    fn from(n: i64) -> Self {
        Value::Int(n)
    }
}

/// `Status`: unset, or an error with a message. meshgate never sets OK,
/// which is for an application to decide.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) enum Status {
    #[default]
    Unset,
    Error(String),
}

/// One finished span, ready to encode.
#[derive(Debug, Clone)]
pub(crate) struct SpanRecord {
    pub(crate) trace_id: TraceId,
    pub(crate) span_id: SpanId,
    pub(crate) parent: Option<SpanId>,
    /// Whether the parent came from another process (span flags bits 8-9).
    pub(crate) parent_is_remote: bool,
    pub(crate) tracestate: Option<String>,
    pub(crate) name: String,
    pub(crate) kind: Kind,
    pub(crate) start_unix_nanos: u64,
    pub(crate) end_unix_nanos: u64,
    pub(crate) attributes: Vec<(&'static str, Value)>,
    pub(crate) status: Status,
}

/// Resource and scope of a group of spans.
#[derive(Debug, Clone)]
pub(crate) struct Resource {
    pub(crate) attributes: Vec<(&'static str, Value)>,
}

/// The instrumentation scope meshgate reports its spans under.
pub(crate) const SCOPE_NAME: &str = "meshgate";
pub(crate) const SCOPE_VERSION: &str = env!("CARGO_PKG_VERSION");

const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LEN: u32 = 2;
const FIXED32: u32 = 5;

/// Span flags: the W3C trace flags in bits 0-7, then "has is_remote" and
/// "is_remote" (`SpanFlags` in trace.proto).
const FLAG_SAMPLED: u32 = 0x01;
const FLAG_HAS_IS_REMOTE: u32 = 0x100;
const FLAG_IS_REMOTE: u32 = 0x200;

fn varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn key(buf: &mut Vec<u8>, field: u32, wire: u32) {
    varint(buf, u64::from((field << 3) | wire));
}

fn bytes_field(buf: &mut Vec<u8>, field: u32, b: &[u8]) {
    key(buf, field, LEN);
    varint(buf, b.len() as u64);
    buf.extend_from_slice(b);
}

/// A string field; proto3 leaves empty strings out.
fn string_field(buf: &mut Vec<u8>, field: u32, s: &str) {
    if !s.is_empty() {
        bytes_field(buf, field, s.as_bytes());
    }
}

fn fixed64_field(buf: &mut Vec<u8>, field: u32, v: u64) {
    key(buf, field, FIXED64);
    buf.extend_from_slice(&v.to_le_bytes());
}

fn fixed32_field(buf: &mut Vec<u8>, field: u32, v: u32) {
    key(buf, field, FIXED32);
    buf.extend_from_slice(&v.to_le_bytes());
}

fn varint_field(buf: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        key(buf, field, VARINT);
        varint(buf, v);
    }
}

/// A nested message: encoded into a scratch buffer, then written with its
/// length. Export runs off the request path, so the copy is harmless.
fn message_field(buf: &mut Vec<u8>, field: u32, encode: impl FnOnce(&mut Vec<u8>)) {
    let mut inner = Vec::new();
    encode(&mut inner);
    bytes_field(buf, field, &inner);
}

/// `KeyValue { key = 1; AnyValue value = 2 }`, `AnyValue { string_value =
/// 1; int_value = 3 }`.
fn key_value(buf: &mut Vec<u8>, k: &str, v: &Value) {
    string_field(buf, 1, k);
    message_field(buf, 2, |any| match v {
        Value::Str(s) => bytes_field(any, 1, s.as_bytes()),
        Value::Int(n) => {
            key(any, 3, VARINT);
            varint(any, *n as u64);
        }
    });
}

fn attributes(buf: &mut Vec<u8>, field: u32, attrs: &[(&'static str, Value)]) {
    for (k, v) in attrs {
        message_field(buf, field, |kv| key_value(kv, k, v));
    }
}

/// `Span`: trace_id 1, span_id 2, trace_state 3, parent_span_id 4, name 5,
/// kind 6, start 7, end 8, attributes 9, status 15, flags 16.
pub(crate) fn span(buf: &mut Vec<u8>, s: &SpanRecord) {
    bytes_field(buf, 1, &s.trace_id.0);
    bytes_field(buf, 2, &s.span_id.0);
    if let Some(ts) = &s.tracestate {
        string_field(buf, 3, ts);
    }
    if let Some(p) = &s.parent {
        bytes_field(buf, 4, &p.0);
    }
    string_field(buf, 5, &s.name);
    varint_field(buf, 6, s.kind as u64);
    fixed64_field(buf, 7, s.start_unix_nanos);
    fixed64_field(buf, 8, s.end_unix_nanos);
    attributes(buf, 9, &s.attributes);
    // Status { message = 2; code = 3 } (ERROR = 2); an unset status is
    // the empty message, left out.
    if let Status::Error(message) = &s.status {
        message_field(buf, 15, |st| {
            string_field(st, 2, message);
            varint_field(st, 3, 2);
        });
    }
    // Only sampled spans are exported.
    let mut flags = FLAG_SAMPLED | FLAG_HAS_IS_REMOTE;
    if s.parent_is_remote {
        flags |= FLAG_IS_REMOTE;
    }
    fixed32_field(buf, 16, flags);
}

/// `ExportTraceServiceRequest { repeated ResourceSpans resource_spans = 1 }`
/// with one `ResourceSpans { resource = 1; scope_spans = 2 }` holding one
/// `ScopeSpans { scope = 1; spans = 2 }`.
pub(crate) fn export_request<'a>(
    resource: &Resource,
    spans: impl IntoIterator<Item = &'a SpanRecord>,
) -> Vec<u8> {
    let mut out = Vec::new();
    message_field(&mut out, 1, |rs| {
        message_field(rs, 1, |r| attributes(r, 1, &resource.attributes));
        message_field(rs, 2, |ss| {
            // InstrumentationScope { name = 1; version = 2 }
            message_field(ss, 1, |scope| {
                string_field(scope, 1, SCOPE_NAME);
                string_field(scope, 2, SCOPE_VERSION);
            });
            for s in spans {
                message_field(ss, 2, |buf| span(buf, s));
            }
        });
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal protobuf reader for the tests: (field, wire type, payload).
    /// Varints come back as their value in 8 little-endian bytes.
    fn fields(mut b: &[u8]) -> Vec<(u32, u32, Vec<u8>)> {
        fn read_varint(b: &mut &[u8]) -> u64 {
            let mut v = 0u64;
            let mut shift = 0;
            loop {
                let byte = b[0];
                *b = &b[1..];
                v |= u64::from(byte & 0x7f) << shift;
                if byte < 0x80 {
                    return v;
                }
                shift += 7;
            }
        }
        let mut out = Vec::new();
        while !b.is_empty() {
            let k = read_varint(&mut b);
            let (field, wire) = ((k >> 3) as u32, (k & 7) as u32);
            let payload = match wire {
                VARINT => read_varint(&mut b).to_le_bytes().to_vec(),
                FIXED64 => {
                    let p = b[..8].to_vec();
                    b = &b[8..];
                    p
                }
                FIXED32 => {
                    let p = b[..4].to_vec();
                    b = &b[4..];
                    p
                }
                LEN => {
                    let n = read_varint(&mut b) as usize;
                    let p = b[..n].to_vec();
                    b = &b[n..];
                    p
                }
                w => panic!("unexpected wire type {w}"),
            };
            out.push((field, wire, payload));
        }
        out
    }

    fn one(fs: &[(u32, u32, Vec<u8>)], field: u32) -> Vec<u8> {
        let found: Vec<_> = fs.iter().filter(|f| f.0 == field).collect();
        assert_eq!(found.len(), 1, "field {field} once in {fs:?}");
        found[0].2.clone()
    }

    #[test]
    fn varints_follow_the_wire_format() {
        let enc = |v| {
            let mut b = Vec::new();
            varint(&mut b, v);
            b
        };
        assert_eq!(enc(0), [0x00]);
        assert_eq!(enc(1), [0x01]);
        assert_eq!(enc(127), [0x7f]);
        assert_eq!(enc(128), [0x80, 0x01]);
        assert_eq!(enc(300), [0xac, 0x02]);
        assert_eq!(enc(u64::MAX).len(), 10);
        // A negative int64 is ten bytes (two's complement), as protobuf says.
        let mut b = Vec::new();
        varint(&mut b, -1i64 as u64);
        assert_eq!(
            b,
            [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]
        );
    }

    #[test]
    fn key_values_encode_byte_for_byte() {
        let mut b = Vec::new();
        key_value(&mut b, "a", &Value::Str("b".into()));
        // key "a" (field 1), then AnyValue (field 2) holding string_value "b".
        assert_eq!(b, [0x0a, 0x01, b'a', 0x12, 0x03, 0x0a, 0x01, b'b']);
        let mut b = Vec::new();
        key_value(&mut b, "n", &Value::Int(200));
        assert_eq!(b, [0x0a, 0x01, b'n', 0x12, 0x03, 0x18, 0xc8, 0x01]);
        // An empty string value is still present: it is a oneof member.
        let mut b = Vec::new();
        key_value(&mut b, "e", &Value::Str(String::new()));
        assert_eq!(b, [0x0a, 0x01, b'e', 0x12, 0x02, 0x0a, 0x00]);
    }

    fn record() -> SpanRecord {
        SpanRecord {
            trace_id: TraceId([0x11; 16]),
            span_id: SpanId([0x22; 8]),
            parent: Some(SpanId([0x33; 8])),
            parent_is_remote: true,
            tracestate: Some("k=v".into()),
            name: "GET orders".into(),
            kind: Kind::Server,
            start_unix_nanos: 1_700_000_000_000_000_000,
            end_unix_nanos: 1_700_000_000_250_000_000,
            attributes: vec![
                ("http.request.method", "GET".into()),
                ("http.response.status_code", Value::Int(503)),
            ],
            status: Status::Error("upstream-connect-failure".into()),
        }
    }

    #[test]
    fn a_span_has_every_field_at_its_number() {
        let mut b = Vec::new();
        span(&mut b, &record());
        let fs = fields(&b);
        assert_eq!(one(&fs, 1), vec![0x11; 16]);
        assert_eq!(one(&fs, 2), vec![0x22; 8]);
        assert_eq!(one(&fs, 3), b"k=v");
        assert_eq!(one(&fs, 4), vec![0x33; 8]);
        assert_eq!(one(&fs, 5), b"GET orders");
        assert_eq!(one(&fs, 6), 2u64.to_le_bytes());
        assert_eq!(one(&fs, 7), 1_700_000_000_000_000_000u64.to_le_bytes());
        assert_eq!(one(&fs, 8), 1_700_000_000_250_000_000u64.to_le_bytes());
        let attrs: Vec<_> = fs.iter().filter(|f| f.0 == 9).collect();
        assert_eq!(attrs.len(), 2);
        let first = fields(&attrs[0].2);
        assert_eq!(one(&first, 1), b"http.request.method");
        assert_eq!(one(&fields(&one(&first, 2)), 1), b"GET");
        let status = fields(&one(&fs, 15));
        assert_eq!(one(&status, 2), b"upstream-connect-failure");
        assert_eq!(one(&status, 3), 2u64.to_le_bytes());
        assert_eq!(one(&fs, 16), 0x301u32.to_le_bytes());
        // Wire types: ids are bytes, times fixed64, flags fixed32.
        let wire = |n| fs.iter().find(|f| f.0 == n).map(|f| f.1);
        assert_eq!(wire(1), Some(LEN));
        assert_eq!(wire(7), Some(FIXED64));
        assert_eq!(wire(16), Some(FIXED32));
    }

    #[test]
    fn a_root_span_has_no_parent_and_an_unset_status() {
        let mut r = record();
        r.parent = None;
        r.parent_is_remote = false;
        r.tracestate = None;
        r.status = Status::Unset;
        r.kind = Kind::Client;
        let mut b = Vec::new();
        span(&mut b, &r);
        let fs = fields(&b);
        for absent in [3, 4, 15] {
            assert!(fs.iter().all(|f| f.0 != absent), "field {absent} present");
        }
        assert_eq!(one(&fs, 6), 3u64.to_le_bytes());
        assert_eq!(one(&fs, 16), 0x101u32.to_le_bytes());
    }

    #[test]
    fn the_request_nests_resource_scope_and_spans() {
        let resource = Resource {
            attributes: vec![("service.name", "meshgate".into())],
        };
        let spans = [record(), record()];
        let b = export_request(&resource, &spans);
        let top = fields(&b);
        let rs = fields(&one(&top, 1));
        let res = fields(&one(&rs, 1));
        let kv = fields(&one(&res, 1));
        assert_eq!(one(&kv, 1), b"service.name");
        let ss = fields(&one(&rs, 2));
        let scope = fields(&one(&ss, 1));
        assert_eq!(one(&scope, 1), b"meshgate");
        assert_eq!(one(&scope, 2), SCOPE_VERSION.as_bytes());
        let encoded: Vec<_> = ss.iter().filter(|f| f.0 == 2).collect();
        assert_eq!(encoded.len(), 2);
        let mut single = Vec::new();
        span(&mut single, &spans[0]);
        assert_eq!(encoded[0].2, single);
    }
}
