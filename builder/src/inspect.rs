//! `hyperbuild inspect` and `hyperbuild verify`: what a pod holds, and whether its bytes are
//! what its manifest says.

use std::fmt::Write as _;
use std::path::Path;

use pod::{Pod, PodError};
use serde_json::json;

/// The human-readable table for `hyperbuild inspect`.
pub fn table(path: &Path, pod: &Pod) -> String {
    let m = pod.manifest();
    let r = &m.run;
    let mut out = String::new();
    let mut row = |k: &str, v: String| {
        let _ = writeln!(out, "{k:<12} {v}");
    };
    row(
        "pod",
        format!("{} ({})", path.display(), human_size(pod.layout().file_len)),
    );
    row("format", m.format_version.to_string());
    row("builder", m.builder.clone());
    row("created", m.created.clone());
    row("source", m.source.reference.clone());
    row("image", image_digest(&m.source));
    row("entrypoint", json!(r.entrypoint).to_string());
    row("cmd", json!(r.cmd).to_string());
    for e in &r.env {
        row("env", e.clone());
    }
    row("workdir", or_default(&r.working_dir, "/"));
    row("user", or_default(&r.user, "root"));
    row("hostname", or_default(&r.hostname, "(from init)"));
    row("stop signal", or_default(&r.stop_signal, "SIGTERM"));
    if !r.exposed_ports.is_empty() {
        row("ports", r.exposed_ports.join(" "));
    }
    for (k, v) in &r.labels {
        row("label", format!("{k}={v}"));
    }
    row(
        "resources",
        format!("{} MiB, {} vCPU", m.resources.memory_mib, m.resources.vcpus),
    );
    row(
        "kernel",
        match &m.kernel {
            Some(k) => format!(
                "Linux {}, fragments {}",
                k.release,
                k.fragments.as_deref().unwrap_or("unknown")
            ),
            None => "(not recorded)".into(),
        },
    );
    row("cmdline", m.kernel_cmdline.clone());
    let _ = writeln!(
        out,
        "\n{:<12} {:>12} {:>12}  SHA256",
        "SECTION", "OFFSET", "SIZE"
    );
    let loc = pod.layout().manifest_loc;
    let _ = writeln!(
        out,
        "{:<12} {:>12} {:>12}  {}",
        "manifest.json",
        loc.offset,
        loc.len,
        pod.manifest_sha256()
    );
    for s in pod.sections() {
        let loc = pod.section(s);
        let _ = writeln!(
            out,
            "{:<12} {:>12} {:>12}  {}",
            s.name(),
            loc.offset,
            loc.len,
            pod.recorded_sha256(s)
        );
    }
    if let Some(v) = &m.verity {
        let _ = writeln!(
            out,
            "
verity root  {} ({} data blocks)",
            v.root_hash, v.data_blocks
        );
    }
    if let Some((loc, sig)) = &pod.layout().signature {
        let _ = writeln!(
            out,
            "signature    ed25519 at offset {}: {}",
            loc.offset,
            hex::encode(sig)
        );
    }
    out
}

/// The machine-readable form for `hyperbuild inspect --json`: the manifest plus where each
/// section is in the file.
pub fn json(pod: &Pod) -> serde_json::Value {
    let layout = pod.layout();
    let mut sections = serde_json::Map::new();
    sections.insert(
        "manifest.json".into(),
        json!({ "offset": layout.manifest_loc.offset, "size": layout.manifest_loc.len, "sha256": pod.manifest_sha256() }),
    );
    for s in pod.sections() {
        let loc = pod.section(s);
        sections.insert(
            s.name().into(),
            json!({ "offset": loc.offset, "size": loc.len, "sha256": pod.recorded_sha256(s) }),
        );
    }
    if let Some((loc, sig)) = &layout.signature {
        sections.insert(
            pod::SIGNATURE_ENTRY.into(),
            json!({ "offset": loc.offset, "size": loc.len, "ed25519": hex::encode(sig) }),
        );
    }
    json!({ "file_size": layout.file_len, "manifest": pod.manifest(), "sections": sections })
}

/// Recomputes every section digest; the one-line result for `hyperbuild verify`.
pub fn verify(path: &Path) -> Result<String, PodError> {
    let pod = Pod::open(path)?;
    pod.verify()?;
    Ok(format!(
        "{}: ok (manifest sha256:{}, {} sections verified)",
        path.display(),
        pod.manifest_sha256(),
        pod.sections().len()
    ))
}

/// The image's digest as the build line printed it: the manifest digest, or for a `docker save`
/// archive (which has no manifest digest) the config digest, Docker's image ID.
pub fn image_digest(source: &pod::manifest::Source) -> String {
    match (&*source.manifest_digest, &*source.config_digest) {
        ("", "") => "(unknown)".to_string(),
        ("", config) => format!("{config} (image ID)"),
        (manifest, _) => manifest.to_string(),
    }
}

fn or_default(s: &str, default: &str) -> String {
    if s.is_empty() {
        default.to_string()
    } else {
        s.to_string()
    }
}

/// `1234567` → `1.2 MiB`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_row_falls_back_to_the_image_id() {
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let mut s = pod::manifest::Source {
            reference: "docker-archive:x.tar".into(),
            manifest_digest: String::new(),
            config_digest: d('c'),
        };
        assert_eq!(image_digest(&s), format!("{} (image ID)", d('c')));
        s.manifest_digest = d('m');
        assert_eq!(image_digest(&s), d('m'));
        s.manifest_digest.clear();
        s.config_digest.clear();
        assert_eq!(image_digest(&s), "(unknown)");
    }

    #[test]
    fn sizes_read_like_people_write_them() {
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(3 << 20), "3.0 MiB");
    }
}
