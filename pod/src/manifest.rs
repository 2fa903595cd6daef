//! `manifest.json`: what a pod holds and how to run it.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::spec::RunSpec;
use crate::time;

/// The manifest format version this crate writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Largest manifest accepted, in bytes (checked before it is read).
pub const MAX_MANIFEST_BYTES: u64 = 1 << 20;
/// Guest memory bounds, MiB. The lower bound is the least our guest kernel boots a pod in
/// (measured under QEMU TCG: below it the kernel panics or hangs; see docs/launcher.md).
pub const MEMORY_MIB_RANGE: std::ops::RangeInclusive<u32> = 32..=1 << 20;
/// vCPU count bounds.
pub const VCPUS_RANGE: std::ops::RangeInclusive<u32> = 1..=254;

/// Why a manifest was refused.
#[derive(Debug, Error)]
pub enum ManifestError {
    #[error("manifest is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unsupported pod format version {0} (this build reads {FORMAT_VERSION})")]
    Version(u32),
    #[error("section {section}: sha256 {value:?} is not 64 lowercase hex digits")]
    Digest {
        section: &'static str,
        value: String,
    },
    #[error("created {0:?} is not a UTC time like 2024-01-02T03:04:05Z")]
    Created(String),
    #[error("memory {0} MiB is outside {MEMORY_MIB_RANGE:?}")]
    Memory(u32),
    #[error("vcpus {0} is outside {VCPUS_RANGE:?}")]
    Vcpus(u32),
    #[error("kernel command line has {0} bytes, more than 2048")]
    Cmdline(usize),
    #[error("kernel release {0:?} is not 1 to 64 printable ASCII characters")]
    KernelRelease(String),
    #[error("kernel fragments key {0:?} is not 16 lowercase hex digits")]
    KernelFragments(String),
    #[error("verity: {0}")]
    Verity(&'static str),
}

/// One section's recorded size and digest.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SectionInfo {
    pub size: u64,
    /// Lowercase hex sha256 of the section's bytes.
    pub sha256: String,
}

/// The three payload sections.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sections {
    pub kernel: SectionInfo,
    pub initramfs: SectionInfo,
    pub rootfs: SectionInfo,
    /// `rootfs.verity`: the dm-verity hash tree of the rootfs (present with [`Manifest::verity`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verity: Option<SectionInfo>,
}

/// The dm-verity parameters of the rootfs (`docs/pod-format.md`, "rootfs.verity"): format 1,
/// sha256, 4 KiB data and hash blocks, no superblock, the tree at the start of its section.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Verity {
    /// Number of 4 KiB data blocks (the rootfs size / 4096).
    pub data_blocks: u64,
    /// Lowercase hex of the 32-byte salt.
    pub salt: String,
    /// Lowercase hex sha256 root hash of the tree.
    pub root_hash: String,
}

/// Where the pod's image came from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// The reference as resolved (e.g. `docker.io/library/busybox:latest`, `oci:/path:tag`).
    pub reference: String,
    /// `sha256:...` of the image manifest that was built; empty for a `docker save` archive,
    /// which has none.
    pub manifest_digest: String,
    /// `sha256:...` of the image config: the image ID, what `docker images` shows. Absent in
    /// pods from before the field.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub config_digest: String,
}

/// Which guest kernel went into the pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelInfo {
    /// The kernel's release as `uname -r` shows it (e.g. `6.12.117`), read from its banner.
    pub release: String,
    /// The cache key (16 hex digits) of the `kernel-fragments/` it was built from, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fragments: Option<String>,
}

/// Longest kernel release accepted, in bytes.
pub const MAX_KERNEL_RELEASE: usize = 64;

/// Default guest resources.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    pub memory_mib: u32,
    pub vcpus: u32,
}

impl Default for Resources {
    fn default() -> Self {
        Resources {
            memory_mib: 128,
            vcpus: 1,
        }
    }
}

/// The whole manifest. Field order is the JSON order; maps are sorted, so serialising is
/// deterministic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format_version: u32,
    /// `hyperbuild <version>`.
    pub builder: String,
    /// Creation time, UTC, `YYYY-MM-DDTHH:MM:SSZ`: from the image or `SOURCE_DATE_EPOCH`.
    pub created: String,
    pub source: Source,
    pub sections: Sections,
    pub run: RunSpec,
    pub resources: Resources,
    /// Kernel command line; the launcher appends its device entries.
    pub kernel_cmdline: String,
    /// The kernel's identity; absent in pods built before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<KernelInfo>,
    /// The rootfs's dm-verity tree, when the pod has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verity: Option<Verity>,
}

