//! Reading an image from a `docker save` tarball (`docker-archive:FILE[:REF]`) in place.
//!
//! The archive's members are indexed (names, offsets, sizes) without extracting anything.
//! `manifest.json` names the config and the layers by path inside the archive, in the legacy
//! layout (`<id>/layer.tar`, `<hex>.json`) or the OCI-style one (`blobs/sha256/<hex>`, often
//! reached through symlinks). Paths must stay inside the archive. Layers are uncompressed tars
//! whose sha256 must equal the config's `diff_ids`.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::config::{ConfigError, ImageConfig, Platform};
use super::digest::{Digest, digest_reader};
use super::manifest::{
    self, DOCKER_CONFIG, DOCKER_MANIFEST, Descriptor, ImageManifest, MAX_MANIFEST_BYTES,
    ManifestError,
};
use super::reference::RegistryReference;
use super::source::{FetchedImage, assemble};
use super::tar;

const MAX_LINK_HOPS: usize = 8;
const LAYER_TYPE: &str = "application/vnd.docker.image.rootfs.diff.tar";

/// Why a docker archive could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DockerArchiveError {
    #[error("docker archive {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("docker archive: bad tar header at offset {offset}: {reason}")]
    Tar { offset: u64, reason: String },
    #[error("docker archive: no manifest.json (not a docker save archive)")]
    NoManifest,
    #[error("docker archive: malformed manifest.json: {0}")]
    ManifestJson(String),
    #[error("docker archive: path {0:?} leaves the archive")]
    Outside(String),
    #[error("docker archive: member {0:?} is missing")]
    Missing(String),
    #[error("docker archive: member {0:?} is not a regular file")]
    NotFile(String),
    #[error("docker archive: too many links resolving {0:?}")]
    LinkLoop(String),
    #[error("docker archive: no image named {name:?} (has: {available})")]
    NoRef { name: String, available: String },
    #[error("docker archive: {0} images and no name given; use docker-archive:FILE:NAME:TAG")]
    Ambiguous(usize),
    #[error(
        "docker archive: layer {path:?} hashes to {actual}, but the config's diff_id is {diff_id}"
    )]
    DiffId {
        path: String,
        diff_id: Digest,
        actual: Digest,
    },
    #[error("docker archive: {0}")]
    Manifest(#[from] ManifestError),
    #[error("docker archive: {0}")]
    Config(#[from] ConfigError),
}

/// What a tar member is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberKind {
    File,
    Dir,
    Symlink(String),
    Hardlink(String),
    Other,
}

/// One member of the archive: where its data starts and how long it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub kind: MemberKind,
    pub offset: u64,
    pub size: u64,
}

fn tar_err(offset: u64, reason: impl Into<String>) -> DockerArchiveError {
    DockerArchiveError::Tar {
        offset,
        reason: reason.into(),
    }
}

/// Normalises a member or manifest path: no leading `./` or `/`, no `.` components, no
/// trailing `/`. Returns `None` if a `..` would climb out of the archive root.
pub fn normalize(path: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    Some(parts.join("/"))
}

/// The bytes of a NUL-terminated field (GNU long names end with one).
fn until_nul(v: &[u8]) -> &[u8] {
    v.split(|&b| b == 0).next().unwrap_or_default()
}

