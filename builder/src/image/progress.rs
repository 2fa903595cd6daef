//! Download progress: one bar per blob on stderr, or nothing when quiet or when stderr is not
//! a terminal.

use std::io::IsTerminal;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Creates progress bars (stacked, one line per blob), or hidden ones.
#[derive(Clone, Debug)]
pub struct Progress {
    multi: Option<MultiProgress>,
}

impl Progress {
    /// Bars are shown unless `quiet` or stderr is not a terminal.
    pub fn new(quiet: bool) -> Self {
        let visible = !quiet && std::io::stderr().is_terminal();
        Progress {
            multi: visible.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr())),
        }
    }

    /// Whether bars are drawn.
    pub fn is_visible(&self) -> bool {
        self.multi.is_some()
    }

    /// A bar for one blob of `size` bytes, labelled with the digest's first 12 hex digits.
    pub fn blob(&self, label: &str, size: u64) -> ProgressBar {
        let Some(multi) = &self.multi else {
            return ProgressBar::hidden();
        };
        let bar = multi.add(ProgressBar::new(size));
        if let Ok(style) = ProgressStyle::with_template(
            "{prefix:12} [{wide_bar}] {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(label.chars().take(12).collect::<String>());
        bar
    }

    /// A bar for applying one layer: uncompressed bytes so far (the total is not known before).
    pub fn layer(&self, label: &str) -> ProgressBar {
        let Some(multi) = &self.multi else {
            return ProgressBar::hidden();
        };
        let bar = multi.add(ProgressBar::new_spinner());
        if let Ok(style) = ProgressStyle::with_template(
            "{prefix:12} {spinner} applying {bytes:>10} {bytes_per_sec:>12}",
        ) {
            bar.set_style(style);
        }
        bar.set_prefix(label.chars().take(12).collect::<String>());
        bar
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_is_hidden() {
        let p = Progress::new(true);
        assert!(!p.is_visible());
        assert!(p.blob("sha256:abc", 10).is_hidden());
        assert!(p.layer("layer 1/2").is_hidden());
    }
}
