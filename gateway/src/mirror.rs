//! Request mirroring (`[route.mirror]`): a copy of a share of a route's
//! requests goes to another service, whose answers are read and dropped.
//!
//! The copy is taken as the request goes upstream: its head as the route
//! forwards it (rewrites and header rules applied), its body chunk by
//! chunk, up to [`MAX_BODY`]; a request whose body is longer is not
//! mirrored (Envoy buffers the same way), nor is an upgraded (WebSocket)
//! one. Once the original request is over, the copy is sent from a task of
//! its own, so neither the client nor the original upstream ever waits for
//! the mirror; at most [`MAX_IN_FLIGHT`] copies are out at once, so a slow
//! mirror cannot pile up sockets and memory. It goes the way every request
//! to that service goes (`upstream::peer`: plaintext, TLS or mesh mTLS,
//! HTTP/1.1 or HTTP/2, its `connect_timeout`) on a connector of its own,
//! to a healthy endpoint (never as a half-open endpoint's probe, whose
//! outcome a copy does not report), with the host given a `-shadow` suffix
//! as Envoy does, so the shadow can tell copies from real traffic.
//! `meshgate_mirror_requests_total{service, result}` counts them: `sent`
//! (any answer), `failed` (no answer), `skipped` (not sent: a body too
//! long, an upgrade, no healthy endpoint, no mesh identity yet, or too
//! many copies out).

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use meshgate_config::{ServiceSpec, Snapshot, UpstreamProtocol};
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use tokio::sync::Semaphore;

use crate::runtime::Runtimes;

/// The longest request body copied.
pub(crate) const MAX_BODY: usize = 64 * 1024;

/// The most copies on their way at once, per process.
pub(crate) const MAX_IN_FLIGHT: usize = 1024;

/// How long a copy may take, answer included.
const TIMEOUT: Duration = Duration::from_secs(10);

/// A copy of one request, taken as it streams.
#[derive(Debug)]
pub(crate) struct Copy {
    service: Arc<ServiceSpec>,
    /// The head as it went upstream on the first try; `None` before that,
    /// or when it could not be copied.
    head: Option<RequestHeader>,
    body: BytesMut,
    too_long: bool,
}

impl Copy {
    /// A copy for `service`, or `None` when the dice say this request is
    /// not among the route's `percent`.
    pub(crate) fn start(service: Arc<ServiceSpec>, percent: u8) -> Option<Copy> {
        (crate::runtime::below(100) < u64::from(percent)).then(|| Copy {
            service,
            head: None,
            body: BytesMut::new(),
            too_long: false,
        })
    }

    /// Takes the head as it goes upstream (the first try's; a retry's is
    /// the same request).
    pub(crate) fn head(&mut self, upstream: &RequestHeader) {
        if self.head.is_none() {
            self.head = copy_head(upstream, &self.service);
        }
    }

    /// Adds a chunk of the request body as it goes upstream; `read` is
    /// how much of the body has come from the client so far (the chunk
    /// included). A retry passes the body through again: a chunk the copy
    /// already holds is not added twice.
    pub(crate) fn body(&mut self, chunk: &[u8], read: usize) {
        if self.body.len() >= read && !self.too_long {
            return;
        }
        if self.too_long || self.body.len() + chunk.len() > MAX_BODY {
            self.too_long = true;
            self.body = BytesMut::new();
        } else {
            self.body.extend_from_slice(chunk);
        }
    }

