//! swapd: a model-swapping proxy daemon for local LLM servers.
//!
//! The library holds everything; `main.rs` only parses arguments and picks the exit code,
//! so integration tests and benches reach the same code the daemon runs.

// Unsafe code only where swapd calls libc directly (signals, sockets, process groups, sysconf,
// sd_notify); every `unsafe` block there has a `// SAFETY:` comment (ARCHITECTURE.md).
#![deny(unsafe_code)]

pub mod activity;
pub mod config;
#[allow(unsafe_code)]
pub mod daemon;
#[allow(unsafe_code)]
pub mod http;
pub mod logbuf;
pub mod logs;
#[allow(unsafe_code)]
pub mod metrics;
pub mod ollama;
#[allow(unsafe_code)]
pub mod proxy;
pub mod reload;
#[allow(unsafe_code)]
pub mod supervisor;
#[allow(unsafe_code)]
pub mod systemd;
pub mod timefmt;
#[allow(unsafe_code)]
pub mod upstream;
