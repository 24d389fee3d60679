//! Framing of one request and its reply on one bidirectional QUIC stream.
//!
//! Request: `u32` big-endian length, then the body; the client then finishes its half.
//! Reply: one status byte, `u32` big-endian length, then the payload. Lengths come first so a
//! reader refuses an oversize message before reading it, and reports its exact size; bodies are
//! read chunk by chunk as they arrive, so a peer that announces a large message and sends
//! nothing costs no memory.

use bytes::{Bytes, BytesMut};
use quinn::{ReadError, ReadExactError, RecvStream, SendStream, WriteError};

const STATUS_OK: u8 = 0;
const STATUS_HANDLER: u8 = 1;
const STATUS_REFUSED: u8 = 2;
const STATUS_TOO_LARGE: u8 = 3;

/// Bodies are read in chunks of at most this much, whatever the announced length.
const CHUNK: usize = 64 * 1024;

/// The outcome of one request, as the serving node reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Ok(Bytes),
    /// The handler ran and failed with this message.
    Handler(String),
    /// The node would not serve the request (not admitted, no handler for the protocol).
    Refused(String),
    /// The request exceeded the serving node's limit.
    TooLarge {
        size: u64,
        limit: u64,
    },
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadFrameError {
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: u64, limit: u64 },
    #[error("stream ended inside a frame")]
    Truncated,
    #[error("unknown reply status {0}")]
    BadStatus(u8),
    #[error(transparent)]
    Stream(#[from] ReadError),
}

impl From<ReadExactError> for ReadFrameError {
    fn from(e: ReadExactError) -> Self {
        match e {
            ReadExactError::FinishedEarly(_) => ReadFrameError::Truncated,
            ReadExactError::ReadError(e) => ReadFrameError::Stream(e),
        }
    }
}

pub(crate) async fn write_request(send: &mut SendStream, body: Bytes) -> Result<(), WriteError> {
    let header = Bytes::copy_from_slice(&frame_len(body.len()).to_be_bytes());
    send.write_all_chunks(&mut [header, body]).await
}

pub(crate) async fn read_request(recv: &mut RecvStream, limit: usize) -> Result<Bytes, ReadFrameError> {
    let mut header = [0u8; 4];
    recv.read_exact(&mut header).await?;
    let len = body_len(u32::from_be_bytes(header), limit)?;
    read_body(recv, len).await
}

pub(crate) async fn write_reply(send: &mut SendStream, reply: Reply) -> Result<(), WriteError> {
    let (header, payload) = reply_frame(reply);
    send.write_all_chunks(&mut [Bytes::copy_from_slice(&header), payload]).await
}

/// The header and payload of a reply frame.
fn reply_frame(reply: Reply) -> ([u8; 5], Bytes) {
    let (status, payload) = match reply {
        Reply::Ok(body) => (STATUS_OK, body),
        Reply::Handler(message) => (STATUS_HANDLER, Bytes::from(message)),
        Reply::Refused(reason) => (STATUS_REFUSED, Bytes::from(reason)),
        Reply::TooLarge { size, limit } => {
            let mut payload = [0u8; 16];
            payload[..8].copy_from_slice(&size.to_be_bytes());
            payload[8..].copy_from_slice(&limit.to_be_bytes());
            (STATUS_TOO_LARGE, Bytes::copy_from_slice(&payload))
        }
    };
    let mut header = [0u8; 5];
    header[0] = status;
    header[1..].copy_from_slice(&frame_len(payload.len()).to_be_bytes());
    (header, payload)
}

pub(crate) async fn read_reply(recv: &mut RecvStream, limit: usize) -> Result<Reply, ReadFrameError> {
    let mut header = [0u8; 5];
    recv.read_exact(&mut header).await?;
    let (status, len) = reply_header(header, limit)?;
    let payload = read_body(recv, len).await?;
    Ok(reply_from(status, payload))
}

/// The announced body length, refused before anything is read or allocated if over `limit`.
fn body_len(len: u32, limit: usize) -> Result<usize, ReadFrameError> {
    let len = len as usize;
    if len > limit {
        return Err(ReadFrameError::TooLarge { size: len as u64, limit: limit as u64 });
    }
    Ok(len)
}

/// A reply header's status (checked here, before the payload is read) and payload length.
fn reply_header(header: [u8; 5], limit: usize) -> Result<(u8, usize), ReadFrameError> {
    let status = header[0];
    if !matches!(status, STATUS_OK | STATUS_HANDLER | STATUS_REFUSED | STATUS_TOO_LARGE) {
        return Err(ReadFrameError::BadStatus(status));
    }
    let len = body_len(u32::from_be_bytes([header[1], header[2], header[3], header[4]]), limit)?;
    Ok((status, len))
}

