//! LoRA and LyCORIS networks merged into a model's weights as they are loaded.
//!
//! A [`LoraFile`] holds one network's small factor tensors (kohya/A1111 `lora_unet_*` /
//! `lora_te*_*` names, diffusers/PEFT `unet.…lora_A/lora_B` names, older diffusers
//! `processor.to_q_lora.down/up`, LyCORIS LoHa `hada_*` and LoKr `lokr_*`). [`LoraPatches`]
//! matches the networks given for one model component against that component's weight names
//! and is attached to its [`Weights`](super::Weights): each patched weight gets
//! `multiplier · scale · delta` added when it is read, so the unmerged original exists only
//! for the one tensor being loaded, and the deltas are computed one at a time.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use super::weights::{SafetensorsFile, Weights};
use crate::{Error, Result};

/// A model component a network can patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LoraTarget {
    /// The UNet.
    Unet,
    /// The first (or only) text encoder.
    TextEncoder,
    /// SDXL's second text encoder.
    TextEncoder2,
}

impl LoraTarget {
    /// The key prefixes (kohya, diffusers) of this component's modules in a network file.
    fn prefixes(self) -> &'static [&'static str] {
        match self {
            LoraTarget::Unet => &["lora_unet_", "unet."],
            LoraTarget::TextEncoder => &["lora_te_", "lora_te1_", "text_encoder."],
            LoraTarget::TextEncoder2 => &["lora_te2_", "text_encoder_2."],
        }
    }

    /// Every target.
    pub const ALL: [LoraTarget; 3] = [
        LoraTarget::Unet,
        LoraTarget::TextEncoder,
        LoraTarget::TextEncoder2,
    ];
}

/// A network to apply and its multiplier (`--lora PATH:WEIGHT`, `<lora:name:weight>`).
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSpec {
    /// The `.safetensors` file.
    pub path: PathBuf,
    /// The multiplier (1.0 = as trained).
    pub weight: f32,
}

impl LoraSpec {
    /// Parses `PATH[:WEIGHT]` (weight 1.0 when absent; a Windows drive letter is not a weight).
    pub fn parse(arg: &str) -> Result<Self> {
        if let Some((path, weight)) = arg.rsplit_once(':') {
            if let Ok(weight) = weight.trim().parse::<f32>() {
                if !weight.is_finite() {
                    return Err(Error::invalid(
                        "lora",
                        format!("weight `{weight}` in `{arg}`"),
                    ));
                }
                return Ok(Self {
                    path: PathBuf::from(path),
                    weight,
                });
            }
            // `file.safetensors:abc`: the file exists, the weight is not a number.
            if !Path::new(arg).exists() && Path::new(path).is_file() {
                return Err(Error::invalid(
                    "lora",
                    format!("weight `{weight}` in `{arg}` is not a number"),
                ));
            }
        }
        Ok(Self {
            path: PathBuf::from(arg),
            weight: 1.0,
        })
    }

    /// Finds the network called `name` (as in `<lora:name:weight>`) in `dir`: `name` itself or
    /// `name.safetensors`, also one folder down.
    pub fn find(dir: &Path, name: &str, weight: f32) -> Result<Self> {
        let direct = [dir.join(name), dir.join(format!("{name}.safetensors"))];
        if let Some(path) = direct.iter().find(|p| p.is_file()) {
            return Ok(Self {
                path: path.clone(),
                weight,
            });
        }
        if let Ok(entries) = std::fs::read_dir(dir) {
            let mut subdirs: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_dir())
                .collect();
            subdirs.sort();
            for sub in subdirs {
                let path = sub.join(format!("{name}.safetensors"));
                if path.is_file() {
                    return Ok(Self { path, weight });
                }
            }
        }
        Err(Error::NotFound {
            what: "LoRA (from <lora:name:weight>)",
            path: dir.join(format!("{name}.safetensors")),
        })
    }
}

