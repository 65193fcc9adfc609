//! How results are printed: a table for people, JSON or YAML for scripts. Every command
//! builds one serializable report and hands it to [`emit`].

use serde::Serialize;

use crate::error::CtlError;

/// `-o table|json|jsonl|yaml|dot|mermaid`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    #[default]
    Table,
    /// One JSON document.
    Json,
    /// JSON lines: one record a line (twinctl audit export; one compact line elsewhere).
    Jsonl,
    /// One YAML document.
    Yaml,
    /// Graphviz DOT (twinctl deps only).
    Dot,
    /// A Mermaid flowchart (twinctl deps only).
    Mermaid,
}

impl Format {
    /// Whether this is a drawing format, which only `twinctl deps` prints.
    pub fn is_graph(self) -> bool {
        matches!(self, Format::Dot | Format::Mermaid)
    }

    /// Refuses a drawing format for `command` (exit 2), before anything is read.
    pub fn check_for(self, command: &str) -> Result<(), CtlError> {
        if self.is_graph() {
            return Err(CtlError::usage(format!(
                "-o {} draws the dependency map: only twinctl deps prints it; use -o table, json or yaml with {command}",
                self.name()
            )));
        }
        Ok(())
    }

    /// The flag value (`dot`).
    pub fn name(self) -> &'static str {
        match self {
            Format::Table => "table",
            Format::Json => "json",
            Format::Jsonl => "jsonl",
            Format::Yaml => "yaml",
            Format::Dot => "dot",
            Format::Mermaid => "mermaid",
        }
    }
}

/// A command's result: serializable for scripts, and with a text form for people.
pub trait Report: Serialize {
    /// The human form (may span several lines; ends without a newline).
    fn text(&self) -> String;
}

/// Renders `report` in `format`.
pub fn render<R: Report>(format: Format, report: &R) -> Result<String, CtlError> {
    match format {
        Format::Table => Ok(report.text()),
        Format::Json => serde_json::to_string_pretty(report)
            .map_err(|e| CtlError::failed(format!("encoding JSON output: {e}"))),
        Format::Jsonl => serde_json::to_string(report)
            .map_err(|e| CtlError::failed(format!("encoding JSON output: {e}"))),
        Format::Yaml => serde_yaml::to_string(report)
            .map(|s| s.trim_end().to_string())
            .map_err(|e| CtlError::failed(format!("encoding YAML output: {e}"))),
        Format::Dot | Format::Mermaid => {
            format.check_for("this command")?;
            Ok(report.text())
        }
    }
}

/// Prints `report` on stdout in `format`.
pub fn emit<R: Report>(format: Format, report: &R) -> Result<(), CtlError> {
    let mut text = render(format, report)?;
    text.push('\n');
    print_out(&text)
}

/// Writes `text` to stdout as it is. A reader that went away (`twinctl … | head`) is not an
/// error: the command's result stands and its exit code says so (Rust ignores SIGPIPE, so
/// `print!` would panic with exit 101 after a change was already committed). Any other
/// failure to write is one line.
pub fn print_out(text: &str) -> Result<(), CtlError> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(CtlError::failed(format!("writing to stdout: {e}"))),
    }
}

/// A text table with left-aligned columns separated by two spaces.
#[derive(Debug, Default)]
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new<S: ToString>(headers: impl IntoIterator<Item = S>) -> Table {
        Table {
            rows: vec![headers.into_iter().map(|h| h.to_string()).collect()],
        }
    }

    /// Adds one row.
    pub fn row<S: ToString>(&mut self, cells: impl IntoIterator<Item = S>) -> &mut Table {
        self.rows
            .push(cells.into_iter().map(|c| c.to_string()).collect());
        self
    }

    /// True when only the header row is present.
    pub fn is_empty(&self) -> bool {
        self.rows.len() <= 1
    }

    /// The rendered table, or `none` when it has no rows.
    pub fn render_or(&self, none: &str) -> String {
        if self.is_empty() {
            none.to_string()
        } else {
            self.render()
        }
    }

    /// The rendered table.
    pub fn render(&self) -> String {
        let cols = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..cols)
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(c))
                    .map(|s| s.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = Vec::with_capacity(self.rows.len());
        for r in &self.rows {
            let mut line = String::new();
            for (c, cell) in r.iter().enumerate() {
                if c + 1 == r.len() {
                    line.push_str(cell);
                } else {
                    let pad = widths[c] - cell.chars().count();
                    line.push_str(cell);
                    line.push_str(&" ".repeat(pad + 2));
                }
            }
            out.push(line.trim_end().to_string());
        }
        out.join("\n")
    }
}

/// `1732550400000` → `2024-11-25T16:00:00Z` (seconds precision).
pub fn time_ms(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let mut t = Table::new(["a", "long header", "c"]);
        t.row(["xxxx", "1", "z"]);
        assert_eq!(t.render(), "a     long header  c\nxxxx  1            z");
        assert_eq!(time_ms(0), "1970-01-01T00:00:00Z");
    }
}