/// The reply a checked status and its payload stand for.
fn reply_from(status: u8, payload: Bytes) -> Reply {
    let text = || String::from_utf8_lossy(&payload).into_owned();
    match status {
        STATUS_OK => Reply::Ok(payload),
        STATUS_HANDLER => Reply::Handler(text()),
        STATUS_REFUSED => Reply::Refused(text()),
        _ => {
            let size = payload.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()).map_or(0, u64::from_be_bytes);
            let limit = payload.get(8..16).and_then(|b| <[u8; 8]>::try_from(b).ok()).map_or(0, u64::from_be_bytes);
            Reply::TooLarge { size, limit }
        }
    }
}

async fn read_body(recv: &mut RecvStream, len: usize) -> Result<Bytes, ReadFrameError> {
    let mut body = BytesMut::with_capacity(len.min(CHUNK));
    while body.len() < len {
        let want = (len - body.len()).min(CHUNK);
        match recv.read_chunk(want, true).await? {
            Some(chunk) => body.extend_from_slice(&chunk.bytes),
            None => return Err(ReadFrameError::Truncated),
        }
    }
    Ok(body.freeze())
}

/// Length field of a frame. Callers check sizes against `max_message_bytes`, which the config
/// caps below `u32::MAX`, so saturation never changes a length that is actually sent.
fn frame_len(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

/// The framing over a whole frame held in memory, for fuzzing and tests: the same header checks
/// as the stream readers, in the same order. Bytes after the frame are ignored, as a stream
/// reader never reads them.
pub mod in_memory {
    use bytes::Bytes;

    pub use super::{ReadFrameError, Reply};

    /// A request frame: length, then body.
    pub fn encode_request(body: &[u8]) -> Vec<u8> {
        let mut out = super::frame_len(body.len()).to_be_bytes().to_vec();
        out.extend_from_slice(body);
        out
    }

    /// The body of a request frame, as the serving side reads it.
    pub fn decode_request(frame: &[u8], limit: usize) -> Result<Bytes, ReadFrameError> {
        let header = frame.get(..4).ok_or(ReadFrameError::Truncated)?;
        let len = super::body_len(u32::from_be_bytes([header[0], header[1], header[2], header[3]]), limit)?;
        frame.get(4..4 + len).map(Bytes::copy_from_slice).ok_or(ReadFrameError::Truncated)
    }

    /// A reply frame: status, length, then payload.
    pub fn encode_reply(reply: Reply) -> Vec<u8> {
        let (header, payload) = super::reply_frame(reply);
        let mut out = header.to_vec();
        out.extend_from_slice(&payload);
        out
    }

    /// The reply in a reply frame, as the requesting side reads it.
    pub fn decode_reply(frame: &[u8], limit: usize) -> Result<Reply, ReadFrameError> {
        let header = frame.get(..5).and_then(|h| <[u8; 5]>::try_from(h).ok()).ok_or(ReadFrameError::Truncated)?;
        let (status, len) = super::reply_header(header, limit)?;
        let payload = frame.get(5..5 + len).map(Bytes::copy_from_slice).ok_or(ReadFrameError::Truncated)?;
        Ok(super::reply_from(status, payload))
    }
}

#[cfg(test)]
mod tests {
    use super::in_memory::{decode_reply, decode_request, encode_reply, encode_request};
    use super::*;

    #[test]
    fn an_announced_length_over_the_limit_is_refused_from_the_header_alone() {
        let frame = [0, 0, 1, 0];
        assert!(matches!(decode_request(&frame, 255), Err(ReadFrameError::TooLarge { size: 256, limit: 255 })));
        let frame = [STATUS_OK, 0xff, 0xff, 0xff, 0xff];
        assert!(matches!(
            decode_reply(&frame, 1 << 20),
            Err(ReadFrameError::TooLarge { size: 0xffff_ffff, limit: 0x10_0000 })
        ));
    }

    #[test]
    fn an_unknown_status_is_refused_before_the_payload_is_read() {
        assert!(matches!(decode_reply(&[9, 0xff, 0xff, 0xff, 0xff], 1), Err(ReadFrameError::BadStatus(9))));
    }

    #[test]
    fn frames_round_trip_and_short_ones_are_truncated() {
        assert_eq!(decode_request(&encode_request(b"hello"), 5).unwrap(), "hello");
        assert!(matches!(decode_request(&encode_request(b"hello")[..8], 5), Err(ReadFrameError::Truncated)));
        for reply in [
            Reply::Ok(Bytes::from_static(b"x")),
            Reply::Handler("failed".into()),
            Reply::Refused("no".into()),
            Reply::TooLarge { size: 10, limit: 5 },
        ] {
            assert_eq!(decode_reply(&encode_reply(reply.clone()), 64).unwrap(), reply);
        }
    }
}
