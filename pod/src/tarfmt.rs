//! The tar framing of a pod: ustar headers, and PAX headers whose `comment` record carries the
//! format magic and pads each section's data to a 4 KiB boundary. Encoding and pure decoding.

use thiserror::Error;

/// Tar block size.
pub const BLOCK: u64 = 512;
/// Alignment of every section's data in the file.
pub const ALIGN: u64 = 4096;
/// Start of the first entry's PAX `comment`: the pod magic and format version.
pub const MAGIC: &str = "hyperpod-pod/";
/// Start of the other entries' PAX `comment` (padding only).
pub const PAD: &str = "hyperpod-pad";
/// Largest PAX data block we write or accept.
pub const MAX_PAX: u64 = 16 * BLOCK;
/// Largest size a ustar header's 11 octal digits hold; bigger sizes go in a PAX `size` record.
pub const MAX_OCTAL_SIZE: u64 = (1 << 33) - 1;

/// Why a tar header or PAX block was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TarError {
    #[error("bad header checksum")]
    Checksum,
    #[error("not a ustar header")]
    NotUstar,
    #[error("field {0} is not an octal number")]
    Octal(&'static str),
    #[error("entry name is not UTF-8")]
    Name,
    #[error("malformed PAX record")]
    PaxRecord,
    #[error("unexpected PAX record {0:?}")]
    PaxKey(String),
}

/// A decoded ustar header: the fields a pod uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub typeflag: u8,
    pub size: u64,
}

/// The records of a PAX extended header that a pod uses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pax {
    pub comment: Option<String>,
    pub size: Option<u64>,
}

fn octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let s = format!("{value:0digits$o}");
    field[..digits].copy_from_slice(s.as_bytes());
    field[digits] = 0;
}

/// Encodes a ustar header for `name` (≤ 100 bytes) of type `typeflag`.
pub fn encode_header(name: &str, typeflag: u8, size: u64, mtime: u64) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    octal(&mut h[100..108], 0o644);
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], size.min(MAX_OCTAL_SIZE));
    octal(&mut h[136..148], mtime.min(MAX_OCTAL_SIZE));
    h[156] = typeflag;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    octal(&mut h[329..337], 0);
    octal(&mut h[337..345], 0);
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    h
}

fn parse_octal(field: &[u8], name: &'static str) -> Result<u64, TarError> {
    let digits: &[u8] = field
        .split(|&b| b == 0 || b == b' ')
        .find(|s| !s.is_empty())
        .unwrap_or(&[]);
    if digits.is_empty() || digits.len() > 11 || !digits.iter().all(|b| (b'0'..=b'7').contains(b)) {
        return Err(TarError::Octal(name));
    }
    digits
        .iter()
        .try_fold(0u64, |acc, &d| Ok(acc * 8 + u64::from(d - b'0')))
}

/// Decodes a ustar header block, checking its checksum and magic.
pub fn decode_header(h: &[u8; 512]) -> Result<Header, TarError> {
    if &h[257..263] != b"ustar\0" || &h[263..265] != b"00" {
        return Err(TarError::NotUstar);
    }
    let stored = parse_octal(&h[148..156], "chksum")?;
    let sum: u64 = h
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                u64::from(b' ')
            } else {
                u64::from(b)
            }
        })
        .sum();
    if stored != sum {
        return Err(TarError::Checksum);
    }
    let name_end = h[..100].iter().position(|&b| b == 0).unwrap_or(100);
    let name = std::str::from_utf8(&h[..name_end])
        .map_err(|_| TarError::Name)?
        .to_string();
    Ok(Header {
        name,
        typeflag: h[156],
        size: parse_octal(&h[124..136], "size")?,
    })
}

/// One PAX record `"<len> key=value\n"`, with `<len>` counting the whole record.
fn pax_record(key: &str, value: &str) -> String {
    let body = key.len() + value.len() + 3; // space, '=', newline
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    format!("{len} {key}={value}\n")
}

