//! A keep-alive HTTP/1.1 client for tests that send thousands of requests:
//! starting curl per request would make a 20k-request test take minutes.
//! It speaks just enough HTTP/1.1 (Content-Length and chunked bodies) to
//! read what meshgate and the demo services answer; curl remains the
//! client for everything that checks protocol details.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// One answer.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers, names lowercased (last value wins).
    pub headers: BTreeMap<String, String>,
    /// Body as text.
    pub body: String,
}

impl Response {
    /// The body parsed as JSON.
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_str(&self.body).with_context(|| format!("not JSON: {}", self.body))
    }
}

/// A persistent connection; reconnects when the server closed it.
#[derive(Debug)]
pub struct Client {
    addr: SocketAddr,
    conn: Option<BufReader<TcpStream>>,
}

impl Client {
    /// A client for `addr` (connects on first use).
    pub fn new(addr: SocketAddr) -> Client {
        Client { addr, conn: None }
    }

    /// GET `path` with extra headers. Strict: a connection the server
    /// closed is an error, not silently retried, because the tests that
    /// use this client count every failed request.
    pub fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Result<Response> {
        self.try_get(path, headers)
    }

    fn try_get(&mut self, path: &str, headers: &[(&str, &str)]) -> Result<Response> {
        if self.conn.is_none() {
            let s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))
                .with_context(|| format!("connecting to {}", self.addr))?;
            s.set_read_timeout(Some(Duration::from_secs(30)))?;
            s.set_nodelay(true)?;
            self.conn = Some(BufReader::new(s));
        }
        let result = self.exchange(path, headers);
        if result.is_err() {
            self.conn = None;
        }
        result
    }

    fn exchange(&mut self, path: &str, headers: &[(&str, &str)]) -> Result<Response> {
        let conn = self.conn.as_mut().context("no connection")?;
        let mut req = format!("GET {path} HTTP/1.1\r\n");
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            req.push_str(&format!("host: {}\r\n", self.addr));
        }
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        conn.get_mut().write_all(req.as_bytes())?;

        let mut line = String::new();
        if conn.read_line(&mut line)? == 0 {
            bail!("connection closed before a response");
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad status line {line:?}"))?;
        let mut hdrs = BTreeMap::new();
        loop {
            line.clear();
            conn.read_line(&mut line)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                hdrs.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
            }
        }
        let body = if hdrs
            .get("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
        {
            let mut body = Vec::new();
            loop {
                line.clear();
                conn.read_line(&mut line)?;
                let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                    .with_context(|| format!("bad chunk size {line:?}"))?;
                let mut chunk = vec![0; size + 2];
                conn.read_exact(&mut chunk)?;
                if size == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..size]);
            }
            body
        } else {
            let len: usize = hdrs
                .get("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0; len];
            conn.read_exact(&mut body)?;
            body
        };
        if hdrs
            .get("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
        {
            self.conn = None;
        }
        Ok(Response {
            status,
            headers: hdrs,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}
