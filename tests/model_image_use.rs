//! Measurement (ignored): does a trained run read the image? The code NLL of training examples with
//! their own images vs with the images of other examples; an image-blind model scores both the same.
//! `RUN=models/sft-cpu-small DATA=runs/sft-cpu/data/train cargo test --release --test model_image_use -- --ignored --nocapture`
//! (DATA: any sample folder or shard folder; `cadvlm recipe recipes/sft.toml` writes runs/sft-cpu/data).
#![cfg(feature = "model")]
use burn::backend::NdArray;
use cadvlm::eval::{load_run, load_samples, patches_tensor, Sample};
use cadvlm::model::vlm::TokenBatch;
use cadvlm::train::sft::{SftConfig, prepare_examples};
type B = NdArray<f32>;
#[test]
#[ignore = "measurement on a trained run and its data (see the module doc)"]
fn shuffled_images_change_the_code_nll() {
    let dev = Default::default();
    let run = std::path::Path::new(&std::env::var("RUN").unwrap_or("models/sft-cpu-small".into())).to_path_buf();
    let (m, c, tok) = load_run::<B>(&run, &dev).unwrap();
    let s = load_samples(std::path::Path::new(&std::env::var("DATA").unwrap_or("runs/sft-cpu/data/train".into())), Some(64)).unwrap();
    let cfg = SftConfig { decimals: 3, max_code_tokens: 480, ..Default::default() };
    let (ex, _) = prepare_examples(s, &tok, &c, &cfg).unwrap();
    let ex = &ex[..32.min(ex.len())];
    let n = ex.len();
    let mut tot = [0.0f64; 2];
    let mut ntok = 0.0;
    for chunk in (0..n).collect::<Vec<_>>().chunks(8) {
        let rows: Vec<_> = chunk.iter().map(|&i| (ex[i].prefix.clone(), ex[i].code.clone())).collect();
        let b = TokenBatch::from_rows(&rows, tok.pad);
        ntok += b.n_target_tokens() as f64;
        for (k, shift) in [0usize, 1].iter().enumerate() {
            let imgs: Vec<&Sample> = chunk.iter().map(|&i| &ex[(i + shift * 7) % n].sample).collect();
            let img = m.encode_image(patches_tensor::<B>(&imgs, &c, &dev));
            let lp: Vec<f32> = m.sequence_logprobs(img, &b).into_data().to_vec().unwrap();
            tot[k] += lp.iter().map(|&x| -x as f64).sum::<f64>();
        }
    }
    assert!(tot[0].is_finite() && tot[1].is_finite() && ntok > 0.0);
    eprintln!("n {n} nll/token true images {:.4} shuffled images {:.4}; per program {:.2} vs {:.2}", tot[0] / ntok, tot[1] / ntok, tot[0] / n as f64, tot[1] / n as f64);
}
