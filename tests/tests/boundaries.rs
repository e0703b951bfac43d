//! The crate boundaries of docs/architecture.md that the compiler does not enforce: the host
//! crates (runtime, shim) use only the VMM's facade (the items `ember-vmm` re-exports at its
//! root), never its modules, so the devices can change inside without them following.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Every `ember_vmm::<module>::` path in `text`, with its line number.
fn module_paths(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let mut rest = line;
        while let Some(at) = rest.find("ember_vmm::") {
            rest = &rest[at + "ember_vmm::".len()..];
            let ident: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let lower = ident.chars().next().is_some_and(|c| c.is_ascii_lowercase());
            if lower && rest[ident.len()..].starts_with("::") {
                found.push((n + 1, format!("ember_vmm::{ident}::")));
            }
        }
    }
    found
}

#[test]
fn a_module_path_is_told_from_a_facade_item() {
    let text = "use ember_vmm::{Vm, VmConfig};\nlet p = ember_vmm::probe_capabilities(x);\n\
                use ember_vmm::devices::virtio::Interrupt; // and ember_vmm::config::X\n";
    assert_eq!(
        module_paths(text),
        [
            (3, "ember_vmm::devices::".to_string()),
            (3, "ember_vmm::config::".to_string())
        ]
    );
}

#[test]
fn host_crates_use_only_the_vmm_facade() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for dir in ["runtime/src", "shim/src"] {
        rust_files(&root.join(dir), &mut files);
    }
    assert!(files.len() > 20, "found only {} files", files.len());
    let mut breaches = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        for (line, path) in module_paths(&text) {
            breaches.push(format!(
                "{}:{line}: {path}",
                f.strip_prefix(&root).unwrap().display()
            ));
        }
    }
    assert!(
        breaches.is_empty(),
        "the runtime and the shim may name only what ember-vmm re-exports at its root \
         (add a `pub use` in vmm/src/lib.rs):\n{}",
        breaches.join("\n")
    );
}