/// PAX data of exactly `total` bytes: an optional `size` record, then a `comment` starting with
/// `tag` and padded with dots to fill.
pub fn encode_pax(tag: &str, size: Option<u64>, total: usize) -> Vec<u8> {
    let mut out = size
        .map(|s| pax_record("size", &s.to_string()))
        .unwrap_or_default();
    let want = total - out.len();
    // A comment record of `want` bytes: find the value length that makes it so.
    let mut value_len = want.saturating_sub(12);
    while pax_record("comment", &"x".repeat(value_len)).len() > want {
        value_len -= 1;
    }
    while pax_record("comment", &"x".repeat(value_len)).len() < want {
        value_len += 1;
    }
    let mut value = tag.to_string();
    value.push(' ');
    value.extend(std::iter::repeat_n('.', value_len - value.len()));
    out.push_str(&pax_record("comment", &value));
    debug_assert_eq!(out.len(), total);
    out.into_bytes()
}

/// Parses PAX data, accepting only the records a pod writes (`comment`, `size`).
pub fn decode_pax(data: &[u8]) -> Result<Pax, TarError> {
    let mut pax = Pax::default();
    let mut rest = data;
    while !rest.is_empty() && rest[0] != 0 {
        let sp = rest
            .iter()
            .take(20)
            .position(|&b| b == b' ')
            .ok_or(TarError::PaxRecord)?;
        let len: usize = std::str::from_utf8(&rest[..sp])
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse().ok())
            .ok_or(TarError::PaxRecord)?;
        if len <= sp + 1 || len > rest.len() || rest[len - 1] != b'\n' {
            return Err(TarError::PaxRecord);
        }
        let record =
            std::str::from_utf8(&rest[sp + 1..len - 1]).map_err(|_| TarError::PaxRecord)?;
        let (key, value) = record.split_once('=').ok_or(TarError::PaxRecord)?;
        match key {
            "comment" => pax.comment = Some(value.to_string()),
            "size" => {
                let ok = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
                pax.size = Some(
                    value
                        .parse()
                        .ok()
                        .filter(|_| ok)
                        .ok_or(TarError::PaxRecord)?,
                );
            }
            other => return Err(TarError::PaxKey(other.chars().take(40).collect())),
        }
        rest = &rest[len..];
    }
    Ok(pax)
}

/// `n` rounded up to a multiple of `to`.
pub fn round_up(n: u64, to: u64) -> u64 {
    n.div_ceil(to) * to
}

/// Number of PAX data blocks to put before an entry whose PAX header starts at `pos` (a multiple
/// of 512) so that its data lands on a 4 KiB boundary: PAX header + data + ustar header.
pub fn pax_blocks_at(pos: u64) -> u64 {
    let blocks_per_align = ALIGN / BLOCK;
    let k = (blocks_per_align - (pos / BLOCK + 2) % blocks_per_align) % blocks_per_align;
    if k == 0 { blocks_per_align } else { k }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_checks() {
        let h = encode_header("kernel", b'0', 12345, 1_700_000_000);
        assert_eq!(
            decode_header(&h),
            Ok(Header {
                name: "kernel".into(),
                typeflag: b'0',
                size: 12345
            })
        );
        let mut bad = h;
        bad[0] = b'K';
        assert_eq!(decode_header(&bad), Err(TarError::Checksum));
        let mut bad = h;
        bad[257] = b'x';
        assert_eq!(decode_header(&bad), Err(TarError::NotUstar));
    }

    #[test]
    fn pax_fills_exactly_and_round_trips() {
        for total in [512usize, 1024, 3584, 4096] {
            for size in [None, Some(1u64 << 40)] {
                let data = encode_pax("hyperpod-pod/1", size, total);
                assert_eq!(data.len(), total);
                let pax = decode_pax(&data).unwrap();
                assert_eq!(pax.size, size);
                assert!(pax.comment.unwrap().starts_with("hyperpod-pod/1 "));
            }
        }
        assert_eq!(decode_pax(b"6 a=b\n"), Err(TarError::PaxKey("a".into())));
        assert_eq!(decode_pax(b"99 comment=x\n"), Err(TarError::PaxRecord));
        assert_eq!(decode_pax(b"11 size=-1\n"), Err(TarError::PaxRecord));
    }

    #[test]
    fn alignment_blocks() {
        for pos in (0..64).map(|b| b * BLOCK) {
            let k = pax_blocks_at(pos);
            assert!((1..=8).contains(&k));
            assert_eq!((pos + (k + 2) * BLOCK) % ALIGN, 0);
        }
    }
}