impl Manifest {
    /// Parses and validates manifest bytes.
    pub fn from_json(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        // Read the version first so a newer format gets a version error, not a field error.
        #[derive(Deserialize)]
        struct Version {
            format_version: u32,
        }
        let v: Version = serde_json::from_slice(bytes)?;
        if v.format_version != FORMAT_VERSION {
            return Err(ManifestError::Version(v.format_version));
        }
        let m: Manifest = serde_json::from_slice(bytes)?;
        m.validate()?;
        Ok(m)
    }

    /// Serialises the manifest (pretty, trailing newline), after validating it.
    pub fn to_json(&self) -> Result<Vec<u8>, ManifestError> {
        self.validate()?;
        let mut out = serde_json::to_vec_pretty(self)?;
        out.push(b'\n');
        Ok(out)
    }

    /// Checks every field that has a fixed form.
    pub fn validate(&self) -> Result<(), ManifestError> {
        if self.format_version != FORMAT_VERSION {
            return Err(ManifestError::Version(self.format_version));
        }
        for (section, info) in self.sections() {
            if !is_sha256_hex(&info.sha256) {
                return Err(ManifestError::Digest {
                    section,
                    value: info.sha256.clone(),
                });
            }
        }
        if time::parse_rfc3339(&self.created).is_none() {
            return Err(ManifestError::Created(self.created.clone()));
        }
        if !MEMORY_MIB_RANGE.contains(&self.resources.memory_mib) {
            return Err(ManifestError::Memory(self.resources.memory_mib));
        }
        if !VCPUS_RANGE.contains(&self.resources.vcpus) {
            return Err(ManifestError::Vcpus(self.resources.vcpus));
        }
        if self.kernel_cmdline.len() > 2048 {
            return Err(ManifestError::Cmdline(self.kernel_cmdline.len()));
        }
        if let Some(k) = &self.kernel {
            if !is_kernel_release(&k.release) {
                return Err(ManifestError::KernelRelease(k.release.clone()));
            }
            if let Some(f) = k.fragments.as_ref().filter(|f| !is_fragments_key(f)) {
                return Err(ManifestError::KernelFragments(f.clone()));
            }
        }
        self.validate_verity()
    }

    /// The verity section and parameters come together and agree with the rootfs and the
    /// kernel command line (which must carry exactly the `dm-mod.create=` they imply).
    fn validate_verity(&self) -> Result<(), ManifestError> {
        let (section, v) = match (&self.sections.verity, &self.verity) {
            (None, None) => return Ok(()),
            (Some(s), Some(v)) => (s, v),
            _ => {
                return Err(ManifestError::Verity(
                    "sections.verity and verity must both be present or both absent",
                ));
            }
        };
        if !is_sha256_hex(&section.sha256) {
            return Err(ManifestError::Digest {
                section: "rootfs.verity",
                value: section.sha256.clone(),
            });
        }
        if !is_sha256_hex(&v.salt) || !is_sha256_hex(&v.root_hash) {
            return Err(ManifestError::Verity(
                "salt and root_hash must be 64 lowercase hex digits",
            ));
        }
        if v.data_blocks == 0
            || v.data_blocks.checked_mul(crate::verity::BLOCK) != Some(self.sections.rootfs.size)
        {
            return Err(ManifestError::Verity(
                "data_blocks × 4096 must equal the rootfs size",
            ));
        }
        if section.size != crate::verity::tree_size(v.data_blocks) {
            return Err(ManifestError::Verity(
                "the section size does not match the tree for data_blocks",
            ));
        }
        let args = crate::verity::kernel_args(v);
        if !(self.kernel_cmdline == args || self.kernel_cmdline.ends_with(&format!(" {args}"))) {
            return Err(ManifestError::Verity(
                "kernel_cmdline does not end with the dm-mod.create= these parameters imply",
            ));
        }
        Ok(())
    }

    /// The creation time in seconds since the epoch (validated by [`Manifest::validate`]).
    pub fn created_unix(&self) -> i64 {
        time::parse_rfc3339(&self.created).unwrap_or(0)
    }