/// The factors of one network module.
#[derive(Debug, Clone)]
enum Factors {
    /// `up @ down` (kohya `lora_up/lora_down`, PEFT `lora_B/lora_A`).
    Lora { up: Tensor, down: Tensor },
    /// LyCORIS LoHa: `(w1a @ w1b) ⊙ (w2a @ w2b)`, optionally Tucker-decomposed (`t1`, `t2`).
    Loha {
        w1a: Tensor,
        w1b: Tensor,
        w2a: Tensor,
        w2b: Tensor,
        t1: Option<Tensor>,
        t2: Option<Tensor>,
    },
    /// LyCORIS LoKr: `kron(w1, w2)`, each given whole or as `a @ b` factors.
    Lokr { w1: Tensor, w2: Tensor },
}

/// One module of one network, with everything needed to compute its delta.
#[derive(Debug, Clone)]
struct ModulePatch {
    /// The key prefix in the network file (for messages).
    key: String,
    factors: Factors,
    /// `multiplier · alpha / rank` (or `multiplier` without alpha).
    scale: f32,
}

impl ModulePatch {
    /// The number of elements the delta has, or `None` when the factors do not combine (or
    /// their product overflows). Computed from the shapes alone, so that factors whose product
    /// would not fit the weight are refused before anything is multiplied.
    fn delta_len(&self) -> Option<usize> {
        match &self.factors {
            Factors::Lora { up, down } => {
                let rank = down.dim(0).ok()?;
                if up.dims().len() < 2 || up.elem_count() / up.dim(0).ok()?.max(1) != rank {
                    return None;
                }
                up.dim(0).ok()?.checked_mul(down.elem_count() / rank.max(1))
            }
            Factors::Loha {
                w1a,
                w1b,
                w2a,
                w2b,
                t1,
                t2,
            } => {
                let first = loha_len(w1a, w1b, t1.as_ref())?;
                let second = loha_len(w2a, w2b, t2.as_ref())?;
                (first == second).then_some(first)
            }
            Factors::Lokr { w1, w2, .. } => {
                if w1.dims().len() != 2 || w2.dims().len() < 2 {
                    return None;
                }
                w1.elem_count().checked_mul(w2.elem_count())
            }
        }
    }

    /// The delta `scale · ΔW`, reshaped to `shape` (f32, on the CPU).
    fn delta(&self, shape: &[usize]) -> Result<Tensor> {
        let delta = match &self.factors {
            Factors::Lora { up, down } => {
                let up = up.flatten_from(1)?;
                let down = down.flatten_from(1)?;
                up.matmul(&down)?
            }
            Factors::Loha {
                w1a,
                w1b,
                w2a,
                w2b,
                t1,
                t2,
            } => {
                let first = match t1 {
                    Some(t) => tucker(t, w1a, w1b)?,
                    None => w1a.matmul(&w1b.flatten_from(1)?)?,
                };
                let second = match t2 {
                    Some(t) => tucker(t, w2a, w2b)?,
                    None => w2a.matmul(&w2b.flatten_from(1)?)?,
                };
                (first.flatten_from(1)? * second.flatten_from(1)?)?
            }
            Factors::Lokr { w1, w2, .. } => kron(w1, &w2.flatten_from(1)?)?,
        };
        Ok((delta.reshape(shape)? * self.scale as f64)?)
    }
}

/// The element count of one LoHa half, `a @ b` or the Tucker rebuild from `t`, if the
/// factors' shapes combine.
fn loha_len(a: &Tensor, b: &Tensor, t: Option<&Tensor>) -> Option<usize> {
    match t {
        Some(t) => {
            let (i, j, k, l) = t.dims4().ok()?;
            let (i2, p) = a.dims2().ok()?;
            let (j2, r) = b.dims2().ok()?;
            if i != i2 || j != j2 {
                return None;
            }
            p.checked_mul(r)?.checked_mul(k)?.checked_mul(l)
        }
        None => {
            let (out, rank) = a.dims2().ok()?;
            if b.dims().len() < 2 || b.dim(0).ok()? != rank {
                return None;
            }
            out.checked_mul(b.elem_count() / rank.max(1))
        }
    }
}

