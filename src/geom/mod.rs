//! Exact ray-interval CSG of extruded sketch profiles: prisms, booleans, volume, bbox, IoU.
//!
//! A [`Solid`] is a DAG of boolean operations over [`Prism`]s (a 2D region of lines, arcs and circles,
//! even-odd, on a plane, times an interval along the plane normal). A ray meets a prism in exactly
//! computable intervals; booleans combine interval lists per ray. Volume, IoU and rendering all use
//! that one primitive (see `../shared/DESIGN.md`, "Geometry"). The Chamfer distance samples surfaces
//! with the same rays.

pub mod chamfer;
pub mod csg;
pub mod imscore;
pub mod iou;
pub mod measure;
pub mod prism;
pub mod render;
pub mod rng;
pub mod vec3;

pub use chamfer::{ChamferError, ChamferOptions, chamfer, chamfer_with};
pub use csg::{Node, NodeId, Op, Solid};
pub use iou::{Normalize, iou};
pub use measure::{MassProps, Measure, MeasureOptions, mass_props, measure};
pub use prism::{Edge2, Frame, Loop, Prism, ProfileError};
pub use vec3::{Aabb, V3};
