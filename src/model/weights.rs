//! Safetensors save/load of any burn module, keyed by module path (`model.layers.0.self_attn.q_proj.weight`):
//! the struct field names are the checkpoint keys, so no mapping table exists to drift.

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use safetensors::tensor::{Dtype, TensorView};

use super::ModelError;

/// Every float parameter: key → (shape, values).
pub type Named = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

struct Collect {
    path: Vec<String>,
    out: Named,
}

impl<B: Backend> ModuleVisitor<B> for Collect {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let t = param.val();
        let shape = t.dims().to_vec();
        let data = t
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .expect("f32 data");
        self.out.insert(self.path.join("."), (shape, data));
    }
}

/// All float parameters of `module` by key.
pub fn named_params<B: Backend, M: Module<B>>(module: &M) -> Named {
    let mut c = Collect {
        path: Vec::new(),
        out: Named::new(),
    };
    module.visit(&mut c);
    c.out
}

struct Assign<'a> {
    path: Vec<String>,
    src: &'a Named,
    prefix: &'a str,
    errors: Vec<String>,
    used: usize,
}

impl<B: Backend> ModuleMapper<B> for Assign<'_> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, t, mapper) = param.consume();
        let key = format!("{}{}", self.prefix, self.path.join("."));
        let t = match self.src.get(&key) {
            None => {
                self.errors.push(format!("missing tensor {key}"));
                t
            }
            Some((shape, _)) if shape.as_slice() != t.dims().as_slice() => {
                self.errors.push(format!(
                    "tensor {key} has shape {shape:?}, the model wants {:?}",
                    t.dims()
                ));
                t
            }
            Some((shape, v)) => {
                self.used += 1;
                let grad = t.is_require_grad();
                let n = Tensor::<B, D>::from_data(
                    TensorData::new(v.clone(), shape.clone()),
                    &t.device(),
                );
                if grad { n.require_grad() } else { n }
            }
        };
        Param::from_mapped_value(id, t, mapper)
    }
}

/// Replace `module`'s parameters by the tensors of `src` whose keys are `prefix` + the module path.
pub fn assign_params<B: Backend, M: Module<B>>(
    module: M,
    src: &Named,
    prefix: &str,
) -> Result<M, String> {
    let mut a = Assign {
        path: Vec::new(),
        src,
        prefix,
        errors: Vec::new(),
        used: 0,
    };
    let m = module.map(&mut a);
    if a.errors.is_empty() {
        Ok(m)
    } else {
        Err(a.errors.join("; "))
    }
}

fn werr(path: &Path, msg: impl std::fmt::Display) -> ModelError {
    ModelError::Weights {
        path: path.display().to_string(),
        msg: msg.to_string(),
    }
}

/// Write tensors as one safetensors file, atomically (tmp + rename), with string metadata.
pub fn write_safetensors(
    path: &Path,
    tensors: &Named,
    metadata: BTreeMap<String, String>,
) -> Result<(), ModelError> {
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|(k, (shape, v))| {
            (
                k.clone(),
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                shape.clone(),
            )
        })
        .collect();
    let views: Vec<(String, TensorView)> = bytes
        .iter()
        .map(|(k, b, s)| {
            Ok((
                k.clone(),
                TensorView::new(Dtype::F32, s.clone(), b).map_err(|e| werr(path, e))?,
            ))
        })
        .collect::<Result<_, ModelError>>()?;
    let meta: std::collections::HashMap<String, String> = metadata.into_iter().collect();
    let data = safetensors::serialize(views, Some(meta)).map_err(|e| werr(path, e))?;
    let tmp = path.with_extension("safetensors.tmp");
    std::fs::write(&tmp, data).map_err(|e| werr(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| werr(path, e))
}

/// Read every tensor (F32, or F16/BF16 widened) of a safetensors file.
pub fn read_safetensors(path: &Path) -> Result<Named, ModelError> {
    let bytes = std::fs::read(path).map_err(|e| werr(path, e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| werr(path, e))?;
    let mut out = Named::new();
    for (name, view) in st.tensors() {
        let d = view.data();
        let v: Vec<f32> = match view.dtype() {
            Dtype::F32 => d
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::BF16 => d
                .chunks_exact(2)
                .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16))
                .collect(),
            other => {
                return Err(werr(
                    path,
                    format!("tensor {name}: dtype {other:?} is not supported (F32, BF16)"),
                ));
            }
        };
        out.insert(name, (view.shape().to_vec(), v));
    }
    Ok(out)
}

/// Save `module`'s parameters to `path`.
pub fn save_module<B: Backend, M: Module<B>>(module: &M, path: &Path) -> Result<(), ModelError> {
    write_safetensors(
        path,
        &named_params(module),
        BTreeMap::from([("format".to_string(), "pt".to_string())]),
    )
}

/// Load `module`'s parameters from `path` (every parameter must be present with its shape).
pub fn load_module<B: Backend, M: Module<B>>(module: M, path: &Path) -> Result<M, ModelError> {
    let src = read_safetensors(path)?;
    assign_params(module, &src, "").map_err(|e| werr(path, e))
}
