//! A small, strict tar reader for untrusted layers: ustar, GNU and PAX.
//!
//! [`parse_header`] and [`parse_pax`] are pure functions over bytes (fuzz targets use them).
//! [`Archive`] walks a stream: it folds GNU long names (`L`/`K`) and PAX extended headers
//! (`x`) into the entry they precede, skips PAX global headers (`g`, bounded), and hands out
//! each entry's data as a reader of exactly its size, skipping padding.
//!
//! Rules chosen for ambiguous input:
//! - PAX `size` overrides the header's size field (POSIX). If the header's field is non-zero
//!   and disagrees, the archive means different things to different readers: error
//!   [`TarError::SizeConflict`].
//! - Header-only types (hardlink, symlink, char/block device, directory, fifo) must have size 0:
//!   readers disagree about whether such data exists ([`TarError::DataOnHeaderOnly`]).
//! - PAX, GNU long name/link and global headers are at most [`MAX_META_SIZE`] bytes, checked
//!   before anything is allocated; metadata headers may not chain forever.
//! - End of archive is a zero block (the second one is read if present), or end of stream at
//!   a header boundary or inside the last entry's padding (as Go's archive/tar, which umoci
//!   uses, accepts; `umoci insert` writes such layers). End of stream inside a header or
//!   inside data is [`TarError::Truncated`].
//! - GNU sparse files (`S`, or PAX `GNU.sparse.*`) are refused: [`TarError::Unsupported`].

use std::collections::BTreeMap;
use std::io::{self, Read};

/// Largest PAX extended header, GNU long name or long link accepted.
pub const MAX_META_SIZE: u64 = 1 << 20;
/// Most metadata headers (`x`, `g`, `L`, `K`) before one real entry.
pub const MAX_META_CHAIN: usize = 16;

