//! The numbers of a program as search parameters, and the structural edits of the search.
//!
//! A lexical pass over the program text finds each numeric literal and the call it is an argument of
//! (`cq.Vector` inside `cq.Plane`, `moveTo`, `lineTo`, `threePointArc`'s point tuples, `circle`,
//! `extrude`, …). Literals with the same text and the same role in the same scope form one parameter,
//! so a rectangle's two edges at `x = 0.43` move together and stay parallel: sketch coordinates are
//! grouped per workplane and axis, radii per workplane; plane origins and extrusion distances are one
//! parameter per literal. Plane directions (`xDir`, `normal`) are not parameters.

use std::collections::BTreeMap;

/// One search parameter: a value and the byte ranges of the literals that carry it.
#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    pub value: f64,
    pub spans: Vec<(usize, usize)>,
    pub role: Role,
}

/// What a parameter is.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// A plane origin's component (0, 1, 2) on one line.
    Origin(usize, usize),
    /// A sketch coordinate of a workplane (scope) along its x (0) or y (1) axis.
    Sketch(String, usize),
    /// A circle radius on a workplane.
    Radius(String),
    /// An extrusion distance (line, argument).
    Extrude(usize, usize),
    /// Any other numeric argument (line, call, argument).
    Other(usize, String, usize),
}

struct Open {
    name: String,
    arg: usize,
}

/// The parameters of `program` in a stable order (by first occurrence).
pub fn extract(program: &str) -> Vec<Param> {
    let b = program.as_bytes();
    let mut groups: BTreeMap<(Role, String), usize> = BTreeMap::new();
    let mut out: Vec<Param> = Vec::new();
    let mut stack: Vec<Open> = Vec::new();
    let (mut line, mut line_start) = (0usize, 0usize);
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'\n' => {
                line += 1;
                line_start = i + 1;
                stack.clear();
                i += 1;
            }
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'"' | b'\'' => {
                i += 1;
                while i < b.len() && b[i] != c && b[i] != b'\n' {
                    i += 1;
                }
                i += 1;
            }
            b'(' => {
                let mut s = i;
                while s > 0 && (b[s - 1].is_ascii_alphanumeric() || b[s - 1] == b'_') {
                    s -= 1;
                }
                stack.push(Open {
                    name: program[s..i].to_string(),
                    arg: 0,
                });
                i += 1;
            }
            b')' => {
                stack.pop();
                i += 1;
            }
            b',' => {
                if let Some(o) = stack.last_mut() {
                    o.arg += 1;
                }
                i += 1;
            }
            _ if c.is_ascii_digit()
                || (c == b'-'
                    && i + 1 < b.len()
                    && (b[i + 1].is_ascii_digit() || b[i + 1] == b'.'))
                || (c == b'.' && i + 1 < b.len() && b[i + 1].is_ascii_digit()) =>
            {
                // an identifier's digits (solid0, wp_sketch1) are not literals
                if i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_') {
                    i += 1;
                    continue;
                }
                let start = i;
                i += 1;
                while i < b.len()
                    && (b[i].is_ascii_digit()
                        || b[i] == b'.'
                        || b[i] == b'e'
                        || b[i] == b'E'
                        || ((b[i] == b'-' || b[i] == b'+')
                            && (b[i - 1] == b'e' || b[i - 1] == b'E')))
                {
                    i += 1;
                }
                let text = &program[start..i];
                let Ok(value) = text.parse::<f64>() else {
                    continue;
                };
                if !value.is_finite() {
                    continue;
                }
                let Some(role) = role_of(&stack, line, &program[line_start..]) else {
                    continue;
                };
                let key = match role {
                    Role::Sketch(..) | Role::Radius(..) => (role.clone(), text.to_string()),
                    _ => (role.clone(), format!("@{start}")),
                };
                match groups.get(&key) {
                    Some(&g) => out[g].spans.push((start, i)),
                    None => {
                        groups.insert(key, out.len());
                        out.push(Param {
                            value,
                            spans: vec![(start, i)],
                            role,
                        });
                    }
                }
            }
            _ => i += 1,
        }
    }
    out
}

/// The workplane a line's chain starts from: `loop0=wp_sketch0.moveTo(…)` → `wp_sketch0`.
fn scope(line: &str) -> String {
    let rhs = line.split_once('=').map_or(line, |(_, r)| r).trim_start();
    rhs.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .next()
        .unwrap_or("")
        .to_string()
}

fn role_of(stack: &[Open], line: usize, line_text: &str) -> Option<Role> {
    let top = stack.last()?;
    let parent = stack.len().checked_sub(2).map(|k| &stack[k]);
    let line_text = line_text.split('\n').next().unwrap_or("");
    match top.name.as_str() {
        "Vector" => match parent {
            Some(p) if p.name == "Plane" && p.arg == 0 => Some(Role::Origin(line, top.arg)),
            Some(p) if p.name == "Plane" => None,
            _ => Some(Role::Other(line, "Vector".into(), top.arg)),
        },
        "moveTo" | "lineTo" if top.arg < 2 => Some(Role::Sketch(scope(line_text), top.arg)),
        "" if parent.is_some_and(|p| p.name == "threePointArc") && top.arg < 2 => {
            Some(Role::Sketch(scope(line_text), top.arg))
        }
        "circle" => Some(Role::Radius(scope(line_text))),
        "extrude" => Some(Role::Extrude(line, top.arg)),
        "Plane" => None,
        name => Some(Role::Other(line, name.to_string(), top.arg)),
    }
}

