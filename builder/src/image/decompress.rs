//! Reading a layer's uncompressed tar stream out of its verified blob.
//!
//! [`LayerReader`] reads the blob's byte range, checks that the stream's magic agrees with the
//! compression the media type promised, decompresses gzip or zstd, caps how many bytes may come
//! out (a total cap and a ratio to the compressed size, against decompression bombs), hashes
//! everything it yields and checks the hash against the layer's `diff_id` at end of stream.

use super::readahead::ReadAhead;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};

use sha2::{Digest, Sha256};

use super::{Compression, Layer};

/// gzip member magic.
pub const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// zstd frame magic (0xFD2FB528 little endian).
pub const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Bounds on what one layer may expand to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most uncompressed bytes one layer may yield.
    pub max_expanded: u64,
    /// Most uncompressed bytes per compressed byte, once past `ratio_floor`.
    pub max_ratio: u64,
    /// Expansion always allowed regardless of the ratio (small layers of zeros are legitimate).
    pub ratio_floor: u64,
    /// Largest zstd window accepted, as a power of two (the decoder allocates the window).
    pub zstd_window_log_max: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_expanded: 64 << 30,
            // gzip tops out near 1032:1 on zeros; real layers are rarely past 20:1.
            max_ratio: 1000,
            ratio_floor: 256 << 20,
            zstd_window_log_max: 27,
        }
    }
}

impl Limits {
    /// The most bytes a blob of `compressed` bytes may expand to.
    pub fn cap_for(&self, compressed: u64) -> u64 {
        let by_ratio = compressed
            .saturating_mul(self.max_ratio)
            .max(self.ratio_floor);
        by_ratio.min(self.max_expanded)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DecompressError {
    #[error("layer {digest}: cannot read blob")]
    Io {
        digest: String,
        #[source]
        source: io::Error,
    },
    #[error("layer {digest}: media type says {expected} but the stream is {found}")]
    MagicMismatch {
        digest: String,
        expected: &'static str,
        found: &'static str,
    },
    #[error("layer {digest}: corrupt {format} stream")]
    Corrupt {
        digest: String,
        format: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("layer {digest}: zstd window of {window} bytes is over the limit of {limit}")]
    ZstdWindow {
        digest: String,
        window: u64,
        limit: u64,
    },
    #[error("layer {digest}: expands past the limit of {limit} bytes")]
    TooLarge { digest: String, limit: u64 },
    #[error("layer {digest}: uncompressed digest is {actual}, config diff_id says {expected}")]
    DiffIdMismatch {
        digest: String,
        expected: String,
        actual: String,
    },
}

impl DecompressError {
    /// Wraps `self` in an `io::Error` (for `Read` impls); [`DecompressError::from_io`] undoes it.
    pub fn into_io(self) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, self)
    }

    /// Takes a `DecompressError` back out of an `io::Error` made by [`DecompressError::into_io`].
    pub fn from_io(err: io::Error) -> Result<DecompressError, io::Error> {
        if err
            .get_ref()
            .is_some_and(|e| e.downcast_ref::<DecompressError>().is_some())
        {
            let inner = err.into_inner().expect("checked above");
            Ok(*inner.downcast::<DecompressError>().expect("checked above"))
        } else {
            Err(err)
        }
    }
}

/// What the first bytes of a stream say it is.
pub fn sniff(head: &[u8]) -> Compression {
    if head.starts_with(&GZIP_MAGIC) {
        Compression::Gzip
    } else if head.starts_with(&ZSTD_MAGIC) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

fn name(c: Compression) -> &'static str {
    match c {
        Compression::None => "plain tar",
        Compression::Gzip => "gzip",
        Compression::Zstd => "zstd",
    }
}

