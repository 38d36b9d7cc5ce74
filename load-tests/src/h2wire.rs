//! Just enough HTTP/2 for a gRPC load driver: a client preface, constant pre-encoded request
//! headers, DATA frames within the server's connection window, and responses read without
//! decoding their header blocks. A unary gRPC answer that carries a message is OK; an error
//! answer is trailers-only (RFC 9113 framing; gRPC over HTTP/2 protocol).

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const OUR_WINDOW: u32 = (1 << 31) - 1;
/// How close to a wake-up time `read` stops trusting the timer (see there).
const SPIN_BELOW: std::time::Duration = std::time::Duration::from_millis(2);

pub enum Event {
    /// The stream ended; `message` is the gRPC message without its 5-byte prefix, or `None`
    /// for a trailers-only (error) answer.
    Done {
        stream: u32,
        message: Option<Vec<u8>>,
    },
    Failed {
        stream: u32,
    },
}

pub struct Connection {
    tcp: TcpStream,
    authority: String,
    header_blocks: HashMap<&'static str, Vec<u8>>,
    out: Vec<u8>,
    input: Vec<u8>,
    next_stream: u32,
    responses: HashMap<u32, Vec<u8>>,
    /// What the server still lets us send on the connection.
    send_window: i64,
    /// DATA frames waiting for window.
    blocked: VecDeque<(u32, Vec<u8>)>,
    received_since_update: u64,
}