/// `einsum("i j k l, j r, i p -> p r k l", t, b, a)`: LyCORIS' Tucker rebuild.
fn tucker(t: &Tensor, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (i, j, k, l) = t.dims4()?;
    let r = b.dim(1)?;
    let p = a.dim(1)?;
    // tmp[i, k, l, r] = Σ_j t[i, j, k, l] · b[j, r]
    let tmp = t
        .permute((0, 2, 3, 1))?
        .contiguous()?
        .reshape((i * k * l, j))?
        .matmul(b)?;
    // out[p, k, l, r] = Σ_i a[i, p] · tmp[i, k, l, r]
    let out = a
        .t()?
        .contiguous()?
        .matmul(&tmp.reshape((i, k * l * r))?)?
        .reshape((p, k, l, r))?;
    Ok(out.permute((0, 3, 1, 2))?.contiguous()?)
}

/// The Kronecker product of two matrices.
fn kron(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (m, n) = a.dims2()?;
    let (p, q) = b.dims2()?;
    let a = a.reshape((m, 1, n, 1))?;
    let b = b.reshape((1, p, 1, q))?;
    Ok(a.broadcast_mul(&b)?.reshape((m * p, n * q))?)
}

/// One network file, read into memory (networks are small), with A1111's short hash.
#[derive(Debug, Clone)]
pub struct LoraFile {
    path: PathBuf,
    tensors: HashMap<String, Tensor>,
}

impl LoraFile {
    /// Reads every tensor of the `.safetensors` network at `path` (as f32, on the CPU).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = SafetensorsFile::open(&path)?;
        let mut tensors = HashMap::new();
        for name in file.names() {
            let tensor = file
                .load(name, DType::F32, &Device::Cpu)?
                .expect("listed names exist");
            tensors.insert(name.to_string(), tensor);
        }
        Ok(Self { path, tensors })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The network's name as A1111 writes it: the file name without extension.
    pub fn name(&self) -> String {
        self.path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// A1111's short hash of a network: the first 12 hex digits of the SHA-256 of the
    /// safetensors data after the header (kohya's "addnet" hash).
    pub fn short_hash(&self) -> Result<String> {
        use sha2::{Digest, Sha256};
        let mut file = std::fs::File::open(&self.path).map_err(|e| Error::io(&self.path, e))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| Error::io(&self.path, e))?;
        let header = u64::from_le_bytes(bytes[..8].try_into().expect("checked by open")) as usize;
        let digest = Sha256::digest(&bytes[(8 + header).min(bytes.len())..]);
        Ok(digest.iter().take(6).map(|b| format!("{b:02x}")).collect())
    }

