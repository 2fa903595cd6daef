//! The newc cpio format (`070701`), the archive format Linux unpacks as an initramfs.
//!
//! [`CpioWriter`] writes deterministic archives: inode numbers count up from 1 in the order
//! entries are added, every entry carries the caller's mtime, owner is always root (0:0) and the
//! "device of the file" fields are 0, so nothing of the host leaks in. The builder writes the
//! pod's initramfs with it and the launcher the small overrides archive it appends (Linux unpacks
//! concatenated archives in order; inode numbers only matter to it for hardlinks, `nlink >= 2`,
//! which this writer never emits, so two archives both counting from 1 do not clash).
//!
//! Layout of one entry: a 110-byte ASCII header (`070701` then 13 fields of 8 hex digits: ino,
//! mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor, rdevminor, namesize
//! including the NUL, check), the name and a NUL, zero padding to a multiple of 4, the data
//! (file bytes or symlink target), zero padding to a multiple of 4. The archive ends with an
//! entry named `TRAILER!!!`. [`parse`] reads such archives back (pure, for tests and checks).

use std::io::{self, Read, Write};

/// Magic at the start of every newc header.
pub const MAGIC: &[u8; 6] = b"070701";
/// Name of the entry that ends an archive.
pub const TRAILER: &str = "TRAILER!!!";
/// Largest file (or symlink target) a newc header can describe: its size field is 32 bits.
pub const MAX_DATA_LEN: u64 = u32::MAX as u64;
/// Longest entry name in bytes, without the NUL (Linux's `PATH_MAX` minus one).
pub const MAX_NAME_LEN: usize = 4095;

const HEADER_LEN: usize = 110;
const S_IFMT: u32 = 0o170_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;
const S_IFBLK: u32 = 0o060_000;