/// A number as the programs write it: at most 6 decimals, no trailing zeros, at least one decimal.
pub fn format_number(v: f64) -> String {
    let v = if v.abs() < 5e-7 { 0.0 } else { v };
    let mut s = format!("{v:.6}");
    while s.ends_with('0') && !s.ends_with(".0") {
        s.pop();
    }
    s
}

/// `program` with parameter `p` set to `value` (every literal of the group rewritten).
pub fn with_value(program: &str, p: &Param, value: f64) -> String {
    let text = format_number(value);
    let mut spans = p.spans.clone();
    spans.sort();
    let mut out = String::with_capacity(program.len() + 8 * spans.len());
    let mut at = 0;
    for (s, e) in spans {
        out.push_str(&program[at..s]);
        out.push_str(&text);
        at = e;
    }
    out.push_str(&program[at..]);
    out
}

/// Structural edits of a program: each loop dropped from a multi-loop `.add(…)` chain, each
/// `solid=solid.union(…)` / `.cut(…)` line dropped, and union and cut swapped. In a stable order.
pub fn structural_edits(program: &str) -> Vec<String> {
    let lines: Vec<&str> = program.split_inclusive('\n').collect();
    let mut out = Vec::new();
    for (k, l) in lines.iter().enumerate() {
        let t = l.trim_start();
        let join = |ls: Vec<String>| ls.concat();
        if t.starts_with("solid=solid.union(") || t.starts_with("solid=solid.cut(") {
            let mut ls: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
            ls.remove(k);
            out.push(join(ls));
            let mut ls: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
            ls[k] = if t.starts_with("solid=solid.union(") {
                l.replacen(".union(", ".cut(", 1)
            } else {
                l.replacen(".cut(", ".union(", 1)
            };
            out.push(join(ls));
        }
        let adds: Vec<usize> = l.match_indices(".add(").map(|(p, _)| p).collect();
        if adds.len() > 1 {
            for &p in &adds {
                let Some(close) = l[p..].find(')') else {
                    continue;
                };
                let mut ls: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
                ls[k] = format!("{}{}", &l[..p], &l[p + close + 1..]);
                out.push(join(ls));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "import cadquery as cq\n# Generating a workplane for sketch 0\nwp_sketch0 = cq.Workplane(cq.Plane(cq.Vector(0.0, -0.39, 0.0), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))\nloop0=wp_sketch0.moveTo(0.068, 0.0).lineTo(0.068, 0.326).threePointArc((0.2, 0.4), (0.431, 0.326)).lineTo(0.431, 0.0).close()\nloop1=wp_sketch0.moveTo(0.25, 0.1).circle(0.05)\nsolid0=wp_sketch0.add(loop0).add(loop1).extrude(0.75)\nsolid=solid0\nsolid=solid.union(solid0)\n";

    #[test]
    fn literals_group_by_role_and_value() {
        let ps = extract(P);
        let vals: Vec<(f64, usize)> = ps.iter().map(|p| (p.value, p.spans.len())).collect();
        // origin 0.0, -0.39, 0.0 (three params); x 0.068 ×2; y 0.0 ×3 (moveTo, lineTo, loop1? no: 0.1); …
        assert_eq!(ps[0].role, Role::Origin(2, 0));
        assert_eq!(ps[1].value, -0.39);
        let x068 = ps.iter().find(|p| p.value == 0.068).unwrap();
        assert_eq!(x068.spans.len(), 2);
        assert_eq!(x068.role, Role::Sketch("wp_sketch0".into(), 0));
        let y0 = ps
            .iter()
            .find(|p| p.value == 0.0 && p.role == Role::Sketch("wp_sketch0".into(), 1))
            .unwrap();
        assert_eq!(y0.spans.len(), 2);
        let y326 = ps.iter().find(|p| p.value == 0.326).unwrap();
        assert_eq!(
            y326.spans.len(),
            2,
            "the arc's end point shares the lineTo's y"
        );
        assert!(
            ps.iter()
                .any(|p| p.value == 0.05 && matches!(p.role, Role::Radius(_)))
        );
        assert!(
            ps.iter()
                .any(|p| p.value == 0.75 && matches!(p.role, Role::Extrude(5, 0)))
        );
        // plane directions, comments and identifiers' digits are not parameters
        assert!(!ps.iter().any(|p| p.value == 1.0));
        assert_eq!(vals.iter().map(|v| v.1).sum::<usize>(), 3 + 10 + 3 + 1);
        let moved = with_value(P, x068, 0.1);
        assert!(
            moved.contains("moveTo(0.1, 0.0).lineTo(0.1, 0.326)"),
            "{moved}"
        );
        assert_eq!(with_value(P, x068, 0.068), P);
    }

    #[test]
    fn numbers_print_like_programs() {
        assert_eq!(format_number(0.5), "0.5");
        assert_eq!(format_number(1.0), "1.0");
        assert_eq!(format_number(-0.1234567), "-0.123457");
        assert_eq!(format_number(-1e-9), "0.0");
    }

    #[test]
    fn structural_edits_drop_and_swap() {
        let e = structural_edits(P);
        assert!(e.iter().any(|p| !p.contains("solid=solid.union")));
        assert!(e.iter().any(|p| p.contains("solid=solid.cut(solid0)")));
        assert!(
            e.iter()
                .any(|p| p.contains("solid0=wp_sketch0.add(loop0).extrude(0.75)"))
        );
        assert!(
            e.iter()
                .any(|p| p.contains("solid0=wp_sketch0.add(loop1).extrude(0.75)"))
        );
        assert_eq!(e.len(), 4);
    }
}