    /// The modules of this network that patch `target`, keyed by their flattened module name
    /// (dots as underscores, without a text encoder's `text_model_`), scaled by `weight`.
    fn modules(&self, target: LoraTarget, weight: f32) -> Result<Vec<(String, ModulePatch)>> {
        // Group keys by module: prefix-stripped module path -> (suffix -> tensor).
        let mut groups: BTreeMap<String, (String, HashMap<&'static str, &Tensor>)> =
            BTreeMap::new();
        for (key, tensor) in &self.tensors {
            let Some(rest) = target.prefixes().iter().find_map(|p| key.strip_prefix(p)) else {
                continue;
            };
            let Some((module, part)) = split_key(rest) else {
                return Err(Error::Unsupported {
                    what: "LoRA tensor",
                    value: format!("{key} in {}", self.path.display()),
                    valid: SUFFIXES.iter().map(|(s, _)| s.to_string()).collect(),
                });
            };
            let prefix_len = key.len() - rest.len();
            groups
                .entry(flatten_module(&module))
                .or_insert_with(|| (key[..prefix_len].to_string() + &module, HashMap::new()))
                .1
                .insert(part, tensor);
        }
        let mut modules = Vec::new();
        for (module, (key, parts)) in groups {
            let get = |part: &str| parts.get(part).map(|t| (*t).clone());
            let need = |part: &'static str| {
                get(part).ok_or_else(|| Error::MissingTensor {
                    name: format!("{key}.{part}"),
                    location: self.path.display().to_string(),
                })
            };
            let alpha = match get("alpha") {
                Some(a) => Some(
                    a.flatten_all()?
                        .to_vec1::<f32>()?
                        .first()
                        .copied()
                        .unwrap_or(0.0),
                ),
                None => None,
            };
            let (factors, rank) = if parts.contains_key("up") || parts.contains_key("down") {
                let down = need("down")?;
                let rank = down.dim(0)?;
                (
                    Factors::Lora {
                        up: need("up")?,
                        down,
                    },
                    Some(rank),
                )
            } else if parts.contains_key("hada_w1_a") {
                let w1b = need("hada_w1_b")?;
                let rank = w1b.dim(0)?;
                (
                    Factors::Loha {
                        w1a: need("hada_w1_a")?,
                        w1b,
                        w2a: need("hada_w2_a")?,
                        w2b: need("hada_w2_b")?,
                        t1: get("hada_t1"),
                        t2: get("hada_t2"),
                    },
                    Some(rank),
                )
            } else if parts.keys().any(|p| p.starts_with("lokr_")) {
                let product = |whole: &'static str, a: &'static str, b: &'static str| match get(
                    whole,
                ) {
                    Some(w) => Ok((w, None)),
                    None => {
                        let (a_name, b_name) = (a, b);
                        let b = need(b_name)?.flatten_from(1)?;
                        let a = need(a_name)?;
                        let rank = b.dim(0)?;
                        // The product is built here, before its size is checked against
                        // the weight: bound it first.
                        let (rows, inner) = a.dims2()?;
                        let size = rows
                            .checked_mul(b.dim(1)?)
                            .filter(|&n| n <= MAX_LOKR_FACTOR);
                        if inner != rank || size.is_none() {
                            return Err(Error::invalid(
                                    "LoRA",
                                    format!(
                                        "`{key}.{a_name}` {:?} and `{key}.{b_name}` {:?} in {} do not make a LoKr factor (at most {MAX_LOKR_FACTOR} values)",
                                        a.dims(),
                                        b.dims(),
                                        self.path.display()
                                    ),
                                ));
                        }
                        Ok::<_, Error>((a.matmul(&b)?, Some(rank)))
                    }
                };
                if parts.contains_key("lokr_t2") {
                    return Err(Error::Unsupported {
                        what: "LoKr layout",
                        value: format!("{key}.lokr_t2 (Tucker-decomposed LoKr)"),
                        valid: vec!["lokr_w1[_a/_b] with lokr_w2[_a/_b]".into()],
                    });
                }
                let (w1, rank1) = product("lokr_w1", "lokr_w1_a", "lokr_w1_b")?;
                let (w2, rank2) = product("lokr_w2", "lokr_w2_a", "lokr_w2_b")?;
                let rank = rank1.or(rank2);
                (Factors::Lokr { w1, w2 }, rank)
            } else {
                // Only an alpha: nothing to apply.
                continue;
            };
            let scale = match (alpha, rank) {
                (Some(alpha), Some(rank)) if rank > 0 => alpha / rank as f32,
                _ => 1.0,
            };
            modules.push((
                module,
                ModulePatch {
                    key,
                    factors,
                    scale: scale * weight,
                },
            ));
        }
        Ok(modules)
    }
}

/// The most values a LoKr factor built from `_a @ _b` may have (SDXL's largest layer has
/// 6.5 million weights).
const MAX_LOKR_FACTOR: usize = 1 << 26;

