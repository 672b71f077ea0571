//! The checks on an HTTP/3 request head that nobody else makes. h3 parses
//! the pseudo-header fields and compares the first `Host` with
//! `:authority`; pingora passes a custom session's head on as it is. The
//! rest of what RFC 9114 calls malformed would reach an HTTP/1 upstream,
//! which could read it as another request than the one routing saw: a
//! target that is not a path, a second `Host`, or framing fields.

use http::request::Parts;
use http::{Method, header};

/// Fields that describe an HTTP/1 connection and must not appear in an
/// HTTP/3 message (RFC 9114 §4.2). `te` is one too, unless it says only
/// `trailers`.
pub(super) const CONNECTION_HEADERS: [&str; 5] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
];

/// Why a request head is malformed. Messages never echo the client's
/// bytes into our logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(super) enum Malformed {
    #[error("`:path` is neither origin form nor `*` for OPTIONS")]
    Target,
    #[error("more than one host field")]
    SeveralHosts,
    #[error("host field differs from `:authority`")]
    HostMismatch,
    #[error("connection-specific field `{0}`")]
    ConnectionField(&'static str),
    #[error("te field other than `trailers`")]
    Te,
}

/// Checks a request head as h3 hands it over (RFC 9114 §4.2, §4.3.1).
pub(super) fn check(head: &Parts) -> Result<(), Malformed> {
    let target_ok = match head.uri.path_and_query() {
        Some(p) => {
            p.as_str().starts_with('/') || (p.as_str() == "*" && head.method == Method::OPTIONS)
        }
        // Authority form (no `:scheme`, no `:path`) is CONNECT's alone.
        None => head.method == Method::CONNECT,
    };
    if !target_ok {
        return Err(Malformed::Target);
    }
    let mut hosts = head.headers.get_all(header::HOST).iter();
    if let Some(host) = hosts.next() {
        if hosts.next().is_some() {
            return Err(Malformed::SeveralHosts);
        }
        if head
            .uri
            .authority()
            .is_none_or(|a| a.as_str().as_bytes() != host.as_bytes())
        {
            return Err(Malformed::HostMismatch);
        }
    }
    if let Some(name) = CONNECTION_HEADERS
        .into_iter()
        .find(|name| head.headers.contains_key(*name))
    {
        return Err(Malformed::ConnectionField(name));
    }
    if head
        .headers
        .get_all(header::TE)
        .iter()
        .any(|v| !v.as_bytes().eq_ignore_ascii_case(b"trailers"))
    {
        return Err(Malformed::Te);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A head as h3 builds it: the URI from `:scheme`, `:authority` and
    /// `:path`, then the fields.
    fn head(method: Method, uri: http::Uri, fields: &[(&str, &str)]) -> Parts {
        let mut req = http::Request::builder().method(method).uri(uri);
        for (k, v) in fields {
            req = req.header(*k, *v);
        }
        req.body(()).expect("request").into_parts().0
    }

    fn https(path: &str) -> http::Uri {
        http::Uri::builder()
            .scheme("https")
            .authority("shop.test")
            .path_and_query(path)
            .build()
            .expect("uri")
    }

    #[test]
    fn well_formed_heads_pass() {
        let ok = [
            head(Method::GET, https("/a?b=c"), &[]),
            head(Method::GET, https("//twice"), &[]),
            head(Method::GET, https("/"), &[("host", "shop.test")]),
            head(Method::POST, https("/grpc"), &[("te", "trailers")]),
            head(Method::POST, https("/grpc"), &[("te", "Trailers")]),
            head(Method::OPTIONS, https("*"), &[]),
            head(
                Method::CONNECT,
                http::Uri::from_static("shop.test:443"),
                &[],
            ),
        ];
        for h in ok {
            assert_eq!(check(&h), Ok(()), "{h:?}");
        }
    }

    #[test]
    fn a_target_other_than_a_path_is_malformed() {
        // What h3 and `http` accept for `:path` without a leading slash.
        assert_eq!(
            check(&head(Method::GET, https("?admin=1"), &[])),
            Err(Malformed::Target)
        );
        assert_eq!(
            check(&head(Method::GET, https("*"), &[])),
            Err(Malformed::Target)
        );
        // No `:scheme` and no `:path`: an HTTP/1 upstream would get
        // `GET shop.test:443`.
        assert_eq!(
            check(&head(
                Method::GET,
                http::Uri::from_static("shop.test:443"),
                &[]
            )),
            Err(Malformed::Target)
        );
    }

    #[test]
    fn host_must_be_single_and_agree_with_the_authority() {
        let two = [("host", "shop.test"), ("host", "admin.test")];
        assert_eq!(
            check(&head(Method::GET, https("/"), &two)),
            Err(Malformed::SeveralHosts)
        );
        let same_twice = [("host", "shop.test"), ("host", "shop.test")];
        assert_eq!(
            check(&head(Method::GET, https("/"), &same_twice)),
            Err(Malformed::SeveralHosts)
        );
        assert_eq!(
            check(&head(Method::GET, https("/"), &[("host", "admin.test")])),
            Err(Malformed::HostMismatch)
        );
    }

    #[test]
    fn connection_specific_fields_are_malformed() {
        for name in CONNECTION_HEADERS {
            assert_eq!(
                check(&head(Method::GET, https("/"), &[(name, "x")])),
                Err(Malformed::ConnectionField(name)),
                "{name}"
            );
        }
        for te in [
            &[("te", "gzip")][..],
            &[("te", "trailers"), ("te", "deflate")],
        ] {
            assert_eq!(
                check(&head(Method::GET, https("/"), te)),
                Err(Malformed::Te),
                "{te:?}"
            );
        }
    }
}
