//! A small reader of `text/event-stream`: bytes in, messages (event name and data) out.
//!
//! Only what the API sends is needed: `event:`, `data:` (possibly on several lines), `id:`,
//! comments (`:` keep-alives) and blank lines that end a message. Lines may end in `\n` or
//! `\r\n` and may be split anywhere across chunks.

use std::collections::VecDeque;

use bytes::Bytes;
use futures_util::{Stream, StreamExt, stream};

/// One dispatched server-sent event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Message {
    /// `message` when the server named none.
    pub event: String,
    pub id: Option<String>,
    pub data: String,
}

/// Incremental parser state.
#[derive(Debug, Default)]
pub(crate) struct Parser {
    line: Vec<u8>,
    event: Option<String>,
    id: Option<String>,
    data: Vec<String>,
}

impl Parser {
    /// Feed a chunk; complete messages go to `out`.
    pub(crate) fn feed(&mut self, chunk: &[u8], out: &mut VecDeque<Message>) {
        for &b in chunk {
            if b == b'\n' {
                let mut line = std::mem::take(&mut self.line);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                self.line_done(&String::from_utf8_lossy(&line), out);
            } else {
                self.line.push(b);
            }
        }
    }

    fn line_done(&mut self, line: &str, out: &mut VecDeque<Message>) {
        if line.is_empty() {
            if !self.data.is_empty() || self.event.is_some() {
                out.push_back(Message {
                    event: self.event.take().unwrap_or_else(|| "message".to_owned()),
                    id: self.id.take(),
                    data: std::mem::take(&mut self.data).join("\n"),
                });
            }
            return;
        }
        if line.starts_with(':') {
            return;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => self.event = Some(value.to_owned()),
            "data" => self.data.push(value.to_owned()),
            "id" => self.id = Some(value.to_owned()),
            _ => {}
        }
    }
}

/// Turn a byte stream into a stream of messages.
pub(crate) fn messages<S>(bytes: S) -> impl Stream<Item = Result<Message, reqwest::Error>> + Send + 'static
where
    S: Stream<Item = Result<Bytes, reqwest::Error>> + Send + 'static,
{
    let state = (bytes.boxed(), Parser::default(), VecDeque::new(), false);
    stream::unfold(state, |(mut bytes, mut parser, mut ready, mut ended)| async move {
        loop {
            if let Some(message) = ready.pop_front() {
                return Some((Ok(message), (bytes, parser, ready, ended)));
            }
            if ended {
                return None;
            }
            match bytes.next().await {
                Some(Ok(chunk)) => parser.feed(&chunk, &mut ready),
                Some(Err(e)) => {
                    ended = true;
                    return Some((Err(e), (bytes, parser, ready, ended)));
                }
                None => ended = true,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(chunks: &[&str]) -> Vec<Message> {
        let mut parser = Parser::default();
        let mut out = VecDeque::new();
        for chunk in chunks {
            parser.feed(chunk.as_bytes(), &mut out);
        }
        out.into()
    }

    #[test]
    fn messages_split_across_chunks() {
        let got =
            parse(&["event: task_state\nid: 7\nda", "ta: {\"a\":1}\n", "\n: keep-alive\n\ndata: x\r\ndata: y\r\n\r\n"]);
        assert_eq!(
            got,
            vec![
                Message { event: "task_state".into(), id: Some("7".into()), data: "{\"a\":1}".into() },
                Message { event: "message".into(), id: None, data: "x\ny".into() },
            ]
        );
    }
}
