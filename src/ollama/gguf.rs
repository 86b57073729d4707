//! A small reader for the metadata at the start of a GGUF model file.
//!
//! Ollama's listings describe each model (family, parameter size, quantization, context
//! length). swapd knows only the file a model's `cmd` names, so it reads those facts from the
//! file's header: the key/value metadata and the tensor table, never the weights. Whatever the
//! file does not say stays unknown; nothing is guessed. Large arrays (the tokenizer's
//! vocabulary) are skipped, not kept, and every length is bounded, so a damaged or hostile file
//! costs little.

use std::io::{self, Read};

use serde_json::{Map, Value};

/// What swapd uses from a GGUF header.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GgufInfo {
    /// `general.architecture`, e.g. `llama`.
    pub architecture: Option<String>,
    /// `general.size_label`, e.g. `7B` or `8x7B`.
    pub size_label: Option<String>,
    /// The number of weights, summed over the tensor table.
    pub parameter_count: Option<u64>,
    /// `general.file_type` (llama.cpp's `llama_ftype`).
    pub file_type: Option<u32>,
    /// `tokenizer.chat_template` (Jinja).
    pub chat_template: Option<String>,
    /// Scalar metadata (and short arrays); long arrays appear as empty arrays, as Ollama shows
    /// them when not verbose.
    pub metadata: Map<String, Value>,
}

impl GgufInfo {
    /// A `u32`/`u64` metadata value.
    pub fn number(&self, key: &str) -> Option<u64> {
        self.metadata.get(key).and_then(Value::as_u64)
    }

    /// `<architecture>.context_length`.
    pub fn context_length(&self) -> Option<u64> {
        self.number(&format!("{}.context_length", self.architecture.as_deref()?))
    }

    /// `<architecture>.embedding_length`.
    pub fn embedding_length(&self) -> Option<u64> {
        self.number(&format!(
            "{}.embedding_length",
            self.architecture.as_deref()?
        ))
    }

    /// The quantization name of `general.file_type`, as Ollama prints it (`Q4_K_M`, `F16`).
    pub fn quantization(&self) -> Option<&'static str> {
        file_type_name(self.file_type?)
    }

    /// Whether the vocabulary has fill-in-middle tokens (Ollama's `insert` capability).
    pub fn has_fill_in_middle(&self) -> bool {
        [
            "tokenizer.ggml.fim_pre_token_id",
            "tokenizer.ggml.prefix_token_id",
        ]
        .iter()
        .any(|key| self.metadata.contains_key(*key))
    }
}

/// Why a file could not be read as GGUF.
#[derive(Debug)]
pub enum GgufError {
    Io(io::Error),
    NotGguf,
    UnsupportedVersion(u32),
    Malformed(&'static str),
}

impl std::fmt::Display for GgufError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GgufError::Io(error) => write!(f, "cannot read the GGUF header: {error}"),
            GgufError::NotGguf => write!(f, "not a GGUF file"),
            GgufError::UnsupportedVersion(version) => {
                write!(f, "GGUF version {version} is not supported")
            }
            GgufError::Malformed(what) => write!(f, "malformed GGUF header: {what}"),
        }
    }
}

impl From<io::Error> for GgufError {
    fn from(error: io::Error) -> GgufError {
        GgufError::Io(error)
    }
}

/// Strings longer than this are skipped (a chat template is a few KiB; names are short).
const MAX_STRING: u64 = 1 << 20;
/// Arrays with more elements than this are reported empty.
const MAX_KEPT_ARRAY: u64 = 64;
/// Sanity bounds on the counts in the header.
const MAX_KEYS: u64 = 1 << 20;
const MAX_TENSORS: u64 = 1 << 24;
const MAX_DIMS: u32 = 8;

struct Reader<R> {
    inner: R,
}

