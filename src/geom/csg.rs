//! Solids as a DAG of booleans over prisms, and the per-ray interval booleans that evaluate them.
//!
//! Nodes are hash-consed in creation order (children before parents), so a program like
//! `solid = solid.union(solid)` repeated 80 times stays one node, and `a = a.union(b); b = b.union(a)`
//! grows linearly: evaluating a ray visits each node once, never the 2^n leaves of the tree.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;

use super::prism::{Prism, Span};
use super::vec3::{Aabb, V3};

pub type NodeId = u32;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Op {
    Union,
    Cut,
    Intersect,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Node {
    Empty,
    /// One prism (all faces of one extrude).
    Leaf {
        prism: u32,
    },
    Op {
        op: Op,
        a: NodeId,
        b: NodeId,
    },
}

/// A CSG DAG over prisms. `root` is the node this solid denotes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Solid {
    pub prisms: Vec<Prism>,
    pub nodes: Vec<Node>,
    /// Conservative world bbox of each node (used to skip rays; exact for unions of prisms).
    pub node_bbox: Vec<Aabb>,
    pub root: NodeId,
}

/// Builds a DAG shared by every solid of one program; [`Builder::solid`] extracts the part a root needs.
#[derive(Default, Debug)]
pub struct Builder {
    pub prisms: Vec<Prism>,
    pub nodes: Vec<Node>,
    pub node_bbox: Vec<Aabb>,
    dedup: HashMap<Node, NodeId>,
    next_tag: u32,
}

impl Builder {
    fn push(&mut self, n: Node, bbox: Aabb) -> NodeId {
        if let Some(&id) = self.dedup.get(&n) {
            return id;
        }
        let id = self.nodes.len() as NodeId;
        self.nodes.push(n);
        self.node_bbox.push(bbox);
        self.dedup.insert(n, id);
        id
    }
    pub fn empty(&mut self) -> NodeId {
        self.push(Node::Empty, Aabb::EMPTY)
    }
    pub fn prism(&mut self, mut p: Prism) -> NodeId {
        p.tag_base = self.next_tag;
        self.next_tag += 2 + p.n_edges;
        let bbox = p.bbox;
        self.prisms.push(p);
        let n = Node::Leaf {
            prism: self.prisms.len() as u32 - 1,
        };
        self.push(n, bbox)
    }
    pub fn op(&mut self, op: Op, a: NodeId, b: NodeId) -> NodeId {
        let (na, nb) = (self.nodes[a as usize], self.nodes[b as usize]);
        let (ba, bb) = (self.node_bbox[a as usize], self.node_bbox[b as usize]);
        let empty = |n: Node| matches!(n, Node::Empty);
        match op {
            Op::Union => {
                if a == b || empty(nb) {
                    return a;
                }
                if empty(na) {
                    return b;
                }
                let (a, b) = (a.min(b), a.max(b)); // commutative: canonical order
                self.push(Node::Op { op, a, b }, ba.union(&bb))
            }
            Op::Intersect => {
                if a == b {
                    return a;
                }
                let bx = ba.intersection(&bb);
                if empty(na) || empty(nb) || bx.is_empty() {
                    return self.empty();
                }
                let (a, b) = (a.min(b), a.max(b));
                self.push(Node::Op { op, a, b }, bx)
            }
            Op::Cut => {
                if a == b || empty(na) {
                    return self.empty();
                }
                if empty(nb) || ba.intersection(&bb).is_empty() {
                    return a;
                }
                self.push(Node::Op { op, a, b }, ba)
            }
        }
    }
    pub fn n_nodes(&self) -> usize {
        self.nodes.len()
    }

