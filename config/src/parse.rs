//! From text to [`RawConfig`], reporting every structural problem.
//!
//! serde stops at the first error it meets. To report them all, the document
//! is parsed once into a spanned tree; we then deserialize, and on each error
//! record it, cut the offending entry out of the tree and deserialize again,
//! until the rest of the document fits the schema (or a generous bound on
//! rounds is reached). Errors caused only by our own cuts (a required key
//! we removed because its value had the wrong type) are not reported twice.

use std::ops::Range;

use serde::Deserialize;
use toml::de::{DeArray, DeTable, DeValue};

use crate::diag::{Sink, did_you_mean};
use crate::raw::RawConfig;

/// How many schema errors one file may produce before we stop looking.
const MAX_ROUNDS: usize = 100;

/// Parses and shapes the document; `None` when it does not fit the schema
/// (the reasons are in `sink`).
pub(crate) fn parse_raw(sink: &mut Sink<'_>, source: &str) -> Option<RawConfig> {
    let (mut doc, syntax) = DeTable::parse_recoverable(source);
    if !syntax.is_empty() {
        for e in syntax {
            sink.error_hint(
                e.span().unwrap_or(0..0),
                format!("invalid TOML: {}", first_line(e.message())),
                "see https://toml.io for the syntax; strings need double quotes, \
                 tables are written [name] and lists of tables [[name]]",
            );
        }
        return None;
    }
    doc.get_mut().make_owned();
    let mut cut: Vec<(Range<usize>, String)> = Vec::new();
    let mut failed = false;
    for _ in 0..MAX_ROUNDS {
        let de = toml::de::Deserializer::from(doc.clone());
        match RawConfig::deserialize(de) {
            Ok(raw) => return if failed { None } else { Some(raw) },
            Err(e) => {
                failed = true;
                let span = e.span().unwrap_or(0..0);
                let message = first_line(e.message()).to_owned();
                let missing = missing_field(&message);
                let ours = missing
                    .as_deref()
                    .is_some_and(|k| cut.iter().any(|(s, key)| *s == span && key == k));
                if !ours {
                    report(sink, span.clone(), &message);
                }
                let root_span = doc.span();
                let removed_key = remove_innermost(doc.get_mut(), root_span, &span)?;
                if let Some((parent, key)) = removed_key {
                    cut.push((parent, key));
                }
            }
        }
    }
    None
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s).trim()
}

fn missing_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("missing field `")?;
    Some(rest.split('`').next()?.to_owned())
}

/// Turns a serde message into ours.
fn report(sink: &mut Sink<'_>, span: Range<usize>, message: &str) {
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let mut parts = rest.splitn(2, '`');
        let key = parts.next().unwrap_or_default();
        let expected: Vec<&str> = parts
            .next()
            .unwrap_or_default()
            .split('`')
            .skip(1)
            .step_by(2)
            .collect();
        let hint = match did_you_mean(key, expected.iter().copied()) {
            Some(s) => format!("did you mean `{s}`?"),
            None if expected.is_empty() => "this table takes no keys".to_owned(),
            None => format!("valid keys here: {}", expected.join(", ")),
        };
        sink.error_hint(span, format!("unknown key `{key}`"), hint);
    } else if let Some(key) = missing_field(message) {
        sink.error_hint(
            span,
            format!("missing required key `{key}`"),
            format!("add `{key} = ...` to this table"),
        );
    } else if let Some(rest) = message.strip_prefix("invalid type: ") {
        let (found, expected) = rest
            .split_once(", expected ")
            .unwrap_or((rest, "another type"));
        let hint = if expected.contains("sequence") {
            "write a list, e.g. `[\"a\", \"b\"]`".to_owned()
        } else if expected.contains("string") {
            "write a quoted string, e.g. `\"5s\"`".to_owned()
        } else {
            format!("expected {}", friendly_type(expected))
        };
        sink.error_hint(
            span,
            format!(
                "wrong type: found {found}, expected {}",
                friendly_type(expected)
            ),
            hint,
        );
    } else {
        sink.error(span, message.to_owned());
    }
}

fn friendly_type(serde_word: &str) -> String {
    // serde names our internal structs ("struct RawSplit"); the user wrote
    // a TOML table.
    if serde_word.starts_with("struct ") {
        return "a table".to_owned();
    }
    serde_word
        .replace("a sequence", "a list")
        .replace("a map", "a table")
        .replace("i64", "an integer")
}

