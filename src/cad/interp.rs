//! Interpreter of parsed programs with CadQuery 2.8.0's semantics for the GenCAD-Code subset.
//!
//! Every workplane derived from one root (`cq.Workplane(...)`) shares that root's pending edges and
//! wires; `extrude` consumes all pending wires of the root (even-odd faces), whatever was `add`ed.
//! See the semantics table in `../shared/DESIGN.md`.

use std::collections::HashMap;

use super::parse::{Expr, Pos, Stmt};
use super::{CadError, FailureKind, Limits};
use crate::geom::csg::Builder;
use crate::geom::prism::POINT_TOL;
use crate::geom::{Edge2, Frame, Loop, NodeId, Op, Prism, Solid, V3};

#[derive(Clone, Debug)]
enum Value {
    Module,
    Num(f64),
    Bool(bool),
    Tuple(Vec<Value>),
    Vector(V3),
    Plane(Frame),
    Wp(Wp),
    /// `cq.<name>` not yet called.
    Ctor(&'static str),
    /// `wp.<method>` not yet called.
    Method(Box<Wp>, String),
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::Module => "module",
            Value::Num(_) => "number",
            Value::Bool(_) => "bool",
            Value::Tuple(_) => "tuple",
            Value::Vector(_) => "cq.Vector",
            Value::Plane(_) => "cq.Plane",
            Value::Wp(_) => "Workplane",
            Value::Ctor(_) => "constructor",
            Value::Method(..) => "method",
        }
    }
}

#[derive(Clone, Debug)]
struct Wp {
    root: usize,
    /// Current 2D point (from `moveTo` or the end of the last edge).
    point: Option<[f64; 2]>,
    solid: Option<NodeId>,
}

struct RootCtx {
    plane: Frame,
    pending_edges: Vec<Edge2>,
    first_point: Option<[f64; 2]>,
    pending_wires: Vec<Loop>,
}

const WP_METHODS: &[&str] = &[
    "moveTo",
    "lineTo",
    "threePointArc",
    "circle",
    "close",
    "add",
    "extrude",
    "union",
    "cut",
    "intersect",
];

struct Interp<'l> {
    limits: &'l Limits,
    env: HashMap<String, Value>,
    assigned: Vec<String>,
    roots: Vec<RootCtx>,
    csg: Builder,
    n_edges: usize,
    n_loops: usize,
    imported: bool,
}

fn err(kind: FailureKind, p: Pos, msg: impl Into<String>) -> CadError {
    CadError {
        kind,
        line: p.line,
        col: p.col,
        message: msg.into(),
    }
}