    /// Sends the copy from a task of its own. `complete` is whether the
    /// whole request body went through and the request was not upgraded
    /// (the copy is dropped otherwise).
    pub(crate) fn send(
        self,
        complete: bool,
        snap: &Arc<Snapshot>,
        runtimes: &Runtimes,
        mesh: &Arc<crate::mesh::MeshTls>,
    ) {
        let Copy {
            service,
            head,
            body,
            too_long,
        } = self;
        let name = service.name.clone();
        let skipped = || count(&name, "skipped");
        let Some(mut head) = head.filter(|_| complete && !too_long) else {
            return skipped();
        };
        // The body is whole: it goes with its length, however it came.
        head.remove_header(&http::header::TRANSFER_ENCODING);
        if body.is_empty() {
            head.remove_header(&http::header::CONTENT_LENGTH);
        } else if head
            .insert_header(http::header::CONTENT_LENGTH, body.len())
            .is_err()
        {
            return skipped();
        }
        let Ok(permit) = in_flight().clone().try_acquire_owned() else {
            return skipped();
        };
        let state = runtimes.service(snap, &service);
        let Some(endpoint) = state.pick_healthy(Instant::now()) else {
            return skipped();
        };
        let Some(mut peer) = crate::upstream::peer(endpoint.spec.address, &service, mesh) else {
            return skipped();
        };
        peer.options.connection_timeout = Some(service.connect_timeout);
        tokio::spawn(async move {
            let _permit = permit;
            let deliver = async {
                // HTTP/2 copies take turns at a new connection, as requests
                // do (`upstream::ConnectTurns`).
                let turn = match service.protocol {
                    UpstreamProtocol::Http2 => endpoint.h2_connect.wait(TIMEOUT).await,
                    UpstreamProtocol::Http1 => None,
                };
                deliver(head, body.freeze(), &peer, turn).await
            };
            let sent = tokio::time::timeout(TIMEOUT, deliver).await;
            count(
                &name,
                if matches!(sent, Ok(Ok(()))) {
                    "sent"
                } else {
                    "failed"
                },
            );
        });
    }
}

/// One connector for every mirror of the process, made on the first copy
/// (it loads the system's trust roots, which a process without mirrors
/// need not hold).
fn connector() -> &'static Connector {
    static CONNECTOR: OnceLock<Connector> = OnceLock::new();
    CONNECTOR.get_or_init(|| Connector::new(None))
}

fn in_flight() -> &'static Arc<Semaphore> {
    static IN_FLIGHT: OnceLock<Arc<Semaphore>> = OnceLock::new();
    IN_FLIGHT.get_or_init(|| Arc::new(Semaphore::new(MAX_IN_FLIGHT)))
}

async fn deliver(
    head: RequestHeader,
    body: Bytes,
    peer: &pingora::upstreams::peer::HttpPeer,
    turn: Option<tokio::sync::OwnedSemaphorePermit>,
) -> pingora::Result<()> {
    let (mut session, _reused) = connector().get_http_session(peer).await?;
    drop(turn);
    session.set_read_timeout(Some(TIMEOUT));
    session.set_write_timeout(Some(TIMEOUT));
    session.write_request_header(Box::new(head)).await?;
    if !body.is_empty() {
        session.write_request_body(body, true).await?;
    }
    session.finish_request_body().await?;
    // Informational answers (103 Early Hints) come before the final one.
    loop {
        session.read_response_header().await?;
        match session.response_header().map(|h| h.status.as_u16()) {
            Some(100..=199) => {}
            _ => break,
        }
    }
    while session.read_response_body().await?.is_some() {}
    connector()
        .release_http_session(session, peer, Some(Duration::from_secs(60)))
        .await;
    Ok(())
}

/// The copy's head: the request as it goes upstream, with its host marked
/// as a shadow's, without `Expect` and hop-by-hop headers (pingora has
/// stripped those for the route's service; the copy goes on a connection
/// of its own, so it does not count on that), in the version the mirror
/// service speaks: for HTTP/1.1 an
/// origin-form target and a `Host`, for HTTP/2 an absolute URI (its
/// `:scheme` and `:authority`).
fn copy_head(req: &RequestHeader, service: &ServiceSpec) -> Option<RequestHeader> {
    use http::header;
    use meshgate_config::{UpstreamProtocol, UpstreamTls};
    let mut head = req.clone();
    let path = req.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let host = shadow_host(req).or_else(|| crate::edge::authority(req).map(str::to_owned));
    match (service.protocol, &host) {
        (UpstreamProtocol::Http2, Some(host)) => {
            let scheme = if service.tls == UpstreamTls::None {
                "http"
            } else {
                "https"
            };
            head.set_uri(format!("{scheme}://{host}{path}").parse().ok()?);
            head.set_version(http::Version::HTTP_2);
        }
        (UpstreamProtocol::Http2, None) => return None,
        (UpstreamProtocol::Http1, _) => {
            head.set_uri(path.parse().ok()?);
            head.set_version(http::Version::HTTP_11);
        }
    }
    let nominated: Vec<String> = req
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
        .collect();
    for name in nominated.iter().map(String::as_str).chain([
        "connection",
        // The body goes whole: nothing to wait for a 100 Continue about.
        "expect",
        "keep-alive",
        "proxy-connection",
        "upgrade",
        "http2-settings",
    ]) {
        head.remove_header(name);
    }
    // `te: trailers` is end to end in HTTP/2 (gRPC servers require it).
    if req
        .headers
        .get(header::TE)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"trailers"))
    {
        head.remove_header(&header::TE);
    }
    match (service.protocol, host) {
        (UpstreamProtocol::Http1, Some(host)) => head.insert_header(header::HOST, host).ok()?,
        // HTTP/2 names the host in `:authority` only.
        _ => {
            head.remove_header(&header::HOST);
        }
    }
    Some(head)
}