    /// `(name, info)` of the payload sections, in file order.
    pub fn sections(&self) -> [(&'static str, &SectionInfo); 3] {
        [
            ("kernel", &self.sections.kernel),
            ("initramfs", &self.sections.initramfs),
            ("rootfs.ext4", &self.sections.rootfs),
        ]
    }
}

/// Whether `s` is 64 lowercase hex digits.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Whether `s` can be a kernel release: 1 to 64 printable ASCII characters, no space.
pub fn is_kernel_release(s: &str) -> bool {
    (1..=MAX_KERNEL_RELEASE).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic())
}

/// Whether `s` is a kernel fragments cache key: 16 lowercase hex digits.
pub fn is_fragments_key(s: &str) -> bool {
    s.len() == 16
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample() -> Manifest {
        Manifest {
            format_version: FORMAT_VERSION,
            builder: "hyperbuild 0.1.0".into(),
            created: "2024-01-02T03:04:05Z".into(),
            source: Source {
                reference: "docker.io/library/busybox:latest".into(),
                manifest_digest: format!("sha256:{}", "1".repeat(64)),
                config_digest: format!("sha256:{}", "2".repeat(64)),
            },
            sections: Sections::default(),
            run: RunSpec {
                cmd: vec!["sh".into()],
                ..RunSpec::default()
            },
            resources: Resources::default(),
            kernel_cmdline: "reboot=k panic=-1 quiet".into(),
            kernel: Some(KernelInfo {
                release: "6.12.117".into(),
                fragments: Some("0123456789abcdef".into()),
            }),
            verity: None,
        }
    }

    #[test]
    fn validates_fields() {
        let mut m = sample();
        for s in [
            &mut m.sections.kernel,
            &mut m.sections.initramfs,
            &mut m.sections.rootfs,
        ] {
            s.sha256 = "a".repeat(64);
        }
        let json = m.to_json().unwrap();
        assert_eq!(Manifest::from_json(&json).unwrap(), m);

        let mut bad = m.clone();
        bad.sections.rootfs.sha256 = "A".repeat(64);
        assert!(matches!(
            bad.validate(),
            Err(ManifestError::Digest {
                section: "rootfs.ext4",
                ..
            })
        ));
        let mut bad = m.clone();
        bad.created = "yesterday".into();
        assert!(matches!(bad.validate(), Err(ManifestError::Created(_))));
        let mut bad = m.clone();
        bad.resources.vcpus = 0;
        assert!(matches!(bad.validate(), Err(ManifestError::Vcpus(0))));
        let mut bad = m.clone();
        bad.resources.memory_mib = 1;
        assert!(matches!(bad.validate(), Err(ManifestError::Memory(1))));
        let mut bad = m.clone();
        bad.kernel.as_mut().unwrap().release = "6.12 x".into();
        assert!(matches!(
            bad.validate(),
            Err(ManifestError::KernelRelease(_))
        ));
        let mut bad = m.clone();
        bad.kernel.as_mut().unwrap().fragments = Some("0123456789ABCDEF".into());
        assert!(matches!(
            bad.validate(),
            Err(ManifestError::KernelFragments(_))
        ));

        let newer = String::from_utf8(json)
            .unwrap()
            .replace("\"format_version\": 1", "\"format_version\": 2");
        assert!(matches!(
            Manifest::from_json(newer.as_bytes()),
            Err(ManifestError::Version(2))
        ));
        assert!(matches!(
            Manifest::from_json(b"{"),
            Err(ManifestError::Json(_))
        ));
    }

    #[test]
    fn pods_without_a_kernel_record_still_read_and_write_the_same() {
        let mut m = sample();
        for s in [
            &mut m.sections.kernel,
            &mut m.sections.initramfs,
            &mut m.sections.rootfs,
        ] {
            s.sha256 = "b".repeat(64);
        }
        m.kernel = None;
        let old = m.to_json().unwrap();
        let value: serde_json::Value = serde_json::from_slice(&old).unwrap();
        assert!(value.get("kernel").is_none(), "{value}");
        assert_eq!(Manifest::from_json(&old).unwrap(), m);
        m.kernel = Some(KernelInfo {
            release: "6.12.117".into(),
            fragments: None,
        });
        let json = String::from_utf8(m.to_json().unwrap()).unwrap();
        assert!(json.contains("\"release\": \"6.12.117\""));
        assert!(!json.contains("fragments"));
        assert_eq!(Manifest::from_json(json.as_bytes()).unwrap(), m);
    }
}
