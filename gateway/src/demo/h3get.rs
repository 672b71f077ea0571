//! A one-request HTTP/3 client for the tour: quinn and h3, trusting only
//! the demo's CA, so the tour can show the gateway's UDP side answering.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Buf;
use http::{Request, StatusCode};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// GETs `path` from `addr` over HTTP/3, with an optional bearer token;
/// the status and the body's length.
pub(crate) async fn get(
    addr: SocketAddr,
    ca_pem: &[u8],
    path: &str,
    bearer: Option<&str>,
) -> Result<(StatusCode, usize), String> {
    tokio::time::timeout(
        Duration::from_secs(10),
        exchange(addr, ca_pem, path, bearer),
    )
    .await
    .map_err(|_| "no answer within 10 s".to_owned())?
}

async fn exchange(
    addr: SocketAddr,
    ca_pem: &[u8],
    path: &str,
    bearer: Option<&str>,
) -> Result<(StatusCode, usize), String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots
            .add(cert.map_err(|e| format!("demo CA: {e}"))?)
            .map_err(|e| format!("demo CA: {e}"))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| e.to_string())?;
    let local = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut endpoint = quinn::Endpoint::client(local).map_err(|e| e.to_string())?;
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    let conn = endpoint
        .connect(addr, &addr.ip().to_string())
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| format!("QUIC handshake: {e}"))?;
    let (mut driver, mut sender) = h3::client::new(h3_quinn::Connection::new(conn.clone()))
        .await
        .map_err(|e| e.to_string())?;
    let drive = tokio::spawn(async move {
        let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
    });
    let mut req = Request::get(format!("https://{addr}{path}"));
    if let Some(t) = bearer {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = req.body(()).map_err(|e| e.to_string())?;
    let answer = async {
        let mut stream = sender.send_request(req).await.map_err(|e| e.to_string())?;
        stream.finish().await.map_err(|e| e.to_string())?;
        let resp = stream.recv_response().await.map_err(|e| e.to_string())?;
        let mut len = 0;
        while let Some(chunk) = stream.recv_data().await.map_err(|e| e.to_string())? {
            len += chunk.remaining();
        }
        Ok::<_, String>((resp.status(), len))
    }
    .await;
    drop(sender);
    conn.close(quinn::VarInt::from_u32(0x100), b"");
    drive.abort();
    endpoint.wait_idle().await;
    answer
}
