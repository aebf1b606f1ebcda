//! Reading and writing ONNX models, and cutting the UNet graph at the transformer
//! components that Token Merging wraps (ARCHITECTURE.md, "ToMe").
//!
//! * [`proto`]: the ONNX protobuf messages, from the `onnx-protobuf` crate (MPL-2.0),
//!   which carries ONNX's schema and the Rust code rust-protobuf generated from it, so
//!   this repository holds neither. It is pure Rust (no `protoc`, no C++ protobuf; its
//!   generated code pins the `protobuf` runtime to exactly 3.4.0), and rust-protobuf
//!   messages keep the fields they do not know as unknown fields and write them back:
//!   its schema is ONNX IR 10 (ONNX 1.16), and a newer model's fields (device
//!   configurations, for one) survive a read and a write. The schema is ONNX's proto3
//!   variant, so fields have no presence (`Option`) and hold their default when
//!   absent; [`encode_model`] writes the attribute values that proto3 would drop, so a
//!   model read and written has the same fields and the same size.
//! * [`attention`]: the exported attention rewritten into ONNX Runtime's fused
//!   `MultiHeadAttention`, which never holds the `N × N` score matrix.
//! * [`precision`]: the graphs rewritten to compute in float16 (`--precision fp16`).
//! * [`unet`]: which `BasicTransformerBlock`s the UNet has, found by node names.
//! * [`split`]: the cut itself, an ordered list of segment and component graphs.
//! * [`cache`]: where the cut graphs live on disk, keyed by model digest and cut set.
//!
//! This module never opens an ONNX Runtime session and never reads external weights.

pub mod attention;
pub mod cache;
pub mod geglu;
mod graph;
pub mod one_graph;
mod pattern;
pub mod precision;
pub use onnx_protobuf as proto;
pub mod split;
pub mod token_ops;
pub mod unet;
mod upsample;

use std::path::{Path, PathBuf};

use protobuf::{Message, UnknownValue};

use proto::attribute_proto::AttributeType;
use proto::{AttributeProto, GraphProto, NodeProto};

pub use attention::{
    fuse_attention, lone_attention_model, use_flash_kernel, Attention, Fusion, FLASH_DOMAIN,
    FLASH_OP,
};
pub use cache::{
    default_cache_root, prepare_split, prepare_whole, CacheStatus, SplitOptions, Whole,
};
pub use geglu::split_geglu;
pub use precision::{to_half, HalfReport, Precision};
pub use proto::ModelProto;
pub use split::{
    BlockPart, DataFile, Part, PartKind, ProbeError, ShapeProbe, SplitManifest, TensorInfo,
};
pub use unet::{transformer_blocks, BlockId, ComponentId, ComponentKind, Stage, TransformerBlock};

#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a readable ONNX model: {reason}", .path.display())]
    Parse { path: PathBuf, reason: String },
    #[error("{} has no {what}", .model.display())]
    NotFound { model: PathBuf, what: String },
    #[error("{}: cannot cut the graph at {component}: {reason}", .model.display())]
    BadCut {
        model: PathBuf,
        component: String,
        reason: String,
    },
    #[error("{}: {reason}", .model.display())]
    Unsupported { model: PathBuf, reason: String },
}

impl OnnxError {
    /// The message without the model's path, for callers that name the model themselves.
    pub fn detail(&self) -> String {
        match self {
            OnnxError::NotFound { what, .. } => format!("it has no {what}"),
            OnnxError::BadCut {
                component, reason, ..
            } => format!("cannot cut the graph at {component}: {reason}"),
            OnnxError::Unsupported { reason, .. } => reason.clone(),
            other => other.to_string(),
        }
    }
}

pub(crate) fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> OnnxError + '_ {
    move |source| OnnxError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Parses a model file. External data is not read (only its references are).
