//! Extended attributes: name-index encoding, POSIX ACL conversion to ext4's on-disk form,
//! and the in-inode area / external block layouts with their hashes and checksum.

use super::csum;
use super::layout::BS;
use std::collections::BTreeMap;

const MAGIC: u32 = 0xEA02_0000;
const ENTRY_HEAD: usize = 16;
/// Bytes after the fixed inode fields (128 + i_extra_isize 32) for the magic, entries,
/// terminator and values.
pub(crate) const IN_INODE_ROOM: usize = 256 - 160;
const BLOCK_HEAD: usize = 32;

/// Why an attribute cannot be stored.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum XattrProblem {
    /// No ext4 name index for this prefix.
    Namespace,
    /// A POSIX ACL value that does not parse.
    BadAcl,
    /// Name longer than 255 bytes after the prefix.
    NameTooLong,
    /// The attributes do not fit in the inode plus one block.
    TooLarge,
}

/// One attribute in on-disk form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Attr {
    pub index: u8,
    pub name: Vec<u8>,
    pub value: Vec<u8>,
}

impl Attr {
    fn entry_len(&self) -> usize {
        (ENTRY_HEAD + self.name.len()).div_ceil(4) * 4
    }
    fn value_len(&self) -> usize {
        self.value.len().div_ceil(4) * 4
    }
    fn hash(&self) -> u32 {
        let mut h: u32 = 0;
        for &c in &self.name {
            h = (h << 5) ^ (h >> 27) ^ u32::from(c);
        }
        for w in self.value.chunks(4) {
            let mut b = [0u8; 4];
            b[..w.len()].copy_from_slice(w);
            h = (h << 16) ^ (h >> 16) ^ u32::from_le_bytes(b);
        }
        h
    }
}

const ACL_USER: u16 = 2;
const ACL_GROUP: u16 = 8;

/// Converts a VFS POSIX ACL (version 2, 8-byte entries) to ext4's format (version 1,
/// 4-byte entries except named users and groups).
fn convert_acl(v: &[u8]) -> Option<Vec<u8>> {
    if v.len() < 4 || (v.len() - 4) % 8 != 0 || v[..4] != 2u32.to_le_bytes() {
        return None;
    }
    let mut out = 1u32.to_le_bytes().to_vec();
    for e in v[4..].chunks_exact(8) {
        let tag = u16::from_le_bytes([e[0], e[1]]);
        out.extend_from_slice(&e[..4]);
        match tag {
            ACL_USER | ACL_GROUP => out.extend_from_slice(&e[4..8]),
            1 | 4 | 0x10 | 0x20 => {}
            _ => return None,
        }
    }
    Some(out)
}

/// Maps a full attribute name to ext4's (index, suffix) and converts ACL values.
pub(crate) fn encode(name: &[u8], value: &[u8]) -> Result<Attr, XattrProblem> {
    let exact: [(&[u8], u8); 3] = [
        (b"system.posix_acl_access", 2),
        (b"system.posix_acl_default", 3),
        (b"system.richacl", 8),
    ];
    for (full, index) in exact {
        if name == full {
            let value = if index == 8 {
                value.to_vec()
            } else {
                convert_acl(value).ok_or(XattrProblem::BadAcl)?
            };
            return Ok(Attr {
                index,
                name: Vec::new(),
                value,
            });
        }
    }
    let prefixes: [(&[u8], u8); 4] = [
        (b"user.", 1),
        (b"trusted.", 4),
        (b"security.", 6),
        (b"system.", 7),
    ];
    for (prefix, index) in prefixes {
        if let Some(rest) = name.strip_prefix(prefix) {
            // `system.data` is ext4's inline-data marker; refuse it rather than confuse fsck.
            if rest.is_empty() || (index == 7 && rest == b"data") {
                return Err(XattrProblem::Namespace);
            }
            if rest.len() > 255 {
                return Err(XattrProblem::NameTooLong);
            }
            return Ok(Attr {
                index,
                name: rest.to_vec(),
                value: value.to_vec(),
            });
        }
    }
    Err(XattrProblem::Namespace)
}

/// Where a node's attributes go.
#[derive(Debug, Default)]
pub(crate) struct Placement {
    /// Bytes for the inode's tail (offset 160 onward); empty if none.
    pub in_inode: Vec<u8>,
    /// Attributes for an external block, if any.
    pub block: Vec<Attr>,
}