/// The window size a zstd frame header declares, or `None` if the header is incomplete or
/// not a zstd frame. Pure, for the first frame of a stream.
pub fn zstd_window_size(head: &[u8]) -> Option<u64> {
    if !head.starts_with(&ZSTD_MAGIC) {
        return None;
    }
    let fhd = *head.get(4)?;
    let fcs_flag = fhd >> 6;
    let single_segment = fhd & 0x20 != 0;
    let dict_len = [0usize, 1, 2, 4][usize::from(fhd & 3)];
    if !single_segment {
        let wd = *head.get(5)?;
        let log = 10 + u64::from(wd >> 3);
        let base = 1u64 << log;
        return Some(base + (base / 8) * u64::from(wd & 7));
    }
    // Single segment: the window is the frame content size.
    let at = 5 + dict_len;
    let fcs_len = [1usize, 2, 4, 8][usize::from(fcs_flag)];
    let bytes = head.get(at..at + fcs_len)?;
    let mut v = 0u64;
    for (i, b) in bytes.iter().enumerate() {
        v |= u64::from(*b) << (8 * i);
    }
    Some(if fcs_len == 2 { v + 256 } else { v })
}

/// The uncompressed tar stream of one layer, hashed and checked against `diff_id` at its end.
pub struct LayerReader {
    inner: Box<dyn Read + Send>,
    format: Compression,
    hasher: Sha256,
    expanded: u64,
    cap: u64,
    digest: String,
    diff_id: String,
    finished: bool,
}

impl std::fmt::Debug for LayerReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayerReader")
            .field("digest", &self.digest)
            .field("expanded", &self.expanded)
            .finish()
    }
}

impl LayerReader {
    /// Opens `layer`'s blob range and checks its magic against `layer.compression`.
    pub fn open(layer: &Layer, limits: &Limits) -> Result<Self, DecompressError> {
        let io_err = |source| DecompressError::Io {
            digest: layer.digest.clone(),
            source,
        };
        let mut file = File::open(&layer.blob).map_err(io_err)?;
        file.seek(SeekFrom::Start(layer.offset)).map_err(io_err)?;
        Self::new(
            file.take(layer.size),
            layer.size,
            layer.compression,
            &layer.digest,
            &layer.diff_id,
            limits,
        )
    }

    /// A reader over the compressed stream `raw` of `size` bytes. `digest` names the layer in
    /// errors; `diff_id` is the expected `sha256:` of the uncompressed stream.
    pub fn new<R: Read + Send + 'static>(
        raw: R,
        size: u64,
        compression: Compression,
        digest: &str,
        diff_id: &str,
        limits: &Limits,
    ) -> Result<Self, DecompressError> {
        let mut raw = BufReader::with_capacity(128 << 10, raw);
        let mut head = Vec::with_capacity(18);
        (&mut raw)
            .take(18)
            .read_to_end(&mut head)
            .map_err(|source| DecompressError::Io {
                digest: digest.to_string(),
                source,
            })?;
        let found = sniff(&head);
        if found != compression {
            return Err(DecompressError::MagicMismatch {
                digest: digest.to_string(),
                expected: name(compression),
                found: name(found),
            });
        }
        let stream = io::Cursor::new(head.clone()).chain(raw);
        let inner: Box<dyn Read + Send> = match compression {
            Compression::None => Box::new(stream),
            // Inflate on another thread, ahead of the caller (see `readahead`).
            Compression::Gzip => Box::new(ReadAhead::spawn(Box::new(
                flate2::read::MultiGzDecoder::new(stream),
            ))),
            Compression::Zstd => {
                let limit = 1u64 << limits.zstd_window_log_max;
                if let Some(window) = zstd_window_size(&head)
                    && window > limit
                {
                    return Err(DecompressError::ZstdWindow {
                        digest: digest.to_string(),
                        window,
                        limit,
                    });
                }
                let corrupt = |source| DecompressError::Corrupt {
                    digest: digest.to_string(),
                    format: "zstd",
                    source,
                };
                let mut d = zstd::stream::read::Decoder::new(stream).map_err(corrupt)?;
                d.window_log_max(limits.zstd_window_log_max)
                    .map_err(corrupt)?;
                Box::new(ReadAhead::spawn(Box::new(d)))
            }
        };
        Ok(LayerReader {
            inner,
            format: compression,
            hasher: Sha256::new(),
            expanded: 0,
            cap: limits.cap_for(size),
            digest: digest.to_string(),
            diff_id: diff_id.to_string(),
            finished: false,
        })
    }

    /// Uncompressed bytes yielded so far.
    pub fn expanded(&self) -> u64 {
        self.expanded
    }

    /// Reads the rest of the stream (tar padding after the end marker counts in the diff_id)
    /// and checks the diff_id.
    pub fn finish(mut self) -> Result<(), DecompressError> {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match self.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(DecompressError::from_io(e).unwrap_or_else(|e| {
                        DecompressError::Corrupt {
                            digest: self.digest.clone(),
                            format: name(self.format),
                            source: e,
                        }
                    }));
                }
            }
        }
    }

    fn check_diff_id(&self) -> Result<(), DecompressError> {
        let actual = format!("sha256:{}", hex::encode(self.hasher.clone().finalize()));
        if actual != self.diff_id {
            return Err(DecompressError::DiffIdMismatch {
                digest: self.digest.clone(),
                expected: self.diff_id.clone(),
                actual,
            });
        }
        Ok(())
    }
}

