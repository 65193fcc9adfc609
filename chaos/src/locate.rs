//! Where each value of a YAML document sits (line and column), so that errors found after
//! parsing — an unknown datacenter, steps out of order — can name the line, as serde_yaml
//! does for syntax and type errors. Paths are written `method[2].network.target`.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// A line and column, both 1-based.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

/// Positions of every node of a YAML document, by path.
#[derive(Debug, Default)]
pub struct Locations {
    at: HashMap<String, Pos>,
}

impl Locations {
    /// Indexes `text`; a document that does not parse gives an empty index (serde_yaml reports
    /// the syntax error with its own position).
    pub fn index(text: &str) -> Locations {
        let mut b = Builder::default();
        let mut parser = Parser::new_from_str(text);
        if parser.load(&mut b, false).is_err() {
            return Locations::default();
        }
        Locations { at: b.at }
    }

    /// The position of `path`, or of its nearest ancestor that has one.
    pub fn find(&self, path: &str) -> Option<Pos> {
        let mut p = path.to_string();
        loop {
            if let Some(pos) = self.at.get(&p) {
                return Some(*pos);
            }
            let cut = p.rfind(['.', '['])?;
            p.truncate(cut);
        }
    }
}

enum Frame {
    /// A mapping: the next scalar is a key when `key` is None.
    Map {
        path: String,
        key: Option<String>,
    },
    Seq {
        path: String,
        next: usize,
    },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    at: HashMap<String, Pos>,
}

impl Builder {
    /// The path of the node that starts now, advancing the parent's cursor. `None` when the
    /// node is a mapping key.
    fn child_path(&mut self) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Seq { path, next }) => {
                let p = format!("{path}[{next}]");
                *next += 1;
                Some(p)
            }
            Some(Frame::Map { path, key }) => key.take().map(|k| {
                if path.is_empty() {
                    k
                } else {
                    format!("{path}.{k}")
                }
            }),
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let pos = Pos {
            line: mark.line(),
            col: mark.col() + 1,
        };
        match ev {
            Event::Scalar(value, ..) => match self.child_path() {
                Some(p) => {
                    // A scalar value points at itself rather than at its key.
                    self.at.insert(p, pos);
                }
                None => {
                    if let Some(Frame::Map { path, key }) = self.stack.last_mut() {
                        let full = if path.is_empty() {
                            value.clone()
                        } else {
                            format!("{path}.{value}")
                        };
                        // The key's own position stands for its value until the value starts.
                        self.at.insert(full, pos);
                        *key = Some(value);
                    }
                }
            },
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let is_map = matches!(ev, Event::MappingStart(..));
                let path = self.child_path().unwrap_or_default();
                self.at.entry(path.clone()).or_insert(pos);
                self.stack.push(if is_map {
                    Frame::Map { path, key: None }
                } else {
                    Frame::Seq { path, next: 0 }
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            Event::Alias(_) => {
                self.child_path();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_lines_of_nested_values() {
        let text = "name: x\nmethod:\n  - at: 1s\n    kill: sidecar/m6v/0\n  - at: 2s\n    network: {target: upstreams/foo, fault: reset, for: 1s}\n";
        let l = Locations::index(text);
        assert_eq!(l.find("name").map(|p| p.line), Some(1));
        assert_eq!(l.find("method[0].kill").map(|p| p.line), Some(4));
        assert_eq!(l.find("method[1]").map(|p| p.line), Some(5));
        let t = l.find("method[1].network.target").expect("target");
        assert_eq!((t.line, t.col), (6, 23));
        // An unknown child falls back to its parent.
        assert_eq!(l.find("method[1].network.nope").map(|p| p.line), Some(6));
    }
}
