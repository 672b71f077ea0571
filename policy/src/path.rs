//! Request paths in one spelling before routing.
//!
//! Routes and their auth rules match paths by prefix, and an origin
//! resolves `%61dmin` to `admin` and `/v1/x/../admin` to `/v1/admin`.
//! Matched as sent, such a path would slip past a route meant for it (the
//! `admin` route asks for a role, the catch-all does not) and still reach
//! the origin as the path that route guards. So a path is first rewritten
//! to the form RFC 3986 section 6.2.2 calls equivalent: percent-encoded
//! unreserved characters decoded, the hex digits of the escapes that stay
//! in upper case, and dot segments removed (section 5.2.4). The origin
//! then gets the path that was matched. Empty segments (`//`) are kept:
//! they are not equivalent to one slash, and some applications tell them
//! apart.

/// The normal form of `path`, or `None` when it is already in it (most
/// paths: only a `%` or a `.` right after a `/` can change anything, so a
/// path with neither costs one pass and no allocation). A path that does
/// not start with `/` (`*`, an empty one) is left alone.
pub fn normalize(path: &str) -> Option<String> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return None;
    }
    let suspect = bytes
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'%' || (b == b'.' && bytes[i - 1] == b'/'));
    if !suspect {
        return None;
    }
    let decoded = decode_unreserved(bytes);
    let out = remove_dot_segments(&decoded);
    (out != path).then_some(out)
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Decodes `%XX` escapes of unreserved characters and upper-cases the hex
/// digits of the others; anything else (a `%` not followed by two hex
/// digits included) is copied as it is.
fn decode_unreserved(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let escape = (b == b'%')
            .then(|| Some((hex(*bytes.get(i + 1)?)?, hex(*bytes.get(i + 2)?)?)))
            .flatten();
        match escape {
            Some((hi, lo))
                if unreserved(hi << 4 | lo) && !completes_stray_escape(&out, hi << 4 | lo) =>
            {
                out.push(char::from(hi << 4 | lo));
                i += 3;
            }
            Some(_) => {
                out.push('%');
                out.push(char::from(bytes[i + 1].to_ascii_uppercase()));
                out.push(char::from(bytes[i + 2].to_ascii_uppercase()));
                i += 3;
            }
            None => {
                // Paths reach here as valid UTF-8 (`&str`); copy one
                // character whole.
                let len = utf8_len(b);
                out.push_str(std::str::from_utf8(&bytes[i..i + len]).unwrap_or("\u{fffd}"));
                i += len;
            }
        }
    }
    out
}

/// Whether decoding `c` onto `out` would make a stray `%` (one not
/// followed by two hex digits, copied as it is) into an escape: `/%0%61`
/// decoded in one pass would read `/%0a`, which a second decoding turns
/// into a newline. Such a character stays encoded. Escapes that stay end in
/// two hex digits and decoded characters are never `%`, so a `%` among the
/// last two characters of `out` is a stray one.
fn completes_stray_escape(out: &str, c: u8) -> bool {
    let tail = out.as_bytes();
    hex(c).is_some()
        && match tail {
            [.., b'%'] => true,
            [.., b'%', d] => hex(*d).is_some(),
            _ => false,
        }
}

fn utf8_len(first: u8) -> usize {
    match first {
        0xf0..=0xff => 4,
        0xe0..=0xef => 3,
        0xc0..=0xdf => 2,
        _ => 1,
    }
}

/// RFC 3986 section 5.2.4 for an absolute path: `.` segments go, `..`
/// takes the segment before it (never past the root), and a path ending in
/// either ends with `/`.
fn remove_dot_segments(path: &str) -> String {
    let mut kept: Vec<&str> = Vec::new();
    let mut segments = path[1..].split('/').peekable();
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        match seg {
            "." => {}
            ".." => {
                kept.pop();
            }
            _ => {
                kept.push(seg);
                continue;
            }
        }
        if last {
            kept.push("");
        }
    }
    let mut out = String::with_capacity(path.len());
    for seg in &kept {
        out.push('/');
        out.push_str(seg);
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn paths_in_normal_form_are_left_alone() {
        for p in [
            "/",
            "/a/b",
            "/a/b/",
            "/a//b",
            "/a/b.c",
            "/.well-known",
            "/a/.hidden/b",
            "/a/..b",
            "/caf\u{e9}",
            "*",
            "",
            "/%2F",
            "/a%20b",
        ] {
            assert_eq!(normalize(p), None, "{p}");
        }
    }

    #[test]
    fn equivalent_spellings_become_one() {
        for (from, to) in [
            ("/%61dmin/users", "/admin/users"),
            ("/v1/%2e%2e/admin", "/admin"),
            ("/v1/%2E%2E/admin", "/admin"),
            ("/v1/x/../admin", "/v1/admin"),
            ("/v1/./admin", "/v1/admin"),
            ("/a/b/.", "/a/b/"),
            ("/a/b/..", "/a/"),
            ("/..", "/"),
            ("/../../etc/passwd", "/etc/passwd"),
            ("/.", "/"),
            ("/a/%7euser", "/a/~user"),
            ("/a%2fb", "/a%2Fb"),
            ("/a%zz", "/a%zz"),
            ("/a/%", "/a/%"),
            ("/a%2", "/a%2"),
            ("/a//../b", "/a/b"),
            ("/%0%61", "/%0%61"),
            ("/%%61%62", "/%%61b"),
            ("/%%2e%2e/x", "/%../x"),
            ("/caf\u{e9}/%41", "/caf\u{e9}/A"),
        ] {
            assert_eq!(
                normalize(from).as_deref(),
                Some(to).filter(|t| *t != from),
                "{from}"
            );
        }
    }

    proptest! {
        #[test]
        fn normal_forms_are_stable(path in "/[a-zA-Z0-9%./~_-]{0,24}") {
            let once = normalize(&path).unwrap_or_else(|| path.clone());
            prop_assert_eq!(normalize(&once), None, "{} -> {}", path, once);
            prop_assert!(once.starts_with('/'));
            prop_assert!(!once.split('/').any(|s| s == "." || s == ".."), "{}", once);
        }

        /// Dense in escapes, stray `%`s and hex digits, where one pass could
        /// leave a new escape behind.
        #[test]
        fn escapes_next_to_stray_percent_signs_are_stable(
            path in "/([%./a-f0-9]|%[2-7][0-9a-fA-F]){0,16}"
        ) {
            let once = normalize(&path).unwrap_or_else(|| path.clone());
            prop_assert_eq!(normalize(&once), None, "{} -> {}", path, once);
        }
    }
}
