//! Helpers shared by the DPO and GRPO tests: a one-sketch box program, a test image with a shaded
//! rectangle, a tiny tokenizer + model config trained on such programs.

#![allow(dead_code)]

use cadvlm::data::{GENCAD_PROMPT, Sample};
use cadvlm::model::VlmConfig;
use cadvlm::model::tokenizer::{CodeTokenizer, TokenizerConfig};

pub fn program(w: f64, d: f64) -> String {
    format!(
        "import cadquery as cq\nwp_sketch0 = cq.Workplane(cq.Plane(cq.Vector(-0.5, -0.25, 0.0), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))\nloop0=wp_sketch0.moveTo({w}, 0.0).lineTo({w}, 0.25).lineTo(0.0, 0.25).lineTo(0.0, 0.0).close()\nsolid0=wp_sketch0.add(loop0).extrude({d})\nsolid=solid0\n"
    )
}

pub fn image(size: usize, shade: u8) -> Sample {
    let mut rgb = vec![255u8; size * size * 3];
    for y in size / 4..3 * size / 4 {
        for x in size / 4..size / 2 {
            let p = (y * size + x) * 3;
            rgb[p] = shade;
            rgb[p + 1] = 100;
            rgb[p + 2] = 60;
        }
    }
    Sample {
        id: format!("img{shade}"),
        prompt: GENCAD_PROMPT.into(),
        program: program(0.5, 0.25),
        rgb,
        width: size,
        height: size,
    }
}

pub fn setup() -> (CodeTokenizer, VlmConfig) {
    let corpus: Vec<String> = [0.25, 0.5, 0.75]
        .iter()
        .flat_map(|&w| [0.125, 0.25].map(|d| program(w, d)))
        .chain([GENCAD_PROMPT.to_string()])
        .collect();
    let tok = cadvlm::model::tokenizer::train(
        &corpus,
        &TokenizerConfig {
            vocab_size: 320,
            min_frequency: 2,
        },
    )
    .unwrap();
    let c = VlmConfig::named("tiny", tok.vocab_size()).unwrap();
    (tok, c)
}

pub fn code(tok: &CodeTokenizer, p: &str) -> Vec<u32> {
    let mut t = tok.encode(p).unwrap();
    t.push(tok.end);
    t
}
