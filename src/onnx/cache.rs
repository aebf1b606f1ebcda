//! Where cut graphs live, so a model is cut once per cut set, not once per run.
//!
//! Layout, one folder per model file (by digest), shared by all its cut sets:
//!
//! ```text
//! <root>/splits/<model sha256, 32 hex>/
//!     <cut key>.json                  the manifest (written last: its presence means done)
//!     <cut key>-000-segment.onnx      the parts, in execution order
//!     <cut key>-001-<component>.onnx
//!     ...
//!     <location>                      external data of the model, hard-linked
//!     tomex-embedded-weights.bin      weights that were embedded in the model, written once
//!     <whole key>-whole.json          the whole graph with fused attention: its record
//!     <whole key>-whole.onnx          and the graph (when any attention was fused)
//! ```
//!
//! Cuts and whole graphs are made with fixed-scale upsamplers sized by their skip
//! connections (see [`super::upsample`]) and with the attention rewritten into ONNX Runtime's
//! `MultiHeadAttention` (see [`super::attention`]; with `Flash`, then handed to tomex's
//! `FlashAttention`) unless `SplitOptions::attention` says `Exported`, and in float16 when `SplitOptions::precision` says `Fp16` (see
//! [`super::precision`]); the keys include both choices.
//!
//! ONNX Runtime (1.31) only reads external data from inside the folder of the model
//! file: it rejects absolute `location`s and ones that leave the folder, and it resolves
//! symbolic links before checking. So the model's data files are hard-linked into the
//! cache folder under their own `location` (no bytes copied). Where a hard link is
//! impossible (the cache on another file system) the file is copied, once per model,
//! and the manifest says so (`DataFile::copied`); put the cache on the model's file
//! system to avoid that (`SplitOptions::cache_root`).

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::attention::{fuse_attention, use_flash_kernel, Attention, Fusion};
use super::geglu::split_geglu;
use super::precision::{to_half, Precision};
use super::proto::tensor_proto::DataLocation;
use super::proto::{ModelProto, StringStringEntryProto, TensorProto};
use super::split::{finish, plan, DataFile, ShapeProbe, SplitManifest, TensorInfo, FORMAT};
use super::unet::ComponentId;
use super::upsample::upsample_to_skips;
use super::{io_error, read_model, write_model, OnnxError};
use crate::model::hex;

/// Embedded initializers at least this large move to the cache's weights file.
const EXTERNALIZE_BYTES: usize = 1024;
/// Offsets in the weights file are aligned to a page, so ONNX Runtime can map them.
const ALIGN: u64 = 4096;
const EMBEDDED_WEIGHTS: &str = "tomex-embedded-weights.bin";

/// Where to cache cuts and rewritten graphs, and how to make them.
#[derive(Clone, Debug)]
pub struct SplitOptions {
    /// The cache root; cuts go to `<cache_root>/splits/`.
    pub cache_root: PathBuf,
    /// `sha256:<hex>` of the model file when the caller knows it (e.g. from
    /// `models.lock`); otherwise the file is hashed.
    pub model_digest: Option<String>,
    /// Whether the graphs compute attention fused (the default) or as exported.
    pub attention: Attention,
    /// With `Flash`: the largest head size handed to tomex's kernel (`None`: all); the
    /// other attentions stay ONNX Runtime's (see `Body::max_head_size`).
    pub flash_max_head_size: Option<usize>,
    /// The precision the graphs compute in.
    pub precision: Precision,
}

impl Default for SplitOptions {
    fn default() -> Self {
        SplitOptions {
            cache_root: default_cache_root(),
            model_digest: None,
            attention: Attention::default(),
            flash_max_head_size: None,
            precision: Precision::default(),
        }
    }
}

/// `$XDG_CACHE_HOME/tomex`, else `~/.cache/tomex`, else a folder in the temp dir.
pub fn default_cache_root() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("tomex")
}

/// Whether [`prepare_split`] found the cut in the cache or made it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheStatus {
    Hit,
    Built,
}

/// The part of a cache key that says how attention is rewritten.
fn attention_key(options: &SplitOptions) -> String {
    match (options.attention, options.flash_max_head_size) {
        (Attention::Exported, _) => String::new(),
        (Attention::Flash, Some(max)) => format!("attention flash, heads of at most {max}\n"),
        (attention, _) => format!("attention {attention}\n"),
    }
}

