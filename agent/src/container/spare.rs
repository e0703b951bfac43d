//! Spare bundle directories: removed containers' bundle copies kept for reuse by the
//! next creates.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::Containers;

/// How many emptied bundle directories are kept for reuse.
const SPARE_BUNDLES: usize = 8;
/// Where they are kept, under the bundles directory.
pub(super) const SPARES_DIR: &str = ".spare";

/// The pool of reusable bundle directories.
#[derive(Default)]
pub(super) struct SpareBundles {
    dirs: Vec<PathBuf>,
    /// Names the next directory put into the pool.
    next: u64,
}

/// Keeps a removed container's bundle directory for reuse in `spares`, or deletes it when
/// the pool is full. Only a directory holding nothing but `config.json` is kept.
pub(super) fn recycle_bundle(spares: &Mutex<SpareBundles>, bundles: &Path, bundle: &Path) {
    let mut pool = spares.lock().expect("spares lock");
    if pool.dirs.len() < SPARE_BUNDLES && only_config_json(bundle) {
        let spare = bundles.join(SPARES_DIR).join(pool.next.to_string());
        pool.next += 1;
        if std::fs::rename(bundle, &spare).is_ok() {
            pool.dirs.push(spare);
            return;
        }
    }
    drop(pool);
    let _ = std::fs::remove_dir_all(bundle);
}

/// Whether `dir` holds exactly one entry, `config.json`.
fn only_config_json(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    let names: Vec<_> = entries.flatten().map(|e| e.file_name()).take(2).collect();
    names.len() == 1 && names[0] == "config.json"
}

impl Containers {
    /// Moves a spare bundle directory (if there is one) to `bundle`, where
    /// [`spec::write_bundle`] then overwrites its `config.json`.
    pub(super) fn take_spare_bundle(&self, bundle: &Path) {
        let spare = self.spares.lock().expect("spares lock").dirs.pop();
        if let Some(spare) = spare {
            if std::fs::rename(&spare, bundle).is_err() {
                let _ = std::fs::remove_dir_all(&spare);
            }
        }
    }

    /// Deletes the spare bundle directories (on shutdown).
    pub fn remove_spare_bundles(&self) {
        self.spares.lock().expect("spares lock").dirs.clear();
        let _ = std::fs::remove_dir_all(self.bundles.join(SPARES_DIR));
    }
}
