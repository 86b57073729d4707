//! Protocol upgrades (websockets) through the upstream client: the request goes out on a new
//! connection of its own, and a `101 Switching Protocols` hands that connection over whole.

use super::{
    exchange, request_head, split_base, Client, Request, Response, ResponseHead, UpstreamError,
};
use std::io;
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

/// What an upgrade request got.
pub enum Upgrade<'c> {
    /// `101 Switching Protocols`: the connection now carries the new protocol.
    Switched(Switched),
    /// Any other answer, read like a normal response (its connection may be pooled after).
    Refused(Response<'c>),
}

/// An upgraded connection.
pub struct Switched {
    /// The 101 response head as received; [`Switched::parsed`] indexes it.
    pub head: Vec<u8>,
    pub parsed: ResponseHead,
    /// The connection, blocking and without timeouts.
    pub stream: TcpStream,
    /// Bytes of the new protocol the upstream sent right after its head.
    pub early: Vec<u8>,
}

impl Client {
    /// Sends an upgrade request (its headers carry `Connection: Upgrade` and `Upgrade`) to the
    /// upstream at `base` on a connection of its own, never a pooled one, and waits at most
    /// `timeout` for each read of the answer's head.
    pub fn upgrade(
        &self,
        base: &str,
        request: &Request<'_>,
        timeout: Duration,
    ) -> Result<Upgrade<'_>, UpstreamError> {
        let (authority, base_path) = split_base(base)?;
        let head = request_head(authority, base_path, request);
        let mut connection = self.connect(authority, self.connect_timeout)?;
        connection
            .set_read_timeout(Some(timeout))
            .map_err(UpstreamError::Io)?;
        let (head_end, parsed) = exchange(&mut connection, &head, request, true)?;
        if parsed.status != 101 {
            let head_request = request.method.eq_ignore_ascii_case("HEAD");
            return Ok(Upgrade::Refused(Response::new(
                self,
                authority,
                connection,
                head_end,
                parsed,
                head_request,
            )));
        }
        connection
            .set_read_timeout(None)
            .map_err(UpstreamError::Io)?;
        let data = connection.buffer.data();
        let (head, early) = (data[..head_end].to_vec(), data[head_end..].to_vec());
        // Nobody else holds the socket: it was never pooled or observed.
        let stream = Arc::try_unwrap(connection.stream)
            .map_err(|_| UpstreamError::Io(io::Error::other("the upgraded socket is shared")))?;
        Ok(Upgrade::Switched(Switched {
            head,
            parsed,
            stream,
            early,
        }))
    }
}
