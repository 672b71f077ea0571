//! Diagnostics: what is wrong, where (file, line, column), and how to fix it.
//!
//! Rendered the way compilers do, so editors and CI logs can jump to the
//! spot:
//!
//! ```text
//! meshgate.toml:12:1: error: unknown key `lb_algo` in [[service]]
//!    |
//! 12 | lb_algo = "round-robin"
//!    | ^^^^^^^
//!    = hint: did you mean `lb`?
//! ```

use std::fmt;
use std::ops::Range;

/// One problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// File name as given by the user.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// What is wrong, lower-case, naming the key or value.
    pub message: String,
    /// How to fix it, when we can tell.
    pub hint: Option<String>,
    /// The offending source line and the caret under it.
    snippet: Option<(String, usize)>,
}

impl Diagnostic {
    /// The `FILE:LINE:COL: error: WHAT` head line.
    pub fn head(&self) -> String {
        format!(
            "{}:{}:{}: error: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.head())?;
        if let Some((text, width)) = &self.snippet {
            let num = self.line.to_string();
            let pad = " ".repeat(num.len());
            writeln!(f, "{pad} |")?;
            writeln!(f, "{num} | {text}")?;
            let col = self.column.saturating_sub(1);
            writeln!(
                f,
                "{pad} | {}{}",
                " ".repeat(col),
                "^".repeat((*width).max(1))
            )?;
        }
        if let Some(hint) = &self.hint {
            let pad = " ".repeat(self.line.to_string().len());
            writeln!(f, "{pad} = hint: {hint}")?;
        }
        Ok(())
    }
}

/// Every problem found in one file, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    /// Number of problems.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when the file is clean.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The problems.
    pub fn iter(&self) -> std::slice::Iter<'_, Diagnostic> {
        self.0.iter()
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.0 {
            write!(f, "{d}")?;
        }
        let n = self.0.len();
        write!(
            f,
            "{n} error{} found; the configuration was not applied",
            if n == 1 { "" } else { "s" }
        )
    }
}

impl std::error::Error for Diagnostics {}

/// Collects diagnostics against one source text.
#[derive(Debug)]
pub(crate) struct Sink<'s> {
    file: String,
    source: &'s str,
    items: Vec<(Range<usize>, String, Option<String>)>,
}

impl<'s> Sink<'s> {
    pub(crate) fn new(file: &str, source: &'s str) -> Self {
        Self {
            file: file.to_owned(),
            source,
            items: Vec::new(),
        }
    }

    /// Records a problem at a byte span.
    pub(crate) fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.items.push((span, message.into(), None));
    }

    /// Records a problem with a hint.
    pub(crate) fn error_hint(
        &mut self,
        span: Range<usize>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) {
        self.items.push((span, message.into(), Some(hint.into())));
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Sorted by position; exact duplicates (same place, same message)
    /// dropped.
    pub(crate) fn finish(mut self) -> Diagnostics {
        self.items.sort_by_key(|(span, _, _)| span.start);
        self.items
            .dedup_by(|a, b| a.0.start == b.0.start && a.1 == b.1);
        let out = self
            .items
            .iter()
            .map(|(span, message, hint)| {
                let (line, column, text, width) = locate(self.source, span.clone());
                Diagnostic {
                    file: self.file.clone(),
                    line,
                    column,
                    message: message.clone(),
                    hint: hint.clone(),
                    snippet: Some((text, width)),
                }
            })
            .collect();
        Diagnostics(out)
    }
}

/// Line, column (both 1-based, column in characters), the line's text and
/// the caret width for a byte span. Spans past the end are clamped.
fn locate(source: &str, span: Range<usize>) -> (usize, usize, String, usize) {
    let start = floor_char_boundary(source, span.start.min(source.len()));
    let end = floor_char_boundary(source, span.end.min(source.len())).max(start);
    let line_start = source[..start].rfind('\n').map_or(0, |i| i + 1);
    let line_end = source[start..]
        .find('\n')
        .map_or(source.len(), |i| start + i);
    let line = source[..start].matches('\n').count() + 1;
    let column = source[line_start..start].chars().count() + 1;
    let text = source[line_start..line_end]
        .trim_end_matches('\r')
        .to_owned();
    let width = source[start..end.min(line_end)].chars().count();
    (line, column, text, width)
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// The closest candidate to `word`, when it is close enough to be a
/// plausible typo.
pub(crate) fn did_you_mean<'c>(
    word: &str,
    candidates: impl IntoIterator<Item = &'c str>,
) -> Option<&'c str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_file_line_column_and_caret() {
        let src = "a = 1\n  lb_algo = \"x\"\n";
        let mut sink = Sink::new("f.toml", src);
        let start = src.find("lb_algo").unwrap_or(0);
        sink.error_hint(
            start..start + 7,
            "unknown key `lb_algo`",
            "did you mean `lb`?",
        );
        let d = sink.finish();
        let text = d.to_string();
        assert!(
            text.starts_with("f.toml:2:3: error: unknown key `lb_algo`\n"),
            "{text}"
        );
        assert!(text.contains("2 |   lb_algo = \"x\"\n"), "{text}");
        assert!(text.contains("  |   ^^^^^^^\n"), "{text}");
        assert!(text.contains("= hint: did you mean `lb`?"), "{text}");
        assert!(text.ends_with("1 error found; the configuration was not applied"));
    }

    #[test]
    fn clamps_spans_and_handles_multibyte() {
        let src = "ключ = 1";
        let (line, col, _, _) = locate(src, 2..1000);
        assert_eq!((line, col), (1, 2));
        let (line, col, _, _) = locate("", 5..9);
        assert_eq!((line, col), (1, 1));
    }

    #[test]
    fn suggests_close_words_only() {
        assert_eq!(
            did_you_mean("lb_algo", ["lb", "name", "lb_algorithm"]),
            Some("lb_algorithm")
        );
        assert_eq!(
            did_you_mean("endpoint", ["endpoints", "name"]),
            Some("endpoints")
        );
        assert_eq!(did_you_mean("zzz", ["endpoints", "name"]), None);
    }
}
