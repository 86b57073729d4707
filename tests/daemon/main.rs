//! Integration tests: the real swapd binary with real fake-upstream children.

mod common;
mod proxy;
mod supervisor;