/// Encodes `xattrs` and splits them: in name order, each one that still fits goes into the
/// inode, the rest into one block.
pub(crate) fn place(xattrs: &BTreeMap<Vec<u8>, Vec<u8>>) -> Result<Placement, XattrProblem> {
    let mut attrs = xattrs
        .iter()
        .map(|(n, v)| encode(n, v))
        .collect::<Result<Vec<_>, _>>()?;
    if attrs.is_empty() {
        return Ok(Placement::default());
    }
    attrs.sort_by(|a, b| (a.index, a.name.len(), &a.name).cmp(&(b.index, b.name.len(), &b.name)));
    // Inode room: 4 magic + entries + 4 terminator + values.
    let mut used = 8;
    let mut inode = Vec::new();
    let mut block = Vec::new();
    for a in attrs {
        let need = a.entry_len() + a.value_len();
        if used + need <= IN_INODE_ROOM {
            used += need;
            inode.push(a);
        } else {
            block.push(a);
        }
    }
    let block_need: usize = BLOCK_HEAD
        + 4
        + block
            .iter()
            .map(|a| a.entry_len() + a.value_len())
            .sum::<usize>();
    if block_need > BS as usize {
        return Err(XattrProblem::TooLarge);
    }
    let in_inode = if inode.is_empty() {
        Vec::new()
    } else {
        inode_area(&inode)
    };
    Ok(Placement { in_inode, block })
}

/// Lays out entries at `entries_at` and values downward from `end`; value offsets are
/// relative to `base`. Returns the entry hashes.
fn lay_out(buf: &mut [u8], attrs: &[Attr], entries_at: usize, base: usize, end: usize) -> Vec<u32> {
    let mut e = entries_at;
    let mut v = end;
    let mut hashes = Vec::new();
    for a in attrs {
        let offs = if a.value.is_empty() {
            0
        } else {
            v -= a.value_len();
            buf[v..v + a.value.len()].copy_from_slice(&a.value);
            v - base
        };
        let h = a.hash();
        buf[e] = a.name.len() as u8;
        buf[e + 1] = a.index;
        buf[e + 2..e + 4].copy_from_slice(&(offs as u16).to_le_bytes());
        buf[e + 8..e + 12].copy_from_slice(&(a.value.len() as u32).to_le_bytes());
        buf[e + 12..e + 16].copy_from_slice(&h.to_le_bytes());
        buf[e + ENTRY_HEAD..e + ENTRY_HEAD + a.name.len()].copy_from_slice(&a.name);
        e += a.entry_len();
        hashes.push(h);
    }
    hashes
}

fn inode_area(attrs: &[Attr]) -> Vec<u8> {
    let mut buf = vec![0u8; IN_INODE_ROOM];
    buf[..4].copy_from_slice(&MAGIC.to_le_bytes());
    lay_out(&mut buf, attrs, 4, 4, IN_INODE_ROOM);
    buf
}

/// The external attribute block for `attrs`, to live at disk block `block_nr`.
pub(crate) fn block_bytes(attrs: &[Attr], block_nr: u64, fs_seed: u32) -> Vec<u8> {
    let mut buf = vec![0u8; BS as usize];
    buf[..4].copy_from_slice(&MAGIC.to_le_bytes());
    buf[4..8].copy_from_slice(&1u32.to_le_bytes()); // refcount
    buf[8..12].copy_from_slice(&1u32.to_le_bytes()); // blocks
    let hashes = lay_out(&mut buf, attrs, BLOCK_HEAD, 0, BS as usize);
    let mut h: u32 = 0;
    for eh in hashes {
        if eh == 0 {
            h = 0;
            break;
        }
        h = (h << 16) ^ (h >> 16) ^ eh;
    }
    buf[12..16].copy_from_slice(&h.to_le_bytes());
    let c = csum::crc(csum::crc(fs_seed, &block_nr.to_le_bytes()), &buf);
    buf[16..20].copy_from_slice(&c.to_le_bytes());
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_indexes() {
        assert_eq!(encode(b"user.a", b"1").unwrap().index, 1);
        assert_eq!(
            encode(b"security.capability", b"").unwrap().name,
            b"capability"
        );
        assert_eq!(encode(b"foo.bar", b""), Err(XattrProblem::Namespace));
        assert_eq!(encode(b"user.", b""), Err(XattrProblem::Namespace));
        let acl = [
            2u32.to_le_bytes(),
            [1, 0, 6, 0],
            [0xff; 4],
            [2, 0, 4, 0],
            1000u32.to_le_bytes(),
        ]
        .concat();
        let a = encode(b"system.posix_acl_access", &acl).unwrap();
        assert_eq!(
            a.value,
            [
                1u32.to_le_bytes(),
                [1, 0, 6, 0],
                [2, 0, 4, 0],
                1000u32.to_le_bytes()
            ]
            .concat()
        );
    }

    #[test]
    fn big_values_go_to_the_block() {
        let mut x = BTreeMap::new();
        x.insert(b"user.small".to_vec(), b"v".to_vec());
        x.insert(b"user.big".to_vec(), vec![7u8; 3072]);
        let p = place(&x).unwrap();
        assert_eq!(p.block.len(), 1);
        assert_eq!(p.block[0].name, b"big");
        assert!(!p.in_inode.is_empty());
        x.insert(b"user.huge".to_vec(), vec![7u8; 3072]);
        assert_eq!(place(&x).unwrap_err(), XattrProblem::TooLarge);
    }
}