/// Indexes a tar stream's members by normalised name (a later member replaces an earlier one).
/// Headers are decoded by [`tar::parse_header`] and [`tar::parse_pax`], the layers' own
/// parsers; member data is seeked over, never read.
pub fn index_tar<R: Read + Seek>(mut r: R) -> Result<HashMap<String, Member>, DockerArchiveError> {
    let mut members = HashMap::new();
    let mut pos = 0u64;
    let mut long_name: Option<Vec<u8>> = None;
    let mut long_link: Option<Vec<u8>> = None;
    let mut pax: tar::PaxRecords = Vec::new();
    let mut block = [0u8; tar::BLOCK];
    let io = |e: io::Error, off: u64| tar_err(off, e.to_string());
    let bad = |e: tar::TarError, off: u64| tar_err(off, e.to_string());
    let padded = |size: u64, off: u64| {
        size.checked_next_multiple_of(tar::BLOCK as u64)
            .ok_or_else(|| tar_err(off, "size overflows"))
    };
    loop {
        match r.read_exact(&mut block) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(tar_err(pos, "archive ends without end-of-archive blocks"));
            }
            Err(e) => return Err(io(e, pos)),
        }
        if tar::is_zero_block(&block) {
            return Ok(members);
        }
        let h = tar::parse_header(&block).map_err(|e| bad(e, pos))?;
        let data_off = pos + tar::BLOCK as u64;
        let mut read_meta = || -> Result<Vec<u8>, DockerArchiveError> {
            if h.size > tar::MAX_META_SIZE {
                return Err(tar_err(pos, "metadata entry too large"));
            }
            let mut v = vec![0u8; padded(h.size, pos)? as usize];
            r.read_exact(&mut v).map_err(|e| io(e, data_off))?;
            v.truncate(h.size as usize);
            Ok(v)
        };
        match h.typeflag {
            b'L' => long_name = Some(until_nul(&read_meta()?).to_vec()),
            b'K' => long_link = Some(until_nul(&read_meta()?).to_vec()),
            b'x' => pax = tar::parse_pax(&read_meta()?).map_err(|e| bad(e, pos))?,
            b'g' => drop(read_meta()?),
            typeflag => {
                let mut name = long_name.take().unwrap_or(h.name);
                let mut link = long_link.take().unwrap_or(h.linkname);
                let mut size = h.size;
                for (key, value) in pax.drain(..) {
                    match &key[..] {
                        b"path" => name = value,
                        b"linkpath" => link = value,
                        b"size" => {
                            size = std::str::from_utf8(&value)
                                .ok()
                                .and_then(|v| v.parse().ok())
                                .ok_or_else(|| tar_err(pos, "bad pax size"))?;
                        }
                        _ => {}
                    }
                }
                let link = String::from_utf8_lossy(&link).into_owned();
                let kind = match typeflag {
                    b'0' | 0 | b'7' => MemberKind::File,
                    b'5' => MemberKind::Dir,
                    b'2' => MemberKind::Symlink(link),
                    b'1' => MemberKind::Hardlink(link),
                    _ => MemberKind::Other,
                };
                if let Some(n) = normalize(&String::from_utf8_lossy(&name)) {
                    let size = if kind == MemberKind::File { size } else { 0 };
                    members.insert(
                        n,
                        Member {
                            kind,
                            offset: data_off,
                            size,
                        },
                    );
                }
                let skip = match typeflag {
                    b'1' | b'2' | b'5' => 0,
                    _ => padded(size, pos)?,
                };
                pos = data_off
                    .checked_add(skip)
                    .ok_or_else(|| tar_err(pos, "size overflows"))?;
                r.seek(SeekFrom::Start(pos)).map_err(|e| io(e, pos))?;
                continue;
            }
        }
        pos = data_off + padded(h.size, pos)?;
    }
}

/// Resolves a path named by `manifest.json` to a regular file member, following symlinks and
/// hardlinks inside the archive. Absolute paths and `..` are refused.
pub fn resolve<'a>(
    members: &'a HashMap<String, Member>,
    path: &str,
) -> Result<&'a Member, DockerArchiveError> {
    if path.starts_with('/') || path.split('/').any(|c| c == "..") || path.is_empty() {
        return Err(DockerArchiveError::Outside(path.to_string()));
    }
    let mut cur = normalize(path).ok_or_else(|| DockerArchiveError::Outside(path.to_string()))?;
    for _ in 0..MAX_LINK_HOPS {
        let m = members
            .get(&cur)
            .ok_or_else(|| DockerArchiveError::Missing(path.to_string()))?;
        let next = match &m.kind {
            MemberKind::File => return Ok(m),
            MemberKind::Symlink(target) => {
                if target.starts_with('/') {
                    return Err(DockerArchiveError::Outside(target.clone()));
                }
                let parent = cur.rsplit_once('/').map_or("", |(p, _)| p);
                normalize(&format!("{parent}/{target}"))
                    .ok_or_else(|| DockerArchiveError::Outside(target.clone()))?
            }
            MemberKind::Hardlink(target) => normalize(target)
                .filter(|_| !target.starts_with('/'))
                .ok_or_else(|| DockerArchiveError::Outside(target.clone()))?,
            _ => return Err(DockerArchiveError::NotFile(path.to_string())),
        };
        cur = next;
    }
    Err(DockerArchiveError::LinkLoop(path.to_string()))
}

/// One entry of `manifest.json`.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ArchiveEntry {
    pub config: String,
    #[serde(default)]
    pub repo_tags: Option<Vec<String>>,
    pub layers: Vec<String>,
}

