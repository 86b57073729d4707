//! What swapd can say about a configured model in Ollama's terms: its file, details,
//! capabilities and parameters, for `/api/tags`, `/api/ps` and `/api/show`.
//!
//! Everything comes from the model's config (its `cmd`) and the header of the GGUF file that
//! `cmd` names with `-m`/`--model`; what neither says is left empty, never invented. Reading a
//! header is cached per file (path, size and modification time), so listing many models does
//! not re-read files that did not change.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

use crate::config::ModelConfig;

use super::gguf::{self, GgufInfo};
use super::translate;

/// The values of `-m`/`--model` in a command line, in order (`--model=x` and `-m=x` too).
pub fn model_arguments(cmd: &[String]) -> Vec<&str> {
    flag_values(cmd, &["-m", "--model"])
}

/// Values of any of `names` in `cmd` (`--flag value` or `--flag=value`).
fn flag_values<'a>(cmd: &'a [String], names: &[&str]) -> Vec<&'a str> {
    let mut values = Vec::new();
    let mut index = 0;
    while index < cmd.len() {
        let argument = cmd[index].as_str();
        if names.contains(&argument) {
            if let Some(value) = cmd.get(index + 1) {
                values.push(value.as_str());
                index += 1;
            }
        } else if let Some((flag, value)) = argument.split_once('=') {
            if names.contains(&flag) {
                values.push(value);
            }
        }
        index += 1;
    }
    values
}

fn last_flag<'a>(cmd: &'a [String], names: &[&str]) -> Option<&'a str> {
    flag_values(cmd, names).pop()
}

fn has_flag(cmd: &[String], names: &[&str]) -> bool {
    cmd.iter().any(|argument| {
        names.contains(&argument.as_str())
            || argument
                .split_once('=')
                .is_some_and(|(flag, _)| names.contains(&flag))
    })
}

/// Whether the command runs llama.cpp's `llama-server` (directly or through a wrapper such as
/// `docker run ... llama-server`): then llama.cpp's own endpoints (`/infill`) and flags apply.
pub fn is_llama_server(cmd: &[String]) -> bool {
    cmd.iter().any(|argument| {
        Path::new(argument)
            .file_name()
            .and_then(|name| name.to_str())
            .is_some_and(|name| name.starts_with("llama-server"))
    })
}

/// llama-server flags with an Ollama parameter of the same meaning.
const LLAMA_SERVER_PARAMETERS: &[(&[&str], &str)] = &[
    (&["-c", "--ctx-size"], "num_ctx"),
    (&["--temp", "--temperature"], "temperature"),
    (&["--top-k"], "top_k"),
    (&["--top-p"], "top_p"),
    (&["--min-p"], "min_p"),
    (&["--repeat-penalty"], "repeat_penalty"),
    (&["--repeat-last-n"], "repeat_last_n"),
    (&["-n", "--n-predict", "--predict"], "num_predict"),
    (&["-s", "--seed"], "seed"),
    (&["-ngl", "--gpu-layers", "--n-gpu-layers"], "num_gpu"),
    (&["-t", "--threads"], "num_thread"),
    (&["-b", "--batch-size"], "num_batch"),
];

/// Ollama-named request parameters that a config's `setParams` may set.
const REQUEST_PARAMETERS: &[(&str, &str)] = &[
    ("temperature", "temperature"),
    ("top_k", "top_k"),
    ("top_p", "top_p"),
    ("min_p", "min_p"),
    ("repeat_penalty", "repeat_penalty"),
    ("seed", "seed"),
    ("max_tokens", "num_predict"),
    ("stop", "stop"),
];

/// `/api/show`'s `parameters`: `name value` lines from the llama-server command line and the
/// config's `setParams` (which swapd applies to every request).
pub fn parameters(model: &ModelConfig) -> String {
    let mut lines = Vec::new();
    if is_llama_server(&model.cmd) {
        for (flags, name) in LLAMA_SERVER_PARAMETERS {
            if let Some(value) = last_flag(&model.cmd, flags) {
                lines.push(format!("{name:<30} {value}"));
            }
        }
    }
    for (key, name) in REQUEST_PARAMETERS {
        match model.filters.set_params.get(*key) {
            Some(Value::Array(items)) => {
                for item in items {
                    lines.push(format!("{name:<30} {item}"));
                }
            }
            Some(value) => lines.push(format!("{name:<30} {value}")),
            None => {}
        }
    }
    lines.join("\n")
}

