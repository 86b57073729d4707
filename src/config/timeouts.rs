//! llama-swap's `timeouts` block, for models and for peers. swapd uses `connect` (the longest
//! wait for a connection) and `responseHeader` (the longest wait for any read from the server,
//! instead of `swapd.upstreamTimeout`); `keepalive`, `tlsHandshake`, `expectContinue` and
//! `idleConn` tune Go's HTTP transport and are accepted without effect. As in llama-swap, 0
//! means "not set" (swapd's own default then applies).

use std::time::Duration;

use super::error::{ConfigError, Reporter};
use super::typed::Fields;

const KEYS: &[&str] = &[
    "connect",
    "keepalive",
    "responseHeader",
    "tlsHandshake",
    "expectContinue",
    "idleConn",
];

/// The two timeouts swapd applies; `None` where the block does not set one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Timeouts {
    pub connect: Option<Duration>,
    pub response_header: Option<Duration>,
}

/// Reads `timeouts` from a model's or a peer's fields.
pub(crate) fn build(
    fields: &Fields<'_>,
    reporter: &mut Reporter<'_>,
) -> Result<Timeouts, ConfigError> {
    let Some(timeouts) = fields.section("timeouts", KEYS, reporter)? else {
        return Ok(Timeouts::default());
    };
    let seconds =
        |key: &str, reporter: &mut Reporter<'_>| -> Result<Option<Duration>, ConfigError> {
            let value = timeouts.seconds(key, reporter, 0)?;
            Ok((value > 0).then(|| Duration::from_secs(value as u64)))
        };
    for key in ["keepalive", "tlsHandshake", "expectContinue", "idleConn"] {
        seconds(key, reporter)?;
    }
    Ok(Timeouts {
        connect: seconds("connect", reporter)?,
        response_header: seconds("responseHeader", reporter)?,
    })
}
