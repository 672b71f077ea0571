//! Property tests: no input makes the config loader panic, and every
//! rejection points at a real line and column of the input.
//!
//! Three generators: arbitrary text, TOML assembled from the schema's own
//! key names with random values, and the shipped examples with random
//! edits (deleted, duplicated, swapped and mutated lines).

use std::path::Path;

use proptest::prelude::*;

fn check(text: &str) {
    match meshgate_config::load_str(text, "fuzz.toml", Path::new("/nonexistent")) {
        Ok(_) => {}
        Err(d) => {
            assert!(!d.is_empty(), "a rejection must say why");
            let lines = text.lines().count().max(1);
            for diag in d.iter() {
                assert!(
                    diag.line >= 1 && diag.line <= lines + 1,
                    "{diag} in\n{text}"
                );
                assert!(diag.column >= 1, "{diag}");
                assert!(!diag.message.is_empty());
            }
            let _ = d.to_string();
        }
    }
}

const KEYS: &[&str] = &[
    "name",
    "address",
    "protocols",
    "service",
    "endpoints",
    "labels",
    "weight",
    "lb",
    "timeout",
    "retry",
    "max_retries",
    "on",
    "split",
    "targets",
    "subset",
    "sticky",
    "header",
    "claim",
    "match",
    "hosts",
    "path",
    "path_prefix",
    "path_regex",
    "methods",
    "redirect",
    "respond",
    "status",
    "body",
    "tls",
    "certificates",
    "cert",
    "key",
    "issuer",
    "audiences",
    "algorithms",
    "jwks_file",
    "jwks_url",
    "trust_domain",
    "workload_cert_ttl",
    "allow",
    "format",
    "exporter",
    "connect_timeout",
    "outlier_detection",
    "consecutive_failures",
    "base_ejection",
    "mirror",
    "percent",
    "rewrite",
    "host",
    "token",
    "mode",
    "ca",
];
const TABLES: &[&str] = &[
    "[admin]",
    "[[listener]]",
    "[listener.tls]",
    "[listener.limits]",
    "[[jwt_provider]]",
    "[[route]]",
    "[route.match]",
    "[route.retry]",
    "[[service]]",
    "[[service.subset]]",
    "[service.split]",
    "[service.outlier_detection]",
    "[mesh]",
    "[[mesh.authorization]]",
    "[observability]",
    "[observability.tracing]",
    "[bogus]",
];
const VALUES: &[&str] = &[
    "\"x\"",
    "\"127.0.0.1:8080\"",
    "\"5s\"",
    "\"5\"",
    "\"-1s\"",
    "0",
    "-7",
    "100",
    "101",
    "99999999999",
    "true",
    "[]",
    "[\"http1\", \"h2c\"]",
    "[\"http2\"]",
    "{}",
    "{ header = \"x-user-id\" }",
    "[{ subset = \"v1\", weight = 95 }]",
    "\"[\"",
    "\"(unclosed\"",
    "\"spiffe://td/a/*\"",
    "\"ñ\"",
    "1.5",
    "2024-01-01",
    "\"RS256\"",
    "[{ address = \"127.0.0.1:1\" }]",
];

fn schema_doc() -> impl Strategy<Value = String> {
    let line = prop_oneof![
        proptest::sample::select(TABLES).prop_map(str::to_owned),
        (
            proptest::sample::select(KEYS),
            proptest::sample::select(VALUES)
        )
            .prop_map(|(k, v)| format!("{k} = {v}")),
    ];
    proptest::collection::vec(line, 0..40).prop_map(|l| l.join("\n"))
}

fn examples() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.path().extension().is_some_and(|x| x == "toml"))
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .collect()
        })
        .unwrap_or_default();
    out.push(meshgate_config::EMBEDDED_DEFAULT.to_owned());
    out
}

#[derive(Debug, Clone)]
enum Edit {
    Delete(usize),
    Duplicate(usize),
    Swap(usize, usize),
    Replace(usize, String),
    Truncate(usize),
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let edit = prop_oneof![
        any::<usize>().prop_map(Edit::Delete),
        any::<usize>().prop_map(Edit::Duplicate),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Edit::Swap(a, b)),
        (any::<usize>(), "[ -~]{0,30}").prop_map(|(a, s)| Edit::Replace(a, s)),
        any::<usize>().prop_map(Edit::Truncate),
    ];
    proptest::collection::vec(edit, 1..6)
}

fn apply(text: &str, edits: &[Edit]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    for e in edits {
        if lines.is_empty() {
            break;
        }
        let n = lines.len();
        match e {
            Edit::Delete(i) => {
                lines.remove(i % n);
            }
            Edit::Duplicate(i) => {
                let l = lines[i % n].clone();
                lines.insert(i % n, l);
            }
            Edit::Swap(a, b) => lines.swap(a % n, b % n),
            Edit::Replace(i, s) => lines[i % n] = s.clone(),
            Edit::Truncate(i) => {
                let l = &mut lines[i % n];
                let cut = (i / n) % (l.len() + 1);
                let cut = (0..=cut)
                    .rev()
                    .find(|c| l.is_char_boundary(*c))
                    .unwrap_or(0);
                l.truncate(cut);
            }
        }
    }
    lines.join("\n")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,300}") {
        check(&text);
    }

    #[test]
    fn schema_shaped_documents_never_panic(doc in schema_doc()) {
        check(&doc);
    }

    #[test]
    fn edited_examples_never_panic(which in any::<usize>(), e in edits()) {
        let ex = examples();
        let text = apply(&ex[which % ex.len()], &e);
        check(&text);
    }
}
