//! A minimal HTTP/1.1 keep-alive client for the server bench: one TCP
//! connection per client thread, requests written from pre-built bytes,
//! answers read by their `Content-Length` (or chunked). The bench measures
//! the server, so the load generator must cost little of the 2 cores it
//! shares with it; ureq spent about twice this client's CPU per request.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;

/// A keep-alive connection to the server at `addr` (`host:port`).
pub struct Raw {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    request: Vec<u8>,
    line: String,
    body: Vec<u8>,
}

impl Raw {
    pub fn connect(addr: &str) -> Raw {
        let s = TcpStream::connect(addr).expect("the server accepts");
        s.set_nodelay(true).expect("TCP_NODELAY");
        let writer = s.try_clone().expect("a second handle on the socket");
        Raw {
            reader: BufReader::with_capacity(16 << 10, s),
            writer,
            request: Vec::with_capacity(1024),
            line: String::new(),
            body: Vec::new(),
        }
    }

    /// `GET path`; true on a 200 with its body read.
    pub fn get(&mut self, path: &str) -> bool {
        self.request.clear();
        let _ = write!(self.request, "GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n");
        self.round_trip()
    }

    /// `POST path` with an NDJSON body; true on a 200 with its body read.
    pub fn post(&mut self, path: &str, body: &[u8]) -> bool {
        self.request.clear();
        let _ = write!(
            self.request,
            "POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/x-ndjson\r\n\
             Content-Length: {}\r\n\r\n",
            body.len()
        );
        self.request.extend_from_slice(body);
        self.round_trip()
    }

    fn round_trip(&mut self) -> bool {
        if self.writer.write_all(&self.request).is_err() {
            return false;
        }
        let status = match self.read_line() {
            Some(l) => l.split(' ').nth(1).and_then(|s| s.parse::<u16>().ok()),
            None => return false,
        };
        let (mut length, mut chunked) = (None, false);
        loop {
            let Some(l) = self.read_line() else {
                return false;
            };
            if l.is_empty() {
                break;
            }
            let lower = l.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse::<usize>().ok();
            } else if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
                chunked = true;
            }
        }
        let read = match (chunked, length) {
            (true, _) => self.read_chunked(),
            (false, Some(n)) => self.read_body(n),
            (false, None) => false,
        };
        read && status == Some(200)
    }

    /// The next line without its CRLF (None at end of stream).
    fn read_line(&mut self) -> Option<String> {
        self.line.clear();
        match self.reader.read_line(&mut self.line) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(self.line.trim_end_matches(['\r', '\n']).to_owned()),
        }
    }

    fn read_body(&mut self, n: usize) -> bool {
        self.body.resize(n, 0);
        self.reader.read_exact(&mut self.body).is_ok()
    }

    fn read_chunked(&mut self) -> bool {
        loop {
            let size = self
                .read_line()
                .and_then(|l| usize::from_str_radix(l.split(';').next()?.trim(), 16).ok());
            match size {
                None => return false,
                Some(0) => return self.read_line().is_some(),
                Some(n) => {
                    if !self.read_body(n) || self.read_line().is_none() {
                        return false;
                    }
                }
            }
        }
    }
}