pub const BLOCK: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum TarError {
    #[error("header checksum is {stored:o}, computed {computed:o}")]
    Checksum { stored: u64, computed: u64 },
    #[error("bad number in header field {0}")]
    Number(&'static str),
    #[error("archive ends inside {0}")]
    Truncated(&'static str),
    #[error("{kind} header of {size} bytes is over the limit")]
    MetaTooLarge { kind: &'static str, size: u64 },
    #[error("too many metadata headers in a row")]
    MetaChain,
    #[error("bad pax record: {0}")]
    Pax(&'static str),
    #[error("pax size {pax} disagrees with header size {header}")]
    SizeConflict { header: u64, pax: u64 },
    #[error("{typeflag:?} entry carries {size} data bytes")]
    DataOnHeaderOnly { typeflag: char, size: u64 },
    #[error("unsupported tar feature: {0}")]
    Unsupported(&'static str),
    #[error("metadata header not followed by an entry")]
    DanglingMeta,
    #[error("zero block followed by a non-zero block")]
    BadEnd,
    #[error("read failed")]
    Io(#[source] io::Error),
}

/// Header format, from the magic field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `ustar\0` `00`: POSIX ustar (and PAX).
    Ustar,
    /// `ustar ` ` \0`: GNU.
    Gnu,
    /// Anything else: pre-POSIX v7 (no prefix, no owner names).
    V7,
}

/// One 512-byte header, decoded but not interpreted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawHeader {
    /// `prefix/name` for ustar, else `name`; up to the first NUL.
    pub name: Vec<u8>,
    pub linkname: Vec<u8>,
    pub mode: u64,
    pub uid: u64,
    pub gid: u64,
    pub size: u64,
    pub mtime: i64,
    pub typeflag: u8,
    pub devmajor: u64,
    pub devminor: u64,
    pub format: Format,
}

fn cstr(field: &[u8]) -> &[u8] {
    match field.iter().position(|&b| b == 0) {
        Some(n) => &field[..n],
        None => field,
    }
}

/// Parses a numeric field: octal (leading spaces allowed, ended by NUL or space) or GNU
/// base-256 (first byte 0x80 positive, 0xff negative). An all-blank field is 0.
pub fn parse_number(field: &[u8], name: &'static str) -> Result<i64, TarError> {
    let err = || TarError::Number(name);
    if let Some(&first) = field.first()
        && first & 0x80 != 0
    {
        let negative = first == 0xff;
        if first != 0x80 && !negative {
            return Err(err());
        }
        // Two's complement over the whole field with the marker bit cleared for positives.
        let mut v: i128 = if negative { -1 } else { 0 };
        for (i, &b) in field.iter().enumerate() {
            let b = if i == 0 && !negative { 0 } else { b };
            v = (v << 8) | i128::from(b);
            if !(i128::from(i64::MIN)..=i128::from(i64::MAX)).contains(&v) {
                return Err(err());
            }
        }
        return i64::try_from(v).map_err(|_| err());
    }
    let mut digits = field;
    while let [b' ' | 0, rest @ ..] = digits {
        digits = rest;
    }
    let end = digits
        .iter()
        .position(|&b| b == 0 || b == b' ')
        .unwrap_or(digits.len());
    // After the terminator only NULs and spaces may follow.
    if digits[end..].iter().any(|&b| b != 0 && b != b' ') {
        return Err(err());
    }
    let mut v: i64 = 0;
    for &b in &digits[..end] {
        if !(b'0'..=b'7').contains(&b) {
            return Err(err());
        }
        v = v
            .checked_mul(8)
            .and_then(|v| v.checked_add(i64::from(b - b'0')))
            .ok_or_else(err)?;
    }
    Ok(v)
}

fn unsigned(field: &[u8], name: &'static str) -> Result<u64, TarError> {
    u64::try_from(parse_number(field, name)?).map_err(|_| TarError::Number(name))
}

/// Whether a block is all zeros (an end-of-archive marker).
pub fn is_zero_block(block: &[u8; BLOCK]) -> bool {
    block.iter().all(|&b| b == 0)
}

/// Decodes one header block, verifying its checksum.
pub fn parse_header(block: &[u8; BLOCK]) -> Result<RawHeader, TarError> {
    let stored = unsigned(&block[148..156], "chksum")?;
    let unsigned_sum: u64 = block
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u64::from(b)
            }
        })
        .sum();
    // Some old writers summed signed chars; accept either.
    let signed_sum: i64 = block
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                i64::from(b as i8)
            }
        })
        .sum();
    if stored != unsigned_sum && i64::try_from(stored).ok() != Some(signed_sum) {
        return Err(TarError::Checksum {
            stored,
            computed: unsigned_sum,
        });
    }
    let format = match (&block[257..263], &block[263..265]) {
        (b"ustar\0", b"00") => Format::Ustar,
        (b"ustar ", b" \0") => Format::Gnu,
        _ => Format::V7,
    };
    let mut name = cstr(&block[0..100]).to_vec();
    if format == Format::Ustar {
        let prefix = cstr(&block[345..500]);
        if !prefix.is_empty() {
            let mut full = prefix.to_vec();
            full.push(b'/');
            full.extend_from_slice(&name);
            name = full;
        }
    }
    let (devmajor, devminor) = if format == Format::V7 {
        (0, 0)
    } else {
        (
            unsigned(&block[329..337], "devmajor")?,
            unsigned(&block[337..345], "devminor")?,
        )
    };
    Ok(RawHeader {
        name,
        linkname: cstr(&block[157..257]).to_vec(),
        mode: unsigned(&block[100..108], "mode")?,
        uid: unsigned(&block[108..116], "uid")?,
        gid: unsigned(&block[116..124], "gid")?,
        size: unsigned(&block[124..136], "size")?,
        mtime: parse_number(&block[136..148], "mtime")?,
        typeflag: block[156],
        devmajor,
        devminor,
        format,
    })
}

/// PAX records as `(key, value)` pairs, in order.
pub type PaxRecords = Vec<(Vec<u8>, Vec<u8>)>;