impl Read for LayerReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.finished || buf.is_empty() {
            return Ok(0);
        }
        // Ask for at most one byte past the cap so crossing it is noticed.
        let room = (self.cap - self.expanded).saturating_add(1);
        let want = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let n = match self.inner.read(&mut buf[..want]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(e),
            Err(e) => {
                let e = match DecompressError::from_io(e) {
                    Ok(d) => d,
                    Err(source) => DecompressError::Corrupt {
                        digest: self.digest.clone(),
                        format: name(self.format),
                        source,
                    },
                };
                return Err(e.into_io());
            }
        };
        if n == 0 {
            self.finished = true;
            self.check_diff_id().map_err(DecompressError::into_io)?;
            return Ok(0);
        }
        self.expanded += n as u64;
        if self.expanded > self.cap {
            return Err(DecompressError::TooLarge {
                digest: self.digest.clone(),
                limit: self.cap,
            }
            .into_io());
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// `sha256:<hex>` of `bytes` (for tests and fixtures).
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn read_all(
        blob: Vec<u8>,
        c: Compression,
        diff_id: &str,
        limits: &Limits,
    ) -> Result<Vec<u8>, DecompressError> {
        let size = blob.len() as u64;
        let mut r = LayerReader::new(
            io::Cursor::new(blob),
            size,
            c,
            "sha256:blob",
            diff_id,
            limits,
        )?;
        let mut out = Vec::new();
        r.read_to_end(&mut out)
            .map_err(|e| DecompressError::from_io(e).expect("decompress error"))?;
        Ok(out)
    }

    #[test]
    fn plain_gzip_zstd_round_trip() {
        let data = b"hello world".repeat(1000);
        let id = sha256_digest(&data);
        let l = Limits::default();
        assert_eq!(
            read_all(data.clone(), Compression::None, &id, &l).unwrap(),
            data
        );
        assert_eq!(
            read_all(gz(&data), Compression::Gzip, &id, &l).unwrap(),
            data
        );
        let z = zstd::encode_all(&data[..], 3).unwrap();
        assert_eq!(read_all(z, Compression::Zstd, &id, &l).unwrap(), data);
    }

    #[test]
    fn multi_member_gzip_is_one_stream() {
        let mut blob = gz(b"abc");
        blob.extend(gz(b"def"));
        let id = sha256_digest(b"abcdef");
        let out = read_all(blob, Compression::Gzip, &id, &Limits::default()).unwrap();
        assert_eq!(out, b"abcdef");
    }

    #[test]
    fn magic_must_match_media_type() {
        let data = vec![0u8; 1024];
        let id = sha256_digest(&data);
        let l = Limits::default();
        for (blob, c) in [
            (data.clone(), Compression::Gzip),
            (gz(&data), Compression::None),
            (gz(&data), Compression::Zstd),
            (zstd::encode_all(&data[..], 1).unwrap(), Compression::Gzip),
            (Vec::new(), Compression::Gzip),
        ] {
            let e = read_all(blob, c, &id, &l).unwrap_err();
            assert!(matches!(e, DecompressError::MagicMismatch { .. }), "{e}");
            assert!(e.to_string().contains("sha256:blob"));
        }
    }

    #[test]
    fn diff_id_mismatch_names_both() {
        let data = b"payload".to_vec();
        let wrong = sha256_digest(b"other");
        let e = read_all(gz(&data), Compression::Gzip, &wrong, &Limits::default()).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, DecompressError::DiffIdMismatch { .. }));
        assert!(
            msg.contains(&wrong) && msg.contains(&sha256_digest(&data)),
            "{msg}"
        );
    }

    #[test]
    fn caps_stop_bombs() {
        let data = vec![0u8; 8 << 20];
        let id = sha256_digest(&data);
        let limits = Limits {
            max_expanded: 1 << 20,
            ..Limits::default()
        };
        let e = read_all(gz(&data), Compression::Gzip, &id, &limits).unwrap_err();
        assert!(matches!(e, DecompressError::TooLarge { limit, .. } if limit == 1 << 20));
        let ratio = Limits {
            max_ratio: 10,
            ratio_floor: 0,
            ..Limits::default()
        };
        let blob = zstd::encode_all(&data[..], 3).unwrap();
        let cap = blob.len() as u64 * 10;
        let e = read_all(blob, Compression::Zstd, &id, &ratio).unwrap_err();
        assert!(matches!(e, DecompressError::TooLarge { limit, .. } if limit == cap));
        // Exactly at the cap is fine.
        let exact = Limits {
            max_expanded: data.len() as u64,
            ..Limits::default()
        };
        assert_eq!(
            read_all(gz(&data), Compression::Gzip, &id, &exact)
                .unwrap()
                .len(),
            data.len()
        );
    }

    #[test]
    fn zstd_window_header_is_parsed() {
        // Window descriptor: exponent 17 (log 27), mantissa 0.
        assert_eq!(
            zstd_window_size(&[0x28, 0xb5, 0x2f, 0xfd, 0x00, 17 << 3]),
            Some(1 << 27)
        );
        assert_eq!(
            zstd_window_size(&[0x28, 0xb5, 0x2f, 0xfd, 0x00, (20 << 3) | 4]),
            Some((1 << 30) + (1 << 29))
        );
        // Single segment, 2-byte content size field.
        assert_eq!(
            zstd_window_size(&[0x28, 0xb5, 0x2f, 0xfd, 0x60, 0x00, 0x01]),
            Some(256 + 256)
        );
        assert_eq!(zstd_window_size(&[0x28, 0xb5, 0x2f, 0xfd]), None);
        assert_eq!(zstd_window_size(b"xxxxxx"), None);
    }

    #[test]
    fn zstd_big_window_is_refused() {
        let data = vec![7u8; 1 << 16];
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        enc.set_parameter(zstd::zstd_safe::CParameter::WindowLog(30))
            .unwrap();
        enc.set_pledged_src_size(None).unwrap();
        enc.write_all(&data).unwrap();
        let blob = enc.finish().unwrap();
        let id = sha256_digest(&data);
        let e = read_all(blob.clone(), Compression::Zstd, &id, &Limits::default()).unwrap_err();
        assert!(matches!(e, DecompressError::ZstdWindow { .. }), "{e}");
        let roomy = Limits {
            zstd_window_log_max: 30,
            ..Limits::default()
        };
        assert_eq!(
            read_all(blob, Compression::Zstd, &id, &roomy).unwrap(),
            data
        );
    }

    #[test]
    fn truncated_streams_are_corrupt() {
        let data: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let id = sha256_digest(&data);
        let mut g = gz(&data);
        g.truncate(g.len() / 2);
        let e = read_all(g, Compression::Gzip, &id, &Limits::default()).unwrap_err();
        assert!(
            matches!(e, DecompressError::Corrupt { format: "gzip", .. }),
            "{e}"
        );
        let mut z = zstd::encode_all(&data[..], 3).unwrap();
        z.truncate(z.len() / 2);
        let e = read_all(z, Compression::Zstd, &id, &Limits::default()).unwrap_err();
        assert!(
            matches!(e, DecompressError::Corrupt { format: "zstd", .. }),
            "{e}"
        );
    }
}