/// Removes the innermost table entry or array element whose key or value
/// contains `span`. Returns `None` when nothing could be removed (we must
/// then stop), `Some(Some((parent_span, key)))` when a table key was
/// removed, `Some(None)` for an array element.
///
/// Every child is searched, not only the one whose extent covers the span:
/// a `[table]` header's span does not cover the keys written below it.
fn remove_innermost(
    table: &mut DeTable<'_>,
    table_span: Range<usize>,
    span: &Range<usize>,
) -> Option<Option<(Range<usize>, String)>> {
    let mut hit: Option<String> = None;
    for (k, v) in table.iter_mut() {
        let vspan = v.span();
        if covers(&k.span(), span) || vspan == *span {
            hit = Some(k.get_ref().to_string());
            break;
        }
        let inner = match v.get_mut() {
            DeValue::Table(inner) => remove_innermost(inner, vspan.clone(), span),
            DeValue::Array(items) => remove_from_array(items, span),
            _ => None,
        };
        if inner.is_some() {
            return inner;
        }
        if covers(&vspan, span) {
            hit = Some(k.get_ref().to_string());
            break;
        }
    }
    let key = hit?;
    table.remove(key.as_str());
    Some(Some((table_span, key)))
}

fn remove_from_array(
    items: &mut DeArray<'_>,
    span: &Range<usize>,
) -> Option<Option<(Range<usize>, String)>> {
    let mut idx = None;
    for (i, item) in items.as_mut().iter_mut().enumerate() {
        let ispan = item.span();
        if ispan != *span {
            let inner = match item.get_mut() {
                DeValue::Table(t) => remove_innermost(t, ispan.clone(), span),
                DeValue::Array(a) => remove_from_array(a, span),
                _ => None,
            };
            if inner.is_some() {
                return inner;
            }
        }
        if covers(&ispan, span) {
            idx = Some(i);
            break;
        }
    }
    let idx = idx?;
    let kept: DeArray<'_> = items
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != idx)
        .map(|(_, v)| v.clone())
        .collect::<DeArray<'_>>();
    *items = kept;
    Some(None)
}

fn covers(outer: &Range<usize>, inner: &Range<usize>) -> bool {
    outer.start <= inner.start && inner.end <= outer.end && outer.start < outer.end
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn errors(src: &str) -> Vec<String> {
        let mut sink = Sink::new("t.toml", src);
        let raw = parse_raw(&mut sink, src);
        let d = sink.finish();
        assert_eq!(raw.is_none(), !d.is_empty());
        d.iter()
            .map(|d| format!("{}:{} {} | {:?}", d.line, d.column, d.message, d.hint))
            .collect()
    }

    #[test]
    fn valid_minimal_document() {
        assert!(errors("").is_empty());
        assert!(errors("[[listener]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\n").is_empty());
    }

    #[test]
    fn reports_every_unknown_key_with_suggestions() {
        let src = "[[service]]\nname = \"a\"\nlb_algo = \"x\"\nendpoint = []\n\n[admin]\nadress = \"x\"\n";
        let e = errors(src);
        assert_eq!(e.len(), 3, "{e:#?}");
        assert!(e[0].starts_with("3:1 unknown key `lb_algo`"), "{e:#?}");
        assert!(
            e[1].starts_with("4:1 unknown key `endpoint`") && e[1].contains("endpoints"),
            "{e:#?}"
        );
        assert!(
            e[2].starts_with("7:1 unknown key `adress`") && e[2].contains("address"),
            "{e:#?}"
        );
    }

    #[test]
    fn wrong_type_of_required_key_is_reported_once() {
        let src = "[[listener]]\nname = 5\naddress = \"127.0.0.1:1\"\n";
        let e = errors(src);
        assert_eq!(e.len(), 1, "{e:#?}");
        assert!(e[0].starts_with("2:8 wrong type"), "{e:#?}");
    }

    #[test]
    fn wrong_type_inside_an_array() {
        let src =
            "[[listener]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\nprotocols = [\"http1\", 7]\n";
        let e = errors(src);
        assert_eq!(e.len(), 1, "{e:#?}");
        assert!(e[0].starts_with("4:23 wrong type"), "{e:#?}");
    }

    #[test]
    fn missing_required_key() {
        let e = errors("[[listener]]\naddress = \"127.0.0.1:1\"\n");
        assert_eq!(e.len(), 1, "{e:#?}");
        assert!(e[0].contains("missing required key `name`"), "{e:#?}");
    }

    #[test]
    fn syntax_errors_have_positions() {
        let e = errors("[listener\nname = \"a\"\n");
        assert!(!e.is_empty());
        assert!(e[0].starts_with("1:"), "{e:#?}");
        let e = errors("a = \"x\"\na = \"y\"\n");
        assert!(!e.is_empty(), "duplicate key must be an error");
    }
}
