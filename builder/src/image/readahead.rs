//! A reader that runs its source on another thread, a few chunks ahead, so decompression uses
//! the second core while the caller hashes, parses and writes on the first.

use std::io::{self, Read};
use std::sync::mpsc::{Receiver, sync_channel};
use std::thread::JoinHandle;

/// Bytes per chunk handed from the reading thread.
const CHUNK: usize = 256 << 10;
/// Chunks that may wait in the channel (bounds memory to about `CHUNK × (DEPTH + 2)`).
const DEPTH: usize = 4;

/// Reads `source` on a background thread. Errors from the source arrive in order, after the
/// bytes read before them; dropping the reader stops the thread at its next chunk.
pub struct ReadAhead {
    chunks: Receiver<io::Result<Vec<u8>>>,
    current: Vec<u8>,
    pos: usize,
    done: bool,
    thread: Option<JoinHandle<()>>,
}

impl ReadAhead {
    pub fn spawn(mut source: Box<dyn Read + Send>) -> ReadAhead {
        let (tx, rx) = sync_channel(DEPTH);
        let thread = std::thread::spawn(move || {
            loop {
                let mut buf = vec![0u8; CHUNK];
                let mut filled = 0;
                let result = loop {
                    match source.read(&mut buf[filled..]) {
                        Ok(0) => break Ok(()),
                        Ok(n) => {
                            filled += n;
                            if filled == buf.len() {
                                break Ok(());
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => break Err(e),
                    }
                };
                buf.truncate(filled);
                let end = filled < CHUNK;
                if filled > 0 && tx.send(Ok(buf)).is_err() {
                    return;
                }
                match result {
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                    Ok(()) if end => return,
                    Ok(()) => {}
                }
            }
        });
        ReadAhead {
            chunks: rx,
            current: Vec::new(),
            pos: 0,
            done: false,
            thread: Some(thread),
        }
    }
}

impl Read for ReadAhead {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.current.len() {
            if self.done {
                return Ok(0);
            }
            match self.chunks.recv() {
                Ok(Ok(chunk)) => {
                    self.current = chunk;
                    self.pos = 0;
                }
                Ok(Err(e)) => {
                    self.done = true;
                    return Err(e);
                }
                // The thread finished and hung up: end of stream.
                Err(_) => self.done = true,
            }
        }
        let n = out.len().min(self.current.len() - self.pos);
        out[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        // Unblock the thread's `send` by dropping our end first, then wait for it.
        let (_, dead) = sync_channel(0);
        drop(std::mem::replace(&mut self.chunks, dead));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Failing {
        left: usize,
    }
    impl Read for Failing {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            if self.left == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "corrupt deflate stream",
                ));
            }
            let n = out.len().min(self.left).min(1000);
            out[..n].fill(7);
            self.left -= n;
            Ok(n)
        }
    }

    #[test]
    fn yields_the_same_bytes() {
        let data: Vec<u8> = (0..3 * CHUNK + 12345)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let mut r = ReadAhead::spawn(Box::new(io::Cursor::new(data.clone())));
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        assert_eq!(got, data);
        assert_eq!(r.read(&mut [0u8; 8]).unwrap(), 0);
        let mut empty = ReadAhead::spawn(Box::new(io::empty()));
        assert_eq!(empty.read(&mut [0u8; 8]).unwrap(), 0);
    }

    #[test]
    fn errors_come_after_the_bytes_before_them() {
        let mut r = ReadAhead::spawn(Box::new(Failing { left: CHUNK + 10 }));
        let mut got = Vec::new();
        let err = r.read_to_end(&mut got).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert_eq!(err.to_string(), "corrupt deflate stream");
        assert_eq!(got.len(), CHUNK + 10);
    }

    #[test]
    fn dropping_early_stops_the_thread() {
        let mut r = ReadAhead::spawn(Box::new(io::repeat(1)));
        let mut buf = [0u8; 10];
        r.read_exact(&mut buf).unwrap();
        drop(r); // must return: the endless source's thread stops at its next send
    }
}
