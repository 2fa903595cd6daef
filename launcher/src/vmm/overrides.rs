//! The launch-time overrides archive appended to the pod's initramfs: a newc cpio holding
//! `/hyperpod/overrides.json` (see `docs/guest-protocol.md`), written with `pod::cpio`.

use pod::cpio::{CpioError, CpioWriter};
use pod::spec::{OVERRIDES_PATH, Overrides};

/// The archive for `o`, or `None` when nothing is overridden.
pub fn archive(o: &Overrides) -> Result<Option<Vec<u8>>, CpioError> {
    if o.is_empty() {
        return Ok(None);
    }
    let json = serde_json::to_vec(o).map_err(|e| CpioError::Write(e.into()))?;
    let path = OVERRIDES_PATH.trim_start_matches('/');
    let mut w = CpioWriter::new(Vec::new(), 0);
    if let Some((dir, _)) = path.rsplit_once('/') {
        w.dir(dir, 0o755)?;
    }
    w.file(path, 0o644, &json)?;
    w.finish().map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_reads_back_with_cpio() {
        assert!(archive(&Overrides::default()).unwrap().is_none());
        let o = Overrides {
            env: vec!["A=1".into()],
            args: Some(vec!["x".into()]),
            ..Overrides::default()
        };
        let a = archive(&o).unwrap().unwrap();
        assert_eq!(a.len() % 4, 0);
        assert!(a.starts_with(b"070701"));
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("cpio")
            .args(["-idm", "--quiet"])
            .current_dir(dir.path())
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("cpio must be installed");
        use std::io::Write;
        child.stdin.take().unwrap().write_all(&a).unwrap();
        assert!(child.wait().unwrap().success());
        let got = std::fs::read(dir.path().join("hyperpod/overrides.json")).unwrap();
        assert_eq!(serde_json::from_slice::<Overrides>(&got).unwrap(), o);
    }
}
