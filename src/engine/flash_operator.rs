//! `tomex.FlashAttention`: [`crate::kernel::flash_attention`] as an ONNX Runtime custom
//! operator, for graphs rewritten with `Attention::Flash`.
//!
//! Inputs `q [B, S, H·D]`, `k`/`v [B, L, H·D]` (float32); attributes `num_heads` and
//! optionally `scale` (default `1/√D`), as `com.microsoft.MultiHeadAttention`'s 3-D form
//! without bias or masks; output `[B, S, H·D]`. The tiles run on the session's intra-op
//! thread pool.

use ort::operator::{
    BoxedKernel, ComputeContext, KernelContext, Operator, OperatorDomain, OperatorInput,
    OperatorOutput, ShapeInferenceContext,
};
use ort::value::TensorElementType;

use crate::kernel::flash_attention::{attend, Dims};
use crate::onnx::{FLASH_DOMAIN, FLASH_OP};

/// The custom operator domain holding `FlashAttention`, for `SessionBuilder::with_operators`.
pub fn flash_domain() -> ort::Result<OperatorDomain> {
    OperatorDomain::new(FLASH_DOMAIN)?.add(FlashAttention)
}

struct FlashAttention;

impl Operator for FlashAttention {
    // No `INPLACES`: the output taking the query's buffer would be safe for the tiles
    // (each reads its queries before writing the same elements) but not for Rust,
    // which would see a `&[f32]` and a `&mut [f32]` over the same memory.
    type Kernel<'attr> = BoxedKernel<'attr>;

    fn name(&self) -> &str {
        FLASH_OP
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        std::iter::repeat_with(|| OperatorInput::required(TensorElementType::Float32)).take(3)
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [OperatorOutput::required(TensorElementType::Float32)]
    }

    fn infer_shape(&self, ctx: &mut ShapeInferenceContext) -> ort::Result<()> {
        // The output has the query's shape (values are as wide as queries here).
        let query = ctx.inputs().into_iter().next();
        match query {
            Some(query) => ctx.set_output(0, &query),
            None => Err(ort::Error::new("FlashAttention has no query input")),
        }
    }

    fn create_kernel<'attr>(&self, info: &KernelContext<'attr>) -> ort::Result<BoxedKernel<'attr>> {
        let heads = info
            .get::<i64>("num_heads")
            .filter(|&h| h > 0)
            .ok_or_else(|| ort::Error::new("FlashAttention needs a positive `num_heads`"))?
            as usize;
        let scale = info.get::<f32>("scale").filter(|&s| s != 0.0);
        Ok(Box::new(move |ctx: &ComputeContext| {
            compute(ctx, heads, scale)
        }))
    }
}

fn compute(ctx: &ComputeContext, heads: usize, scale: Option<f32>) -> ort::Result<()> {
    let input = |i: usize| {
        ctx.input(i)?
            .ok_or_else(|| ort::Error::new(format!("FlashAttention input {i} is missing")))
    };
    let (q, k, v) = (input(0)?, input(1)?, input(2)?);
    let (q_shape, q) = q.try_extract_tensor::<f32>()?;
    let (k_shape, k) = k.try_extract_tensor::<f32>()?;
    let (_, v) = v.try_extract_tensor::<f32>()?;
    let dims_of = |shape: &[i64]| -> Option<(usize, usize, usize)> {
        match *shape {
            [b, n, w] if b >= 0 && n >= 0 && w >= 0 => Some((b as usize, n as usize, w as usize)),
            _ => None,
        }
    };
    let shapes_err = || {
        ort::Error::new(format!(
            "FlashAttention takes q [B, S, {heads}·D] and k, v [B, L, {heads}·D]; got q {:?}, k {:?}",
            &q_shape[..],
            &k_shape[..]
        ))
    };
    let (batch, queries, width) = dims_of(q_shape).ok_or_else(shapes_err)?;
    let (_, keys, _) = dims_of(k_shape).ok_or_else(shapes_err)?;
    if width % heads != 0 {
        return Err(shapes_err());
    }
    let dims = Dims {
        batch,
        heads,
        head_size: width / heads,
        queries,
        keys,
    };
    let scale = scale.unwrap_or(1.0 / (dims.head_size as f32).sqrt());
    let mut out = ctx
        .output(0, q_shape.to_vec())?
        .ok_or_else(|| ort::Error::new("FlashAttention has no output"))?;
    let (_, out) = out.try_extract_tensor_mut::<f32>()?;
    let mut pool_error = None;
    attend(q, k, v, out, dims, scale, |tiles, work| {
        if let Err(e) = ctx.par_for(tiles, tiles, work) {
            pool_error = Some(e);
        }
    })
    .map_err(|e| ort::Error::new(e.to_string()))?;
    pool_error.map_or(Ok(()), Err)
}