    /// The solid denoted by `root`, keeping only the nodes and prisms it reaches.
    pub fn solid(&self, root: NodeId) -> Solid {
        let mut keep = vec![false; self.nodes.len()];
        keep[root as usize] = true;
        for i in (0..=root as usize).rev() {
            if keep[i] {
                if let Node::Op { a, b, .. } = self.nodes[i] {
                    keep[a as usize] = true;
                    keep[b as usize] = true;
                }
            }
        }
        let mut remap = vec![u32::MAX; self.nodes.len()];
        let mut s = Solid {
            prisms: Vec::new(),
            nodes: Vec::new(),
            node_bbox: Vec::new(),
            root: 0,
        };
        for i in 0..=root as usize {
            if !keep[i] {
                continue;
            }
            let n = match self.nodes[i] {
                Node::Empty => Node::Empty,
                Node::Leaf { prism } => {
                    s.prisms.push(self.prisms[prism as usize].clone());
                    Node::Leaf {
                        prism: s.prisms.len() as u32 - 1,
                    }
                }
                Node::Op { op, a, b } => Node::Op {
                    op,
                    a: remap[a as usize],
                    b: remap[b as usize],
                },
            };
            remap[i] = s.nodes.len() as u32;
            s.nodes.push(n);
            s.node_bbox.push(self.node_bbox[i]);
        }
        s.root = remap[root as usize];
        s
    }
}

/// Reusable per-thread buffers for evaluating rays.
#[derive(Default)]
pub struct RayScratch {
    node_spans: Vec<Vec<Span>>,
    crossings: Vec<(f64, u32)>,
}

impl Solid {
    pub fn is_empty(&self) -> bool {
        matches!(self.nodes[self.root as usize], Node::Empty)
    }
    /// Conservative bbox of the whole solid (exact when the DAG has no cut/intersect).
    pub fn bbox_bound(&self) -> Aabb {
        self.node_bbox[self.root as usize]
    }
    /// Whether the solid is a plain union of prisms (no cut / intersect anywhere).
    pub fn union_only(&self) -> bool {
        self.nodes.iter().all(|n| {
            !matches!(
                n,
                Node::Op {
                    op: Op::Cut | Op::Intersect,
                    ..
                }
            )
        })
    }

    /// Spans of the ray `o + t·d` inside the solid, sorted and disjoint. Returns a slice of `scratch`.
    pub fn ray_spans<'s>(&self, o: V3, d: V3, scratch: &'s mut RayScratch) -> &'s [Span] {
        let n = self.nodes.len();
        if scratch.node_spans.len() < n {
            scratch.node_spans.resize_with(n, Vec::new);
        }
        for i in 0..=self.root as usize {
            let mut cur = std::mem::take(&mut scratch.node_spans[i]);
            cur.clear();
            let hit = self.node_bbox[i].ray_range(o, d).is_some();
            if hit {
                match self.nodes[i] {
                    Node::Empty => {}
                    Node::Leaf { prism } => {
                        self.prisms[prism as usize].ray_spans(
                            o,
                            d,
                            &mut cur,
                            &mut scratch.crossings,
                        );
                    }
                    Node::Op { op, a, b } => {
                        let (sa, sb) = (
                            &scratch.node_spans[a as usize],
                            &scratch.node_spans[b as usize],
                        );
                        combine(op, sa, sb, &mut cur);
                    }
                }
            }
            scratch.node_spans[i] = cur;
        }
        &scratch.node_spans[self.root as usize]
    }

    /// The image of this solid under `x ↦ s·R·(x − c)` (`R` orthogonal, `s` > 0).
    pub fn transformed(&self, rot: &[[f64; 3]; 3], s: f64, c: V3) -> Solid {
        let prisms: Vec<Prism> = self
            .prisms
            .iter()
            .map(|p| p.transformed(rot, s, c))
            .collect();
        let mut node_bbox: Vec<Aabb> = Vec::with_capacity(self.nodes.len());
        for n in &self.nodes {
            let b = match *n {
                Node::Empty => Aabb::EMPTY,
                Node::Leaf { prism } => prisms[prism as usize].bbox,
                Node::Op {
                    op: Op::Union,
                    a,
                    b,
                } => node_bbox[a as usize].union(&node_bbox[b as usize]),
                Node::Op {
                    op: Op::Intersect,
                    a,
                    b,
                } => node_bbox[a as usize].intersection(&node_bbox[b as usize]),
                Node::Op { op: Op::Cut, a, .. } => node_bbox[a as usize],
            };
            node_bbox.push(b);
        }
        Solid {
            prisms,
            nodes: self.nodes.clone(),
            node_bbox,
            root: self.root,
        }
    }

    /// World-space unit normal of the surface with global tag `tag` at world point `p`.
    pub fn surface_normal(&self, tag: u32, p: V3) -> V3 {
        for pr in &self.prisms {
            if tag >= pr.tag_base && tag < pr.tag_base + 2 + pr.n_edges {
                return pr.normal(tag - pr.tag_base, p);
            }
        }
        [0.0, 0.0, 1.0]
    }
}