/// Key suffixes of a network module, and the part each names.
const SUFFIXES: &[(&str, &str)] = &[
    (".lora_down.weight", "down"),
    (".lora_up.weight", "up"),
    (".lora_A.weight", "down"),
    (".lora_B.weight", "up"),
    (".lora.down.weight", "down"),
    (".lora.up.weight", "up"),
    ("_lora.down.weight", "down"),
    ("_lora.up.weight", "up"),
    (".alpha", "alpha"),
    (".hada_w1_a", "hada_w1_a"),
    (".hada_w1_b", "hada_w1_b"),
    (".hada_w2_a", "hada_w2_a"),
    (".hada_w2_b", "hada_w2_b"),
    (".hada_t1", "hada_t1"),
    (".hada_t2", "hada_t2"),
    (".lokr_w1", "lokr_w1"),
    (".lokr_w1_a", "lokr_w1_a"),
    (".lokr_w1_b", "lokr_w1_b"),
    (".lokr_w2", "lokr_w2"),
    (".lokr_w2_a", "lokr_w2_a"),
    (".lokr_w2_b", "lokr_w2_b"),
    (".lokr_t2", "lokr_t2"),
];

/// Splits a prefix-stripped key into its module path and part; old diffusers attention
/// processor keys (`attn1.processor.to_out_lora.up.weight`) name the layer they patch
/// (`attn1.to_out.0`).
fn split_key(rest: &str) -> Option<(String, &'static str)> {
    let (module, part) = SUFFIXES
        .iter()
        .find_map(|(suffix, part)| rest.strip_suffix(suffix).map(|m| (m, *part)))?;
    if let Some((attn, layer)) = module.split_once(".processor.") {
        let layer = if layer == "to_out" { "to_out.0" } else { layer };
        return Some((format!("{attn}.{layer}"), part));
    }
    Some((module.to_string(), part))
}

/// A module path flattened as kohya writes it (dots as underscores), without the text
/// encoders' `text_model_` prefix (present in some layouts, not in others).
fn flatten_module(module: &str) -> String {
    let flat = module.replace('.', "_");
    match flat.strip_prefix("text_model_") {
        Some(rest) => rest.to_string(),
        None => flat,
    }
}

/// For kohya files that name UNet modules as the original LDM code does
/// (`input_blocks_1_1_proj_in`): each weight's LDM module, flattened, mapped to its diffusers
/// module, flattened, through the single-file tables of [`super::ldm`]. The ResNet count per
/// block is read from the weight names.
fn ldm_unet_aliases(weight_names: &[&str]) -> HashMap<String, String> {
    let layers_per_block = weight_names
        .iter()
        .filter_map(|n| n.strip_prefix("down_blocks.0.resnets."))
        .filter_map(|rest| rest.split('.').next()?.parse::<usize>().ok())
        .max()
        .map_or(2, |last| last + 1);
    let mut aliases = HashMap::new();
    for name in weight_names {
        let Some(module) = name.strip_suffix(".weight") else {
            continue;
        };
        for source in super::ldm::unet_sources(name, layers_per_block) {
            if let Some(ldm_module) = source.name.strip_suffix(".weight") {
                aliases.insert(flatten_module(ldm_module), flatten_module(module));
            }
        }
    }
    aliases
}

/// The networks that patch one model component, keyed by the flattened names of the modules
/// they patch. Attach to the component's weights with
/// [`Weights::with_lora`](super::Weights::with_lora).
#[derive(Debug, Clone, Default)]
pub struct LoraPatches {
    by_module: HashMap<String, Vec<ModulePatch>>,
}

/// What matching networks against a component found.
#[derive(Debug, Clone, Default)]
pub struct LoraMatch {
    /// The patches to attach.
    pub patches: LoraPatches,
    /// Network modules (file key prefixes) that name no weight of the component: A1111 warns
    /// about these and goes on.
    pub unmatched: Vec<String>,
}