/// Parses `manifest.json`.
pub fn parse_manifest(bytes: &[u8]) -> Result<Vec<ArchiveEntry>, DockerArchiveError> {
    serde_json::from_slice(bytes).map_err(|e| DockerArchiveError::ManifestJson(e.to_string()))
}

fn same_name(a: &str, b: &str) -> bool {
    a == b
        || matches!(
            (RegistryReference::parse(a), RegistryReference::parse(b)),
            (Ok(x), Ok(y)) if x == y
        )
}

/// Picks the entry named `name` (a repo tag, or `@N` for the N-th), or the only one.
pub fn pick<'a>(
    entries: &'a [ArchiveEntry],
    name: Option<&str>,
) -> Result<&'a ArchiveEntry, DockerArchiveError> {
    match name {
        Some(n) => {
            if let Some(i) = n.strip_prefix('@').and_then(|i| i.parse::<usize>().ok()) {
                return entries.get(i).ok_or_else(|| DockerArchiveError::NoRef {
                    name: n.to_string(),
                    available: format!("{} images", entries.len()),
                });
            }
            entries
                .iter()
                .find(|e| e.repo_tags.iter().flatten().any(|t| same_name(t, n)))
                .ok_or_else(|| DockerArchiveError::NoRef {
                    name: n.to_string(),
                    available: entries
                        .iter()
                        .flat_map(|e| e.repo_tags.iter().flatten().cloned())
                        .collect::<Vec<_>>()
                        .join(", "),
                })
        }
        None => match entries.len() {
            1 => Ok(&entries[0]),
            n => Err(DockerArchiveError::Ambiguous(n)),
        },
    }
}