/// The cut key: a digest of the cut format, the model digest, the attention, the
/// precision and the sorted cut set.
fn cut_key(model_digest: &str, options: &SplitOptions, components: &[ComponentId]) -> String {
    let mut names: Vec<String> = components.iter().map(|c| c.to_string()).collect();
    names.sort();
    names.dedup();
    let mut h = Sha256::new();
    h.update(format!("tomex split format {FORMAT}\n{model_digest}\n").as_bytes());
    h.update(attention_key(options).as_bytes());
    if options.precision != Precision::Fp32 {
        h.update(format!("precision {}\n", options.precision).as_bytes());
    }
    for n in names {
        h.update(n.as_bytes());
        h.update(b"\n");
    }
    hex(&h.finalize())[..16].to_string()
}

/// The cut of the model at `model_path` at `components`, from the cache or made now.
///
/// The model's graph is read (never its external weights); weights embedded in it are
/// written once per model to the cache folder so the parts share them. `probe` gives
/// the types and shapes of the tensors passed between parts (see [`ShapeProbe`]);
/// without it only element types are declared, which ONNX Runtime may find too little.
pub fn prepare_split(
    model_path: &Path,
    components: &[ComponentId],
    options: &SplitOptions,
    probe: Option<&mut dyn ShapeProbe>,
) -> Result<(SplitManifest, CacheStatus), OnnxError> {
    let (digest, dir) = model_folder(model_path, options)?;
    let key = cut_key(&digest, options, components);
    let manifest_path = dir.join(format!("{key}.json"));
    if let Some(manifest) = cached(&manifest_path, &dir, &digest)? {
        if manifest.probed || probe.is_none() {
            return Ok((manifest, CacheStatus::Hit));
        }
    }
    std::fs::create_dir_all(&dir).map_err(io_error(&dir))?;
    let mut model = read_model(model_path)?;
    let data_files = externalize(&mut model, model_path, &dir)?;
    rewrite(&mut model, options);
    let planned = plan(&model, model_path, components)?;
    let mut probed: HashMap<String, TensorInfo> = HashMap::new();
    if let Some(probe) = probe {
        let path = crate::fsx::tmp_path(&dir.join(format!("{key}-probe.onnx")));
        write_model(&planned.probe_model(&model), &path)?;
        let result = probe.probe(&path);
        let _ = std::fs::remove_file(&path);
        let infos = result.map_err(|reason| OnnxError::Unsupported {
            model: model_path.to_path_buf(),
            reason: format!("the runtime could not infer the shapes of the cut graph: {reason}"),
        })?;
        probed.extend(infos.into_iter().map(|t| (t.name.clone(), t)));
    }
    let mut made = finish(&model, planned, &probed, &digest)?;
    for (part, part_model) in made.manifest.parts.iter_mut().zip(&mut made.models) {
        if options.precision == Precision::Fp16 {
            to_half(part_model.graph.mut_or_insert_default());
        }
        part.file = format!("{key}-{}", part.file);
        write_model(part_model, &dir.join(&part.file))?;
    }
    made.manifest.data_files = data_files;
    made.manifest.dir = dir;
    let text = serde_json::to_string_pretty(&made.manifest).expect("manifest serializes");
    write_atomic(&manifest_path, text.as_bytes())?;
    Ok((made.manifest, CacheStatus::Built))
}

/// What [`rewrite`] did to a graph.
struct Rewritten {
    fusion: Fusion,
    geglu_splits: usize,
    upsamplers: usize,
}

/// The rewrites every graph gets (upsamplers sized by their skip connections, so any
/// multiple of 8 runs, see [`super::upsample`]) and those `attention` asks for: the
/// attention fused and the GEGLU projections split (not for `Exported`), the fused
/// attention handed to tomex's kernel (`Flash`).
fn rewrite(model: &mut ModelProto, options: &SplitOptions) -> Rewritten {
    let upsamplers = upsample_to_skips(model);
    if !options.attention.is_fused() {
        return Rewritten {
            fusion: Fusion::default(),
            geglu_splits: 0,
            upsamplers,
        };
    }
    let (mut fusion, geglu_splits) = (fuse_attention(model), split_geglu(model));
    if options.attention == Attention::Flash {
        fusion.flash = use_flash_kernel(model, options.flash_max_head_size);
    }
    Rewritten {
        fusion,
        geglu_splits,
        upsamplers,
    }
}

/// The model's digest and its cache folder.
fn model_folder(model_path: &Path, options: &SplitOptions) -> Result<(String, PathBuf), OnnxError> {
    let digest = match &options.model_digest {
        Some(d) => d.clone(),
        None => crate::model::sha256_file(model_path).map_err(io_error(model_path))?,
    };
    let model_hex: String = digest
        .trim_start_matches("sha256:")
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(32)
        .collect();
    let dir = options.cache_root.join("splits").join(&model_hex);
    Ok((digest, dir))
}