/// The request's host with `-shadow` added to its name (before any
/// port), as Envoy marks mirrored requests; `None` for an IPv6 literal,
/// which has no name to mark.
fn shadow_host(req: &RequestHeader) -> Option<String> {
    let host = crate::edge::authority(req)?;
    if host.starts_with('[') {
        return None;
    }
    Some(match host.split_once(':') {
        Some((name, port)) => format!("{name}-shadow:{port}"),
        None => format!("{host}-shadow"),
    })
}

fn count(service: &str, result: &str) {
    if let Some(m) = crate::metrics::metrics() {
        m.mirrored.with_label_values(&[service, result]).inc();
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn service(protocol: &str) -> ServiceSpec {
        let text = format!(
            "[[service]]\nname = \"s\"\nprotocol = \"{protocol}\"\n\
             endpoints = [{{ address = \"127.0.0.1:9000\" }}]\n"
        );
        let snap = meshgate_config::load_str(&text, "test.toml", Path::new("."))
            .unwrap_or_else(|d| panic!("{d}"));
        snap.service("s").expect("service s").as_ref().clone()
    }

    fn request(uri: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build("POST", uri.as_bytes(), None).expect("request");
        for (k, v) in headers {
            req.append_header(k.to_string(), *v).expect("header");
        }
        req
    }

    #[test]
    fn the_copy_names_a_shadow_host_and_drops_hop_by_hop_headers() {
        let req = request(
            "/a?b=1",
            &[
                ("host", "api.example.com:8443"),
                ("connection", "keep-alive, x-private"),
                ("x-private", "1"),
                ("keep-alive", "timeout=5"),
                ("x-kept", "2"),
            ],
        );
        let head = copy_head(&req, &service("http1")).expect("copy");
        assert_eq!(head.uri.to_string(), "/a?b=1");
        assert_eq!(head.version, http::Version::HTTP_11);
        let get = |n: &str| head.headers.get(n).and_then(|v| v.to_str().ok());
        assert_eq!(get("host"), Some("api.example.com-shadow:8443"));
        assert_eq!(get("x-kept"), Some("2"));
        for gone in ["connection", "x-private", "keep-alive"] {
            assert_eq!(get(gone), None, "{gone}");
        }
    }

    #[test]
    fn the_target_takes_the_form_the_mirror_speaks() {
        let mut req = request("/", &[]);
        req.set_uri("http://shop.example.com/cart".parse().expect("uri"));
        req.set_version(http::Version::HTTP_2);
        let head = copy_head(&req, &service("http1")).expect("copy");
        assert_eq!(head.uri.to_string(), "/cart");
        assert_eq!(head.version, http::Version::HTTP_11);
        assert_eq!(
            head.headers.get("host").and_then(|v| v.to_str().ok()),
            Some("shop.example.com-shadow")
        );
        // To an HTTP/2 mirror the host goes in `:authority`.
        let head = copy_head(&req, &service("http2")).expect("copy");
        assert_eq!(head.uri.to_string(), "http://shop.example.com-shadow/cart");
        assert_eq!(head.version, http::Version::HTTP_2);
        assert_eq!(head.headers.get("host"), None);
        let v6 = request("/", &[("host", "[::1]:80")]);
        assert_eq!(shadow_host(&v6), None);
    }
}
