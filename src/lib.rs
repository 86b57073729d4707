//! swapd: a model-swapping proxy daemon for local LLM servers.
//!
//! The library holds everything; `main.rs` only parses arguments and picks the exit code,
//! so integration tests and benches reach the same code the daemon runs.

pub mod activity;
pub mod config;
pub mod daemon;
pub mod http;
pub mod logbuf;
pub mod logs;
pub mod metrics;
pub mod ollama;
pub mod proxy;
pub mod reload;
pub mod supervisor;
pub mod systemd;
pub mod timefmt;
pub mod upstream;
