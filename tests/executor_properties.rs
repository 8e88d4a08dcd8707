//! Properties of the executor and the IoU that must hold for any program, and bad input that must fail cleanly.

use cadvlm::cad::{FailureKind, Limits, execute};
use cadvlm::exec::exec_program;
use cadvlm::geom::{MeasureOptions, Normalize, iou, measure};

const PLATE: &str = "import cadquery as cq
wp_sketch0 = cq.Workplane(cq.Plane(cq.Vector(-0.75, -0.5, 0.0), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))
loop0=wp_sketch0.moveTo(1.5, 0.0).lineTo(1.5, 1.0).threePointArc((1.2, 1.3), (0.9, 1.0)).lineTo(0.0, 1.0).lineTo(0.0, 0.0).close()
loop1=wp_sketch0.moveTo(0.5, 0.5).circle(0.2)
solid0=wp_sketch0.add(loop0).add(loop1).extrude(0.25)
solid=solid0
wp_sketch1 = cq.Workplane(cq.Plane(cq.Vector(0.0, 0.0, 0.25), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))
loop2=wp_sketch1.moveTo(0.3, 0.0).circle(0.3)
solid1=wp_sketch1.add(loop2).extrude(0.5)
solid=solid.union(solid1)
wp_sketch2 = cq.Workplane(cq.Plane(cq.Vector(0.0, -0.1, 0.0), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 1.0, 0.0)))
loop3=wp_sketch2.moveTo(-0.6, 0.05).lineTo(-0.4, 0.05).lineTo(-0.4, 0.2).lineTo(-0.6, 0.2).close()
solid2=wp_sketch2.add(loop3).extrude(-0.4)
solid=solid.cut(solid2)
";

fn run(src: &str) -> cadvlm::geom::Solid {
    execute(src, &Limits::default()).unwrap()
}

