//! The guest protocol's port numbers are written once, in `pod/src/protocol.rs`. Everything
//! else names them: Rust through `pod::protocol`, the probe guests' C and assembly through the
//! `-D` defines their build passes (`launcher/tests/probes/mod.rs`), the benchmarks through the
//! launcher's own QEMU command line (`launcher/examples/qemu_argv.rs`). This lint fails when a
//! port number comes back in a source file; documentation (Markdown, the kernel fragments'
//! reasons) may still quote them.

use std::path::{Path, PathBuf};

/// Source files under `dir` (no build output, no VCS data, no fuzz corpus; no Markdown and no
/// kernel fragments, whose `# why:` lines are prose).
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if p.is_dir() {
            if name != "target" && name != "corpus" && !name.starts_with('.') {
                sources(&p, out);
            }
        } else if !name.ends_with(".md") && !name.ends_with(".conf") {
            out.push(p);
        }
    }
}

/// The port literals `line` of a file named `name` spells, if any.
fn offending(name: &str, line: &str) -> Option<&'static str> {
    let l = line.to_ascii_lowercase();
    // Built from pieces, so this file does not spell them either.
    let (console, control, exit) = (
        concat!("0x", "3f8"),
        concat!("0x", "2f8"),
        concat!("0x", "f4"),
    );
    for (needle, what) in [
        (console, "the console UART"),
        (control, "the control UART"),
        (concat!("iobase=0x", "f4"), "the exit port"),
        (concat!("seek=", "244"), "the exit port (decimal)"),
        (concat!("seek=", "1016"), "the console UART (decimal)"),
        (concat!("seek=", "760"), "the control UART (decimal)"),
    ] {
        if l.contains(needle) {
            return Some(what);
        }
    }
    // 0xf4 is also the `hlt` opcode: machine code in Rust may spell it where it says so.
    let is_exit_port = l
        .split(|c: char| !c.is_ascii_alphanumeric())
        .any(|w| w == exit);
    let rust_hlt = name.ends_with(".rs") && (l.contains("hlt") || l.contains("halt"));
    (is_exit_port && !rust_hlt).then_some("the exit port")
}

#[test]
fn port_numbers_are_spelled_only_in_the_protocol_module() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    sources(&root, &mut files);
    let protocol = root.join("pod/src/protocol.rs");
    // This file spells them in its own examples.
    let this = root.join(file!());
    let mut found = Vec::new();
    for f in &files {
        if f == &protocol || f == &this {
            continue;
        }
        // Binary files (images, corpora) are not sources.
        let Ok(text) = std::fs::read_to_string(f) else {
            continue;
        };
        let name = f.file_name().unwrap().to_string_lossy();
        for (i, line) in text.lines().enumerate() {
            if let Some(what) = offending(&name, line) {
                found.push(format!(
                    "{}:{}: {what}: {}",
                    f.display(),
                    i + 1,
                    line.trim()
                ));
            }
        }
    }
    assert!(
        found.is_empty(),
        "port numbers outside pod/src/protocol.rs (use pod::protocol, the probes' -D defines or \
         qemu_argv):\n{}",
        found.join("\n")
    );
    assert!(files.len() > 100, "walked only {} files", files.len());
}

#[test]
fn the_lint_sees_each_spelling() {
    assert_eq!(
        offending("boot.sh", "-device isa-serial,iobase=0x3F8,irq=4"),
        Some("the console UART")
    );
    assert_eq!(
        offending("probe.h", "#define CONTROL 0x2f8"),
        Some("the control UART")
    );
    assert_eq!(
        offending("probe.h", "#define EXIT_PORT 0xf4"),
        Some("the exit port")
    );
    assert_eq!(
        offending("a.rs", "printf '\\001' | dd of=/dev/port seek=244"),
        Some("the exit port (decimal)")
    );
    assert_eq!(offending("a.rs", "0xf4 => stop(),"), Some("the exit port"));
    // The hlt opcode in Rust machine code, and other numbers, are fine.
    assert_eq!(
        offending("a.rs", "let halt = [0xfa, 0xf4]; // cli; hlt"),
        None
    );
    assert_eq!(offending("a.rs", "let x = 0xf40;"), None);
    assert_eq!(offending("a.S", "outb %al, $EXIT_PORT"), None);
}