impl Interp<'_> {
    fn num(&self, v: &Value, p: Pos, what: &str) -> Result<f64, CadError> {
        match v {
            Value::Num(x) => {
                if !x.is_finite() {
                    return Err(err(
                        FailureKind::Runtime,
                        p,
                        format!("{what} is not finite ({x})"),
                    ));
                }
                if x.abs() > self.limits.max_abs_coord {
                    return Err(err(
                        FailureKind::Budget,
                        p,
                        format!(
                            "{what} = {x} exceeds the magnitude limit {}",
                            self.limits.max_abs_coord
                        ),
                    ));
                }
                Ok(*x)
            }
            other => Err(err(
                FailureKind::Runtime,
                p,
                format!("{what} must be a number, got {}", other.kind()),
            )),
        }
    }

    fn point2(&self, v: &Value, p: Pos, what: &str) -> Result<[f64; 2], CadError> {
        match v {
            Value::Tuple(items) if items.len() == 2 => {
                Ok([self.num(&items[0], p, what)?, self.num(&items[1], p, what)?])
            }
            Value::Tuple(items) => Err(err(
                FailureKind::Unsupported,
                p,
                format!(
                    "{what} must be a 2D point (x, y), got {} values",
                    items.len()
                ),
            )),
            other => Err(err(
                FailureKind::Runtime,
                p,
                format!("{what} must be a tuple (x, y), got {}", other.kind()),
            )),
        }
    }

    fn vec3(&self, v: &Value, p: Pos, what: &str) -> Result<V3, CadError> {
        match v {
            Value::Vector(x) => Ok(*x),
            Value::Tuple(items) if items.len() == 3 => Ok([
                self.num(&items[0], p, what)?,
                self.num(&items[1], p, what)?,
                self.num(&items[2], p, what)?,
            ]),
            other => Err(err(
                FailureKind::Runtime,
                p,
                format!(
                    "{what} must be a cq.Vector or (x, y, z), got {}",
                    other.kind()
                ),
            )),
        }
    }

    fn eval(&mut self, e: &Expr) -> Result<Value, CadError> {
        match e {
            Expr::Num(v, p) => {
                if !v.is_finite() {
                    return Err(err(
                        FailureKind::Runtime,
                        *p,
                        "number literal is not finite",
                    ));
                }
                Ok(Value::Num(*v))
            }
            Expr::Bool(b, _) => Ok(Value::Bool(*b)),
            Expr::Name(n, p) => {
                if n == "cq" {
                    if !self.imported {
                        return Err(err(
                            FailureKind::Runtime,
                            *p,
                            "name `cq` is used before `import cadquery as cq`",
                        ));
                    }
                    return Ok(Value::Module);
                }
                self.env.get(n).cloned().ok_or_else(|| {
                    let hint = if matches!(
                        n.as_str(),
                        "open"
                            | "exec"
                            | "eval"
                            | "getattr"
                            | "setattr"
                            | "print"
                            | "compile"
                            | "globals"
                            | "locals"
                            | "vars"
                            | "input"
                            | "show_object"
                    ) {
                        format!("builtin `{n}` is not supported")
                    } else {
                        format!("name `{n}` is not defined")
                    };
                    err(
                        if hint.starts_with("builtin") {
                            FailureKind::Unsupported
                        } else {
                            FailureKind::Runtime
                        },
                        *p,
                        hint,
                    )
                })
            }
            Expr::Tuple(items, _) => {
                if items.len() > 16 {
                    return Err(err(
                        FailureKind::Unsupported,
                        e.pos(),
                        format!("tuple of {} items is not supported", items.len()),
                    ));
                }
                Ok(Value::Tuple(
                    items
                        .iter()
                        .map(|x| self.eval(x))
                        .collect::<Result<_, _>>()?,
                ))
            }
            Expr::Neg(x, p) => {
                let v = self.eval(x)?;
                match v {
                    Value::Num(v) => Ok(Value::Num(-v)),
                    other => Err(err(
                        FailureKind::Runtime,
                        *p,
                        format!("unary minus on a {}", other.kind()),
                    )),
                }
            }
            Expr::Bin(op, a, b, p) => {
                let (x, y) = (self.eval(a)?, self.eval(b)?);
                let (Value::Num(x), Value::Num(y)) = (&x, &y) else {
                    return Err(err(
                        FailureKind::Runtime,
                        *p,
                        format!(
                            "`{op}` between {} and {} is not supported",
                            x.kind(),
                            y.kind()
                        ),
                    ));
                };
                let r = match op {
                    '+' => x + y,
                    '-' => x - y,
                    '*' => x * y,
                    '/' => {
                        if *y == 0.0 {
                            return Err(err(FailureKind::Runtime, *p, "division by zero"));
                        }
                        x / y
                    }
                    _ => unreachable!("parser only produces + - * /"),
                };
                Ok(Value::Num(r))
            }
            Expr::Attr(obj, name, p) => {
                let o = self.eval(obj)?;
                match o {
                    Value::Module => match name.as_str() {
                        "Workplane" => Ok(Value::Ctor("Workplane")),
                        "Plane" => Ok(Value::Ctor("Plane")),
                        "Vector" => Ok(Value::Ctor("Vector")),
                        _ => Err(err(
                            FailureKind::Unsupported,
                            *p,
                            format!(
                                "`cq.{name}` is not supported (supported: cq.Workplane, cq.Plane, cq.Vector)"
                            ),
                        )),
                    },
                    Value::Wp(w) => {
                        if WP_METHODS.contains(&name.as_str()) {
                            Ok(Value::Method(Box::new(w), name.clone()))
                        } else {
                            Err(err(
                                FailureKind::Unsupported,
                                *p,
                                format!(
                                    "Workplane method `{name}` is not supported (supported: {})",
                                    WP_METHODS.join(", ")
                                ),
                            ))
                        }
                    }
                    other => Err(err(
                        FailureKind::Unsupported,
                        *p,
                        format!("attribute `{name}` of a {} is not supported", other.kind()),
                    )),
                }
            }
            Expr::Call(f, args, kwargs, p) => {
                let fv = self.eval(f)?;
                let args: Vec<Value> = args
                    .iter()
                    .map(|a| self.eval(a))
                    .collect::<Result<_, _>>()?;
                let mut kw: Vec<(String, Value, Pos)> = Vec::new();
                for (k, v, kp) in kwargs {
                    kw.push((k.clone(), self.eval(v)?, *kp));
                }
                match fv {
                    Value::Ctor(c) => self.construct(c, args, kw, *p),
                    Value::Method(w, m) => self.method(*w, &m, args, kw, *p),
                    other => Err(err(
                        FailureKind::Runtime,
                        *p,
                        format!("a {} is not callable", other.kind()),
                    )),
                }
            }
        }
    }

    fn no_kwargs(kw: &[(String, Value, Pos)], what: &str) -> Result<(), CadError> {
        match kw.first() {
            Some((k, _, p)) => Err(err(
                FailureKind::Unsupported,
                *p,
                format!("keyword argument `{k}` of {what} is not supported"),
            )),
            None => Ok(()),
        }
    }

    fn arity(args: &[Value], n: usize, p: Pos, what: &str) -> Result<(), CadError> {
        if args.len() != n {
            return Err(err(
                FailureKind::Runtime,
                p,
                format!("{what} takes {n} argument(s), got {}", args.len()),
            ));
        }
        Ok(())
    }

    fn construct(
        &mut self,
        c: &str,
        args: Vec<Value>,
        kw: Vec<(String, Value, Pos)>,
        p: Pos,
    ) -> Result<Value, CadError> {
        match c {
            "Vector" => {
                Self::no_kwargs(&kw, "cq.Vector")?;
                let xs: Vec<f64> = args
                    .iter()
                    .map(|a| self.num(a, p, "cq.Vector component"))
                    .collect::<Result<_, _>>()?;
                match xs.len() {
                    2 => Ok(Value::Vector([xs[0], xs[1], 0.0])),
                    3 => Ok(Value::Vector([xs[0], xs[1], xs[2]])),
                    n => Err(err(
                        FailureKind::Runtime,
                        p,
                        format!("cq.Vector takes 2 or 3 numbers, got {n}"),
                    )),
                }
            }
            "Plane" => {
                let mut slots: [Option<Value>; 3] = [None, None, None];
                if args.len() > 3 {
                    return Err(err(
                        FailureKind::Runtime,
                        p,
                        format!("cq.Plane takes at most 3 arguments, got {}", args.len()),
                    ));
                }
                for (i, a) in args.into_iter().enumerate() {
                    slots[i] = Some(a);
                }
                for (k, v, kp) in kw {
                    let i = match k.as_str() {
                        "origin" => 0,
                        "xDir" => 1,
                        "normal" => 2,
                        _ => {
                            return Err(err(
                                FailureKind::Unsupported,
                                kp,
                                format!("keyword argument `{k}` of cq.Plane is not supported"),
                            ));
                        }
                    };
                    slots[i] = Some(v);
                }
                let origin = match &slots[0] {
                    Some(v) => self.vec3(v, p, "plane origin")?,
                    None => return Err(err(FailureKind::Runtime, p, "cq.Plane needs an origin")),
                };
                let xdir = match &slots[1] {
                    Some(v) => self.vec3(v, p, "plane xDir")?,
                    None => [1.0, 0.0, 0.0],
                };
                let normal = match &slots[2] {
                    Some(v) => self.vec3(v, p, "plane normal")?,
                    None => [0.0, 0.0, 1.0],
                };
                Frame::from_cadquery(origin, xdir, normal)
                    .map(Value::Plane)
                    .ok_or_else(|| {
                        err(
                            FailureKind::Runtime,
                            p,
                            "cq.Plane: the normal is zero or xDir is parallel to it",
                        )
                    })
            }
            "Workplane" => {
                Self::no_kwargs(&kw, "cq.Workplane")?;
                Self::arity(&args, 1, p, "cq.Workplane")?;
                let Value::Plane(plane) = args[0] else {
                    return Err(err(
                        FailureKind::Unsupported,
                        p,
                        format!("cq.Workplane needs a cq.Plane, got {}", args[0].kind()),
                    ));
                };
                if self.roots.len() >= self.limits.max_workplanes {
                    return Err(err(
                        FailureKind::Budget,
                        p,
                        format!("more than {} workplanes", self.limits.max_workplanes),
                    ));
                }
                self.roots.push(RootCtx {
                    plane,
                    pending_edges: Vec::new(),
                    first_point: None,
                    pending_wires: Vec::new(),
                });
                Ok(Value::Wp(Wp {
                    root: self.roots.len() - 1,
                    point: None,
                    solid: None,
                }))
            }
            _ => unreachable!(),
        }
    }

    fn add_edge(&mut self, w: &Wp, e: Edge2, p: Pos) -> Result<(), CadError> {
        self.n_edges += 1;
        if self.n_edges > self.limits.max_edges {
            return Err(err(
                FailureKind::Budget,
                p,
                format!("more than {} edges", self.limits.max_edges),
            ));
        }
        let ctx = &mut self.roots[w.root];
        if ctx.first_point.is_none() {
            ctx.first_point = Some(e.start());
        }
        ctx.pending_edges.push(e);
        Ok(())
    }

    fn method(
        &mut self,
        mut w: Wp,
        m: &str,
        args: Vec<Value>,
        kw: Vec<(String, Value, Pos)>,
        p: Pos,
    ) -> Result<Value, CadError> {
        if m != "extrude" {
            Self::no_kwargs(&kw, m)?;
        }
        match m {
            "moveTo" => {
                let (x, y) = match args.len() {
                    0 => (0.0, 0.0),
                    1 => (self.num(&args[0], p, "moveTo x")?, 0.0),
                    2 => (
                        self.num(&args[0], p, "moveTo x")?,
                        self.num(&args[1], p, "moveTo y")?,
                    ),
                    n => {
                        return Err(err(
                            FailureKind::Runtime,
                            p,
                            format!("moveTo takes 2 arguments, got {n}"),
                        ));
                    }
                };
                w.point = Some([x, y]);
                Ok(Value::Wp(w))
            }
            "lineTo" => {
                Self::arity(&args, 2, p, "lineTo")?;
                let b = [
                    self.num(&args[0], p, "lineTo x")?,
                    self.num(&args[1], p, "lineTo y")?,
                ];
                let a = w.point.unwrap_or([0.0, 0.0]);
                self.add_edge(&w, Edge2::Line { a, b }, p)?;
                w.point = Some(b);
                Ok(Value::Wp(w))
            }
            "threePointArc" => {
                Self::arity(&args, 2, p, "threePointArc")?;
                let p1 = self.point2(&args[0], p, "threePointArc point 1")?;
                let p2 = self.point2(&args[1], p, "threePointArc point 2")?;
                let a = w.point.unwrap_or([0.0, 0.0]);
                let e = Edge2::arc3(a, p1, p2)
                    .map_err(|e| err(FailureKind::InvalidGeometry, p, e.to_string()))?;
                self.add_edge(&w, e, p)?;
                w.point = Some(p2);
                Ok(Value::Wp(w))
            }
            "circle" => {
                Self::arity(&args, 1, p, "circle")?;
                let r = self.num(&args[0], p, "circle radius")?;
                if !(r > POINT_TOL) {
                    return Err(err(
                        FailureKind::InvalidGeometry,
                        p,
                        format!("circle radius must be positive, got {r}"),
                    ));
                }
                let c = w.point.unwrap_or([0.0, 0.0]);
                self.n_loops += 1;
                self.n_edges += 1;
                if self.n_loops > self.limits.max_loops || self.n_edges > self.limits.max_edges {
                    return Err(err(FailureKind::Budget, p, "too many loops or edges"));
                }
                self.roots[w.root].pending_wires.push(Loop {
                    edges: vec![Edge2::Circle { c, r }],
                });
                Ok(Value::Wp(w))
            }
            "close" => {
                Self::arity(&args, 0, p, "close")?;
                let ctx = &self.roots[w.root];
                let Some(first) = ctx.first_point else {
                    return Err(err(
                        FailureKind::Runtime,
                        p,
                        "close(): no edges to close (no start point)",
                    ));
                };
                let end = w.point.unwrap_or([0.0, 0.0]);
                if ((end[0] - first[0]).powi(2) + (end[1] - first[1]).powi(2)).sqrt() > 1e-6 {
                    self.add_edge(&w, Edge2::Line { a: end, b: first }, p)?;
                }
                let ctx = &mut self.roots[w.root];
                let edges = std::mem::take(&mut ctx.pending_edges);
                ctx.first_point = None;
                ctx.pending_wires.push(Loop { edges });
                self.n_loops += 1;
                if self.n_loops > self.limits.max_loops {
                    return Err(err(
                        FailureKind::Budget,
                        p,
                        format!("more than {} loops", self.limits.max_loops),
                    ));
                }
                w.point = None;
                Ok(Value::Wp(w))
            }
            "add" => {
                Self::arity(&args, 1, p, "add")?;
                match &args[0] {
                    Value::Wp(o) => {
                        // adding a workplane that carries a solid puts that solid on the stack
                        if w.solid.is_none() && o.root != w.root {
                            w.solid = o.solid;
                        }
                        Ok(Value::Wp(w))
                    }
                    other => Err(err(
                        FailureKind::Runtime,
                        p,
                        format!("add() takes a Workplane, got {}", other.kind()),
                    )),
                }
            }
            "extrude" => self.extrude(w, args, kw, p),
            "union" | "cut" | "intersect" => {
                Self::arity(&args, 1, p, m)?;
                let Value::Wp(o) = &args[0] else {
                    return Err(err(
                        FailureKind::Runtime,
                        p,
                        format!("{m}() takes a Workplane, got {}", args[0].kind()),
                    ));
                };
                let (Some(a), Some(b)) = (w.solid, o.solid) else {
                    return Err(err(
                        FailureKind::Runtime,
                        p,
                        format!("{m}(): both workplanes must hold a solid"),
                    ));
                };
                let op = match m {
                    "union" => Op::Union,
                    "cut" => Op::Cut,
                    _ => Op::Intersect,
                };
                let id = self.csg.op(op, a, b);
                if self.csg.n_nodes() > self.limits.max_nodes {
                    return Err(err(
                        FailureKind::Budget,
                        p,
                        format!("more than {} boolean nodes", self.limits.max_nodes),
                    ));
                }
                w.solid = Some(id);
                w.point = None;
                Ok(Value::Wp(w))
            }
            _ => unreachable!(),
        }
    }

    fn extrude(
        &mut self,
        mut w: Wp,
        args: Vec<Value>,
        kw: Vec<(String, Value, Pos)>,
        p: Pos,
    ) -> Result<Value, CadError> {
        let mut both = false;
        let mut dist = None;
        if args.len() > 1 {
            return Err(err(
                FailureKind::Unsupported,
                p,
                format!("extrude takes 1 positional argument, got {}", args.len()),
            ));
        }
        if let Some(a) = args.first() {
            dist = Some(self.num(a, p, "extrude distance")?);
        }
        for (k, v, kp) in kw {
            match (k.as_str(), v) {
                ("both", Value::Bool(b)) => both = b,
                ("both", other) => {
                    return Err(err(
                        FailureKind::Runtime,
                        kp,
                        format!("both= must be True or False, got {}", other.kind()),
                    ));
                }
                _ => {
                    return Err(err(
                        FailureKind::Unsupported,
                        kp,
                        format!("keyword argument `{k}` of extrude is not supported"),
                    ));
                }
            }
        }
        let Some(d) = dist else {
            return Err(err(FailureKind::Runtime, p, "extrude needs a distance"));
        };
        let ctx = &mut self.roots[w.root];
        let loops = std::mem::take(&mut ctx.pending_wires);
        if loops.is_empty() {
            return Err(err(
                FailureKind::Runtime,
                p,
                "extrude: no pending wires present (close() the loop or draw a circle first)",
            ));
        }
        let (w0, w1) = if both {
            (-d.abs(), d.abs())
        } else if d < 0.0 {
            (d, 0.0)
        } else {
            (0.0, d)
        };
        let prism = Prism::new(ctx.plane, loops, w0, w1)
            .map_err(|e| err(FailureKind::InvalidGeometry, p, e.to_string()))?;
        if self.csg.prisms.len() >= self.limits.max_prisms {
            return Err(err(
                FailureKind::Budget,
                p,
                format!("more than {} extrusions", self.limits.max_prisms),
            ));
        }
        let mut id = self.csg.prism(prism);
        if let Some(s) = w.solid {
            id = self.csg.op(Op::Union, s, id);
        }
        w.solid = Some(id);
        w.point = None;
        Ok(Value::Wp(w))
    }
}

