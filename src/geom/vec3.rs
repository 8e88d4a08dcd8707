//! Small 3D vector and axis-aligned box types used by the geometry core.

use serde::{Deserialize, Serialize};

/// A 3D vector / point.
pub type V3 = [f64; 3];

pub fn add(a: V3, b: V3) -> V3 {
    [a[0] + b[0], a[1] + b[1], a[2] + b[2]]
}
pub fn sub(a: V3, b: V3) -> V3 {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}
pub fn scale(a: V3, s: f64) -> V3 {
    [a[0] * s, a[1] * s, a[2] * s]
}
pub fn dot(a: V3, b: V3) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}
pub fn cross(a: V3, b: V3) -> V3 {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}
pub fn norm(a: V3) -> f64 {
    dot(a, a).sqrt()
}
/// `a / |a|`, or `None` for a (near-)zero vector.
pub fn normalize(a: V3) -> Option<V3> {
    let n = norm(a);
    (n > 1e-12 && n.is_finite()).then(|| scale(a, 1.0 / n))
}

/// Axis-aligned bounding box `[min, max]`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Aabb {
    pub min: V3,
    pub max: V3,
}

impl Aabb {
    pub const EMPTY: Aabb = Aabb {
        min: [f64::INFINITY; 3],
        max: [f64::NEG_INFINITY; 3],
    };

    pub fn is_empty(&self) -> bool {
        (0..3).any(|i| self.min[i] > self.max[i])
    }
    pub fn add_point(&mut self, p: V3) {
        for i in 0..3 {
            self.min[i] = self.min[i].min(p[i]);
            self.max[i] = self.max[i].max(p[i]);
        }
    }
    pub fn union(&self, o: &Aabb) -> Aabb {
        let mut r = *self;
        for i in 0..3 {
            r.min[i] = r.min[i].min(o.min[i]);
            r.max[i] = r.max[i].max(o.max[i]);
        }
        r
    }
    pub fn intersection(&self, o: &Aabb) -> Aabb {
        let mut r = *self;
        for i in 0..3 {
            r.min[i] = r.min[i].max(o.min[i]);
            r.max[i] = r.max[i].min(o.max[i]);
        }
        r
    }
    pub fn center(&self) -> V3 {
        scale(add(self.min, self.max), 0.5)
    }
    pub fn extent(&self) -> V3 {
        sub(self.max, self.min)
    }
    pub fn max_extent(&self) -> f64 {
        let e = self.extent();
        e[0].max(e[1]).max(e[2])
    }
    /// `[xmin, ymin, zmin, xmax, ymax, zmax]`, the order CadQuery's reference files use.
    pub fn to_array(&self) -> [f64; 6] {
        [
            self.min[0],
            self.min[1],
            self.min[2],
            self.max[0],
            self.max[1],
            self.max[2],
        ]
    }
    /// The ray parameter range `[t0, t1]` where `o + t d` is inside the box, if any.
    pub fn ray_range(&self, o: V3, d: V3) -> Option<(f64, f64)> {
        let (mut t0, mut t1) = (f64::NEG_INFINITY, f64::INFINITY);
        for i in 0..3 {
            if d[i].abs() < 1e-300 {
                if o[i] < self.min[i] || o[i] > self.max[i] {
                    return None;
                }
            } else {
                let a = (self.min[i] - o[i]) / d[i];
                let b = (self.max[i] - o[i]) / d[i];
                t0 = t0.max(a.min(b));
                t1 = t1.min(a.max(b));
            }
        }
        (t0 <= t1).then_some((t0, t1))
    }
}
