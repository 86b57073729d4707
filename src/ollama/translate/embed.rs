//! Embeddings translation: Ollama's `/api/embed` and legacy `/api/embeddings` requests to the
//! OpenAI `/v1/embeddings` body, and the upstream's vectors back (truncated to `dimensions`,
//! normalised) in either Ollama shape.

use serde_json::{json, Value};

use super::reply::nanos;
use super::{model_name, object, parse_keep_alive, string_field, KeepAlive, Measured};

/// A parsed `/api/embed` (or legacy `/api/embeddings`) request.
#[derive(Debug, PartialEq)]
pub struct EmbedRequest {
    pub model: String,
    pub inputs: Vec<String>,
    pub dimensions: Option<usize>,
    pub keep_alive: Option<KeepAlive>,
    pub truncate: bool,
}

/// `/api/embed`: `input` is a string or an array of strings. `legacy` reads `/api/embeddings`'
/// single `prompt`.
pub fn embed_request(request: &Value, legacy: bool) -> Result<EmbedRequest, String> {
    let request = object(request)?;
    let model = model_name(request)?;
    let keep_alive = parse_keep_alive(request.get("keep_alive"))?;
    let inputs = if legacy {
        match string_field(request, "prompt")? {
            "" => Vec::new(),
            prompt => vec![prompt.to_string()],
        }
    } else {
        match request.get("input") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(text)) if text.is_empty() => Vec::new(),
            Some(Value::String(text)) => vec![text.clone()],
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| {
                    item.as_str().map(str::to_string).ok_or_else(|| {
                        format!("input must be a string or an array of strings, not {item}")
                    })
                })
                .collect::<Result<_, _>>()?,
            Some(other) => {
                return Err(format!(
                    "input must be a string or an array of strings, not {other}"
                ))
            }
        }
    };
    let dimensions = match request.get("dimensions") {
        None | Some(Value::Null) => None,
        Some(value) => Some(
            value
                .as_u64()
                .filter(|&d| d > 0)
                .ok_or_else(|| format!("dimensions must be a positive integer, not {value}"))?
                as usize,
        ),
    };
    let truncate = request
        .get("truncate")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    Ok(EmbedRequest {
        model,
        inputs,
        dimensions,
        keep_alive,
        truncate,
    })
}

/// The upstream body for an embedding request.
pub fn embed_upstream_body(request: &EmbedRequest) -> Value {
    let mut body = json!({"model": request.model, "input": request.inputs});
    if let Some(dimensions) = request.dimensions {
        body["dimensions"] = json!(dimensions);
    }
    body
}

/// Scales a vector to unit length (left alone when it is all zeros).
pub fn normalize(vector: &mut [f64]) {
    let norm = vector.iter().map(|x| x * x).sum::<f64>().sqrt();
    if norm > 0.0 {
        for x in vector.iter_mut() {
            *x /= norm;
        }
    }
}

/// The vectors of an OpenAI embeddings answer, in input order.
pub fn embedding_vectors(upstream: &Value) -> Result<Vec<Vec<f64>>, String> {
    let data = upstream
        .get("data")
        .and_then(Value::as_array)
        .ok_or_else(|| "the upstream's embeddings answer has no data array".to_string())?;
    let mut indexed: Vec<(usize, Vec<f64>)> = Vec::with_capacity(data.len());
    for (position, item) in data.iter().enumerate() {
        let vector = item
            .get("embedding")
            .and_then(Value::as_array)
            .ok_or_else(|| "an upstream embedding is not an array of numbers".to_string())?
            .iter()
            .map(|x| {
                x.as_f64()
                    .ok_or_else(|| "an upstream embedding holds a non-number".to_string())
            })
            .collect::<Result<Vec<f64>, String>>()?;
        let index = item
            .get("index")
            .and_then(Value::as_u64)
            .map_or(position, |i| i as usize);
        indexed.push((index, vector));
    }
    indexed.sort_by_key(|(index, _)| *index);
    Ok(indexed.into_iter().map(|(_, vector)| vector).collect())
}

/// `/api/embed`'s answer: one unit-length vector per input (shortened to `dimensions` first).
pub fn embed_response(
    model: &str,
    upstream: &Value,
    dimensions: Option<usize>,
    measured: &Measured,
) -> Result<Value, String> {
    let mut vectors = embedding_vectors(upstream)?;
    for vector in vectors.iter_mut() {
        if let Some(dimensions) = dimensions {
            vector.truncate(dimensions);
        }
        normalize(vector);
    }
    let mut out = json!({
        "model": model,
        "embeddings": vectors,
        "total_duration": nanos(measured.total),
        "load_duration": nanos(measured.load),
    });
    if let Some(count) = upstream
        .pointer("/usage/prompt_tokens")
        .and_then(Value::as_u64)
    {
        out["prompt_eval_count"] = json!(count);
    }
    Ok(out)
}

/// The legacy `/api/embeddings` answer: one flat vector, as the upstream computed it.
pub fn legacy_embedding_response(upstream: &Value) -> Result<Value, String> {
    let vectors = embedding_vectors(upstream)?;
    let vector = vectors.into_iter().next().unwrap_or_default();
    Ok(json!({ "embedding": vector }))
}