/// The context size a llama-server command sets (`-c`), if any.
pub fn context_size(cmd: &[String]) -> Option<u64> {
    if !is_llama_server(cmd) {
        return None;
    }
    last_flag(cmd, &["-c", "--ctx-size"])?
        .parse()
        .ok()
        .filter(|&size| size > 0)
}

/// Ollama capabilities from what the command and the file say.
pub fn capabilities(cmd: &[String], info: Option<&GgufInfo>) -> Vec<&'static str> {
    let llama_server = is_llama_server(cmd);
    if llama_server && has_flag(cmd, &["--embedding", "--embeddings"]) {
        // llama-server in embedding mode refuses completions.
        return vec!["embedding"];
    }
    let mut capabilities = vec!["completion"];
    let template = info
        .and_then(|info| info.chat_template.as_deref())
        .unwrap_or("");
    if template.contains("tools") || template.contains("tool_calls") {
        capabilities.push("tools");
    }
    if info.is_some_and(GgufInfo::has_fill_in_middle) {
        capabilities.push("insert");
    }
    if llama_server && has_flag(cmd, &["--mmproj", "-mm", "--mmproj-url", "-mmu"]) {
        capabilities.push("vision");
    }
    if ["<think>", "enable_thinking", "reasoning_content"]
        .iter()
        .any(|marker| template.contains(marker))
    {
        capabilities.push("thinking");
    }
    capabilities
}

/// Adds what the model's `capabilities` block declares (`tools`, an `image` input) to the
/// detected capabilities; an embedding model stays one.
pub fn with_declared(
    mut detected: Vec<&'static str>,
    declared: &crate::config::Capabilities,
) -> Vec<&'static str> {
    if detected == ["embedding"] {
        return detected;
    }
    let vision = declared.input.iter().any(|modality| modality == "image");
    for (capability, holds) in [("tools", declared.tools), ("vision", vision)] {
        if holds && !detected.contains(&capability) {
            detected.push(capability);
        }
    }
    detected
}

/// A model's file as swapd sees it.
#[derive(Debug, Clone, Default)]
pub struct ModelFile {
    pub path: Option<PathBuf>,
    pub size: u64,
    pub modified: Option<SystemTime>,
    /// The header, when the file is a readable GGUF.
    pub info: Option<Arc<GgufInfo>>,
}

type HeaderCache = HashMap<PathBuf, (u64, Option<SystemTime>, Option<Arc<GgufInfo>>)>;

/// Headers already read, by path (reused while size and modification time are unchanged).
static HEADERS: Mutex<Option<HeaderCache>> = Mutex::new(None);

/// Finds the file a model's `cmd` names and reads its header (cached).
pub fn model_file(model: &ModelConfig) -> ModelFile {
    let Some((path, metadata)) = model_arguments(&model.cmd)
        .into_iter()
        .find_map(|candidate| {
            let path = PathBuf::from(candidate);
            let metadata = std::fs::metadata(&path).ok().filter(|m| m.is_file())?;
            Some((path, metadata))
        })
    else {
        return ModelFile::default();
    };
    let size = metadata.len();
    let modified = metadata.modified().ok();
    let mut cache = HEADERS
        .lock()
        .expect("the GGUF header cache lock is never held across a panic");
    let cache = cache.get_or_insert_with(HashMap::new);
    let info = match cache.get(&path) {
        Some((cached_size, cached_modified, info))
            if *cached_size == size && *cached_modified == modified =>
        {
            info.clone()
        }
        _ => {
            let info = std::fs::File::open(&path)
                .map_err(gguf::GgufError::Io)
                .and_then(|file| gguf::read(std::io::BufReader::with_capacity(64 * 1024, file)));
            let info = match info {
                Ok(info) => Some(Arc::new(info)),
                Err(error) => {
                    log::debug!("ollama: {}: {error}", path.display());
                    None
                }
            };
            cache.insert(path.clone(), (size, modified, info.clone()));
            info
        }
    };
    ModelFile {
        path: Some(path),
        size,
        modified,
        info,
    }
}