/// Errors writing or parsing a newc archive. After a write error the archive is unusable.
#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    #[error("bad cpio entry name {name:?}: {reason}")]
    BadName { name: String, reason: &'static str },
    #[error("{name}: mode {mode:#o} has bits outside 0o7777")]
    BadMode { name: String, mode: u32 },
    #[error("{name}: {len} bytes is more than a newc entry can hold")]
    TooLarge { name: String, len: u64 },
    #[error("{name}: reader ended after {got} of {expected} bytes")]
    ShortRead {
        name: String,
        expected: u64,
        got: u64,
    },
    #[error("{name}: reader has more than the {expected} bytes announced")]
    LongRead { name: String, expected: u64 },
    #[error("{name}: read contents")]
    Read {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("write cpio archive")]
    Write(#[source] io::Error),
    #[error("malformed cpio archive at byte {offset}: {reason}")]
    Malformed { offset: usize, reason: &'static str },
}

/// Writes one newc archive to `W`, entry by entry; [`CpioWriter::finish`] adds the trailer.
pub struct CpioWriter<W: Write> {
    out: W,
    mtime: u32,
    next_ino: u32,
    written: u64,
}

impl<W: Write> CpioWriter<W> {
    /// A writer giving every entry the modification time `mtime` (seconds since the epoch).
    pub fn new(out: W, mtime: u32) -> Self {
        CpioWriter {
            out,
            mtime,
            next_ino: 1,
            written: 0,
        }
    }

    /// Bytes written so far (always a multiple of 4 between calls).
    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    /// A directory with permission bits `mode` (`0o7777` at most).
    pub fn dir(&mut self, name: impl AsRef<[u8]>, mode: u32) -> Result<(), CpioError> {
        let name = entry_name(name.as_ref())?;
        let mode = perm(name, mode)?;
        self.entry(name, S_IFDIR | mode, 2, (0, 0), 0)?;
        self.pad()
    }

    /// A regular file holding `data`.
    pub fn file(
        &mut self,
        name: impl AsRef<[u8]>,
        mode: u32,
        data: &[u8],
    ) -> Result<(), CpioError> {
        let name = entry_name(name.as_ref())?;
        let mode = perm(name, mode)?;
        let len = data_len(name, data.len() as u64)?;
        self.entry(name, S_IFREG | mode, 1, (0, 0), len)?;
        self.put(data)?;
        self.pad()
    }

    /// A regular file of exactly `size` bytes streamed from `reader`; fails if the reader has
    /// fewer or more bytes than that (it is read once past `size` to check).
    pub fn file_from_reader(
        &mut self,
        name: impl AsRef<[u8]>,
        mode: u32,
        size: u64,
        reader: impl Read,
    ) -> Result<(), CpioError> {
        let name = entry_name(name.as_ref())?;
        let mode = perm(name, mode)?;
        let len = data_len(name, size)?;
        self.entry(name, S_IFREG | mode, 1, (0, 0), len)?;
        let mut reader = reader;
        let mut limited = (&mut reader).take(size);
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0u64;
        loop {
            let n = match limited.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => return Err(read_error(name, source)),
            };
            self.put(&buf[..n])?;
            got += n as u64;
        }
        if got != size {
            return Err(CpioError::ShortRead {
                name: lossy(name),
                expected: size,
                got,
            });
        }
        let mut probe = [0u8; 1];
        loop {
            match reader.read(&mut probe) {
                Ok(0) => break,
                Ok(_) => {
                    return Err(CpioError::LongRead {
                        name: lossy(name),
                        expected: size,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => return Err(read_error(name, source)),
            }
        }
        self.pad()
    }

    /// A symbolic link to `target` (mode `0o777`, as symlinks have).
    pub fn symlink(
        &mut self,
        name: impl AsRef<[u8]>,
        target: impl AsRef<[u8]>,
    ) -> Result<(), CpioError> {
        let name = entry_name(name.as_ref())?;
        let target = target.as_ref();
        if target.is_empty() || target.contains(&0) {
            return Err(CpioError::BadName {
                name: lossy(name),
                reason: "symlink target is empty or holds a NUL byte",
            });
        }
        let len = data_len(name, target.len() as u64)?;
        self.entry(name, S_IFLNK | 0o777, 1, (0, 0), len)?;
        self.put(target)?;
        self.pad()
    }

    /// A character device node (`/dev/console` is 5:1, `/dev/port` 1:4).
    pub fn char_device(
        &mut self,
        name: impl AsRef<[u8]>,
        mode: u32,
        major: u32,
        minor: u32,
    ) -> Result<(), CpioError> {
        let name = entry_name(name.as_ref())?;
        let mode = perm(name, mode)?;
        self.entry(name, S_IFCHR | mode, 1, (major, minor), 0)?;
        self.pad()
    }

    /// A block device node.
    pub fn block_device(
        &mut self,
        name: impl AsRef<[u8]>,
        mode: u32,
        major: u32,
        minor: u32,
    ) -> Result<(), CpioError> {
        let name = entry_name(name.as_ref())?;
        let mode = perm(name, mode)?;
        self.entry(name, S_IFBLK | mode, 1, (major, minor), 0)?;
        self.pad()
    }

    /// Writes the trailer, flushes, and hands back the output. The archive's length is a
    /// multiple of 4, so another archive can be appended right after it.
    pub fn finish(mut self) -> Result<W, CpioError> {
        self.header(b"TRAILER!!!", 0, 0, 1, 0, (0, 0), 0)?;
        self.pad()?;
        self.out.flush().map_err(CpioError::Write)?;
        Ok(self.out)
    }

    /// Header and name of a new entry with the next inode number.
    fn entry(
        &mut self,
        name: &[u8],
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        len: u32,
    ) -> Result<(), CpioError> {
        let ino = self.next_ino;
        self.next_ino = self.next_ino.checked_add(1).ok_or(CpioError::TooLarge {
            name: lossy(name),
            len: u64::from(u32::MAX) + 1,
        })?;
        self.header(name, ino, mode, nlink, self.mtime, rdev, len)
    }

    #[allow(clippy::too_many_arguments)]
    fn header(
        &mut self,
        name: &[u8],
        ino: u32,
        mode: u32,
        nlink: u32,
        mtime: u32,
        rdev: (u32, u32),
        len: u32,
    ) -> Result<(), CpioError> {
        let fields = [
            ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            mtime,
            len,
            0, // devmajor
            0, // devminor
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0, // check
        ];
        let mut head = Vec::with_capacity(HEADER_LEN + name.len() + 4);
        head.extend_from_slice(MAGIC);
        for field in fields {
            head.extend_from_slice(format!("{field:08X}").as_bytes());
        }
        head.extend_from_slice(name);
        head.push(0);
        self.put(&head)?;
        self.pad()
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), CpioError> {
        self.out.write_all(bytes).map_err(CpioError::Write)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> Result<(), CpioError> {
        let pad = (4 - (self.written % 4) as usize) % 4;
        self.put(&[0u8; 3][..pad])
    }
}

/// Checks an entry name and drops one leading `/`: names are stored relative (`dev/console`),
/// which is what Linux and GNU cpio expect.
fn entry_name(name: &[u8]) -> Result<&[u8], CpioError> {
    let bad = |reason| CpioError::BadName {
        name: lossy(name),
        reason,
    };
    let rel = name.strip_prefix(b"/").unwrap_or(name);
    if rel.is_empty() {
        return Err(bad("empty"));
    }
    if rel.len() > MAX_NAME_LEN {
        return Err(bad("longer than 4095 bytes"));
    }
    if rel.contains(&0) {
        return Err(bad("holds a NUL byte"));
    }
    if rel == TRAILER.as_bytes() {
        return Err(bad("reserved for the trailer"));
    }
    for part in rel.split(|&b| b == b'/') {
        match part {
            b"" => return Err(bad("empty path component")),
            b"." | b".." => return Err(bad("'.' or '..' component")),
            _ => {}
        }
    }
    Ok(rel)
}

fn perm(name: &[u8], mode: u32) -> Result<u32, CpioError> {
    if mode & !0o7777 != 0 {
        return Err(CpioError::BadMode {
            name: lossy(name),
            mode,
        });
    }
    Ok(mode)
}

fn data_len(name: &[u8], len: u64) -> Result<u32, CpioError> {
    u32::try_from(len).map_err(|_| CpioError::TooLarge {
        name: lossy(name),
        len,
    })
}

fn read_error(name: &[u8], source: io::Error) -> CpioError {
    CpioError::Read {
        name: lossy(name),
        source,
    }
}

fn lossy(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

/// What an entry of a parsed archive is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    File(Vec<u8>),
    Symlink(Vec<u8>),
    CharDevice { major: u32, minor: u32 },
    BlockDevice { major: u32, minor: u32 },
}

/// One entry of a parsed archive (trailers are not entries).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The name as stored (no NUL).
    pub name: Vec<u8>,
    pub ino: u32,
    /// Permission bits (`0o7777` at most); the type is in `kind`.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub mtime: u32,
    pub kind: EntryKind,
}

/// Parses one newc archive, or several concatenated ones (each after the previous trailer,
/// 4-byte aligned, with any zero padding in between, as Linux accepts). Every archive must
/// end with its trailer; the types the writer produces are the only ones accepted.
pub fn parse(bytes: &[u8]) -> Result<Vec<Entry>, CpioError> {
    let mut entries = Vec::new();
    let mut pos = 0usize;
    let mut in_archive = false;
    let mut archives = 0usize;
    loop {
        if !in_archive {
            while pos < bytes.len() && bytes[pos] == 0 {
                pos += 1;
            }
            if pos == bytes.len() && archives > 0 {
                return Ok(entries);
            }
            if pos % 4 != 0 {
                return Err(malformed(pos, "archive does not start 4-byte aligned"));
            }
            in_archive = true;
        }
        let head = bytes
            .get(pos..pos + HEADER_LEN)
            .ok_or_else(|| malformed(pos, "truncated header"))?;
        if &head[..6] != MAGIC {
            return Err(malformed(pos, "bad magic (not newc 070701)"));
        }
        let mut fields = [0u32; 13];
        for (i, field) in fields.iter_mut().enumerate() {
            let start = 6 + 8 * i;
            *field =
                hex8(&head[start..start + 8]).ok_or_else(|| malformed(pos, "bad hex field"))?;
        }
        let [
            ino,
            mode,
            uid,
            gid,
            nlink,
            mtime,
            len,
            _,
            _,
            rmaj,
            rmin,
            namesize,
            _,
        ] = fields;
        let namesize = namesize as usize;
        if namesize == 0 || namesize > MAX_NAME_LEN + 1 {
            return Err(malformed(pos, "bad name size"));
        }
        let name_start = pos + HEADER_LEN;
        let name_field = bytes
            .get(name_start..name_start + namesize)
            .ok_or_else(|| malformed(pos, "truncated name"))?;
        let (name, nul) = name_field.split_at(namesize - 1);
        if nul != [0] || name.contains(&0) {
            return Err(malformed(pos, "name is not NUL-terminated"));
        }
        let data_start = align4(name_start + namesize);
        let data_end = data_start
            .checked_add(len as usize)
            .filter(|&end| end <= bytes.len())
            .ok_or_else(|| malformed(pos, "truncated data"))?;
        let data = &bytes[data_start..data_end];
        let next = align4(data_end);
        if name == TRAILER.as_bytes() {
            in_archive = false;
            archives += 1;
            pos = next.min(bytes.len());
            continue;
        }
        let kind = match mode & S_IFMT {
            S_IFDIR if len == 0 => EntryKind::Dir,
            S_IFREG => EntryKind::File(data.to_vec()),
            S_IFLNK => EntryKind::Symlink(data.to_vec()),
            S_IFCHR if len == 0 => EntryKind::CharDevice {
                major: rmaj,
                minor: rmin,
            },
            S_IFBLK if len == 0 => EntryKind::BlockDevice {
                major: rmaj,
                minor: rmin,
            },
            _ => return Err(malformed(pos, "unsupported file type")),
        };
        entries.push(Entry {
            name: name.to_vec(),
            ino,
            mode: mode & 0o7777,
            uid,
            gid,
            nlink,
            mtime,
            kind,
        });
        if next > bytes.len() {
            return Err(malformed(data_end, "missing padding after data"));
        }
        pos = next;
    }
}

fn malformed(offset: usize, reason: &'static str) -> CpioError {
    CpioError::Malformed { offset, reason }
}

fn align4(n: usize) -> usize {
    n.div_ceil(4) * 4
}

fn hex8(field: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(field).ok()?;
    if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(text, 16).ok()
}

#[cfg(test)]
mod tests;