/// The whole graph the engine runs, from [`prepare_whole`].
#[derive(Clone, Debug)]
pub struct Whole {
    /// The graph file: the model's own where nothing was rewritten.
    pub path: PathBuf,
    /// What the attention rewrite did (empty with `Attention::Exported`).
    pub fusion: Fusion,
    /// Whether the record (and graph) came from the cache.
    pub status: CacheStatus,
}

/// The record of a rewritten whole graph, written after the graph.
#[derive(Serialize, Deserialize)]
struct WholeRecord {
    format: u32,
    model_digest: String,
    fusion: Fusion,
    /// The rewritten graph's file name, `None` when nothing matched.
    file: Option<String>,
    data_files: Vec<DataFile>,
}

/// The whole graph at `model_path` rewritten (see [`rewrite`]) and in the precision
/// asked for, from the cache or made now; the model's own file where no rewrite
/// applies.
pub fn prepare_whole(model_path: &Path, options: &SplitOptions) -> Result<Whole, OnnxError> {
    let (digest, dir) = model_folder(model_path, options)?;
    let key = {
        let mut h = Sha256::new();
        h.update(format!("tomex whole format {FORMAT}\n{digest}\n").as_bytes());
        h.update(attention_key(options).as_bytes());
        if options.precision != Precision::Fp32 {
            h.update(format!("precision {}\n", options.precision).as_bytes());
        }
        hex(&h.finalize())[..16].to_string()
    };
    let record_path = dir.join(format!("{key}-whole.json"));
    let whole = |record: WholeRecord, status| Whole {
        path: record
            .file
            .as_ref()
            .map_or_else(|| model_path.to_path_buf(), |f| dir.join(f)),
        fusion: record.fusion,
        status,
    };
    if let Some(mut record) = std::fs::read_to_string(&record_path)
        .ok()
        .and_then(|t| serde_json::from_str::<WholeRecord>(&t).ok())
        .filter(|r| r.format == FORMAT && r.model_digest == digest)
    {
        let file_ok = record.file.as_ref().is_none_or(|f| dir.join(f).is_file());
        if file_ok && relink(&mut record.data_files, &dir)? {
            return Ok(whole(record, CacheStatus::Hit));
        }
    }
    std::fs::create_dir_all(&dir).map_err(io_error(&dir))?;
    let mut model = read_model(model_path)?;
    let Rewritten {
        fusion,
        geglu_splits,
        upsamplers,
    } = rewrite(&mut model, options);
    if options.precision == Precision::Fp16 {
        to_half(model.graph.mut_or_insert_default());
    }
    let unchanged = fusion.fused.is_empty()
        && geglu_splits == 0
        && upsamplers == 0
        && options.precision == Precision::Fp32;
    let (file, data_files) = if unchanged {
        (None, Vec::new())
    } else {
        let data_files = externalize(&mut model, model_path, &dir)?;
        let file = format!("{key}-whole.onnx");
        write_model(&model, &dir.join(&file))?;
        (Some(file), data_files)
    };
    let record = WholeRecord {
        format: FORMAT,
        model_digest: digest,
        fusion,
        file,
        data_files,
    };
    let text = serde_json::to_string_pretty(&record).expect("record serializes");
    write_atomic(&record_path, text.as_bytes())?;
    Ok(whole(record, CacheStatus::Built))
}

/// Checks the data files a cached graph references, re-linking those whose source was
/// replaced; false when one is missing and cannot be restored.
fn relink(data_files: &mut [DataFile], dir: &Path) -> Result<bool, OnnxError> {
    for f in data_files {
        let target = dir.join(&f.location);
        match &f.source {
            None if target.is_file() => {}
            None => return Ok(false),
            Some(source) => {
                if !same_data(source, &target, f.copied) {
                    f.copied = link_or_copy(source, &target)?;
                }
            }
        }
    }
    Ok(true)
}

/// A finished cut from the cache, with its data files checked (and re-linked where the
/// model's file was replaced since); `None` when there is none to use.
fn cached(
    manifest_path: &Path,
    dir: &Path,
    digest: &str,
) -> Result<Option<SplitManifest>, OnnxError> {
    let Ok(text) = std::fs::read_to_string(manifest_path) else {
        return Ok(None);
    };
    let Ok(mut manifest) = serde_json::from_str::<SplitManifest>(&text) else {
        return Ok(None);
    };
    if manifest.format != FORMAT || manifest.model_digest != digest {
        return Ok(None);
    }
    manifest.dir = dir.to_path_buf();
    if !manifest
        .parts
        .iter()
        .all(|p| manifest.part_path(p).is_file())
    {
        return Ok(None);
    }
    if !relink(&mut manifest.data_files, dir)? {
        return Ok(None);
    }
    Ok(Some(manifest))
}

