//! The image config (what to run, for which platform, and the layers' diff_ids) parsed into a
//! typed value, its mapping to [`RunSpec`], and `--platform` values.

use std::collections::BTreeMap;
use std::fmt;

use pod::spec::RunSpec;
use serde::{Deserialize, Serialize};

use super::digest::Digest;
use super::manifest::MAX_MANIFEST_BYTES;

/// Why a config or platform was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config {what}: {size} bytes is over the {MAX_MANIFEST_BYTES}-byte limit")]
    TooLarge { what: String, size: u64 },
    #[error("config {what}: malformed json: {reason}")]
    Json { what: String, reason: String },
    #[error("config {what}: rootfs type {found:?} is not \"layers\"")]
    RootfsType { what: String, found: String },
    #[error("config {what}: image is for {found}, wanted {wanted}")]
    Platform {
        what: String,
        found: String,
        wanted: String,
    },
    #[error("invalid platform {0:?}: expected OS/ARCH[/VARIANT]")]
    BadPlatform(String),
}

/// An OS/architecture pair, with an optional variant (`linux/arm64/v8`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Default for Platform {
    fn default() -> Self {
        Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        }
    }
}

/// The platform of the guest every pod boots: the kernel (`kernel-fragments/x86_64`) and the
/// static init are x86-64 Linux builds, so only images for it can run in a pod.
pub const GUEST_OS: &str = "linux";
/// See [`GUEST_OS`].
pub const GUEST_ARCHITECTURE: &str = "amd64";

impl Platform {
    /// Whether the pod's guest (x86-64 Linux kernel and init) runs this platform's binaries;
    /// any `amd64` variant (microarchitecture level) is left to the CPU.
    pub fn runs_in_guest(&self) -> bool {
        self.os == GUEST_OS && self.architecture == GUEST_ARCHITECTURE
    }

    /// Parses `OS/ARCH[/VARIANT]`.
    pub fn parse(s: &str) -> Result<Platform, ConfigError> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok = |p: &&str| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        };
        match parts.as_slice() {
            [os, arch] if ok(os) && ok(arch) => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: None,
            }),
            [os, arch, v] if ok(os) && ok(arch) && ok(v) => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: Some(v.to_string()),
            }),
            _ => Err(ConfigError::BadPlatform(s.to_string())),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// The parts of an image config that hyperpod uses.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(default)]
    pub created: Option<String>,
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(default)]
    pub config: ContainerConfig,
    pub rootfs: RootFs,
}

/// The `config` object of an image config (Docker's names).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    #[serde(default, deserialize_with = "null_default")]
    pub entrypoint: Vec<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub cmd: Vec<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub env: Vec<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub working_dir: String,
    #[serde(default, deserialize_with = "null_default")]
    pub user: String,
    #[serde(default, deserialize_with = "null_default")]
    pub stop_signal: String,
    #[serde(default, deserialize_with = "null_default")]
    pub exposed_ports: BTreeMap<String, serde_json::Value>,
    #[serde(default, deserialize_with = "null_default")]
    pub labels: BTreeMap<String, String>,
}

/// `rootfs`: the uncompressed layer digests, bottom first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    pub diff_ids: Vec<Digest>,
}

fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

