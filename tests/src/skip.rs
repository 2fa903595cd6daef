//! The one way a test says it cannot run on this machine: `SKIPPED: <test>: <reason>` on stderr
//! and, when `$HYPERPOD_SKIP_LOG` names a file (`scripts/test` sets it), the same line appended
//! there, so the suite's summary lists every skip and fails on one (the harness captures the
//! stderr of passing tests, so a printed line alone would be lost). The tests in this module keep
//! every other `SKIPPED:` line out of the workspace's sources.

use std::io::Write;
use std::path::Path;

/// Names the file skip lines are appended to.
pub const LOG_ENV: &str = "HYPERPOD_SKIP_LOG";

/// Reports that `test` did not run because of `reason`; the caller then returns.
pub fn skipped(test: &str, reason: &str) {
    record(
        std::env::var_os(LOG_ENV).as_deref().map(Path::new),
        test,
        reason,
    );
}

fn record(log: Option<&Path>, test: &str, reason: &str) {
    let line = format!("SKIPPED: {test}: {reason}");
    eprintln!("{line}");
    let Some(path) = log else {
        return;
    };
    // One write of one short line with O_APPEND: lines from parallel test processes stay whole.
    let appended = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
    if let Err(e) = appended {
        panic!("{LOG_ENV}={}: {e}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            if p.is_dir() {
                if name != "target" && !name.starts_with('.') {
                    rust_files(&p, out);
                }
            } else if name.ends_with(".rs") {
                out.push(p);
            }
        }
    }

    /// Every skip goes through [`super::skipped`]: a test printing its own `SKIPPED:` line would
    /// pass unseen.
    #[test]
    fn no_test_prints_its_own_skip_line() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut files = Vec::new();
        rust_files(&root, &mut files);
        let this = Path::new(file!()).file_name().unwrap();
        let marker = concat!("SKIP", "PED:");
        let offenders: Vec<String> = files
            .iter()
            .filter(|p| !(p.file_name() == Some(this) && p.parent().unwrap().ends_with("src")))
            .filter(|p| std::fs::read_to_string(p).unwrap().contains(marker))
            .map(|p| p.display().to_string())
            .collect();
        assert!(
            offenders.is_empty(),
            "use hyperpod_tests::skip::skipped in {offenders:?}"
        );
        assert!(
            files.len() > 50,
            "walked {} files from {}",
            files.len(),
            root.display()
        );
    }

    #[test]
    fn a_skip_is_appended_to_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("skips");
        super::record(Some(&log), "t1", "no widget");
        super::record(Some(&log), "t2", "no gadget");
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            "SKIPPED: t1: no widget\nSKIPPED: t2: no gadget\n"
        );
    }
}
