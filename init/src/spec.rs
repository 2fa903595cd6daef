//! Loading the run spec and the launch-time overrides from the initramfs, with a size bound.

use std::fs::File;
use std::io::{self, Read};

use pod::spec::{MAX_SPEC_BYTES, OVERRIDES_PATH, Overrides, RunSpec, SPEC_PATH};
use serde::de::DeserializeOwned;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum SpecError {
    #[error("missing {0}")]
    Missing(String),
    #[error("cannot read {path}")]
    Read { path: String, source: io::Error },
    #[error("{path} is larger than {MAX_SPEC_BYTES} bytes")]
    TooLarge { path: String },
    #[error("{path} is not valid")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
}

/// Parses a spec or overrides document, refusing more than [`MAX_SPEC_BYTES`].
pub fn parse<T: DeserializeOwned>(bytes: &[u8], path: &str) -> Result<T, SpecError> {
    if bytes.len() > MAX_SPEC_BYTES {
        return Err(SpecError::TooLarge { path: path.into() });
    }
    serde_json::from_slice(bytes).map_err(|source| SpecError::Parse {
        path: path.into(),
        source,
    })
}

/// Reads at most `MAX_SPEC_BYTES + 1` bytes of `path`; `None` when it does not exist.
fn read_bounded(path: &str) -> Result<Option<Vec<u8>>, SpecError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(SpecError::Read {
                path: path.into(),
                source,
            });
        }
    };
    let mut bytes = Vec::new();
    file.take(MAX_SPEC_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| SpecError::Read {
            path: path.into(),
            source,
        })?;
    Ok(Some(bytes))
}

/// Loads the run spec (required) and the overrides (optional).
pub fn load() -> Result<(RunSpec, Overrides), SpecError> {
    let spec = match read_bounded(SPEC_PATH)? {
        Some(bytes) => parse(&bytes, SPEC_PATH)?,
        None => return Err(SpecError::Missing(SPEC_PATH.into())),
    };
    let overrides = match read_bounded(OVERRIDES_PATH)? {
        Some(bytes) => parse(&bytes, OVERRIDES_PATH)?,
        None => Overrides::default(),
    };
    Ok((spec, overrides))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_spec_and_overrides_with_bounds() {
        let spec: RunSpec = parse(
            br#"{"entrypoint":["/bin/app"],"cmd":["-x"],"env":["A=1"],"user":"app"}"#,
            SPEC_PATH,
        )
        .unwrap();
        assert_eq!(spec.entrypoint, ["/bin/app"]);
        assert_eq!(spec.user, "app");
        let ov: Overrides = parse(br#"{"args":["a","b"]}"#, OVERRIDES_PATH).unwrap();
        assert_eq!(ov.args, Some(vec!["a".into(), "b".into()]));
        assert!(matches!(
            parse::<RunSpec>(br#"{"cmd":"notalist"}"#, SPEC_PATH),
            Err(SpecError::Parse { .. })
        ));
        assert!(matches!(
            parse::<RunSpec>(br#"{"bogus":1}"#, SPEC_PATH),
            Err(SpecError::Parse { .. })
        ));
        let mut big = br#"{"cmd":[""#.to_vec();
        big.resize(MAX_SPEC_BYTES + 10, b'a');
        assert!(matches!(
            parse::<RunSpec>(&big, SPEC_PATH),
            Err(SpecError::TooLarge { .. })
        ));
        assert_eq!(
            parse::<RunSpec>(b"{}", SPEC_PATH).unwrap(),
            RunSpec::default()
        );
    }
}