impl<R: Read> Reader<R> {
    fn bytes<const N: usize>(&mut self) -> Result<[u8; N], GgufError> {
        let mut buffer = [0u8; N];
        self.inner.read_exact(&mut buffer)?;
        Ok(buffer)
    }
    fn u32(&mut self) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }
    fn u64(&mut self) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }
    fn skip(&mut self, count: u64) -> Result<(), GgufError> {
        let skipped = io::copy(&mut (&mut self.inner).take(count), &mut io::sink())?;
        if skipped < count {
            return Err(GgufError::Malformed("file ends inside the header"));
        }
        Ok(())
    }
    /// A string, or `None` (skipped) when it is longer than `MAX_STRING`.
    fn string(&mut self) -> Result<Option<String>, GgufError> {
        let length = self.u64()?;
        if length > MAX_STRING {
            self.skip(length)?;
            return Ok(None);
        }
        let mut buffer = vec![0u8; length as usize];
        self.inner.read_exact(&mut buffer)?;
        Ok(Some(String::from_utf8_lossy(&buffer).into_owned()))
    }

    /// A value of GGUF type `kind`; `keep` false skips it (returns `Null`).
    fn value(&mut self, kind: u32, keep: bool) -> Result<Value, GgufError> {
        Ok(match kind {
            0 => Value::from(self.bytes::<1>()?[0]),
            1 => Value::from(self.bytes::<1>()?[0] as i8),
            2 => Value::from(u16::from_le_bytes(self.bytes()?)),
            3 => Value::from(i16::from_le_bytes(self.bytes()?)),
            4 => Value::from(self.u32()?),
            5 => Value::from(i32::from_le_bytes(self.bytes()?)),
            6 => Value::from(f32::from_le_bytes(self.bytes()?) as f64),
            7 => Value::from(self.bytes::<1>()?[0] != 0),
            8 => self.string()?.map_or(Value::Null, Value::String),
            9 => {
                let element = self.u32()?;
                let count = self.u64()?;
                let keep = keep && count <= MAX_KEPT_ARRAY;
                if !keep {
                    if let Some(size) = fixed_size(element) {
                        self.skip(
                            count
                                .checked_mul(size)
                                .ok_or(GgufError::Malformed("array size overflows"))?,
                        )?;
                        return Ok(Value::Array(Vec::new()));
                    }
                }
                let mut items = Vec::new();
                for _ in 0..count {
                    let item = self.value(element, keep)?;
                    if keep {
                        items.push(item);
                    }
                }
                Value::Array(items)
            }
            10 => Value::from(self.u64()?),
            11 => Value::from(i64::from_le_bytes(self.bytes()?)),
            12 => Value::from(f64::from_le_bytes(self.bytes()?)),
            _ => return Err(GgufError::Malformed("unknown value type")),
        })
    }
}

/// The byte size of a fixed-size GGUF value type.
fn fixed_size(kind: u32) -> Option<u64> {
    match kind {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        _ => None,
    }
}

/// Reads the header of a GGUF file (versions 2 and 3) from its start.
pub fn read(source: impl Read) -> Result<GgufInfo, GgufError> {
    let mut reader = Reader { inner: source };
    if &reader.bytes::<4>()? != b"GGUF" {
        return Err(GgufError::NotGguf);
    }
    let version = reader.u32()?;
    if !(2..=3).contains(&version) {
        return Err(GgufError::UnsupportedVersion(version));
    }
    let tensors = reader.u64()?;
    let keys = reader.u64()?;
    if tensors > MAX_TENSORS || keys > MAX_KEYS {
        return Err(GgufError::Malformed("implausible tensor or key count"));
    }
    let mut info = GgufInfo::default();
    for _ in 0..keys {
        let key = reader
            .string()?
            .ok_or(GgufError::Malformed("a metadata key is too long"))?;
        let kind = reader.u32()?;
        let value = reader.value(kind, true)?;
        match (key.as_str(), &value) {
            ("general.architecture", Value::String(text)) => info.architecture = Some(text.clone()),
            ("general.size_label", Value::String(text)) => info.size_label = Some(text.clone()),
            ("general.file_type", value) => info.file_type = value.as_u64().map(|v| v as u32),
            ("tokenizer.chat_template", Value::String(text)) => {
                info.chat_template = Some(text.clone());
                continue;
            }
            _ => {}
        }
        info.metadata.insert(key, value);
    }
    let mut parameters: u64 = 0;
    for _ in 0..tensors {
        // Name, dimensions, element type, data offset.
        let name_length = reader.u64()?;
        reader.skip(name_length)?;
        let dims = reader.u32()?;
        if dims > MAX_DIMS {
            return Err(GgufError::Malformed("a tensor has too many dimensions"));
        }
        let mut elements: u64 = 1;
        for _ in 0..dims {
            elements = elements.saturating_mul(reader.u64()?);
        }
        reader.skip(4 + 8)?;
        parameters = parameters.saturating_add(elements);
    }
    if tensors > 0 {
        info.parameter_count = Some(parameters);
    }
    Ok(info)
}

/// llama.cpp's `llama_ftype` names (the numbering in `llama.h`).
pub fn file_type_name(file_type: u32) -> Option<&'static str> {
    Some(match file_type {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        19 => "IQ2_XXS",
        20 => "IQ2_XS",
        21 => "Q2_K_S",
        22 => "IQ3_XS",
        23 => "IQ3_XXS",
        24 => "IQ1_S",
        25 => "IQ4_NL",
        26 => "IQ3_S",
        27 => "IQ3_M",
        28 => "IQ2_S",
        29 => "IQ2_M",
        30 => "IQ4_XS",
        31 => "IQ1_M",
        32 => "BF16",
        36 => "TQ1_0",
        37 => "TQ2_0",
        38 => "MXFP4_MOE",
        _ => return None,
    })
}