/// Splits PAX extended header data into `(key, value)` records, in order.
/// Each record is `"<len> <key>=<value>\n"`, `len` counting the whole record in decimal.
pub fn parse_pax(mut data: &[u8]) -> Result<PaxRecords, TarError> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let sp = data
            .iter()
            .take(21)
            .position(|&b| b == b' ')
            .ok_or(TarError::Pax("no length"))?;
        let len_digits = &data[..sp];
        if len_digits.is_empty() || !len_digits.iter().all(u8::is_ascii_digit) {
            return Err(TarError::Pax("bad length"));
        }
        if len_digits.len() > 1 && len_digits[0] == b'0' {
            return Err(TarError::Pax("bad length"));
        }
        let len: usize = std::str::from_utf8(len_digits)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(TarError::Pax("bad length"))?;
        if len <= sp + 1 || len > data.len() {
            return Err(TarError::Pax("length out of range"));
        }
        let record = &data[sp + 1..len];
        let Some((&b'\n', kv)) = record.split_last() else {
            return Err(TarError::Pax("missing newline"));
        };
        let eq = kv
            .iter()
            .position(|&b| b == b'=')
            .ok_or(TarError::Pax("missing '='"))?;
        if eq == 0 {
            return Err(TarError::Pax("empty key"));
        }
        out.push((kv[..eq].to_vec(), kv[eq + 1..].to_vec()));
        data = &data[len..];
    }
    Ok(out)
}

/// Parses a PAX time (`[-]secs[.frac]`) into seconds and nanoseconds (0..1e9, floored).
pub fn parse_pax_time(v: &[u8]) -> Result<(i64, u32), TarError> {
    let bad = || TarError::Pax("bad time");
    let (neg, v) = match v.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, v),
    };
    let (int, frac) = match v.iter().position(|&b| b == b'.') {
        Some(p) => (&v[..p], &v[p + 1..]),
        None => (v, &b""[..]),
    };
    if int.is_empty() || int.len() > 19 || !int.iter().chain(frac).all(u8::is_ascii_digit) {
        return Err(bad());
    }
    let secs: i64 = std::str::from_utf8(int)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    let mut nanos: u32 = 0;
    for i in 0..9 {
        nanos = nanos * 10 + frac.get(i).map_or(0, |d| u32::from(d - b'0'));
    }
    if !neg {
        return Ok((secs, nanos));
    }
    if nanos == 0 {
        Ok((-secs, 0))
    } else {
        Ok((-secs - 1, 1_000_000_000 - nanos))
    }
}

/// Entry type, from the typeflag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Regular,
    HardLink,
    Symlink,
    CharDevice,
    BlockDevice,
    Directory,
    Fifo,
    /// Any other typeflag, passed on for the caller to refuse.
    Other(u8),
}

impl Kind {
    fn header_only(self) -> bool {
        !matches!(self, Kind::Regular | Kind::Other(_))
    }
}

/// One entry with every extension folded in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub path: Vec<u8>,
    pub link: Vec<u8>,
    pub kind: Kind,
    pub mode: u64,
    pub uid: u64,
    pub gid: u64,
    pub size: u64,
    pub mtime: i64,
    pub mtime_nsec: u32,
    pub devmajor: u64,
    pub devminor: u64,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

fn pax_number(v: &[u8]) -> Result<u64, TarError> {
    if v.is_empty() || v.len() > 20 || !v.iter().all(u8::is_ascii_digit) {
        return Err(TarError::Pax("bad number"));
    }
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(TarError::Pax("bad number"))
}

