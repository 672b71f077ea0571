//! The admin endpoint: what runs on `[admin] address` (the appliance) or
//! `--admin` (a sidecar). So far it serves:
//!
//! - `GET /metrics`: Prometheus text format ([`crate::metrics`]), at
//!   `[observability.metrics] path` when metrics are enabled;
//! - `GET /ready`: 200 once the process serves traffic.
//!
//! It is plain HTTP/1.1 on its own thread and tokio runtime, apart from
//! the pingora workers, so a busy data path cannot starve it. With a token
//! configured every request needs `authorization: Bearer <token>` (the
//! config insists on a token when the address is not loopback).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;

/// What the endpoint serves.
#[derive(Debug, Clone)]
pub(crate) struct AdminOptions {
    pub(crate) address: SocketAddr,
    /// Path of the metrics; `None` turns them off.
    pub(crate) metrics_path: Option<String>,
    /// Bearer token every request must carry.
    pub(crate) token: Option<String>,
}

/// Binds now (a taken port is a start-up error) and serves on a thread.
pub(crate) fn start(opts: AdminOptions) -> Result<(), String> {
    let std_listener = std::net::TcpListener::bind(opts.address)
        .map_err(|e| format!("admin API cannot bind {}: {e}", opts.address))?;
    std_listener
        .set_nonblocking(true)
        .map_err(|e| format!("admin API socket: {e}"))?;
    let address = opts.address;
    let opts = Arc::new(opts);
    crate::server::spawn_runtime("admin", async move {
        let listener = match tokio::net::TcpListener::from_std(std_listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "admin socket");
                return;
            }
        };
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            };
            let opts = opts.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let opts = opts.clone();
                    async move { Ok::<_, Infallible>(handle(&opts, &req)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    })?;
    tracing::info!(%address, "admin API listening");
    Ok(())
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    resp
}

fn handle(opts: &AdminOptions, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if let Some(token) = &opts.token {
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let ok = presented.is_some_and(|p| {
            // Length leaks nothing useful; the comparison itself does not
            // stop at the first difference.
            p.len() == token.len()
                && p.bytes()
                    .zip(token.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
        });
        if !ok {
            let mut r = text(
                StatusCode::UNAUTHORIZED,
                "text/plain; charset=utf-8",
                "401 admin token required\n".into(),
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"meshgate-admin\""),
            );
            return r;
        }
    }
    let path = req.uri().path();
    if req.method() != hyper::Method::GET && req.method() != hyper::Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "405 only GET\n".into(),
        );
    }
    if opts.metrics_path.as_deref() == Some(path) {
        return text(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            crate::metrics::render(),
        );
    }
    match path {
        "/ready" => text(
            StatusCode::OK,
            "text/plain; charset=utf-8",
            "ready\n".into(),
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "404 not found\n".into(),
        ),
    }
}