/// Ollama's `details` object; fields the file does not tell are empty.
pub fn details(file: &ModelFile) -> Value {
    let info = file.info.as_deref();
    let family = info.and_then(|info| info.architecture.clone());
    let parameter_size = info
        .and_then(|info| {
            info.size_label
                .clone()
                .or_else(|| info.parameter_count.map(translate::human_number))
        })
        .unwrap_or_default();
    let mut details = json!({
        "parent_model": "",
        "format": if info.is_some() { "gguf" } else { "" },
        "family": family.clone().unwrap_or_default(),
        "families": family.map(|family| vec![family]),
        "parameter_size": parameter_size,
        "quantization_level": info.and_then(GgufInfo::quantization).unwrap_or_default(),
    });
    if let Some(length) = info.and_then(GgufInfo::context_length) {
        details["context_length"] = json!(length);
    }
    if let Some(length) = info.and_then(GgufInfo::embedding_length) {
        details["embedding_length"] = json!(length);
    }
    details
}

/// A stable fingerprint of the model's identity and file (FNV-1a, 64 bits, hex). It is not
/// Ollama's manifest sha256, which swapd has no manifest for; clients use it to notice changes.
pub fn digest(model: &ModelConfig, file: &ModelFile) -> String {
    let modified = file
        .modified
        .and_then(|time| time.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |since| since.as_nanos());
    fnv_digest(&[
        model.id.as_bytes(),
        model.cmd_display.as_bytes(),
        &file.size.to_le_bytes(),
        &modified.to_le_bytes(),
    ])
}

