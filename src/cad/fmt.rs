//! Canonical GenCAD-style printer: parse a program and print it back with numbers rounded to N decimals.
//!
//! The output keeps the GenCAD-Code layout (`import`, `# Generating a workplane for sketch K` before each
//! `wp_sketchK = ...`, `name=expr` elsewhere) so that a model trained on it writes GenCAD-style code, but
//! with far fewer digits (`6.123233995736766e-17` → `0.0`, `0.06842105263157895` → `0.0684`).

use super::parse::{Expr, Stmt, parse};
use super::{CadError, Limits};

/// Format one number the way Python prints a float, after rounding to `decimals` places
/// (`1.0`, `-0.4141`, `0.0`; never `-0.0`, never an exponent).
pub fn format_number(v: f64, decimals: u32) -> String {
    let scale = 10f64.powi(decimals as i32);
    let mut r = (v * scale).round() / scale;
    if r == 0.0 {
        r = 0.0; // drops the sign of -0.0
    }
    let mut s = format!("{:.*}", decimals as usize, r);
    if s.contains('.') {
        while s.ends_with('0') {
            s.pop();
        }
        if s.ends_with('.') {
            s.push('0');
        }
    } else {
        s.push_str(".0");
    }
    s
}

fn expr(e: &Expr, decimals: u32, out: &mut String) {
    match e {
        Expr::Name(n, _) => out.push_str(n),
        Expr::Num(v, _) => out.push_str(&format_number(*v, decimals)),
        Expr::Bool(b, _) => out.push_str(if *b { "True" } else { "False" }),
        Expr::Tuple(items, _) => {
            out.push('(');
            for (i, it) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                expr(it, decimals, out);
            }
            if items.len() == 1 {
                out.push(',');
            }
            out.push(')');
        }
        Expr::Attr(base, name, _) => {
            expr(base, decimals, out);
            out.push('.');
            out.push_str(name);
        }
        Expr::Call(f, args, kwargs, _) => {
            expr(f, decimals, out);
            out.push('(');
            let mut first = true;
            for a in args {
                if !first {
                    out.push_str(", ");
                }
                first = false;
                expr(a, decimals, out);
            }
            for (k, v, _) in kwargs {
                if !first {
                    out.push_str(", ");
                }
                first = false;
                out.push_str(k);
                out.push('=');
                expr(v, decimals, out);
            }
            out.push(')');
        }
        Expr::Neg(inner, _) => {
            // fold a negated literal into one number (`-0.5`, and `-0.0` → `0.0`)
            if let Expr::Num(v, _) = inner.as_ref() {
                out.push_str(&format_number(-*v, decimals));
            } else {
                out.push('-');
                expr(inner, decimals, out);
            }
        }
        Expr::Bin(op, a, b, _) => {
            out.push('(');
            expr(a, decimals, out);
            out.push(' ');
            out.push(*op);
            out.push(' ');
            expr(b, decimals, out);
            out.push(')');
        }
    }
}

/// Print parsed statements in canonical GenCAD style.
pub fn print_program(stmts: &[Stmt], decimals: u32) -> String {
    let mut out = String::new();
    for s in stmts {
        match s {
            Stmt::Import(_) => out.push_str("import cadquery as cq\n"),
            Stmt::Assign(name, e, _) => {
                if let Some(k) = name.strip_prefix("wp_sketch") {
                    out.push_str("# Generating a workplane for sketch ");
                    out.push_str(k);
                    out.push('\n');
                    out.push_str(name);
                    out.push_str(" = ");
                } else {
                    out.push_str(name);
                    out.push('=');
                }
                expr(e, decimals, &mut out);
                out.push('\n');
            }
            Stmt::Expr(e) => {
                expr(e, decimals, &mut out);
                out.push('\n');
            }
        }
    }
    out
}

/// Parse `src` and print it canonically with `decimals` decimals.
pub fn canonicalize(src: &str, decimals: u32, limits: &Limits) -> Result<String, CadError> {
    Ok(print_program(&parse(src, limits)?, decimals))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(format_number(6.123233995736766e-17, 4), "0.0");
        assert_eq!(format_number(-6.1e-17, 4), "0.0");
        assert_eq!(format_number(0.06842105263157895, 4), "0.0684");
        assert_eq!(format_number(1.0, 4), "1.0");
        assert_eq!(format_number(-0.4140625, 4), "-0.4141");
        assert_eq!(format_number(12.0, 0), "12.0");
    }

    #[test]
    fn reprint_is_stable_and_executes_alike() {
        let src = "import cadquery as cq\n# Generating a workplane for sketch 0\nwp_sketch0 = cq.Workplane(cq.Plane(cq.Vector(-0.75, -0.75, 0.0), cq.Vector(1.0, 6.123233995736766e-17, 0.0), cq.Vector(0.0, 0.0, 1.0)))\nloop0=wp_sketch0.moveTo(1.5, 0.0).lineTo(1.5, 1.5).lineTo(0.0, 1.5).lineTo(0.0, 0.0).close()\nloop1=wp_sketch0.moveTo(0.5, 0.5).circle(0.1)\nsolid0=wp_sketch0.add(loop0).add(loop1).extrude(0.0625, both=True)\nsolid=solid0\n";
        let lim = Limits::default();
        let a = canonicalize(src, 4, &lim).unwrap();
        assert!(a.contains("cq.Vector(1.0, 0.0, 0.0)"), "{a}");
        assert!(a.contains("extrude(0.0625, both=True)"), "{a}");
        assert_eq!(canonicalize(&a, 4, &lim).unwrap(), a);
        let iou = crate::geom::iou(
            &crate::cad::execute(src, &lim).unwrap(),
            &crate::cad::execute(&a, &lim).unwrap(),
            crate::geom::Normalize::Raw,
        );
        assert!(iou > 0.999, "{iou}");
    }
}