/// Reads the image from the archive at `path`; layers are verified in place.
pub fn fetch(
    path: &Path,
    reference: String,
    name: Option<&str>,
    platform: &Platform,
) -> Result<FetchedImage, DockerArchiveError> {
    let err = |source| DockerArchiveError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = File::open(path).map_err(err)?;
    let members = index_tar(io::BufReader::new(&mut f))?;
    let read_member = |f: &mut File, m: &Member| -> Result<Vec<u8>, DockerArchiveError> {
        f.seek(SeekFrom::Start(m.offset)).map_err(err)?;
        let mut v = Vec::new();
        f.take(m.size.min(MAX_MANIFEST_BYTES + 1))
            .read_to_end(&mut v)
            .map_err(err)?;
        Ok(v)
    };
    let mj = match members.get("manifest.json") {
        Some(m) if m.kind == MemberKind::File => m,
        _ => return Err(DockerArchiveError::NoManifest),
    };
    manifest::check_size("manifest.json", mj.size)?;
    let entries = parse_manifest(&read_member(&mut f, mj)?)?;
    let entry = pick(&entries, name)?;
    let cm = resolve(&members, &entry.config)?;
    manifest::check_size(&entry.config, cm.size)?;
    let config_bytes = read_member(&mut f, cm)?;
    let config_digest = Digest::of_bytes(&config_bytes);
    let config = ImageConfig::parse(&config_digest.to_string(), &config_bytes)?;
    // Describe the image as a manifest would, with each layer's expected digest = diff_id.
    let mut layers = Vec::new();
    let mut paths = Vec::new();
    for (i, lp) in entry.layers.iter().enumerate() {
        let m = resolve(&members, lp)?;
        let diff_id =
            config
                .rootfs
                .diff_ids
                .get(i)
                .cloned()
                .ok_or_else(|| ManifestError::LayerCount {
                    what: reference.clone(),
                    count: entry.layers.len(),
                    diff_ids: config.rootfs.diff_ids.len(),
                })?;
        layers.push(Descriptor {
            media_type: LAYER_TYPE.into(),
            digest: diff_id,
            size: m.size,
            urls: None,
            platform: None,
            annotations: None,
        });
        paths.push((lp.clone(), m.clone()));
    }
    let image = ImageManifest {
        media_type: DOCKER_MANIFEST.into(),
        config: Descriptor {
            media_type: DOCKER_CONFIG.into(),
            digest: config_digest,
            size: config_bytes.len() as u64,
            urls: None,
            platform: None,
            annotations: None,
        },
        layers,
    };
    let compressions = image.check()?;
    let mut next = paths.into_iter();
    assemble(
        reference,
        None,
        &image,
        &compressions,
        config,
        platform,
        |d| {
            let (lp, m) = next.next().expect("one path per layer");
            f.seek(SeekFrom::Start(m.offset)).map_err(err)?;
            let (actual, n) = digest_reader((&mut f).take(m.size)).map_err(err)?;
            if n != m.size {
                return Err(DockerArchiveError::Io {
                    path: path.to_path_buf(),
                    source: io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("layer {lp:?} truncated"),
                    ),
                });
            }
            if actual != d.digest {
                return Err(DockerArchiveError::DiffId {
                    path: lp,
                    diff_id: d.digest.clone(),
                    actual,
                });
            }
            Ok((path.to_path_buf(), m.offset))
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(kind: MemberKind) -> Member {
        Member {
            kind,
            offset: 512,
            size: 1,
        }
    }

    #[test]
    fn normalizes_and_resolves_paths() {
        assert_eq!(normalize("./a//b/./c/").as_deref(), Some("a/b/c"));
        assert_eq!(normalize("a/../b").as_deref(), Some("b"));
        assert_eq!(normalize("../b"), None);
        let mut m = HashMap::new();
        m.insert("blobs/sha256/aa".to_string(), member(MemberKind::File));
        m.insert(
            "id/layer.tar".to_string(),
            member(MemberKind::Symlink("../blobs/sha256/aa".into())),
        );
        m.insert(
            "evil".to_string(),
            member(MemberKind::Symlink("../../etc/passwd".into())),
        );
        m.insert(
            "abs".to_string(),
            member(MemberKind::Symlink("/etc/passwd".into())),
        );
        m.insert(
            "loop".to_string(),
            member(MemberKind::Symlink("loop".into())),
        );
        m.insert("dir".to_string(), member(MemberKind::Dir));
        m.insert(
            "hl".to_string(),
            member(MemberKind::Hardlink("blobs/sha256/aa".into())),
        );
        assert!(resolve(&m, "id/layer.tar").is_ok());
        assert!(resolve(&m, "./hl").is_ok());
        assert!(matches!(
            resolve(&m, "../x"),
            Err(DockerArchiveError::Outside(_))
        ));
        assert!(matches!(
            resolve(&m, "/etc/passwd"),
            Err(DockerArchiveError::Outside(_))
        ));
        assert!(matches!(
            resolve(&m, "a/../../x"),
            Err(DockerArchiveError::Outside(_))
        ));
        assert!(matches!(
            resolve(&m, "evil"),
            Err(DockerArchiveError::Outside(_))
        ));
        assert!(matches!(
            resolve(&m, "abs"),
            Err(DockerArchiveError::Outside(_))
        ));
        assert!(matches!(
            resolve(&m, "loop"),
            Err(DockerArchiveError::LinkLoop(_))
        ));
        assert!(matches!(
            resolve(&m, "dir"),
            Err(DockerArchiveError::NotFile(_))
        ));
        assert!(matches!(
            resolve(&m, "nope"),
            Err(DockerArchiveError::Missing(_))
        ));
    }

    #[test]
    fn picks_entries() {
        let e = parse_manifest(
            br#"[{"Config":"c.json","RepoTags":["app:1"],"Layers":["l.tar"]},
            {"Config":"d.json","RepoTags":null,"Layers":[]}]"#,
        )
        .unwrap();
        assert_eq!(pick(&e, Some("app:1")).unwrap().config, "c.json");
        assert_eq!(
            pick(&e, Some("docker.io/library/app:1")).unwrap().config,
            "c.json"
        );
        assert_eq!(pick(&e, Some("@1")).unwrap().config, "d.json");
        assert!(matches!(
            pick(&e, None),
            Err(DockerArchiveError::Ambiguous(2))
        ));
        assert!(matches!(
            pick(&e, Some("x:y")),
            Err(DockerArchiveError::NoRef { .. })
        ));
        assert!(matches!(
            parse_manifest(b"{}"),
            Err(DockerArchiveError::ManifestJson(_))
        ));
    }

    #[test]
    fn rejects_broken_tar_headers() {
        let mut h = [0u8; 1024];
        h[..4].copy_from_slice(b"name");
        h[124..135].copy_from_slice(b"00000000001");
        h[148..156].copy_from_slice(b"0000000\0");
        let e = index_tar(io::Cursor::new(h.to_vec())).unwrap_err();
        assert!(e.to_string().contains("checksum"), "{e}");
        assert!(index_tar(io::Cursor::new(vec![1u8; 100])).is_err());
    }
}
