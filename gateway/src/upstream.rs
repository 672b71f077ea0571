//! How the gateway talks to one upstream endpoint: the pingora `HttpPeer`
//! built from a service's `protocol` and `tls` settings.
//!
//! This module decides the wire protocol and transport security only;
//! which endpoint to use is the balancer's decision, and timeouts come from
//! the route and service (set by the caller).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use meshgate_config::{ServiceSpec, UpstreamProtocol, UpstreamTls};
use pingora::upstreams::peer::HttpPeer;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::mesh::MeshTls;

/// Streams one pooled HTTP/2 connection may carry at once. pingora's
/// default is 1, which would open a connection per concurrent request and
/// defeat multiplexing; 100 is the smallest limit RFC 9113 recommends a
/// server allow, so servers commonly accept it. The server's own
/// SETTINGS_MAX_CONCURRENT_STREAMS still applies when it is lower.
pub(crate) const H2_STREAMS_PER_CONNECTION: usize = 100;

/// Streams one pooled mesh connection (mTLS to a sidecar's inbound port,
/// which advertises the same limit) may carry at once. Each connection a
/// sidecar keeps pooled holds its TLS and HTTP/2 state, about 1 MiB after
/// carrying a burst; at 100 streams a burst of 600 concurrent requests
/// left six behind, at this limit one connection per endpoint carries it.
pub(crate) const MESH_H2_STREAMS: u32 = 1000;

/// The peer for `addr`, an endpoint of `svc`.
///
/// - `protocol = "http2"` with `tls = "none"` speaks HTTP/2 with prior
///   knowledge (h2c): plaintext has no ALPN to negotiate with, so the
///   config is trusted, as gRPC deployments expect.
/// - `tls = "tls"` is server-authenticated TLS, verified against the
///   system roots (which honour `SSL_CERT_FILE` and `SSL_CERT_DIR`).
///   Endpoints are IP addresses, so the name sent and verified is the IP:
///   the certificate must carry it as an IP subject-alternative name.
///   With `protocol = "http2"` only `h2` is offered in ALPN; a server that
///   selects no protocol is spoken to in HTTP/1.1 (pingora's fallback).
/// - `tls = "mesh"` is mTLS with this process's workload certificate,
///   verifying the endpoint's certificate against the mesh trust bundle
///   and the service's mesh DNS name ([`MeshTls::peer`]). `None` before
///   this process holds a certificate: mesh traffic never goes out in
///   plaintext.
pub(crate) fn peer(addr: SocketAddr, svc: &ServiceSpec, mesh: &MeshTls) -> Option<HttpPeer> {
    let mut peer = match svc.tls {
        UpstreamTls::Tls => HttpPeer::new(addr, true, addr.ip().to_string()),
        UpstreamTls::None => HttpPeer::new(addr, false, String::new()),
        UpstreamTls::Mesh => mesh.peer(addr, svc)?,
    };
    match svc.protocol {
        UpstreamProtocol::Http1 => peer.options.set_http_version(1, 1),
        UpstreamProtocol::Http2 if svc.tls == UpstreamTls::Mesh => {
            speak_http2(&mut peer, MESH_H2_STREAMS as usize)
        }
        UpstreamProtocol::Http2 => speak_http2(&mut peer, H2_STREAMS_PER_CONNECTION),
    }
    Some(peer)
}

/// HTTP/2 only to `peer` (prior knowledge without TLS), up to `streams`
/// of them sharing each pooled connection.
pub(crate) fn speak_http2(peer: &mut HttpPeer, streams: usize) {
    peer.options.set_http_version(2, 2);
    peer.options.max_h2_streams = streams;
}

/// Turns at getting an HTTP/2 connection to one endpoint, one try at a
/// time, held until the try has its connection (or failed to get one).
///
/// pingora's pool finds an HTTP/2 connection only once its handshake is
/// done, so requests that arrive together would each open their own
/// connection: a burst of 200 concurrent requests through the gateway to
/// one sidecar opened 99 TLS connections, and pooled them afterwards.
/// Taking turns, the first opens a connection and the rest take streams
/// on it (up to its stream limit; then the next opens another).
#[derive(Debug, Clone)]
pub(crate) struct ConnectTurns(Arc<Semaphore>);

impl Default for ConnectTurns {
    fn default() -> Self {
        ConnectTurns(Arc::new(Semaphore::new(1)))
    }
}

impl ConnectTurns {
    /// Waits for a turn; `None` when none came within `limit` (a connect
    /// that hangs is not waited on for longer than a connect may take).
    pub(crate) async fn wait(&self, limit: Duration) -> Option<OwnedSemaphorePermit> {
        tokio::time::timeout(limit, self.0.clone().acquire_owned())
            .await
            .ok()
            .and_then(Result::ok)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use pingora::upstreams::peer::{ALPN, Peer};

    use super::*;

    fn service(protocol: &str, tls: &str) -> ServiceSpec {
        let text = format!(
            "[[service]]\nname = \"s\"\nprotocol = \"{protocol}\"\ntls = \"{tls}\"\n\
             endpoints = [{{ address = \"127.0.0.1:9000\" }}]\n"
        );
        let snap = meshgate_config::load_str(&text, "test.toml", Path::new("."))
            .unwrap_or_else(|d| panic!("{d}"));
        snap.service("s").expect("service s").as_ref().clone()
    }

    fn build(svc: &ServiceSpec) -> HttpPeer {
        peer(addr(), svc, &MeshTls::new("test.local")).expect("not a mesh service")
    }

    fn addr() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 9000))
    }

    #[test]
    fn plaintext_http2_is_prior_knowledge_h2c() {
        let p = build(&service("http2", "none"));
        assert!(!p.tls());
        assert_eq!(p.options.alpn, ALPN::H2);
        assert_eq!(
            p.options.alpn.get_min_http_version(),
            2,
            "no HTTP/1.1 fallback"
        );
        assert!(p.options.max_h2_streams > 1, "streams share a connection");
    }

    #[test]
    fn tls_http2_offers_only_h2_and_verifies_the_endpoint_ip() {
        let p = build(&service("http2", "tls"));
        assert!(p.tls());
        assert_eq!(p.sni(), "127.0.0.1");
        assert!(p.options.verify_cert && p.options.verify_hostname);
        assert_eq!(p.options.alpn, ALPN::H2);
    }

    #[test]
    fn http1_stays_http1_with_or_without_tls() {
        for tls in ["none", "tls"] {
            let p = build(&service("http1", tls));
            assert_eq!(p.options.alpn, ALPN::H1, "{tls}");
            assert_eq!(p.tls(), tls == "tls");
        }
    }
}
