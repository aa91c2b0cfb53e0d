//! Embedding checks (docs/contract.md, "Embeddings"), run only when the manifest declares
//! `embeddings`: the same input gives the same vector, of `embedding_length` values (one
//! per token for pooling `none`), of unit norm when asked, whatever else is in the batch;
//! bad requests are errors, never crashes. A backend that declares the capability but
//! answers `Unsupported` for this particular model is reported as a skip naming why.

use super::ModelCtx;
use crate::{
    outcome::{ensure, fail, skip, Failure, Outcome},
    recorder::Recorder,
};
use llmlocal::api::{capability, pooling, EmbedRequest, ErrorKind};
use std::sync::Arc;

/// The checks this module runs, in order (for the skip rows when the model did not load).
pub const CHECKS: &[&str] = &[
    "embeddings deterministic",
    "embeddings dimension",
    "embeddings normalized",
    "embeddings batch invariant",
    "embeddings bad requests",
];

/// Texts embedded by the checks: different lengths, so a batch mixes sequence sizes.
const TEXTS: [&str; 3] = [
    "Once upon a time",
    "The cat sat on the mat.",
    "A little girl went to the park with her mom and saw a big red ball",
];

/// How far a vector embedded in a batch may be from the same input embedded alone:
/// `|a - b| / |a|` (L2). Different batch shapes may take different kernels in f32.
const BATCH_TOLERANCE: f64 = 1e-4;

/// How far from 1 a normalised vector's norm may be (f32 rounding).
const NORM_TOLERANCE: f64 = 1e-4;

/// A check body of this module.
type Check = fn(&ModelCtx) -> Outcome;

pub fn run(rec: &mut Recorder, l: Option<&str>, ctx: &Arc<ModelCtx>) {
    let checks: [(&str, Check); 5] = [
        (CHECKS[0], deterministic),
        (CHECKS[1], dimension),
        (CHECKS[2], normalized),
        (CHECKS[3], batch_invariant),
        (CHECKS[4], bad_requests),
    ];
    for (name, check) in checks {
        let ctx = Arc::clone(ctx);
        rec.check(l, name, move || {
            require(&ctx)?;
            check(&ctx)
        });
    }
}

fn require(ctx: &ModelCtx) -> Result<(), Failure> {
    if ctx.model.has_capability(capability::EMBEDDINGS) {
        Ok(())
    } else {
        Err(skip("the manifest does not declare `embeddings`"))
    }
}

/// The checks' inputs, tokenized with BOS as the host does.
fn inputs(ctx: &ModelCtx) -> Result<Vec<Vec<u32>>, Failure> {
    TEXTS
        .iter()
        .map(|t| Ok(ctx.model.tokenize(t, true, false)?))
        .collect()
}

/// Embeds, turning `Unsupported` (this model, not the backend) into a skip.
fn embed(ctx: &ModelCtx, request: EmbedRequest) -> Result<Vec<Vec<f32>>, Failure> {
    match ctx.model.embed(request) {
        Ok(vectors) => Ok(vectors),
        Err(e) if e.kind() == ErrorKind::Unsupported => Err(skip(format!(
            "the backend does not embed with this model: {e}"
        ))),
        Err(e) => Err(e.into()),
    }
}

fn request(inputs: Vec<Vec<u32>>, pooling: &str, normalize: bool) -> EmbedRequest {
    let mut r = EmbedRequest::new(inputs);
    r.pooling = pooling.into();
    r.normalize = normalize;
    r
}

/// `value <= limit`, false for NaN (a NaN distance fails the check).
fn within(value: f64, limit: f64) -> bool {
    value <= limit
}

/// `value > 0`, false for NaN.
fn is_positive(value: f64) -> bool {
    value > 0.0
}

fn norm(v: &[f32]) -> f64 {
    v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt()
}

/// `|a - b| / |a|`, or the absolute distance when `a` is zero.
pub fn relative_distance(a: &[f32], b: &[f32]) -> f64 {
    let diff: Vec<f32> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    let scale = norm(a);
    if scale > 0.0 {
        norm(&diff) / scale
    } else {
        norm(&diff)
    }
}

/// Check "embeddings deterministic": the same request twice gives bit-identical vectors.
fn deterministic(ctx: &ModelCtx) -> Outcome {
    let input = inputs(ctx)?.swap_remove(0);
    let first = embed(ctx, request(vec![input.clone()], "", false))?;
    let second = embed(ctx, request(vec![input], "", false))?;
    ensure!(
        first == second,
        "the same input embedded twice differs (distance {:.3e})",
        relative_distance(&first[0], &second[0])
    );
    ensure!(
        first[0].iter().all(|x| x.is_finite()),
        "the embedding holds NaN or infinite values"
    );
    ensure!(is_positive(norm(&first[0])), "the embedding is all zeros");
    Ok(format!("{} values, identical twice", first[0].len()))
}