impl LoraPatches {
    /// Matches `networks` (each with its multiplier) against a component whose weights hold
    /// the tensors `weight_names` and whose shapes `shape_of` gives. A delta whose size does
    /// not fit the weight it names is an error naming both.
    pub fn build<'a>(
        networks: &[(LoraFile, f32)],
        target: LoraTarget,
        weight_names: impl IntoIterator<Item = &'a str>,
        shape_of: impl Fn(&str) -> Option<Vec<usize>>,
    ) -> Result<LoraMatch> {
        let weight_names: Vec<&str> = weight_names.into_iter().collect();
        let mut modules: HashMap<String, String> = HashMap::new();
        for name in &weight_names {
            if let Some(module) = name.strip_suffix(".weight") {
                modules.insert(flatten_module(module), name.to_string());
            }
        }
        let aliases = match target {
            LoraTarget::Unet => ldm_unet_aliases(&weight_names),
            _ => HashMap::new(),
        };
        let mut result = LoraMatch::default();
        for (network, weight) in networks {
            for (module, patch) in network.modules(target, *weight)? {
                let module = match aliases.get(&module) {
                    Some(diffusers) if !modules.contains_key(&module) => diffusers.clone(),
                    _ => module,
                };
                let Some(name) = modules.get(&module) else {
                    result.unmatched.push(patch.key.clone());
                    continue;
                };
                let shape = shape_of(name).unwrap_or_default();
                let numel = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
                if patch.delta_len().is_none() || patch.delta_len() != numel {
                    let numel = numel.unwrap_or(usize::MAX);
                    return Err(Error::invalid(
                        "LoRA",
                        format!(
                            "`{}` in {} does not fit `{name}` of shape {shape:?} ({} values against {numel})",
                            patch.key,
                            network.path.display(),
                            patch.delta_len().map_or("a mismatched set of".to_string(), |n| n.to_string()),
                        ),
                    ));
                }
                result
                    .patches
                    .by_module
                    .entry(module)
                    .or_default()
                    .push(patch);
            }
        }
        Ok(result)
    }

    /// Whether no module is patched.
    pub fn is_empty(&self) -> bool {
        self.by_module.is_empty()
    }

    /// The number of patched modules.
    pub fn len(&self) -> usize {
        self.by_module.len()
    }

    /// Whether the tensor `name` gets a delta.
    pub fn patches(&self, name: &str) -> bool {
        self.lookup(name).is_some()
    }

    fn lookup(&self, name: &str) -> Option<&Vec<ModulePatch>> {
        let module = name.strip_suffix(".weight")?;
        self.by_module.get(&flatten_module(module))
    }

    /// `tensor` (the weight `name` as stored) with every delta for it added, computed in f32
    /// and returned in `dtype` on `device`.
    pub fn apply(
        &self,
        name: &str,
        tensor: Tensor,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let Some(patches) = self.lookup(name) else {
            return Ok(tensor.to_dtype(dtype)?);
        };
        let shape = tensor.dims().to_vec();
        let mut merged = tensor.to_dtype(DType::F32)?;
        for patch in patches {
            merged = (merged + patch.delta(&shape)?.to_device(device)?)?;
        }
        Ok(merged.to_dtype(dtype)?)
    }
}

/// The `<lora:name[:weight]>` tags of an A1111 prompt, in order, as (name, weight); the
/// weight is 1 when absent or empty. A weight that is not a finite number is an error naming
/// the tag. (Removing the tags from the text is the prompt parser's job.)
pub fn lora_tags(prompt: &str) -> Result<Vec<(String, f32)>> {
    let tag = regex::Regex::new(r"<(?:lora|lyco):([^:>]+)(?::([^:>]*))?(?::[^>]*)?>")
        .expect("valid regex");
    tag.captures_iter(prompt)
        .map(|c| {
            let weight = match c.get(2).map(|w| w.as_str().trim()) {
                None | Some("") => 1.0,
                Some(w) => w
                    .parse::<f32>()
                    .ok()
                    .filter(|w| w.is_finite())
                    .ok_or_else(|| {
                        Error::invalid(
                            "LoRA tag",
                            format!("`{}`: weight `{w}` is not a number", &c[0]),
                        )
                    })?,
            };
            Ok((c[1].trim().to_string(), weight))
        })
        .collect()
}