/// Execute a parsed program and return its result solid.
pub fn run(stmts: &[Stmt], limits: &Limits) -> Result<Solid, CadError> {
    let mut it = Interp {
        limits,
        env: HashMap::new(),
        assigned: Vec::new(),
        roots: Vec::new(),
        csg: Builder::default(),
        n_edges: 0,
        n_loops: 0,
        imported: false,
    };
    let mut last_pos = Pos { line: 1, col: 1 };
    for s in stmts {
        match s {
            Stmt::Import(_) => it.imported = true,
            Stmt::Assign(name, e, p) => {
                last_pos = *p;
                if name == "cq" {
                    return Err(err(
                        FailureKind::Unsupported,
                        *p,
                        "assigning to `cq` is not supported",
                    ));
                }
                let v = it.eval(e)?;
                it.env.insert(name.clone(), v);
                it.assigned.push(name.clone());
            }
            Stmt::Expr(e) => {
                last_pos = e.pos();
                it.eval(e)?;
            }
        }
    }
    let pick = ["solid", "result", "r"]
        .iter()
        .find_map(|n| match it.env.get(*n) {
            Some(Value::Wp(w)) => Some((n.to_string(), w.clone())),
            _ => None,
        })
        .or_else(|| {
            it.assigned.iter().rev().find_map(|n| match it.env.get(n) {
                Some(Value::Wp(w)) => Some((n.clone(), w.clone())),
                _ => None,
            })
        });
    let Some((name, w)) = pick else {
        return Err(err(
            FailureKind::NoResult,
            last_pos,
            "no result: assign the final Workplane to `solid`",
        ));
    };
    let Some(id) = w.solid else {
        return Err(err(
            FailureKind::NoResult,
            last_pos,
            format!("the result `{name}` holds no solid"),
        ));
    };
    let solid = it.csg.solid(id);
    if solid.is_empty() {
        return Err(err(
            FailureKind::InvalidGeometry,
            last_pos,
            format!("the result `{name}` is empty"),
        ));
    }
    Ok(solid)
}
