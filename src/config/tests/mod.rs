//! Tests of the whole loading pipeline, from YAML text to `Config`, mirroring llama-swap's
//! rules (reference §1) and checking that every error names its key, problem and line.
//!
//! One file per topic; this one holds the shared helpers (`load_ok`, `load_err`, a fixed
//! environment for `${env.X}`).

use std::path::Path;
use std::time::Duration;

use serde_json::json;

use super::*;

mod commands;
mod files;
mod groups;
mod invalid;
mod macros;
mod settings;
mod yaml;

fn test_env(name: &str) -> Option<String> {
    match name {
        "SWAPD_TEST_DIR" => Some("/srv/models".to_string()),
        "SWAPD_TEST_KEY" => Some("sk-from-env".to_string()),
        _ => None,
    }
}

fn load_ok(text: &str) -> Loaded {
    parse(text, Path::new("config.yaml"), &test_env).unwrap_or_else(|error| panic!("{error}"))
}

fn load_err(text: &str) -> ConfigError {
    match parse(text, Path::new("config.yaml"), &test_env) {
        Ok(loaded) => panic!("expected an error, loaded {:#?}", loaded.config),
        Err(error) => error,
    }
}

fn secs(value: u64) -> Duration {
    Duration::from_secs(value)
}