impl ImageConfig {
    /// Parses a config blob; `what` names it in errors (its digest).
    pub fn parse(what: &str, bytes: &[u8]) -> Result<ImageConfig, ConfigError> {
        if bytes.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(ConfigError::TooLarge {
                what: what.to_string(),
                size: bytes.len() as u64,
            });
        }
        let c: ImageConfig = serde_json::from_slice(bytes).map_err(|e| ConfigError::Json {
            what: what.to_string(),
            reason: e.to_string(),
        })?;
        if c.rootfs.kind != "layers" {
            return Err(ConfigError::RootfsType {
                what: what.to_string(),
                found: c.rootfs.kind,
            });
        }
        Ok(c)
    }

    /// Checks the image's os/architecture (and variant, when one is wanted).
    pub fn check_platform(&self, what: &str, wanted: &Platform) -> Result<(), ConfigError> {
        let variant_ok = match (&wanted.variant, &self.variant) {
            (Some(w), Some(v)) => w == v,
            (Some(_), None) => true,
            (None, _) => true,
        };
        if self.os != wanted.os || self.architecture != wanted.architecture || !variant_ok {
            let found = Platform {
                os: self.os.clone(),
                architecture: self.architecture.clone(),
                variant: self.variant.clone(),
            };
            return Err(ConfigError::Platform {
                what: what.to_string(),
                found: found.to_string(),
                wanted: wanted.to_string(),
            });
        }
        Ok(())
    }

    /// What to run, in the pod's terms.
    pub fn run_spec(&self) -> RunSpec {
        let c = &self.config;
        RunSpec {
            entrypoint: c.entrypoint.clone(),
            cmd: c.cmd.clone(),
            env: c.env.clone(),
            working_dir: c.working_dir.clone(),
            user: c.user.clone(),
            hostname: String::new(),
            stop_signal: c.stop_signal.clone(),
            exposed_ports: c.exposed_ports.keys().cloned().collect(),
            labels: c.labels.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIFF: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_and_maps_to_run_spec() {
        let json = format!(
            r#"{{"created":"2024-01-02T03:04:05Z","architecture":"amd64","os":"linux",
            "config":{{"Entrypoint":["/bin/app"],"Cmd":["--serve"],"Env":["PATH=/bin","A=b"],
              "WorkingDir":"/srv","User":"1000:1000","StopSignal":"SIGINT",
              "ExposedPorts":{{"8080/tcp":{{}},"53/udp":{{}}}},"Labels":{{"k":"v"}},
              "Volumes":null,"OnBuild":null}},
            "rootfs":{{"type":"layers","diff_ids":["{DIFF}"]}},"history":[]}}"#
        );
        let c = ImageConfig::parse("c", json.as_bytes()).unwrap();
        assert_eq!(c.created.as_deref(), Some("2024-01-02T03:04:05Z"));
        c.check_platform("c", &Platform::default()).unwrap();
        let s = c.run_spec();
        assert_eq!(s.entrypoint, ["/bin/app"]);
        assert_eq!(s.cmd, ["--serve"]);
        assert_eq!(s.env, ["PATH=/bin", "A=b"]);
        assert_eq!(s.working_dir, "/srv");
        assert_eq!(s.user, "1000:1000");
        assert_eq!(s.stop_signal, "SIGINT");
        assert_eq!(s.exposed_ports, ["53/udp", "8080/tcp"]);
        assert_eq!(s.labels["k"], "v");
        assert_eq!(c.rootfs.diff_ids[0].to_string(), DIFF);
    }

    #[test]
    fn nulls_and_missing_fields() {
        let json = r#"{"architecture":"amd64","os":"linux","config":{"Entrypoint":null,"Cmd":null,"Env":null},"rootfs":{"type":"layers","diff_ids":[]}}"#;
        let c = ImageConfig::parse("c", json.as_bytes()).unwrap();
        assert_eq!(c.run_spec(), RunSpec::default());
    }

    #[test]
    fn rejects_bad_configs() {
        assert!(matches!(
            ImageConfig::parse("c", b"{"),
            Err(ConfigError::Json { .. })
        ));
        assert!(matches!(
            ImageConfig::parse("c", br#"{"os":"linux"}"#),
            Err(ConfigError::Json { .. })
        ));
        assert!(matches!(
            ImageConfig::parse("c", br#"{"rootfs":{"type":"x","diff_ids":[]}}"#),
            Err(ConfigError::RootfsType { .. })
        ));
        assert!(matches!(
            ImageConfig::parse(
                "c",
                br#"{"rootfs":{"type":"layers","diff_ids":["sha256:/etc"]}}"#
            ),
            Err(ConfigError::Json { .. })
        ));
        let arm =
            r#"{"architecture":"arm64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
        let c = ImageConfig::parse("c", arm.as_bytes()).unwrap();
        let e = c.check_platform("c", &Platform::default()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "config c: image is for linux/arm64, wanted linux/amd64"
        );
        c.check_platform("c", &Platform::parse("linux/arm64").unwrap())
            .unwrap();
    }

    #[test]
    fn only_the_guests_platform_runs_in_a_pod() {
        assert!(Platform::default().runs_in_guest());
        assert!(Platform::parse("linux/amd64/v3").unwrap().runs_in_guest());
        for other in [
            "linux/arm64",
            "linux/arm64/v8",
            "linux/386",
            "windows/amd64",
        ] {
            assert!(!Platform::parse(other).unwrap().runs_in_guest(), "{other}");
        }
    }

    #[test]
    fn platforms() {
        assert_eq!(
            Platform::parse("linux/arm64/v8").unwrap().to_string(),
            "linux/arm64/v8"
        );
        for bad in [
            "",
            "linux",
            "linux/",
            "/amd64",
            "a/b/c/d",
            "Linux/amd64",
            "linux/../x",
        ] {
            assert!(Platform::parse(bad).is_err(), "{bad}");
        }
    }
}