/// Folds extension data and a real header into one [`Header`]. Pure.
pub fn build_header(
    raw: RawHeader,
    pax: &[(Vec<u8>, Vec<u8>)],
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
) -> Result<Header, TarError> {
    let mut kind = match raw.typeflag {
        b'0' | b'7' => Kind::Regular,
        0 if raw.name.ends_with(b"/") => Kind::Directory,
        0 => Kind::Regular,
        b'1' => Kind::HardLink,
        b'2' => Kind::Symlink,
        b'3' => Kind::CharDevice,
        b'4' => Kind::BlockDevice,
        b'5' => Kind::Directory,
        b'6' => Kind::Fifo,
        b'S' => return Err(TarError::Unsupported("gnu sparse file")),
        b'D' => return Err(TarError::Unsupported("gnu dump directory")),
        b'M' => return Err(TarError::Unsupported("gnu multi-volume entry")),
        other => Kind::Other(other),
    };
    if raw.typeflag == b'7' {
        kind = Kind::Regular;
    }
    let mut h = Header {
        path: long_name.unwrap_or(raw.name),
        link: long_link.unwrap_or(raw.linkname),
        kind,
        mode: raw.mode,
        uid: raw.uid,
        gid: raw.gid,
        size: raw.size,
        mtime: raw.mtime,
        mtime_nsec: 0,
        devmajor: raw.devmajor,
        devminor: raw.devminor,
        xattrs: BTreeMap::new(),
    };
    let mut pax_size = None;
    for (k, v) in pax {
        match k.as_slice() {
            b"path" => h.path = v.clone(),
            b"linkpath" => h.link = v.clone(),
            b"size" => pax_size = Some(pax_number(v)?),
            b"uid" => h.uid = pax_number(v)?,
            b"gid" => h.gid = pax_number(v)?,
            b"mtime" => (h.mtime, h.mtime_nsec) = parse_pax_time(v)?,
            k if k.starts_with(b"SCHILY.xattr.") => {
                let name = &k[b"SCHILY.xattr.".len()..];
                if name.is_empty() || name.contains(&0) {
                    return Err(TarError::Pax("bad xattr name"));
                }
                h.xattrs.insert(name.to_vec(), v.clone());
            }
            k if k.starts_with(b"GNU.sparse.") => {
                return Err(TarError::Unsupported("gnu sparse file"));
            }
            // atime, ctime, uname, gname, charset, comment, vendor keys: not ours.
            _ => {}
        }
    }
    if let Some(size) = pax_size {
        if raw.size != 0 && raw.size != size {
            return Err(TarError::SizeConflict {
                header: raw.size,
                pax: size,
            });
        }
        h.size = size;
    }
    if h.kind.header_only() && h.size != 0 {
        return Err(TarError::DataOnHeaderOnly {
            typeflag: char::from(raw.typeflag),
            size: h.size,
        });
    }
    Ok(h)
}

/// Reads entries from a tar stream.
pub struct Archive<R: Read> {
    r: R,
    /// Data bytes of the current entry not yet read, then its padding.
    remaining: u64,
    padding: u64,
    done: bool,
    entries: u64,
}

/// Reads until `buf` is full or the stream ends; returns how much was read.
fn read_some(r: &mut impl Read, buf: &mut [u8]) -> Result<usize, TarError> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(TarError::Io(e)),
        }
    }
    Ok(got)
}

fn read_exact_or(r: &mut impl Read, buf: &mut [u8], what: &'static str) -> Result<usize, TarError> {
    let got = read_some(r, buf)?;
    if got != 0 && got != buf.len() {
        return Err(TarError::Truncated(what));
    }
    Ok(got)
}

impl<R: Read> Archive<R> {
    pub fn new(r: R) -> Self {
        Archive {
            r,
            remaining: 0,
            padding: 0,
            done: false,
            entries: 0,
        }
    }

    /// The underlying reader (to drain what follows the end marker).
    pub fn into_inner(self) -> R {
        self.r
    }

    fn skip(&mut self, mut n: u64, what: &'static str) -> Result<(), TarError> {
        let mut buf = [0u8; 64 << 10];
        while n > 0 {
            let want = buf.len().min(usize::try_from(n).unwrap_or(usize::MAX));
            let got = read_exact_or(&mut self.r, &mut buf[..want], what)?;
            if got == 0 {
                return Err(TarError::Truncated(what));
            }
            n -= got as u64;
        }
        Ok(())
    }