/// The same program with every plane origin mapped by `f` and direction vectors by `g`.
fn replace_planes(
    src: &str,
    f: impl Fn([f64; 3]) -> [f64; 3],
    g: impl Fn([f64; 3]) -> [f64; 3],
) -> String {
    let mut out = String::new();
    for line in src.lines() {
        if let Some(start) = line.find("cq.Plane(") {
            let inner = &line[start + 9..line.rfind("))").unwrap()];
            let vecs: Vec<[f64; 3]> = inner
                .split("cq.Vector(")
                .skip(1)
                .map(|v| {
                    let nums: Vec<f64> = v
                        .trim_end_matches([')', ',', ' '])
                        .split(',')
                        .map(|x| x.trim().trim_end_matches(')').parse().unwrap())
                        .collect();
                    [nums[0], nums[1], nums[2]]
                })
                .collect();
            let (o, x, n) = (f(vecs[0]), g(vecs[1]), g(vecs[2]));
            let v = |a: [f64; 3]| format!("cq.Vector({}, {}, {})", a[0], a[1], a[2]);
            out.push_str(&format!(
                "{}cq.Plane({}, {}, {}))\n",
                &line[..start],
                v(o),
                v(x),
                v(n)
            ));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[test]
fn iou_of_a_shape_with_itself_is_one_and_iou_is_symmetric() {
    let a = run(PLATE);
    let b = run(&PLATE.replace("circle(0.3)", "circle(0.35)"));
    for norm in [Normalize::Raw, Normalize::UnitCube, Normalize::Best] {
        assert!((iou(&a, &a, norm) - 1.0).abs() < 1e-9, "{norm:?}");
        let (ab, ba) = (iou(&a, &b, norm), iou(&b, &a, norm));
        assert!(ab < 0.999 && ab > 0.5, "{norm:?}: {ab}");
        assert!((ab - ba).abs() < 2e-3, "{norm:?}: {ab} vs {ba}");
    }
}

#[test]
fn volume_is_invariant_under_translation_and_rotation() {
    let opts = MeasureOptions::default();
    let v0 = measure(&run(PLATE), &opts).volume;
    let moved = replace_planes(PLATE, |o| [o[0] + 3.25, o[1] - 1.5, o[2] + 0.125], |d| d);
    assert!((measure(&run(&moved), &opts).volume - v0).abs() < 1e-9 * v0);
    // rotate everything by 90° about z: (x, y, z) -> (-y, x, z); other quadrature nodes, same answer
    let rot = |p: [f64; 3]| [-p[1], p[0], p[2]];
    let v90 = measure(&run(&replace_planes(PLATE, rot, rot)), &opts).volume;
    assert!((v90 - v0).abs() < 1e-5 * v0, "{v90} vs {v0}");
    // a generic rotation tilts every prism: converges, not exact
    let (c, s) = (0.8f64, 0.6f64);
    let rot = |p: [f64; 3]| [c * p[0] - s * p[2], p[1], s * p[0] + c * p[2]];
    let vt = measure(&run(&replace_planes(PLATE, rot, rot)), &opts).volume;
    assert!((vt - v0).abs() < 2e-3 * v0, "{vt} vs {v0}");
}

#[test]
fn unitcube_iou_is_invariant_to_uniform_scaling() {
    let a = run(PLATE);
    let b = run(&PLATE.replace("circle(0.3)", "circle(0.25)"));
    let base = iou(&a, &b, Normalize::UnitCube);
    // scale b by 2.5 about the origin: scale plane origins and every number in the sketch
    let scaled = b.transformed(
        &[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
        2.5,
        [0.0; 3],
    );
    let got = iou(&a, &scaled, Normalize::UnitCube);
    assert!((got - base).abs() < 1e-6, "{got} vs {base}");
    assert!(iou(&a, &scaled, Normalize::Raw) < base);
}

#[test]
fn exponential_dag_stays_linear() {
    let mut src = String::from(
        "import cadquery as cq\nwp = cq.Workplane(cq.Plane(cq.Vector(0, 0, 0), cq.Vector(1, 0, 0), cq.Vector(0, 0, 1)))\nsolid = wp.moveTo(0.5, 0.5).circle(0.5).extrude(1)\nother = cq.Workplane(cq.Plane(cq.Vector(0.5, 0, 0), cq.Vector(1, 0, 0), cq.Vector(0, 0, 1))).moveTo(0.5, 0.5).circle(0.5).extrude(1)\n",
    );
    for _ in 0..80 {
        src.push_str(
            "solid = solid.union(solid)\nother = other.union(solid)\nsolid = solid.union(other)\n",
        );
    }
    let (r, _) = exec_program(&src, &Limits::default(), &MeasureOptions::default());
    assert!(r.ok, "{r:?}");
    let v = r.volume.unwrap();
    // union of two unit-diameter discs with centres 0.5 apart, height 1
    let r2: f64 = 0.25;
    let d: f64 = 0.5;
    let lens_area = 2.0 * r2 * (d / 1.0).acos() - 0.5 * d * (4.0 * r2 - d * d).sqrt();
    let expect = 2.0 * std::f64::consts::PI * r2 - lens_area;
    assert!((v - expect).abs() < 1e-4 * expect, "{v} vs {expect}");
}

#[test]
fn bad_programs_fail_with_position() {
    let limits = Limits::default();
    let cases: &[(&str, FailureKind, usize)] = &[
        ("import os\n", FailureKind::Unsupported, 1),
        (
            "import cadquery as cq\nx = open('f', 'w')\n",
            FailureKind::Unsupported,
            2,
        ),
        (
            "import cadquery as cq\nx = __import__('os')\n",
            FailureKind::Unsupported,
            2,
        ),
        (
            "import cadquery as cq\nexec('1')\n",
            FailureKind::Unsupported,
            2,
        ),
        (
            "import cadquery as cq\nx = getattr(cq, 'Workplane')\n",
            FailureKind::Unsupported,
            2,
        ),
        (
            "import cadquery as cq\nw = cq.Workplane(cq.Plane(cq.Vector(0,0,0), cq.Vector(1,0,0), cq.Vector(0,0,1)))\nsolid = w.box(1, 1, 1)\n",
            FailureKind::Unsupported,
            3,
        ),
        (
            "import cadquery as cq\nfor i in range(3):\n    pass\n",
            FailureKind::Unsupported,
            2,
        ),
        (
            "import cadquery as cq\nw = cq.Workplane(cq.Plane(cq.Vector(0,0,0), cq.Vector(1,0,0), cq.Vector(0,0,1)))\nsolid = w.moveTo(0,0).lineTo(1,0).lineTo(1,1).extrude(1)\n",
            FailureKind::Runtime,
            3,
        ),
        (
            "import cadquery as cq\nw = cq.Workplane(cq.Plane(cq.Vector(0,0,0), cq.Vector(1,0,0), cq.Vector(0,0,1)))\nsolid = w.moveTo(0,0).circle(1e300).extrude(1)\n",
            FailureKind::Budget,
            3,
        ),
        (
            "import cadquery as cq\nw = cq.Workplane(cq.Plane(cq.Vector(0,0,0), cq.Vector(1,0,0), cq.Vector(0,0,1)))\nsolid = w.moveTo(0,0).threePointArc((1, 1), (2, 2)).close().extrude(1)\n",
            FailureKind::InvalidGeometry,
            3,
        ),
        (
            "import cadquery as cq\nsolid = 1e999 * 0\n",
            FailureKind::Runtime,
            2,
        ),
        ("", FailureKind::NoResult, 1),
        ("\u{0}\u{1}garbage\u{7f}", FailureKind::Syntax, 1),
    ];
    for (src, kind, line) in cases {
        let e = execute(src, &limits).unwrap_err();
        assert_eq!((e.kind, e.line), (*kind, *line), "{src:?}: {e}");
        assert!(!e.message.is_empty());
    }
    // a 1 MB program is refused before parsing
    let big = "# x\n".repeat(260_000);
    assert_eq!(
        execute(&big, &limits).unwrap_err().kind,
        FailureKind::Budget
    );
}