///
/// Attribute values that [`encode_model`] would otherwise leave out (see there) are
/// also kept as unknown fields, so that writing the model does not have to copy it.
pub fn read_model(path: &Path) -> Result<ModelProto, OnnxError> {
    let bytes = std::fs::read(path).map_err(io_error(path))?;
    let mut model = ModelProto::parse_from_bytes(&bytes).map_err(|e| OnnxError::Parse {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    for_each_attribute_mut(&mut model, &mut keep_value_field);
    Ok(model)
}

/// Writes a model to `path` atomically (a temporary name in the same folder, then a rename).
pub fn write_model(model: &ModelProto, path: &Path) -> Result<(), OnnxError> {
    let bytes = encode_model(model).map_err(|e| OnnxError::Parse {
        path: path.to_path_buf(),
        reason: format!("cannot encode: {e}"),
    })?;
    cache::write_atomic(path, &bytes)
}

/// Encodes a model as ONNX's own (proto2) schema has it.
///
/// `onnx-protobuf` was generated from ONNX's proto3 schema, whose encoding leaves out
/// a scalar field that holds 0, 0.0 or "". ONNX's schema is proto2, where an
/// `AttributeProto` of type INT, FLOAT or STRING carries its `i`, `f` or `s` even then
/// (ONNX's checker rejects one without), and UNet exports hold hundreds (`Concat`
/// and `Gather` at `axis` 0, `Reshape` with `allowzero` 0). Those are written as
/// unknown fields, which encode exactly as the missing field would. [`read_model`]
/// already adds them; a model built or changed in code is fixed on a copy.
pub fn encode_model(model: &ModelProto) -> protobuf::Result<Vec<u8>> {
    let mut kept = true;
    for_each_attribute(model, &mut |a| kept &= value_field_kept(a));
    if kept {
        return model.write_to_bytes();
    }
    let mut copy = model.clone();
    for_each_attribute_mut(&mut copy, &mut keep_value_field);
    copy.write_to_bytes()
}

/// `AttributeProto` field numbers of `f`, `i` and `s`.
const VALUE_FIELDS: [u32; 3] = [2, 3, 4];

/// The value field a proto3 encoding would leave out of an attribute, with its value.
fn implicit_value(a: &AttributeProto) -> Option<(u32, UnknownValue)> {
    if !a.ref_attr_name.is_empty() {
        return None; // a reference to a function's attribute holds no value
    }
    match a.type_.enum_value() {
        Ok(AttributeType::FLOAT) if a.f == 0.0 => Some((2, UnknownValue::Fixed32(a.f.to_bits()))),
        Ok(AttributeType::INT) if a.i == 0 => Some((3, UnknownValue::Varint(0))),
        Ok(AttributeType::STRING) if a.s.is_empty() => {
            Some((4, UnknownValue::LengthDelimited(Vec::new())))
        }
        _ => None,
    }
}

/// Whether the attribute's unknown fields hold exactly the value field it needs.
fn value_field_kept(a: &AttributeProto) -> bool {
    let unknown = a.special_fields.unknown_fields();
    let want = implicit_value(a);
    VALUE_FIELDS.iter().all(|&n| match &want {
        Some((m, v)) if *m == n => unknown.get(n) == Some(v.get_ref()),
        _ => unknown.get(n).is_none(),
    })
}

fn keep_value_field(a: &mut AttributeProto) {
    let want = implicit_value(a);
    let unknown = a.special_fields.mut_unknown_fields();
    for n in VALUE_FIELDS {
        unknown.remove(n);
    }
    if let Some((n, v)) = want {
        unknown.add_value(n, v);
    }
}

/// Every attribute of the model: of its graph's nodes and their subgraphs, of its
/// functions (nodes and attribute defaults) and of its training graphs.
fn for_each_attribute(model: &ModelProto, f: &mut dyn FnMut(&AttributeProto)) {
    fn graph(g: &GraphProto, f: &mut dyn FnMut(&AttributeProto)) {
        g.node.iter().for_each(|n| node(n, f));
    }
    fn node(n: &NodeProto, f: &mut dyn FnMut(&AttributeProto)) {
        n.attribute.iter().for_each(|a| attribute(a, f));
    }
    fn attribute(a: &AttributeProto, f: &mut dyn FnMut(&AttributeProto)) {
        f(a);
        a.g.as_ref()
            .into_iter()
            .chain(&a.graphs)
            .for_each(|g| graph(g, f));
    }
    model.graph.as_ref().into_iter().for_each(|g| graph(g, f));
    for t in &model.training_info {
        t.initialization
            .as_ref()
            .into_iter()
            .for_each(|g| graph(g, f));
        t.algorithm.as_ref().into_iter().for_each(|g| graph(g, f));
    }
    for func in &model.functions {
        func.node.iter().for_each(|n| node(n, f));
        func.attribute_proto.iter().for_each(|a| attribute(a, f));
    }
}

/// [`for_each_attribute`], to change them.
fn for_each_attribute_mut(model: &mut ModelProto, f: &mut dyn FnMut(&mut AttributeProto)) {
    fn graph(g: &mut GraphProto, f: &mut dyn FnMut(&mut AttributeProto)) {
        g.node.iter_mut().for_each(|n| node(n, f));
    }
    fn node(n: &mut NodeProto, f: &mut dyn FnMut(&mut AttributeProto)) {
        n.attribute.iter_mut().for_each(|a| attribute(a, f));
    }
    fn attribute(a: &mut AttributeProto, f: &mut dyn FnMut(&mut AttributeProto)) {
        f(a);
        let AttributeProto { g, graphs, .. } = a;
        g.as_mut()
            .into_iter()
            .chain(graphs)
            .for_each(|g| graph(g, f));
    }
    model.graph.as_mut().into_iter().for_each(|g| graph(g, f));
    for t in &mut model.training_info {
        t.initialization
            .as_mut()
            .into_iter()
            .for_each(|g| graph(g, f));
        t.algorithm.as_mut().into_iter().for_each(|g| graph(g, f));
    }
    for func in &mut model.functions {
        func.node.iter_mut().for_each(|n| node(n, f));
        func.attribute_proto
            .iter_mut()
            .for_each(|a| attribute(a, f));
    }
}

#[cfg(test)]
mod tests {
    use protobuf::well_known_types::empty::Empty;
    use protobuf::UnknownValueRef;

    use super::proto::{FunctionProto, TensorProto};
    use super::*;

    fn tiny_unet() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny/unet/model.onnx")
    }

    fn attribute(name: &str, kind: AttributeType) -> AttributeProto {
        AttributeProto {
            name: name.into(),
            type_: kind.into(),
            ..Default::default()
        }
    }

    /// The fields of an encoded message, each as raw wire values (a message that
    /// declares no fields keeps them all as unknown fields).
    fn wire(bytes: &[u8]) -> Empty {
        Empty::parse_from_bytes(bytes).unwrap()
    }

    /// The encoded submessages in field `number`, in order.
    fn submessages(message: &Empty, number: u32) -> Vec<Empty> {
        message
            .special_fields
            .unknown_fields()
            .iter()
            .filter(|(n, _)| *n == number)
            .map(|(_, v)| match v {
                UnknownValueRef::LengthDelimited(b) => wire(b),
                other => panic!("field {number} is {other:?}"),
            })
            .collect()
    }

    fn value(message: &Empty, number: u32) -> Option<UnknownValueRef<'_>> {
        message.special_fields.unknown_fields().get(number)
    }

    #[test]
    fn the_tiny_unet_reads_back_equal_after_a_write() {
        let original = std::fs::read(tiny_unet()).unwrap();
        let model = read_model(&tiny_unet()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.onnx");
        write_model(&model, &path).unwrap();
        let written = std::fs::read(&path).unwrap();
        // Same fields, same encodings: only the order of fields may differ.
        assert_eq!(written.len(), original.len());
        let again = read_model(&path).unwrap();
        assert!(again == model, "the model read back differs");
        assert_eq!(encode_model(&again).unwrap(), written);
    }

    #[test]
    fn attribute_values_equal_to_the_proto3_default_are_written() {
        let mut node = NodeProto {
            op_type: "Test".into(),
            ..Default::default()
        };
        let mut axis = attribute("axis", AttributeType::INT);
        axis.i = 0;
        let mut alpha = attribute("alpha", AttributeType::FLOAT);
        alpha.f = -0.0;
        let mode = attribute("mode", AttributeType::STRING);
        let mut count = attribute("count", AttributeType::INT);
        count.i = 5;
        let mut body = attribute("body", AttributeType::GRAPH);
        body.g = Some(GraphProto {
            node: vec![NodeProto {
                attribute: vec![attribute("axis", AttributeType::INT)],
                ..Default::default()
            }],
            ..Default::default()
        })
        .into();
        node.attribute = vec![axis, alpha, mode, count, body];
        let mut reference = attribute("axis", AttributeType::INT);
        reference.ref_attr_name = "axis".into();
        let model = ModelProto {
            ir_version: 10,
            graph: Some(GraphProto {
                node: vec![node],
                ..Default::default()
            })
            .into(),
            functions: vec![FunctionProto {
                node: vec![NodeProto {
                    attribute: vec![reference],
                    ..Default::default()
                }],
                attribute_proto: vec![attribute("axis", AttributeType::INT)],
                ..Default::default()
            }],
            ..Default::default()
        };
        let bytes = encode_model(&model).unwrap();

        let graph = &submessages(&wire(&bytes), 7)[0];
        let attrs = submessages(&submessages(graph, 1)[0], 5);
        assert_eq!(value(&attrs[0], 3), Some(UnknownValueRef::Varint(0)));
        assert_eq!(
            value(&attrs[1], 2),
            Some(UnknownValueRef::Fixed32((-0.0f32).to_bits()))
        );
        assert_eq!(
            value(&attrs[2], 4),
            Some(UnknownValueRef::LengthDelimited(&[]))
        );
        assert_eq!(value(&attrs[3], 3), Some(UnknownValueRef::Varint(5)));
        let inner = &submessages(&attrs[4], 6)[0];
        let inner_attr = &submessages(&submessages(inner, 1)[0], 5)[0];
        assert_eq!(value(inner_attr, 3), Some(UnknownValueRef::Varint(0)));

        let function = &submessages(&wire(&bytes), 25)[0];
        let reference = &submessages(&submessages(function, 7)[0], 5)[0];
        assert_eq!(value(reference, 3), None, "a reference holds no value");
        let default = &submessages(function, 11)[0];
        assert_eq!(value(default, 3), Some(UnknownValueRef::Varint(0)));

        // The model itself is unchanged, and a value changed after reading is not
        // shadowed by the one read.
        assert!(value_field_kept(&model.graph.node[0].attribute[3]));
        let mut again = ModelProto::parse_from_bytes(&bytes).unwrap();
        for_each_attribute_mut(&mut again, &mut keep_value_field);
        let alpha = &mut again.graph.as_mut().unwrap().node[0].attribute[1];
        assert_eq!(alpha.f.to_bits(), (-0.0f32).to_bits());
        alpha.f = 0.5;
        let bytes = encode_model(&again).unwrap();
        let reread = ModelProto::parse_from_bytes(&bytes).unwrap();
        assert_eq!(reread.graph.node[0].attribute[1].f, 0.5);
    }

    #[test]
    fn fields_newer_than_the_schema_survive_a_write() {
        // ONNX 1.18+ fields the IR 10 schema lacks: `ModelProto.configuration` (26, a
        // `DeviceConfigurationProto`: name, num_devices) and
        // `NodeProto.device_configurations` (10).
        let mut config = Empty::new();
        let unknown = config.special_fields.mut_unknown_fields();
        unknown.add_length_delimited(1, b"two".to_vec());
        unknown.add_varint(2, 2);
        let config = config.write_to_bytes().unwrap();
        let mut model = read_model(&tiny_unet()).unwrap();
        model
            .special_fields
            .mut_unknown_fields()
            .add_length_delimited(26, config.clone());
        let graph = model.graph.as_mut().unwrap();
        graph.node[0]
            .special_fields
            .mut_unknown_fields()
            .add_length_delimited(10, b"\x0a\x03two".to_vec());
        // A data type newer than the schema's enum (FLOAT4E2M1) is a plain number.
        graph.initializer.push(TensorProto {
            name: "fp4".into(),
            data_type: 23,
            dims: vec![2],
            raw_data: vec![0x21],
            ..Default::default()
        });
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.onnx");
        write_model(&model, &path).unwrap();
        let again = read_model(&path).unwrap();
        assert!(again == model, "the model read back differs");
        assert_eq!(
            again.special_fields.unknown_fields().get(26),
            Some(UnknownValueRef::LengthDelimited(&config))
        );
        assert_eq!(
            again.graph.node[0].special_fields.unknown_fields().get(10),
            Some(UnknownValueRef::LengthDelimited(b"\x0a\x03two"))
        );
        assert_eq!(again.graph.initializer.last().unwrap().data_type, 23);
    }
}