/// Boolean of two sorted, disjoint span lists.
pub fn combine(op: Op, a: &[Span], b: &[Span], out: &mut Vec<Span>) {
    match op {
        Op::Union => union(a, b, out),
        Op::Intersect => intersect(a, b, out),
        Op::Cut => cut(a, b, out),
    }
}

fn union(a: &[Span], b: &[Span], out: &mut Vec<Span>) {
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        let next = if j >= b.len() || (i < a.len() && a[i].t0 <= b[j].t0) {
            i += 1;
            a[i - 1]
        } else {
            j += 1;
            b[j - 1]
        };
        match out.last_mut() {
            Some(last) if next.t0 <= last.t1 => {
                if next.t1 > last.t1 {
                    last.t1 = next.t1;
                    last.f1 = next.f1;
                }
            }
            _ => out.push(next),
        }
    }
}

fn intersect(a: &[Span], b: &[Span], out: &mut Vec<Span>) {
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        let (x, y) = (a[i], b[j]);
        let (t0, f0) = if x.t0 >= y.t0 {
            (x.t0, x.f0)
        } else {
            (y.t0, y.f0)
        };
        let (t1, f1) = if x.t1 <= y.t1 {
            (x.t1, x.f1)
        } else {
            (y.t1, y.f1)
        };
        if t0 < t1 {
            out.push(Span { t0, t1, f0, f1 });
        }
        if x.t1 < y.t1 {
            i += 1;
        } else {
            j += 1;
        }
    }
}

fn cut(a: &[Span], b: &[Span], out: &mut Vec<Span>) {
    let mut j = 0;
    for &x in a {
        let mut cur = x;
        while j < b.len() && b[j].t1 <= cur.t0 {
            j += 1;
        }
        let mut k = j;
        let mut alive = true;
        while k < b.len() && b[k].t0 < cur.t1 {
            let y = b[k];
            if y.t0 > cur.t0 {
                out.push(Span {
                    t0: cur.t0,
                    t1: y.t0,
                    f0: cur.f0,
                    f1: y.f0,
                });
            }
            if y.t1 >= cur.t1 {
                alive = false;
                break;
            }
            cur.t0 = y.t1;
            cur.f0 = y.f1;
            k += 1;
        }
        if alive && cur.t0 < cur.t1 {
            out.push(cur);
        }
    }
}

/// Total length of a span list.
pub fn length(s: &[Span]) -> f64 {
    s.iter().map(|x| x.t1 - x.t0).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sp(v: &[(f64, f64)]) -> Vec<Span> {
        v.iter()
            .map(|&(t0, t1)| Span {
                t0,
                t1,
                f0: 0,
                f1: 0,
            })
            .collect()
    }
    fn ts(v: &[Span]) -> Vec<(f64, f64)> {
        v.iter().map(|s| (s.t0, s.t1)).collect()
    }

    #[test]
    fn interval_booleans() {
        let a = sp(&[(0.0, 2.0), (3.0, 5.0)]);
        let b = sp(&[(1.0, 3.5), (4.0, 4.5), (6.0, 7.0)]);
        let mut out = Vec::new();
        combine(Op::Union, &a, &b, &mut out);
        assert_eq!(ts(&out), vec![(0.0, 5.0), (6.0, 7.0)]);
        out.clear();
        combine(Op::Intersect, &a, &b, &mut out);
        assert_eq!(ts(&out), vec![(1.0, 2.0), (3.0, 3.5), (4.0, 4.5)]);
        out.clear();
        combine(Op::Cut, &a, &b, &mut out);
        assert_eq!(ts(&out), vec![(0.0, 1.0), (3.5, 4.0), (4.5, 5.0)]);
        out.clear();
        combine(Op::Cut, &b, &a, &mut out);
        assert_eq!(ts(&out), vec![(2.0, 3.0), (6.0, 7.0)]);
    }
}
