//! Lending a body to the stream relay: its connection and decoder go to a thread that reads
//! without blocking (edge-triggered epoll), and come back before the body is dropped.

use std::io::{self, Read};
use std::net::TcpStream;

use super::{buffer, truncated, Body, Connection, Decoder};

/// A body's connection and decoder, lent to a thread that reads the body without blocking (the
/// proxy's relay, which moves established streams with epoll) and given back with
/// [`Body::restore`] before the body is dropped, so that a body read to its end still returns
/// its connection to the pool. Decoding and its errors are the same as [`Body::chunk`]'s.
pub struct Lent {
    connection: Option<Connection>,
    decoder: Decoder,
    until_close: bool,
    /// The last read did not fill the room it had: the socket was empty then (see
    /// `EdgeReader`).
    drained: bool,
    /// The peer has closed (or the socket failed): the edge shortcut no longer holds, since
    /// its end of file may have come with the data already read (see [`Lent::peer_closing`]).
    closing: bool,
}

/// Reads a lent (non-blocking) socket, but answers `WouldBlock` without a system call right
/// after a read that did not fill the room it was given: the socket was empty at that moment,
/// and the edge-triggered readiness the relay waits for reports any byte that arrived since.
/// That saves the relay one `recv` per event (the one that would only say "nothing more").
struct EdgeReader<'a> {
    stream: &'a TcpStream,
    drained: &'a mut bool,
    closing: bool,
}

impl Read for EdgeReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if std::mem::take(self.drained) && !self.closing {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let read = self.stream.read(out)?;
        *self.drained = read > 0 && read < out.len();
        Ok(read)
    }
}

impl Lent {
    /// The upstream socket (`None` once it was closed), for readiness polling.
    pub fn socket(&self) -> Option<&TcpStream> {
        self.connection
            .as_ref()
            .map(|connection| &*connection.stream)
    }

    /// The next decoded piece of the body, empty at its end, or a `WouldBlock` error when the
    /// socket has nothing more yet (the socket is in non-blocking mode while lent). After
    /// `WouldBlock`, call again only once edge-triggered readiness said the socket has news.
    pub fn chunk(&mut self) -> io::Result<&[u8]> {
        let Some(connection) = self.connection.as_mut() else {
            return if self.decoder.is_done() {
                Ok(&[])
            } else {
                Err(truncated())
            };
        };
        let mut reader = EdgeReader {
            stream: &connection.stream,
            drained: &mut self.drained,
            closing: self.closing,
        };
        match buffer::next_body_piece(&mut connection.buffer, &mut reader, &mut self.decoder) {
            Ok(0) if self.until_close => {
                self.connection = None;
                Ok(&[])
            }
            Ok(available) => Ok(match &self.connection {
                Some(connection) => &connection.buffer.data()[..available],
                None => &[],
            }),
            Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => {
                self.connection = None;
                Err(truncated())
            }
            Err(error) => Err(error),
        }
    }

    /// Marks `count` bytes of the last [`Lent::chunk`] as used.
    pub fn consume(&mut self, count: usize) {
        self.decoder.consume(count);
        if let Some(connection) = self.connection.as_mut() {
            connection.buffer.consume(count);
        }
    }

    /// Says the readiness event seen for the socket reported a hang-up (`EPOLLRDHUP`,
    /// `EPOLLHUP` or `EPOLLERR`). A close that arrives together with the last data gives no
    /// further edge, so from now on every [`Lent::chunk`] reads until it sees the end of file.
    pub fn peer_closing(&mut self) {
        self.closing = true;
    }
}

impl Body<'_> {
    /// Lends the connection and the decoder (the socket switched to non-blocking mode) until
    /// [`Body::restore`]; `None` when the connection is already closed or given back.
    pub fn lend(&mut self) -> Option<Lent> {
        let connection = self.connection.take()?;
        if connection.stream.set_nonblocking(true).is_err() {
            self.connection = Some(connection);
            return None;
        }
        Some(Lent {
            connection: Some(connection),
            decoder: self.decoder.clone(),
            until_close: self.until_close,
            drained: false,
            closing: false,
        })
    }

    /// Takes back what [`Body::lend`] lent, with the socket blocking again (a socket that
    /// cannot be switched back is closed rather than pooled).
    pub fn restore(&mut self, lent: Lent) {
        self.decoder = lent.decoder;
        self.connection = lent
            .connection
            .filter(|connection| connection.stream.set_nonblocking(false).is_ok());
        // The connection goes back to the pool when the body is dropped (see `available`).
    }
}