/// FNV-1a over the parts, each followed by a separator byte, as 16 hex digits.
fn fnv_digest(parts: &[&[u8]]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.iter().chain(&[0xff]) {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{hash:016x}")
}

/// A peer's model in `/api/tags`: its `<peer>/<model>` name; swapd knows nothing of its file.
pub fn peer_tags_entry(fqn: &str, modified: SystemTime) -> Value {
    let name = translate::listed_name(fqn);
    json!({
        "name": name,
        "model": name,
        "modified_at": timestamp(modified),
        "size": 0,
        "digest": fnv_digest(&[b"peer", fqn.as_bytes()]),
        "details": peer_details(),
    })
}

/// `/api/show` for a peer's model: what swapd knows (the peer), nothing of the file.
pub fn peer_show(fqn: &str, peer_id: &str, modified: SystemTime) -> Value {
    json!({
        "modelfile": format!("# Served by swapd's peer '{peer_id}' as '{fqn}'\n"),
        "parameters": "",
        "template": "",
        "details": peer_details(),
        "model_info": {},
        "capabilities": ["completion"],
        "modified_at": timestamp(modified),
    })
}

fn peer_details() -> Value {
    json!({
        "parent_model": "",
        "format": "",
        "family": "",
        "families": null,
        "parameter_size": "",
        "quantization_level": "",
    })
}

/// RFC 3339 for a system time.
pub fn timestamp(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    translate::rfc3339(since.as_secs(), since.subsec_nanos())
}

/// One `/api/tags` entry. `fallback_modified` is used when no file is known (swapd's start).
pub fn tags_entry(model: &ModelConfig, file: &ModelFile, fallback_modified: SystemTime) -> Value {
    let name = translate::listed_name(&model.id);
    json!({
        "name": name,
        "model": name,
        "modified_at": timestamp(file.modified.unwrap_or(fallback_modified)),
        "size": file.size,
        "digest": digest(model, file),
        "details": details(file),
        "capabilities": with_declared(
            capabilities(&model.cmd, file.info.as_deref()),
            &model.capabilities
        ),
    })
}

/// `/api/show`'s answer.
pub fn show(model: &ModelConfig, file: &ModelFile, fallback_modified: SystemTime) -> Value {
    let info = file.info.as_deref();
    let mut model_info = Map::new();
    if let Some(info) = info {
        model_info = info.metadata.clone();
        if let Some(count) = info.parameter_count {
            model_info.insert("general.parameter_count".into(), json!(count));
        }
    }
    let mut modelfile = format!("# Served by swapd from its config: model '{}'\n", model.id);
    if let Some(path) = &file.path {
        modelfile.push_str(&format!("FROM {}\n", path.display()));
    }
    modelfile.push_str(&format!("# cmd: {}\n", model.cmd_display));
    let mut out = json!({
        "modelfile": modelfile,
        "parameters": parameters(model),
        "template": info.and_then(|info| info.chat_template.clone()).unwrap_or_default(),
        "details": details(file),
        "model_info": model_info,
        "capabilities": with_declared(capabilities(&model.cmd, info), &model.capabilities),
        "modified_at": timestamp(file.modified.unwrap_or(fallback_modified)),
    });
    if let Some(description) = &model.description {
        out["system"] = json!("");
        out["license"] = json!("");
        out["description"] = json!(description);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(line: &str) -> Vec<String> {
        line.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn finds_the_model_file_and_flags() {
        assert_eq!(
            model_arguments(&argv("llama-server --port 9 -m /m/a.gguf -c 512")),
            ["/m/a.gguf"]
        );
        assert_eq!(
            model_arguments(&argv("fake --model name --model=/x.gguf")),
            ["name", "/x.gguf"]
        );
        assert!(model_arguments(&argv("vllm serve x")).is_empty());
        assert!(is_llama_server(&argv("/opt/bin/llama-server -m x")));
        assert!(is_llama_server(&argv("docker run img llama-server")));
        assert!(!is_llama_server(&argv("/usr/bin/python -m vllm")));
        assert_eq!(context_size(&argv("llama-server -c 512")), Some(512));
        assert_eq!(
            context_size(&argv("llama-server --ctx-size=4096")),
            Some(4096)
        );
        assert_eq!(context_size(&argv("llama-server -c 0")), None);
        assert_eq!(context_size(&argv("other -c 512")), None);
    }

    #[test]
    fn capabilities_come_from_command_and_template() {
        let chat = GgufInfo {
            chat_template: Some("{% if tools %}...{% endif %}<think>".into()),
            ..GgufInfo::default()
        };
        assert_eq!(
            capabilities(&argv("llama-server -m a --mmproj p"), Some(&chat)),
            ["completion", "tools", "vision", "thinking"]
        );
        assert_eq!(
            capabilities(&argv("llama-server -m a --embeddings"), Some(&chat)),
            ["embedding"]
        );
        assert_eq!(capabilities(&argv("other"), None), ["completion"]);
        // A `capabilities` block adds what it declares, once.
        let declared = crate::config::Capabilities {
            input: vec!["text".into(), "image".into()],
            tools: true,
            ..Default::default()
        };
        assert_eq!(
            with_declared(vec!["completion", "tools"], &declared),
            ["completion", "tools", "vision"]
        );
        assert_eq!(with_declared(vec!["embedding"], &declared), ["embedding"]);
    }

    #[test]
    fn details_are_empty_when_unknown() {
        let unknown = details(&ModelFile::default());
        assert_eq!(
            unknown,
            json!({"parent_model": "", "format": "", "family": "", "families": null,
                   "parameter_size": "", "quantization_level": ""})
        );
        let mut info = GgufInfo {
            architecture: Some("llama".into()),
            parameter_count: Some(1_234_567),
            file_type: Some(1),
            ..GgufInfo::default()
        };
        info.metadata
            .insert("llama.context_length".into(), json!(2048));
        let file = ModelFile {
            info: Some(Arc::new(info)),
            ..ModelFile::default()
        };
        assert_eq!(
            details(&file),
            json!({"parent_model": "", "format": "gguf", "family": "llama", "families": ["llama"],
                   "parameter_size": "1.23M", "quantization_level": "F16", "context_length": 2048})
        );
    }
}