/// Opens the networks of `specs` (each with its multiplier).
pub fn open_networks(specs: &[LoraSpec]) -> Result<Vec<(LoraFile, f32)>> {
    specs
        .iter()
        .map(|spec| Ok((LoraFile::open(&spec.path)?, spec.weight)))
        .collect()
}

/// Attaches the parts of `networks` that patch `target` to that component's `weights`.
/// Returns the weights and the network modules that named no weight of the component
/// (A1111 warns about those and goes on).
pub fn attach_networks(
    weights: Weights,
    networks: &[(LoraFile, f32)],
    target: LoraTarget,
) -> Result<(Weights, Vec<String>)> {
    if networks.is_empty() {
        return Ok((weights, Vec::new()));
    }
    let found = LoraPatches::build(networks, target, weights.names(), |n| weights.shape(n))?;
    Ok((weights.with_lora(found.patches), found.unmatched))
}

impl LoraFile {
    /// Keys that belong to no model component this library knows (neither kohya's
    /// `lora_unet_`/`lora_te*_` nor diffusers' `unet.`/`text_encoder*.` prefixes).
    pub fn unclaimed_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self
            .tensors
            .keys()
            .filter(|k| {
                !LoraTarget::ALL
                    .iter()
                    .any(|t| t.prefixes().iter().any(|p| k.starts_with(p)))
            })
            .cloned()
            .collect();
        keys.sort();
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_a_path_and_an_optional_weight() {
        let spec = LoraSpec::parse("a/b.safetensors:0.5").unwrap();
        assert_eq!(spec.path, PathBuf::from("a/b.safetensors"));
        assert_eq!(spec.weight, 0.5);
        assert_eq!(LoraSpec::parse("c.safetensors").unwrap().weight, 1.0);
        assert_eq!(
            LoraSpec::parse("C:\\x.safetensors").unwrap().path,
            PathBuf::from("C:\\x.safetensors")
        );
    }

    #[test]
    fn keys_split_into_modules_in_every_layout() {
        assert_eq!(
            split_key("down_blocks_0_attentions_0_proj_in.lora_down.weight"),
            Some(("down_blocks_0_attentions_0_proj_in".into(), "down"))
        );
        assert_eq!(
            split_key(
                "mid_block.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora.up.weight"
            ),
            Some((
                "mid_block.attentions.0.transformer_blocks.0.attn1.to_out.0".into(),
                "up"
            ))
        );
        assert_eq!(
            flatten_module("text_model.encoder.layers.0.self_attn.q_proj"),
            "encoder_layers_0_self_attn_q_proj"
        );
        assert_eq!(split_key("x.dora_scale"), None);
    }

    #[test]
    fn prompt_tags_give_names_and_weights() {
        assert_eq!(
            lora_tags("a cat <lora:style_a:0.6>, <lora:b> and <lyco:c:1.2:0.5>").unwrap(),
            vec![
                ("style_a".into(), 0.6),
                ("b".into(), 1.0),
                ("c".into(), 1.2)
            ]
        );
        for bad in [
            "<lora:b:abc>",
            "<lora:b:1.2.3>",
            "<lora:b:inf>",
            "<lora:b:NaN>",
        ] {
            let err = lora_tags(&format!("a cat {bad}")).unwrap_err().to_string();
            assert!(err.contains(bad) && err.contains("not a number"), "{err}");
        }
    }

    #[test]
    fn kron_matches_the_definition() {
        let a = Tensor::new(&[[1f32, 2.], [3., 4.]], &Device::Cpu).unwrap();
        let b = Tensor::new(&[[0f32, 5.]], &Device::Cpu).unwrap();
        let k = kron(&a, &b).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(k, vec![vec![0., 5., 0., 10.], vec![0., 15., 0., 20.]]);
    }
}