/// Check "embeddings dimension": one vector per input, `embedding_length` values each
/// (pooled), `tokens x embedding_length` with pooling `none`.
fn dimension(ctx: &ModelCtx) -> Outcome {
    let dim = ctx.meta.embedding_length as usize;
    ensure!(dim > 0, "the metadata's embedding_length is 0");
    let inputs = inputs(ctx)?;
    let pooled = embed(ctx, request(inputs.clone(), "", false))?;
    ensure!(
        pooled.len() == inputs.len(),
        "{} inputs gave {} vectors",
        inputs.len(),
        pooled.len()
    );
    for (i, v) in pooled.iter().enumerate() {
        ensure!(
            v.len() == dim,
            "vector {i} has {} values, not {dim}",
            v.len()
        );
    }
    let mut pooled_by_name = Vec::new();
    for name in [pooling::MEAN, pooling::CLS, pooling::LAST] {
        match ctx
            .model
            .embed(request(vec![inputs[0].clone()], name, false))
        {
            Ok(v) => {
                ensure!(
                    v.len() == 1 && v[0].len() == dim,
                    "pooling `{name}`: wrong shape"
                );
                pooled_by_name.push(name);
            }
            Err(e) if e.kind() == ErrorKind::InvalidRequest => {}
            Err(e) => return Err(fail(format!("pooling `{name}`: {e}"))),
        }
    }
    let mut message = format!("{dim} values; poolings {pooled_by_name:?}");
    match ctx
        .model
        .embed(request(vec![inputs[0].clone()], pooling::NONE, false))
    {
        Ok(v) => {
            let want = inputs[0].len() * dim;
            ensure!(
                v.len() == 1 && v[0].len() == want,
                "pooling `none`: {} vectors, the first of {} values; want 1 of {want} \
                 ({} tokens x {dim})",
                v.len(),
                v.first().map_or(0, Vec::len),
                inputs[0].len()
            );
            message.push_str(", none");
        }
        Err(e) if e.kind() == ErrorKind::InvalidRequest => {}
        Err(e) => return Err(fail(format!("pooling `none`: {e}"))),
    }
    Ok(message)
}

/// Check "embeddings normalized": `normalize` gives unit L2 norm, in the same direction as
/// the raw vector.
fn normalized(ctx: &ModelCtx) -> Outcome {
    let inputs = inputs(ctx)?;
    let raw = embed(ctx, request(inputs.clone(), "", false))?;
    let unit = embed(ctx, request(inputs, "", true))?;
    for (i, (r, u)) in raw.iter().zip(&unit).enumerate() {
        let n = norm(u);
        ensure!(
            within((n - 1.0).abs(), NORM_TOLERANCE),
            "normalised vector {i} has norm {n}"
        );
        let scaled: Vec<f32> = r.iter().map(|x| (f64::from(*x) / norm(r)) as f32).collect();
        let d = relative_distance(&scaled, u);
        ensure!(
            within(d, NORM_TOLERANCE),
            "normalised vector {i} is not the raw one scaled (distance {d:.3e})"
        );
    }
    Ok(format!("{} vectors of norm 1", unit.len()))
}

/// Check "embeddings batch invariant": three inputs in one request give the vectors each
/// gives alone.
fn batch_invariant(ctx: &ModelCtx) -> Outcome {
    let inputs = inputs(ctx)?;
    let batch = embed(ctx, request(inputs.clone(), "", false))?;
    ensure!(
        batch.len() == inputs.len(),
        "{} inputs gave {} vectors",
        inputs.len(),
        batch.len()
    );
    let mut worst = 0f64;
    for (i, input) in inputs.into_iter().enumerate() {
        let alone = embed(ctx, request(vec![input], "", false))?;
        let d = relative_distance(&alone[0], &batch[i]);
        ensure!(
            within(d, BATCH_TOLERANCE),
            "input {i} embedded in a batch of 3 differs from alone: distance {d:.3e} > \
             {BATCH_TOLERANCE:e}"
        );
        worst = worst.max(d);
    }
    Ok(format!("largest relative distance {worst:.1e}"))
}

/// Check "embeddings bad requests": no inputs, an empty input, an unknown pooling and an
/// out-of-vocabulary id are `InvalidRequest` errors.
fn bad_requests(ctx: &ModelCtx) -> Outcome {
    let input = inputs(ctx)?.swap_remove(0);
    let vocab = ctx.meta.vocab_size;
    let cases = [
        ("no inputs", request(vec![], "", false)),
        (
            "an empty input",
            request(vec![input.clone(), vec![]], "", false),
        ),
        (
            "an unknown pooling",
            request(vec![input.clone()], "no-such-pooling", false),
        ),
        (
            "an out-of-vocabulary id",
            request(vec![vec![vocab]], "", false),
        ),
    ];
    for (what, req) in cases {
        match ctx.model.embed(req) {
            Ok(_) => return Err(fail(format!("{what} was accepted"))),
            Err(e) => ensure!(
                e.kind() == ErrorKind::InvalidRequest,
                "{what}: {e} is not an InvalidRequest"
            ),
        }
    }
    // Still working afterwards.
    embed(ctx, request(vec![input], "", false))?;
    Ok("4 bad requests refused, the model still embeds".into())
}

#[cfg(test)]
mod tests {
    use super::relative_distance;

    #[test]
    fn relative_distance_is_scaled_by_the_first_vector() {
        assert_eq!(relative_distance(&[3.0, 4.0], &[3.0, 4.0]), 0.0);
        assert!((relative_distance(&[3.0, 4.0], &[3.0, 4.5]) - 0.1).abs() < 1e-9);
        assert_eq!(relative_distance(&[0.0], &[2.0]), 2.0);
    }
}