impl Connection {
    pub async fn open(addr: SocketAddr) -> io::Result<Connection> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let mut c = Connection {
            tcp,
            authority: addr.to_string(),
            header_blocks: HashMap::new(),
            out: Vec::with_capacity(1 << 16),
            input: Vec::with_capacity(1 << 16),
            next_stream: 1,
            responses: HashMap::new(),
            send_window: 65_535,
            blocked: VecDeque::new(),
            received_since_update: 0,
        };
        c.out.extend_from_slice(PREFACE);
        // SETTINGS: ENABLE_PUSH = 0, INITIAL_WINDOW_SIZE = 2^31 - 1.
        let mut settings = Vec::new();
        settings.extend_from_slice(&[0, 2, 0, 0, 0, 0]);
        settings.extend_from_slice(&[0, 4]);
        settings.extend_from_slice(&OUR_WINDOW.to_be_bytes());
        frame(&mut c.out, SETTINGS, 0, 0, &settings);
        frame(&mut c.out, WINDOW_UPDATE, 0, 0, &(OUR_WINDOW - 65_535).to_be_bytes());
        c.flush().await?;
        Ok(c)
    }

    /// Queues a unary gRPC call (`body` is the length-prefixed message); returns its stream.
    pub fn send(&mut self, path: &'static str, body: &[u8]) -> u32 {
        let stream = self.next_stream;
        self.next_stream += 2;
        if !self.header_blocks.contains_key(path) {
            let block = request_headers(path, &self.authority);
            self.header_blocks.insert(path, block);
        }
        let block = &self.header_blocks[path];
        frame(&mut self.out, HEADERS, END_HEADERS, stream, block);
        if self.blocked.is_empty() && self.send_window >= body.len() as i64 {
            self.send_window -= body.len() as i64;
            frame(&mut self.out, DATA, END_STREAM, stream, body);
        } else {
            self.blocked.push_back((stream, body.to_vec()));
        }
        stream
    }

    pub async fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            self.tcp.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }

    /// Reads what has arrived (waiting at most until `wake`) and returns finished streams.
    pub async fn read(&mut self, wake: Option<Instant>) -> io::Result<Vec<Event>> {
        let n = match wake {
            // tokio's timer ticks in whole milliseconds: an open loop sleeping on it sends up
            // to 1 ms late, and that lateness would be counted as server latency. Near the
            // wake-up time, poll instead (the load core has nothing else to do).
            Some(at) if at <= Instant::now() + SPIN_BELOW => loop {
                match self.tcp.try_read_buf(&mut self.input) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if Instant::now() >= at {
                            return Ok(Vec::new());
                        }
                        tokio::task::yield_now().await;
                    }
                    Err(e) => return Err(e),
                }
            },
            Some(at) => {
                match tokio::time::timeout_at((at - SPIN_BELOW).into(), self.tcp.read_buf(&mut self.input)).await {
                    Ok(r) => r?,
                    Err(_) => return Ok(Vec::new()),
                }
            }
            None => self.tcp.read_buf(&mut self.input).await?,
        };
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the server closed the connection"));
        }
        let mut events = Vec::new();
        let mut at = 0;
        while self.input.len() - at >= 9 {
            let h = &self.input[at..at + 9];
            let len = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
            if self.input.len() - at < 9 + len {
                break;
            }
            let (kind, flags) = (h[3], h[4]);
            let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
            let payload = self.input[at + 9..at + 9 + len].to_vec();
            at += 9 + len;
            self.on_frame(kind, flags, stream, &payload, &mut events)?;
        }
        self.input.drain(..at);
        self.flush().await?;
        Ok(events)
    }

    fn on_frame(
        &mut self,
        kind: u8,
        flags: u8,
        stream: u32,
        payload: &[u8],
        events: &mut Vec<Event>,
    ) -> io::Result<()> {
        match kind {
            DATA => {
                self.received_since_update += payload.len() as u64;
                let data = if flags & PADDED != 0 && !payload.is_empty() {
                    &payload[1..payload.len() - usize::from(payload[0]).min(payload.len() - 1)]
                } else {
                    payload
                };
                self.responses.entry(stream).or_default().extend_from_slice(data);
                if flags & END_STREAM != 0 {
                    events.push(self.finish(stream));
                }
                if self.received_since_update > u64::from(OUR_WINDOW / 2) {
                    frame(&mut self.out, WINDOW_UPDATE, 0, 0, &(self.received_since_update as u32).to_be_bytes());
                    self.received_since_update = 0;
                }
            }
            HEADERS if flags & END_STREAM != 0 => events.push(self.finish(stream)),
            RST_STREAM => {
                self.responses.remove(&stream);
                events.push(Event::Failed { stream });
            }
            SETTINGS if flags & ACK == 0 => frame(&mut self.out, SETTINGS, ACK, 0, &[]),
            PING if flags & ACK == 0 => frame(&mut self.out, PING, ACK, 0, payload),
            WINDOW_UPDATE if stream == 0 && payload.len() == 4 => {
                self.send_window +=
                    i64::from(u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]) & 0x7fff_ffff);
                while let Some((s, body)) = self.blocked.front() {
                    if (body.len() as i64) > self.send_window {
                        break;
                    }
                    self.send_window -= body.len() as i64;
                    frame(&mut self.out, DATA, END_STREAM, *s, body);
                    self.blocked.pop_front();
                }
            }
            GOAWAY => return Err(io::Error::new(io::ErrorKind::ConnectionAborted, "the server sent GOAWAY")),
            _ => {}
        }
        Ok(())
    }

    fn finish(&mut self, stream: u32) -> Event {
        let data = self.responses.remove(&stream).unwrap_or_default();
        let message = (data.len() >= 5).then(|| data[5..].to_vec());
        Event::Done { stream, message }
    }
}

fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = payload.len() as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// HPACK without dynamic-table use: indexed `:method POST` and `:scheme http`, the rest as
/// literals without indexing (RFC 7541 §6.2.2), so the block is the same for every call.
fn request_headers(path: &str, authority: &str) -> Vec<u8> {
    let mut b = vec![0x83, 0x86];
    let literal = |b: &mut Vec<u8>, name_index: u8, value: &str| {
        b.push(name_index);
        string(b, value);
    };
    literal(&mut b, 0x04, path); // :path
    literal(&mut b, 0x01, authority); // :authority
    b.extend_from_slice(&[0x0f, 0x10]); // content-type (static index 31)
    string(&mut b, "application/grpc");
    b.push(0x00); // a new name: te
    string(&mut b, "te");
    string(&mut b, "trailers");
    b
}

fn string(b: &mut Vec<u8>, s: &str) {
    let mut len = s.len();
    if len < 127 {
        b.push(len as u8);
    } else {
        b.push(127);
        len -= 127;
        while len >= 128 {
            b.push((len % 128) as u8 | 0x80);
            len /= 128;
        }
        b.push(len as u8);
    }
    b.extend_from_slice(s.as_bytes());
}
