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
pub(crate) enum Reply {
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
pub(crate) enum ReadFrameError {
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
    read_body(recv, u32::from_be_bytes(header), limit).await
}

pub(crate) async fn write_reply(send: &mut SendStream, reply: Reply) -> Result<(), WriteError> {
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
    send.write_all_chunks(&mut [Bytes::copy_from_slice(&header), payload]).await
}

pub(crate) async fn read_reply(recv: &mut RecvStream, limit: usize) -> Result<Reply, ReadFrameError> {
    let mut header = [0u8; 5];
    recv.read_exact(&mut header).await?;
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    let payload = read_body(recv, len, limit).await?;
    let text = || String::from_utf8_lossy(&payload).into_owned();
    match header[0] {
        STATUS_OK => Ok(Reply::Ok(payload)),
        STATUS_HANDLER => Ok(Reply::Handler(text())),
        STATUS_REFUSED => Ok(Reply::Refused(text())),
        STATUS_TOO_LARGE => {
            let size = payload.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()).map_or(0, u64::from_be_bytes);
            let limit = payload.get(8..16).and_then(|b| <[u8; 8]>::try_from(b).ok()).map_or(0, u64::from_be_bytes);
            Ok(Reply::TooLarge { size, limit })
        }
        other => Err(ReadFrameError::BadStatus(other)),
    }
}

async fn read_body(recv: &mut RecvStream, len: u32, limit: usize) -> Result<Bytes, ReadFrameError> {
    let len = len as usize;
    if len > limit {
        return Err(ReadFrameError::TooLarge { size: len as u64, limit: limit as u64 });
    }
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
