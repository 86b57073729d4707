//! Integration tests: the real swapd binary with real fake-upstream children.

mod activity;
mod cli;
mod common;
mod lifecycle;
mod logs;
mod memory;
mod observability;
mod ollama;
mod ops;
mod peers;
mod promises;
mod proxy;
mod reload;
mod robustness;
mod routing;
mod scale;
mod security;
mod supervisor;
mod upgrade;
