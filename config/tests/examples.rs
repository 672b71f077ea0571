//! The config files we ship and the mistakes we promise to catch.
//!
//! - every `config/examples/*.toml` compiles cleanly (the examples are
//!   documentation, so a schema change that breaks one must fail here);
//! - the embedded default compiles;
//! - every `tests/broken/*.toml` is rejected with the diagnostics its header
//!   announces. Each broken file starts with comment lines
//!   `# expect: LINE:COL substring of the message`; every expectation must
//!   be met by some diagnostic, so a message that drifts to another line or
//!   column, or a check that stops firing, shows up here.

use std::path::{Path, PathBuf};

use meshgate_config::{Diagnostics, load_embedded, load_file};

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");
const BROKEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/broken");

/// `*.toml` files directly under `dir`, sorted so failures read in a stable
/// order.
fn toml_files(dir: &str) -> Vec<PathBuf> {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {dir}: {e}"));
    let mut files: Vec<PathBuf> = entries
        .map(|e| {
            e.unwrap_or_else(|e| panic!("cannot list {dir}: {e}"))
                .path()
        })
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_example_loads() {
    let files = toml_files(EXAMPLES);
    assert!(!files.is_empty(), "no examples found under {EXAMPLES}");
    let failures: Vec<String> = files
        .iter()
        .filter_map(|f| load_file(f).err().map(|d| format!("{}:\n{d}", f.display())))
        .collect();
    assert!(
        failures.is_empty(),
        "examples that do not load:\n\n{}",
        failures.join("\n\n")
    );
}

#[test]
fn embedded_default_loads() {
    if let Err(d) = load_embedded() {
        panic!("the embedded default does not load:\n{d}");
    }
}

#[test]
fn seed_example_has_the_demo_canary() {
    let path = Path::new(EXAMPLES).join("seed.toml");
    let snap = load_file(&path).unwrap_or_else(|d| panic!("{d}"));
    for name in ["user-account", "product-catalog", "order-processing"] {
        assert!(
            snap.service(name).is_some(),
            "seed.toml lost service {name}"
        );
    }
    let catalog = snap.service("product-catalog").expect("checked above");
    let split = catalog.split.as_ref().expect("product-catalog has a split");
    let weights: Vec<(&str, u32)> = split
        .split
        .targets()
        .iter()
        .map(|t| (t.name.as_str(), t.weight))
        .collect();
    assert_eq!(weights, [("v1", 95), ("v2", 5)]);
    assert!(split.sticky.is_some() && split.override_header.is_some());
    let td = &snap.mesh.trust_domain;
    assert!(
        catalog
            .callers
            .allows(&format!("spiffe://{td}/service/order-processing"))
    );
    assert!(catalog.callers.allows(&format!("spiffe://{td}/gateway")));
    assert!(
        !catalog
            .callers
            .allows(&format!("spiffe://{td}/service/user-account"))
    );
}

/// One `# expect: LINE:COL text` line of a broken file.
#[derive(Debug)]
struct Expect {
    line: usize,
    column: usize,
    text: String,
}

/// The expectations in the leading comment block of a broken file.
fn expectations(path: &Path) -> Vec<Expect> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        let Some(comment) = line.strip_prefix('#') else {
            break;
        };
        let Some(rest) = comment.trim_start().strip_prefix("expect:") else {
            continue;
        };
        let rest = rest.trim();
        let (place, message) = rest.split_once(' ').unwrap_or((rest, ""));
        let parsed = place
            .split_once(':')
            .and_then(|(l, c)| Some((l.parse().ok()?, c.parse().ok()?)));
        let Some((line, column)) = parsed else {
            panic!("{}: malformed expect line `{rest}`", path.display());
        };
        out.push(Expect {
            line,
            column,
            text: message.trim().to_owned(),
        });
    }
    out
}

/// What is wrong with one broken file's result, if anything.
fn check_broken(path: &Path) -> Option<String> {
    let expects = expectations(path);
    if expects.is_empty() {
        return Some("no `# expect: LINE:COL message` line at the top".to_owned());
    }
    let diags: Diagnostics = match load_file(path) {
        Ok(_) => return Some("loaded without error".to_owned()),
        Err(d) => d,
    };
    let mut problems = Vec::new();
    for e in &expects {
        let met = diags
            .iter()
            .any(|d| d.line == e.line && d.column == e.column && d.message.contains(&e.text));
        if !met {
            problems.push(format!("expected {}:{} `{}`", e.line, e.column, e.text));
        }
    }
    if diags.len() < expects.len() {
        problems.push(format!(
            "expected at least {} diagnostics, got {}",
            expects.len(),
            diags.len()
        ));
    }
    (!problems.is_empty()).then(|| {
        let got: Vec<String> = diags
            .iter()
            .map(|d| format!("  {}:{} {}", d.line, d.column, d.message))
            .collect();
        format!("{}\n got:\n{}", problems.join("\n "), got.join("\n"))
    })
}

#[test]
fn broken_configs_are_rejected_where_they_say() {
    let files = toml_files(BROKEN);
    assert!(
        files.len() >= 14,
        "expected at least 14 broken configs in {BROKEN}"
    );
    let failures: Vec<String> = files
        .iter()
        .filter_map(|f| check_broken(f).map(|why| format!("{}:\n {why}", f.display())))
        .collect();
    assert!(
        failures.is_empty(),
        "broken configs not diagnosed as announced:\n\n{}",
        failures.join("\n\n")
    );
}
