//! `twinctl deps --svg FILE`: the map drawn with one colour per datacenter. Laid out by
//! Graphviz (`dot -Tsvg` of [`super::render::dot`]) when `dot` is on PATH, else by the
//! `layout-rs` crate (a layered layout of the same nodes and lines). Coordinates always come
//! from a layout engine, never from this code.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use layout::backends::svg::SVGWriter;
use layout::core::base::Orientation;
use layout::core::color::Color;
use layout::core::style::{LineStyleKind, StyleAttr};
use layout::std_shapes::render::get_shape_size;
use layout::std_shapes::shapes::{Arrow, Element, LineEndKind, ShapeKind};
use layout::topo::layout::VisualGraph;

use super::graph::DepGraph;
use super::render::{colours, dot, drawing, OTHER_COLOUR};
use crate::error::CtlError;

/// Which engine laid the drawing out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Engine {
    /// Graphviz `dot` from PATH.
    Graphviz,
    /// The `layout-rs` crate (no Graphviz installed).
    LayoutRs,
}

/// `dot` on PATH, if any.
pub fn graphviz_dot() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("dot"))
        .find(|p| p.is_file())
}

/// Draws `g` into `file`; says which engine laid it out.
pub fn write(g: &DepGraph, dcs: &[String], file: &Path) -> Result<Engine, CtlError> {
    let (svg, engine) = match graphviz_dot() {
        Some(bin) => (graphviz(&bin, &dot(g, dcs))?, Engine::Graphviz),
        None => (layout_rs(g, dcs), Engine::LayoutRs),
    };
    std::fs::write(file, svg)
        .map_err(|e| CtlError::failed(format!("writing the SVG to {}: {e}", file.display())))?;
    Ok(engine)
}

/// `dot -Tsvg` of `source`.
fn graphviz(bin: &Path, source: &str) -> Result<String, CtlError> {
    let fail = |what: String| CtlError::failed(format!("graphviz {}: {what}", bin.display()));
    let mut child = Command::new(bin)
        .arg("-Tsvg")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot run it: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(source.as_bytes())
            .map_err(|e| fail(format!("writing the graph to it: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| fail(format!("waiting for it: {e}")))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let first = err.lines().next().unwrap_or("no message");
        return Err(fail(format!("exited with {}: {first}", out.status)));
    }
    String::from_utf8(out.stdout).map_err(|_| fail("its SVG is not UTF-8".to_string()))
}

/// The layered layout of `layout-rs`: nodes filled with their datacenter's colour (white
/// when in several; their label names them), lines in the caller datacenter's colour, and
/// one legend node per datacenter.
pub fn layout_rs(g: &DepGraph, dcs: &[String]) -> String {
    let colour = colours(dcs);
    let (nodes, edges) = drawing(g);
    let mut vg = VisualGraph::new(Orientation::LeftToRight);
    // layout-rs sizes and draws the shapes of a left-to-right graph top-down.
    let shape_dir = Orientation::LeftToRight.flip();
    let element = |label: String, fill: &str| {
        let shape = ShapeKind::new_box(&label);
        let size = get_shape_size(shape_dir, &shape, 14, false);
        let look = StyleAttr::new(Color::fast("black"), 1, Color::from_name(fill), 4, 14);
        Element::create(shape, look, shape_dir, size)
    };
    let handles: Vec<_> = nodes
        .iter()
        .map(|n| {
            let fill = match n.datacenters.as_slice() {
                [one] => colour.get(one).copied().unwrap_or(OTHER_COLOUR),
                _ => "white",
            };
            let (name, info) = n.label_lines();
            vg.add_node(element(format!("{name}\n{info}"), fill))
        })
        .collect();
    for e in &edges {
        let (Some(from), Some(to)) = (handles.get(e.from), handles.get(e.to)) else {
            continue;
        };
        let c = colour.get(&e.dc).copied().unwrap_or(OTHER_COLOUR);
        let look = StyleAttr::new(Color::fast(c), 2, None, 0, 11);
        let arrow = Arrow::new(
            LineEndKind::None,
            LineEndKind::Arrow,
            LineStyleKind::Normal,
            &e.label,
            &look,
            &None,
            &None,
        );
        vg.add_edge(arrow, *from, *to);
    }
    for dc in dcs {
        let c = colour.get(dc).copied().unwrap_or(OTHER_COLOUR);
        vg.add_node(element(format!("datacenter {dc}"), c));
    }
    if vg.num_nodes() == 0 {
        vg.add_node(element("no dependency edges".to_string(), "white"));
    }
    let mut svg = SVGWriter::new();
    vg.do_it(false, false, false, &mut svg);
    svg.finalize()
}
