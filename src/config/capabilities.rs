//! A model's `capabilities` block (llama-swap's `ModelCapConfig`): what it reads and writes,
//! whether it calls tools or reranks, and its context size. swapd only reports them, in
//! `/v1/models` and the UI's model list; routing never looks at them.

use serde_json::{json, Map, Value};

use super::error::{ConfigError, KeyPath, Reporter};
use super::typed::Fields;

/// The modalities `capabilities.in` and `capabilities.out` may name.
const MODALITIES: [&str; 3] = ["text", "audio", "image"];

/// The `/v1/models` fields the capabilities produce.
const RENDERED_KEYS: [&str; 4] = [
    "architecture",
    "capabilities",
    "supported_parameters",
    "context_length",
];

/// `models.<id>.capabilities`; all empty when absent.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Capabilities {
    pub input: Vec<String>,
    pub output: Vec<String>,
    pub tools: bool,
    pub reranker: bool,
    /// The context size in tokens; 0 when not given.
    pub context: u64,
}

impl Capabilities {
    pub fn is_empty(&self) -> bool {
        *self == Capabilities::default()
    }

    /// Drops the `metadata` keys that the capabilities render (`architecture`, `capabilities`,
    /// `supported_parameters`, `context_length`) when capabilities are set, as llama-swap does.
    pub fn filter_metadata(&self, metadata: &mut Map<String, Value>) {
        if !self.is_empty() {
            for key in RENDERED_KEYS {
                metadata.remove(key);
            }
        }
    }

    /// The fields added to a `/v1/models` record (`architecture`, `capabilities`,
    /// `supported_parameters`, `context_length`); each is left out when it would be empty.
    pub fn openai_fields(&self) -> Map<String, Value> {
        let mut fields = Map::new();
        let (has_in, has_out) = (!self.input.is_empty(), !self.output.is_empty());
        let mut architecture = Map::new();
        if has_in {
            architecture.insert("input_modalities".into(), json!(self.input));
        }
        if has_out {
            architecture.insert("output_modalities".into(), json!(self.output));
        }
        if has_in && has_out {
            let modality = format!("{}->{}", self.input.join("+"), self.output.join("+"));
            architecture.insert("modality".into(), json!(modality));
        }
        if !architecture.is_empty() {
            fields.insert("architecture".into(), Value::Object(architecture));
        }
        let capabilities = self.flags();
        if !capabilities.is_empty() {
            fields.insert("capabilities".into(), Value::Object(capabilities));
        }
        if self.tools {
            fields.insert(
                "supported_parameters".into(),
                json!(["tools", "tool_choice"]),
            );
        }
        if self.context > 0 {
            fields.insert("context_length".into(), json!(self.context));
        }
        fields
    }

    /// The `capabilities` map of a `/v1/models` record: `vision`, `audio_transcriptions`,
    /// `audio_speech`, `image_generation`, `image_to_image`, `function_calling`, `reranker`,
    /// each present (and `true`) only when it holds.
    pub fn flags(&self) -> Map<String, Value> {
        let reads = |modality: &str| self.input.iter().any(|m| m == modality);
        let writes = |modality: &str| self.output.iter().any(|m| m == modality);
        let mut flags = Map::new();
        for (flag, holds) in [
            ("vision", reads("image")),
            ("audio_transcriptions", reads("audio") && writes("text")),
            ("audio_speech", reads("text") && writes("audio")),
            ("image_generation", reads("text") && writes("image")),
            ("image_to_image", reads("image") && writes("image")),
            ("function_calling", self.tools),
            ("reranker", self.reranker),
        ] {
            if holds {
                flags.insert(flag.into(), Value::Bool(true));
            }
        }
        flags
    }
}

/// Reads `capabilities` from a model's fields.
pub(crate) fn build(
    model: &Fields<'_>,
    reporter: &mut Reporter<'_>,
) -> Result<Capabilities, ConfigError> {
    let Some(fields) = model.section("capabilities", super::schema::CAPABILITIES, reporter)? else {
        return Ok(Capabilities::default());
    };
    let context = match fields.int("context", reporter)? {
        None => 0,
        Some(value) => u64::try_from(value).map_err(|_| {
            reporter.error(
                &fields.path("context"),
                format!("must be 0 or more tokens, found {value}"),
            )
        })?,
    };
    Ok(Capabilities {
        input: modalities(&fields, "in", reporter)?,
        output: modalities(&fields, "out", reporter)?,
        tools: fields.bool("tools", reporter)?.unwrap_or(false),
        reranker: fields.bool("reranker", reporter)?.unwrap_or(false),
        context,
    })
}

fn modalities(
    fields: &Fields<'_>,
    key: &str,
    reporter: &Reporter<'_>,
) -> Result<Vec<String>, ConfigError> {
    let list = fields.strings(key, reporter)?;
    let path: KeyPath = fields.path(key);
    for (index, modality) in list.iter().enumerate() {
        if !MODALITIES.contains(&modality.as_str()) {
            return Err(reporter.error(
                &path.index(index),
                format!(
                    "invalid modality '{modality}', must be one of: {}",
                    MODALITIES.join(", ")
                ),
            ));
        }
    }
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(input: &[&str], output: &[&str], tools: bool, reranker: bool) -> Capabilities {
        Capabilities {
            input: input.iter().map(|s| s.to_string()).collect(),
            output: output.iter().map(|s| s.to_string()).collect(),
            tools,
            reranker,
            context: 0,
        }
    }

    #[test]
    fn rendering_follows_the_modalities() {
        // Each row: the capabilities, then the record fields they give.
        let rows: [(Capabilities, Value); 7] = [
            (Capabilities::default(), json!({})),
            // Text in and out sets no flag, so there is no `capabilities` map.
            (
                caps(&["text"], &["text"], false, false),
                json!({"architecture": {"input_modalities": ["text"], "output_modalities": ["text"],
                                        "modality": "text->text"}}),
            ),
            (
                caps(&["text", "image"], &["text"], true, false),
                json!({
                    "architecture": {"input_modalities": ["text", "image"],
                                     "output_modalities": ["text"], "modality": "text+image->text"},
                    "capabilities": {"vision": true, "function_calling": true},
                    "supported_parameters": ["tools", "tool_choice"],
                }),
            ),
            (
                caps(&["audio"], &["text"], false, false),
                json!({
                    "architecture": {"input_modalities": ["audio"], "output_modalities": ["text"],
                                     "modality": "audio->text"},
                    "capabilities": {"audio_transcriptions": true},
                }),
            ),
            (
                caps(&["text", "image"], &["image", "audio"], false, false),
                json!({
                    "architecture": {"input_modalities": ["text", "image"],
                                     "output_modalities": ["image", "audio"],
                                     "modality": "text+image->image+audio"},
                    "capabilities": {"vision": true, "audio_speech": true,
                                     "image_generation": true, "image_to_image": true},
                }),
            ),
            // Only one side: no modality string, and no pairwise flags.
            (
                caps(&["image"], &[], false, true),
                json!({
                    "architecture": {"input_modalities": ["image"]},
                    "capabilities": {"vision": true, "reranker": true},
                }),
            ),
            (
                Capabilities {
                    context: 8192,
                    ..Capabilities::default()
                },
                json!({"context_length": 8192}),
            ),
        ];
        for (capabilities, expected) in rows {
            assert_eq!(
                Value::Object(capabilities.openai_fields()),
                expected,
                "{capabilities:?}"
            );
        }
    }
}