/// Writes a GGUF header, for tests (here and in the integration tests' fixtures).
#[cfg(test)]
pub(crate) mod build {
    /// A metadata value to write.
    pub enum Meta<'a> {
        Str(&'a str),
        U32(u32),
        Strings(Vec<String>),
    }

    pub fn header(metadata: &[(&str, Meta)], tensors: &[(&str, &[u64])]) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend((tensors.len() as u64).to_le_bytes());
        out.extend((metadata.len() as u64).to_le_bytes());
        let string = |out: &mut Vec<u8>, text: &str| {
            out.extend((text.len() as u64).to_le_bytes());
            out.extend(text.as_bytes());
        };
        for (key, value) in metadata {
            string(&mut out, key);
            match value {
                Meta::Str(text) => {
                    out.extend(8u32.to_le_bytes());
                    string(&mut out, text);
                }
                Meta::U32(number) => {
                    out.extend(4u32.to_le_bytes());
                    out.extend(number.to_le_bytes());
                }
                Meta::Strings(items) => {
                    out.extend(9u32.to_le_bytes());
                    out.extend(8u32.to_le_bytes());
                    out.extend((items.len() as u64).to_le_bytes());
                    for item in items {
                        string(&mut out, item);
                    }
                }
            }
        }
        for (name, dims) in tensors {
            string(&mut out, name);
            out.extend((dims.len() as u32).to_le_bytes());
            for dim in *dims {
                out.extend(dim.to_le_bytes());
            }
            out.extend(0u32.to_le_bytes());
            out.extend(0u64.to_le_bytes());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::build::{header, Meta};
    use super::*;

    #[test]
    fn reads_the_facts_ollama_lists() {
        let vocabulary: Vec<String> = (0..1000).map(|i| format!("tok{i}")).collect();
        let bytes = header(
            &[
                ("general.architecture", Meta::Str("qwen2")),
                ("general.size_label", Meta::Str("7B")),
                ("general.file_type", Meta::U32(15)),
                ("qwen2.context_length", Meta::U32(32768)),
                ("qwen2.embedding_length", Meta::U32(3584)),
                ("tokenizer.ggml.tokens", Meta::Strings(vocabulary)),
                ("tokenizer.chat_template", Meta::Str("{{ messages }}")),
                ("tokenizer.ggml.fim_pre_token_id", Meta::U32(5)),
            ],
            &[("a", &[64, 128]), ("b", &[10])],
        );
        let info = read(&bytes[..]).unwrap();
        assert_eq!(info.architecture.as_deref(), Some("qwen2"));
        assert_eq!(info.size_label.as_deref(), Some("7B"));
        assert_eq!(info.quantization(), Some("Q4_K_M"));
        assert_eq!(info.context_length(), Some(32768));
        assert_eq!(info.embedding_length(), Some(3584));
        assert_eq!(info.parameter_count, Some(64 * 128 + 10));
        assert_eq!(info.chat_template.as_deref(), Some("{{ messages }}"));
        assert!(info.has_fill_in_middle());
        assert_eq!(
            info.metadata["tokenizer.ggml.tokens"],
            Value::Array(Vec::new())
        );
        assert!(!info.metadata.contains_key("tokenizer.chat_template"));
    }

    #[test]
    fn unknown_stays_unknown() {
        let info = read(&header(&[("general.name", Meta::Str("x"))], &[])[..]).unwrap();
        assert_eq!(info.architecture, None);
        assert_eq!(info.parameter_count, None);
        assert_eq!(info.quantization(), None);
        assert_eq!(info.context_length(), None);
        assert!(!info.has_fill_in_middle());
    }

    #[test]
    fn rejects_what_is_not_gguf() {
        assert!(matches!(read(&b"GGML...."[..]), Err(GgufError::NotGguf)));
        let mut old = b"GGUF".to_vec();
        old.extend(1u32.to_le_bytes());
        assert!(matches!(
            read(&old[..]),
            Err(GgufError::UnsupportedVersion(1))
        ));
        let whole = header(
            &[("general.architecture", Meta::Str("llama"))],
            &[("t", &[4])],
        );
        for cut in [10, 30, whole.len() - 3] {
            assert!(read(&whole[..cut]).is_err(), "cut at {cut}");
        }
        // A string claiming an absurd length fails without allocating it.
        let mut huge = b"GGUF".to_vec();
        huge.extend(3u32.to_le_bytes());
        huge.extend(0u64.to_le_bytes());
        huge.extend(1u64.to_le_bytes());
        huge.extend(u64::MAX.to_le_bytes());
        assert!(read(&huge[..]).is_err());
    }

    #[test]
    fn file_type_names() {
        assert_eq!(file_type_name(0), Some("F32"));
        assert_eq!(file_type_name(1), Some("F16"));
        assert_eq!(file_type_name(7), Some("Q8_0"));
        assert_eq!(file_type_name(32), Some("BF16"));
        assert_eq!(file_type_name(4), None);
    }
}