/// Whether `target` still stands for `source`: the same file (a hard link), or for a
/// copy, one of the same size written after it.
fn same_data(source: &Path, target: &Path, copied: bool) -> bool {
    let (Ok(s), Ok(t)) = (std::fs::metadata(source), std::fs::metadata(target)) else {
        return false;
    };
    if copied {
        return s.len() == t.len()
            && matches!((s.modified(), t.modified()), (Ok(a), Ok(b)) if a <= b);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        s.dev() == t.dev() && s.ino() == t.ino()
    }
    #[cfg(not(unix))]
    {
        s.len() == t.len()
    }
}

/// Hard-links `source` to `target` (through a temporary name, so a reader never sees
/// a half-made file), or copies it where linking fails. Returns whether it copied.
fn link_or_copy(source: &Path, target: &Path) -> Result<bool, OnnxError> {
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).map_err(io_error(parent))?;
    }
    let tmp = crate::fsx::tmp_path(target);
    let copied = match std::fs::hard_link(source, &tmp) {
        Ok(()) => false,
        Err(_) => {
            std::fs::copy(source, &tmp).map_err(io_error(source))?;
            true
        }
    };
    std::fs::rename(&tmp, target).map_err(io_error(target))?;
    Ok(copied)
}

/// Writes `bytes` to `path` atomically ([`crate::fsx::write_atomic`]).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), OnnxError> {
    crate::fsx::write_atomic(path, bytes).map_err(io_error(path))
}

fn external_entry<'t>(t: &'t TensorProto, key: &str) -> Option<&'t str> {
    t.external_data
        .iter()
        .find(|e| e.key == key)
        .map(|e| e.value.as_str())
}

fn is_external(t: &TensorProto) -> bool {
    t.data_location.enum_value_or_default() == DataLocation::EXTERNAL
}

/// A `location` that stays inside the model's folder (ONNX Runtime's own rule).
fn relative_location(model: &Path, tensor: &str, location: &str) -> Result<PathBuf, OnnxError> {
    let path = Path::new(location);
    let inside = !location.is_empty()
        && path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if inside {
        Ok(path.to_path_buf())
    } else {
        Err(OnnxError::Unsupported {
            model: model.to_path_buf(),
            reason: format!("initializer `{tensor}` has external data at `{location}`, outside the model's folder"),
        })
    }
}

/// Refuses an external data file that resolves (through symlinks) outside the model's
/// folder, as ONNX Runtime refuses it when it loads the model itself: linked or copied
/// into the cache it would otherwise load from anywhere.
fn inside_model(model: &Path, model_dir: &Path, data: &Path) -> Result<(), OnnxError> {
    let (Ok(folder), Ok(resolved)) = (model_dir.canonicalize(), data.canonicalize()) else {
        return Ok(()); // a missing file is reported where it is read
    };
    if resolved.starts_with(&folder) {
        return Ok(());
    }
    Err(OnnxError::Unsupported {
        model: model.to_path_buf(),
        reason: format!(
            "external data {} resolves to {}, outside the model's folder; refused, as ONNX \
             Runtime refuses it (copy the file into the model)",
            data.display(),
            resolved.display()
        ),
    })
}

