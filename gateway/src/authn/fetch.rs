//! JWKS URLs, fetched in the background.
//!
//! One pingora background service keeps the key store in line with the
//! live config and runs one fetch task per JWKS URL. A task fetches at
//! start, then every `refresh_interval`, and at once when a request finds
//! an unknown `kid` (rate-limited in the store). A failed fetch keeps the
//! last good key set, is logged, and is retried with a growing delay, never
//! longer than the refresh interval.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use meshgate_config::ConfigStore;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::jwks::{KeySet, MAX_JWKS_BYTES};
use super::store::{KeyStore, ProviderKeys};

/// How often the refresher looks for a new config snapshot. Requests also
/// sync on their own when they see a newer snapshot, so this only bounds
/// how late a new JWKS URL starts being fetched when no request comes.
const CONFIG_POLL: Duration = Duration::from_millis(250);
/// Connect timeout towards a JWKS URL.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Whole-fetch timeout towards a JWKS URL.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// First retry delay after a failed fetch; doubles up to the interval.
const RETRY_BASE: Duration = Duration::from_secs(1);

/// The background service.
#[derive(Debug)]
pub(crate) struct KeyRefresher {
    pub(crate) config: Arc<ConfigStore>,
    pub(crate) keys: Arc<KeyStore>,
}

#[async_trait]
impl BackgroundService for KeyRefresher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let client = match client() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(
                    "cannot build the JWKS HTTP client; JWKS URLs will not be fetched: {e}"
                );
                return;
            }
        };
        loop {
            self.keys.sync(&self.config.current());
            for provider in self.keys.url_providers() {
                if !provider
                    .task_started
                    .swap(true, std::sync::atomic::Ordering::AcqRel)
                {
                    tokio::spawn(run(provider, client.clone()));
                }
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = self.keys.changed.notified() => {}
                _ = tokio::time::sleep(CONFIG_POLL) => {}
            }
        }
    }
}

/// The HTTP client: rustls on the ring provider (the one the listeners
/// use), the system's trust roots, no proxy, bounded redirects that never
/// leave HTTPS (plain HTTP only between loopback addresses).
fn client() -> Result<reqwest::Client, reqwest::Error> {
    // reqwest is built without a bundled crypto provider; make ring the
    // process default unless something already chose one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let redirects = reqwest::redirect::Policy::custom(|attempt| {
        let url = attempt.url();
        let host = url.host_str().unwrap_or("");
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let loopback = host.eq_ignore_ascii_case("localhost")
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        let secure = url.scheme() == "https" || (url.scheme() == "http" && loopback);
        if attempt.previous().len() >= 3 || !secure {
            attempt.stop()
        } else {
            attempt.follow()
        }
    });
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(FETCH_TIMEOUT)
        .redirect(redirects)
        .no_proxy()
        .user_agent(concat!("meshgate/", env!("CARGO_PKG_VERSION")))
        .build()
}

async fn run(provider: Arc<ProviderKeys>, client: reqwest::Client) {
    let Some(url) = provider.url().map(str::to_owned) else {
        return;
    };
    let mut failures: u32 = 0;
    while !provider.is_retired() {
        provider.fetch_started();
        match fetch(&client, &url).await {
            Ok((set, skipped)) => {
                for s in skipped {
                    tracing::warn!(provider = %provider.name, %url, "JWKS key skipped: {s}");
                }
                tracing::info!(provider = %provider.name, %url, keys = set.len(), "JWKS fetched");
                crate::metrics::jwks_fetch(&provider.name, Some(set.len()));
                provider.install(set);
                failures = 0;
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                crate::metrics::jwks_fetch(&provider.name, None);
                tracing::warn!(
                    provider = %provider.name,
                    %url,
                    kept_keys = provider.key_count(),
                    failures,
                    "JWKS fetch failed, keeping the last good keys: {e}"
                );
            }
        }
        provider.fetch_finished();
        let interval = provider.refresh_interval();
        let wait = if failures == 0 {
            interval
        } else {
            let shift = failures.saturating_sub(1).min(16);
            RETRY_BASE.saturating_mul(1 << shift).min(interval)
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = provider.wake.notified() => {}
        }
    }
    tracing::debug!(provider = %provider.name, %url, "JWKS fetch task retired");
}

async fn fetch(client: &reqwest::Client, url: &str) -> Result<(KeySet, Vec<String>), String> {
    let mut resp = client
        .get(url)
        .header(
            http::header::ACCEPT,
            "application/json, application/jwk-set+json",
        )
        .send()
        .await
        .map_err(|e| describe(&e))?;
    let status = resp.status();
    if !status.is_success() {
        return Err(format!("HTTP status {status}"));
    }
    if resp
        .content_length()
        .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
    {
        return Err(format!(
            "the document is larger than {MAX_JWKS_BYTES} bytes"
        ));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| describe(&e))? {
        if body.len() + chunk.len() > MAX_JWKS_BYTES {
            return Err(format!(
                "the document is larger than {MAX_JWKS_BYTES} bytes"
            ));
        }
        body.extend_from_slice(&chunk);
    }
    KeySet::from_jwks(&body).map_err(|e| e.to_string())
}

/// reqwest's top-level message is terse ("error sending request"); the
/// cause chain says what actually happened (refused, timed out, TLS).
fn describe(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
