//! Hand-made tar streams and layers for the flatten tests.
#![allow(dead_code)]

use std::io::Write;
use std::path::Path;

use builder::image::decompress::sha256_digest;
use builder::image::{Compression, Layer};

/// A header under construction; every field as the bytes that go in the block.
#[derive(Clone)]
pub struct H {
    pub name: Vec<u8>,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub size: u64,
    pub mtime: u64,
    pub typeflag: u8,
    pub link: Vec<u8>,
    pub devmajor: u32,
    pub devminor: u32,
    pub gnu: bool,
}

impl H {
    pub fn new(name: &[u8], typeflag: u8) -> Self {
        H {
            name: name.to_vec(),
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: 0,
            mtime: 1_600_000_000,
            typeflag,
            link: Vec::new(),
            devmajor: 0,
            devminor: 0,
            gnu: false,
        }
    }

    /// The 512-byte block, checksum filled in.
    pub fn block(&self) -> [u8; 512] {
        let mut b = [0u8; 512];
        assert!(self.name.len() <= 100 && self.link.len() <= 100);
        b[..self.name.len()].copy_from_slice(&self.name);
        octal(&mut b[100..108], u64::from(self.mode));
        octal(&mut b[108..116], self.uid);
        octal(&mut b[116..124], self.gid);
        octal(&mut b[124..136], self.size);
        octal(&mut b[136..148], self.mtime);
        b[156] = self.typeflag;
        b[157..157 + self.link.len()].copy_from_slice(&self.link);
        if self.gnu {
            b[257..265].copy_from_slice(b"ustar  \0");
        } else {
            b[257..265].copy_from_slice(b"ustar\x0000");
        }
        octal(&mut b[329..337], u64::from(self.devmajor));
        octal(&mut b[337..345], u64::from(self.devminor));
        fix_checksum(&mut b);
        b
    }
}

pub fn octal(field: &mut [u8], v: u64) {
    let s = format!("{:0width$o}\0", v, width = field.len() - 1);
    assert_eq!(s.len(), field.len(), "value too big for field");
    field.copy_from_slice(s.as_bytes());
}

pub fn fix_checksum(b: &mut [u8; 512]) {
    b[148..156].fill(b' ');
    let sum: u64 = b.iter().map(|&x| u64::from(x)).sum();
    let s = format!("{sum:06o}\0 ");
    b[148..156].copy_from_slice(s.as_bytes());
}

/// One PAX record, length included.
pub fn pax_record(key: &[u8], value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while format!("{len}").len() + body != len {
        len += 1;
    }
    let mut r = format!("{len} ").into_bytes();
    r.extend_from_slice(key);
    r.push(b'=');
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

#[derive(Default, Clone)]
pub struct Tar {
    pub buf: Vec<u8>,
}

impl Tar {
    pub fn new() -> Self {
        Tar::default()
    }

    /// Appends a header and `data` (padded).
    pub fn raw(&mut self, block: [u8; 512], data: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(&block);
        self.buf.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.buf.extend(std::iter::repeat_n(0u8, pad));
        self
    }

    pub fn entry(&mut self, h: H, data: &[u8]) -> &mut Self {
        self.raw(h.block(), data)
    }

    pub fn file(&mut self, path: &str, data: &[u8]) -> &mut Self {
        let mut h = H::new(path.as_bytes(), b'0');
        h.size = data.len() as u64;
        self.entry(h, data)
    }

    pub fn file_mode(&mut self, path: &str, data: &[u8], mode: u32) -> &mut Self {
        let mut h = H::new(path.as_bytes(), b'0');
        h.size = data.len() as u64;
        h.mode = mode;
        self.entry(h, data)
    }

    pub fn dir(&mut self, path: &str, mode: u32) -> &mut Self {
        let mut h = H::new(path.as_bytes(), b'5');
        h.mode = mode;
        self.entry(h, b"")
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut h = H::new(path.as_bytes(), b'2');
        h.mode = 0o777;
        h.link = target.as_bytes().to_vec();
        self.entry(h, b"")
    }

    pub fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut h = H::new(path.as_bytes(), b'1');
        h.link = target.as_bytes().to_vec();
        self.entry(h, b"")
    }

    /// A PAX extended header with `records`, to apply to the next entry.
    pub fn pax(&mut self, records: &[(&[u8], &[u8])]) -> &mut Self {
        let data: Vec<u8> = records.iter().flat_map(|(k, v)| pax_record(k, v)).collect();
        let mut h = H::new(b"./PaxHeaders/x", b'x');
        h.size = data.len() as u64;
        self.entry(h, &data)
    }

    /// A GNU long name header for the next entry.
    pub fn long_name(&mut self, name: &[u8]) -> &mut Self {
        let mut data = name.to_vec();
        data.push(0);
        let mut h = H::new(b"././@LongLink", b'L');
        h.size = data.len() as u64;
        h.gnu = true;
        self.entry(h, &data)
    }

    /// The stream with its end-of-archive marker.
    pub fn finish(&self) -> Vec<u8> {
        let mut v = self.buf.clone();
        v.extend_from_slice(&[0u8; 1024]);
        v
    }
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

pub fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).unwrap()
}

/// Writes `blob` in `dir` and describes it as a layer whose uncompressed stream is `tar`.
pub fn layer(dir: &Path, blob: &[u8], compression: Compression, tar: &[u8]) -> Layer {
    let digest = sha256_digest(blob);
    let path = dir.join(&digest[7..]);
    std::fs::write(&path, blob).unwrap();
    let media_type = match compression {
        Compression::None => "application/vnd.oci.image.layer.v1.tar",
        Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
        Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
    };
    Layer {
        blob: path,
        offset: 0,
        size: blob.len() as u64,
        digest,
        media_type: media_type.to_string(),
        compression,
        diff_id: sha256_digest(tar),
    }
}