/// Makes every initializer's data reachable from the cache folder: the model's external
/// data files are linked there under their own locations, and embedded weights of at
/// least [`EXTERNALIZE_BYTES`] move to one weights file (written once per model).
fn externalize(
    model: &mut ModelProto,
    model_path: &Path,
    dir: &Path,
) -> Result<Vec<DataFile>, OnnxError> {
    let model_dir = model_path.parent().unwrap_or(Path::new("."));
    let graph = model.graph.mut_or_insert_default();
    let mut locations: BTreeMap<String, PathBuf> = BTreeMap::new();
    let tensors = graph
        .initializer
        .iter_mut()
        .chain(graph.sparse_initializer.iter_mut().flat_map(|s| {
            let (values, indices) = (&mut s.values, &mut s.indices);
            values.as_mut().into_iter().chain(indices.as_mut())
        }));
    let mut embedded: Vec<&mut TensorProto> = Vec::new();
    for t in tensors {
        if is_external(t) {
            let location = external_entry(t, "location").unwrap_or("").to_string();
            let rel = relative_location(model_path, t.name.as_str(), &location)?;
            locations.insert(location, rel);
        } else if t.raw_data.len() >= EXTERNALIZE_BYTES {
            embedded.push(t);
        }
    }
    let mut files = Vec::new();
    for (location, rel) in &locations {
        let source = model_dir.join(rel);
        inside_model(model_path, model_dir, &source)?;
        let target = dir.join(rel);
        let copied = if same_data(&source, &target, false) {
            false
        } else if same_data(&source, &target, true) {
            true // copied for an earlier cut set
        } else {
            link_or_copy(&source, &target)?
        };
        files.push(DataFile {
            location: location.clone(),
            source: Some(source),
            copied,
        });
    }
    if embedded.is_empty() {
        return Ok(files);
    }
    let mut name = EMBEDDED_WEIGHTS.to_string();
    while locations.contains_key(&name) {
        name = format!("tomex-{name}");
    }
    // Lay the weights out, then write the file unless an earlier cut already did (its
    // content follows from the model digest, which names the folder).
    let mut offset = 0u64;
    let mut layout = Vec::with_capacity(embedded.len());
    for t in &embedded {
        offset = offset.div_ceil(ALIGN) * ALIGN;
        let len = t.raw_data.len() as u64;
        layout.push((offset, len));
        offset += len;
    }
    let path = dir.join(&name);
    let complete = std::fs::metadata(&path).is_ok_and(|m| m.len() == offset);
    if !complete {
        crate::fsx::write_atomic_with(&path, |file| {
            let mut w = std::io::BufWriter::new(file);
            let mut at = 0u64;
            for (t, &(off, len)) in embedded.iter().zip(&layout) {
                w.write_all(&vec![0u8; (off - at) as usize])?;
                w.write_all(&t.raw_data)?;
                at = off + len;
            }
            w.flush()
        })
        .map_err(io_error(&path))?;
    }
    for (t, (off, len)) in embedded.into_iter().zip(layout) {
        t.raw_data = Vec::new();
        t.data_location = DataLocation::EXTERNAL.into();
        t.external_data = [
            ("location", name.clone()),
            ("offset", off.to_string()),
            ("length", len.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| StringStringEntryProto {
            key: k.to_string(),
            value: v,
            ..Default::default()
        })
        .collect();
    }
    files.push(DataFile {
        location: name,
        source: None,
        copied: false,
    });
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::unet::{BlockId, ComponentKind, Stage};

    fn comp(block: usize, kind: ComponentKind) -> ComponentId {
        ComponentId::new(
            BlockId {
                stage: Stage::Down,
                block,
                attention: 0,
                transformer: 0,
                level: block,
            },
            kind,
        )
    }

    #[test]
    fn cut_key_ignores_order_and_duplicates() {
        let a = [comp(0, ComponentKind::Attn1), comp(1, ComponentKind::Ff)];
        let b = [
            comp(1, ComponentKind::Ff),
            comp(0, ComponentKind::Attn1),
            comp(1, ComponentKind::Ff),
        ];
        let fused = SplitOptions::default();
        let key = |d: &str, c: &[ComponentId]| cut_key(d, &fused, c);
        assert_eq!(key("sha256:ab", &a), key("sha256:ab", &b));
        assert_ne!(key("sha256:ab", &a), key("sha256:cd", &a));
        assert_ne!(key("sha256:ab", &a), key("sha256:ab", &a[..1]));
        let exported = SplitOptions {
            attention: Attention::Exported,
            ..SplitOptions::default()
        };
        let half = SplitOptions {
            precision: Precision::Fp16,
            ..SplitOptions::default()
        };
        let flash = |max| SplitOptions {
            attention: Attention::Flash,
            flash_max_head_size: max,
            ..SplitOptions::default()
        };
        let keys = [
            key("sha256:ab", &a),
            cut_key("sha256:ab", &exported, &a),
            cut_key("sha256:ab", &half, &a),
            cut_key("sha256:ab", &flash(None), &a),
            cut_key("sha256:ab", &flash(Some(8)), &a),
            cut_key("sha256:ab", &flash(Some(16)), &a),
        ];
        let distinct: std::collections::HashSet<_> = keys.iter().collect();
        assert_eq!(distinct.len(), keys.len(), "{keys:?}");
    }

    #[test]
    fn locations_must_stay_inside_the_model_folder() {
        let m = Path::new("m/model.onnx");
        assert!(relative_location(m, "w", "weights.pb").is_ok());
        assert!(relative_location(m, "w", "data/weights.pb").is_ok());
        assert!(relative_location(m, "w", "../weights.pb").is_err());
        assert!(relative_location(m, "w", "/abs/weights.pb").is_err());
        assert!(relative_location(m, "w", "").is_err());
    }
}