    /// Reads `size` bytes of metadata (bounded) and its padding.
    fn read_meta(&mut self, size: u64, kind: &'static str) -> Result<Vec<u8>, TarError> {
        if size > MAX_META_SIZE {
            return Err(TarError::MetaTooLarge { kind, size });
        }
        let mut buf = vec![0u8; size as usize];
        if read_exact_or(&mut self.r, &mut buf, kind)? != buf.len() {
            return Err(TarError::Truncated(kind));
        }
        self.skip(pad(size), kind)?;
        Ok(buf)
    }

    /// The next entry, or `None` at the end of the archive. Unread data of the previous entry
    /// is skipped. The returned number is the entry's index (0-based) in the stream.
    pub fn next_entry(&mut self) -> Result<Option<(u64, Header)>, TarError> {
        if self.done {
            return Ok(None);
        }
        self.skip(self.remaining, "entry data")?;
        self.remaining = 0;
        // The last entry's padding may be cut short by the end of the stream (umoci's
        // `insert` writes such layers; Go's reader accepts them): that ends the archive.
        let mut pad_buf = [0u8; BLOCK];
        let pad_len = std::mem::take(&mut self.padding) as usize;
        let got = read_some(&mut self.r, &mut pad_buf[..pad_len])?;
        if got < pad_len {
            self.done = true;
            return Ok(None);
        }
        let mut pax: PaxRecords = Vec::new();
        let mut long_name = None;
        let mut long_link = None;
        let mut meta_seen = 0usize;
        loop {
            let mut block = [0u8; BLOCK];
            if read_exact_or(&mut self.r, &mut block, "header")? == 0 {
                if meta_seen > 0 {
                    return Err(TarError::DanglingMeta);
                }
                self.done = true;
                return Ok(None);
            }
            if is_zero_block(&block) {
                if meta_seen > 0 {
                    return Err(TarError::DanglingMeta);
                }
                self.done = true;
                let got = read_exact_or(&mut self.r, &mut block, "end marker")?;
                if got != 0 && !is_zero_block(&block) {
                    return Err(TarError::BadEnd);
                }
                return Ok(None);
            }
            let raw = parse_header(&block)?;
            match raw.typeflag {
                b'x' | b'g' | b'L' | b'K' => {
                    meta_seen += 1;
                    if meta_seen > MAX_META_CHAIN {
                        return Err(TarError::MetaChain);
                    }
                }
                _ => {}
            }
            match raw.typeflag {
                b'x' => pax.extend(parse_pax(&self.read_meta(raw.size, "pax header")?)?),
                b'g' => {
                    // Global defaults: parsed for validity, otherwise ignored.
                    parse_pax(&self.read_meta(raw.size, "pax global header")?)?;
                }
                b'L' => {
                    let mut v = self.read_meta(raw.size, "gnu long name")?;
                    v.truncate(cstr(&v).len());
                    long_name = Some(v);
                }
                b'K' => {
                    let mut v = self.read_meta(raw.size, "gnu long link")?;
                    v.truncate(cstr(&v).len());
                    long_link = Some(v);
                }
                _ => {
                    let h = build_header(raw, &pax, long_name, long_link)?;
                    self.remaining = h.size;
                    self.padding = pad(h.size);
                    let index = self.entries;
                    self.entries += 1;
                    return Ok(Some((index, h)));
                }
            }
        }
    }

    /// Reads the current entry's data; returns 0 at its end. Errors with `UnexpectedEof`
    /// if the stream ends early.
    pub fn read_data(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = self.r.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                TarError::Truncated("entry data"),
            ));
        }
        self.remaining -= n as u64;
        Ok(n)
    }

    /// The current entry's data as a `Read`.
    pub fn data(&mut self) -> EntryData<'_, R> {
        EntryData(self)
    }
}

/// Reader over one entry's data (exactly its size, then end of stream).
pub struct EntryData<'a, R: Read>(&'a mut Archive<R>);

impl<R: Read> Read for EntryData<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read_data(buf)
    }
}

fn pad(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}
