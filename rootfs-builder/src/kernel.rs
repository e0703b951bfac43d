//! The guest kernel: an uncompressed `vmlinux` built from Debian's `linux-source-6.1`
//! with `make tinyconfig` + ember's config fragment + ember's patches, cached under
//! `<cache>/kernel/<key>/` where the key hashes the source version, the fragment and
//! every patch.

use crate::cache::{self, CacheError};
use crate::hashing::{sha256_file, sha256_hex};
use crate::kconfig::{self, Fragment, KconfigError};
use crate::progress::Progress;
use crate::tools::{self, ToolError};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Debian package that ships the kernel source.
pub const SOURCE_PACKAGE: &str = "linux-source-6.1";
/// Where that package installs the source tarball.
pub const DEFAULT_SOURCE_TARBALL: &str = "/usr/src/linux-source-6.1.tar.xz";
/// The fragment, relative to the workspace root.
pub const FRAGMENT: &str = "rootfs-builder/kernel/ember.config";
/// The patch directory, relative to the workspace root.
pub const PATCH_DIR: &str = "rootfs-builder/kernel/patches";
/// Bumped whenever the build recipe changes in a way that changes the output.
const RECIPE_VERSION: &str = "1";

/// File names of a kernel build result (in the cache and in `--out`).
pub const VMLINUX: &str = "vmlinux";
/// The final `.config` of the build.
pub const VMLINUX_CONFIG: &str = "vmlinux.config";
/// The JSON manifest.
pub const MANIFEST: &str = "kernel-manifest.json";

/// Errors from building or locating the kernel.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// A host tool or header is missing.
    #[error(transparent)]
    Tools(#[from] ToolError),
    /// The fragment is invalid, names unknown options, or Kconfig dropped some.
    #[error(transparent)]
    Kconfig(#[from] KconfigError),
    /// The cache could not be used.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// An input file (fragment, patch, tarball) could not be read.
    #[error("cannot read {path}: {source}")]
    Input {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A command failed; the log holds its full output.
    #[error("{stage} failed: `{command}` exited with {status}; full log: {log}\n{tail}")]
    Command {
        /// The stage name.
        stage: &'static str,
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// The log file.
        log: PathBuf,
        /// The last lines of output.
        tail: String,
    },
    /// A step produced something unexpected.
    #[error("{0}")]
    Unexpected(String),
    /// The build tree or outputs could not be written.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> KernelError + '_ {
    move |source| KernelError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One patch from `rootfs-builder/kernel/patches/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatchInfo {
    /// File name (patches apply in file-name order).
    pub name: String,
    /// SHA-256 of its contents.
    pub sha256: String,
}

/// Everything the kernel build depends on, and so the cache key.
#[derive(Debug, Clone)]
pub struct KernelInputs {
    /// The source tarball.
    pub source_tarball: PathBuf,
    /// The source version: the Debian package version for the packaged tarball, the
    /// tarball's SHA-256 for any other.
    pub source_version: String,
    /// The fragment file.
    pub fragment_path: PathBuf,
    /// The parsed fragment.
    pub fragment: Fragment,
    /// SHA-256 of the fragment file.
    pub fragment_sha256: String,
    /// Patch files in application order.
    pub patch_paths: Vec<PathBuf>,
    /// Name and hash of each patch, in application order.
    pub patches: Vec<PatchInfo>,
}

impl KernelInputs {
    /// Gathers the inputs from the workspace (fragment, patches) and the source tarball
    /// (`None` means Debian's `linux-source-6.1` package).
    pub fn discover(workspace: &Path, source: Option<&Path>) -> Result<Self, KernelError> {
        let fragment_path = workspace.join(FRAGMENT);
        let fragment = Fragment::load(&fragment_path)?;
        let fragment_sha256 = sha256_file(&fragment_path).map_err(|source| KernelError::Input {
            path: fragment_path.clone(),
            source,
        })?;
        let patch_dir = workspace.join(PATCH_DIR);
        let mut patch_paths: Vec<PathBuf> = match std::fs::read_dir(&patch_dir) {
            Ok(rd) => rd
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "patch"))
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => {
                return Err(KernelError::Input {
                    path: patch_dir,
                    source,
                })
            }
        };
        patch_paths.sort();
        let mut patches = Vec::new();
        for p in &patch_paths {
            let sha256 = sha256_file(p).map_err(|source| KernelError::Input {
                path: p.clone(),
                source,
            })?;
            patches.push(PatchInfo {
                name: file_name(p),
                sha256,
            });
        }
        let (source_tarball, source_version) = match source {
            Some(t) => {
                let v = sha256_file(t).map_err(|source| KernelError::Input {
                    path: t.to_path_buf(),
                    source,
                })?;
                (t.to_path_buf(), format!("sha256:{v}"))
            }
            None => {
                let t = PathBuf::from(DEFAULT_SOURCE_TARBALL);
                if !t.is_file() {
                    return Err(ToolError::MissingFile {
                        what: "kernel source tarball",
                        path: t,
                        package: SOURCE_PACKAGE,
                    }
                    .into());
                }
                tools::require(&[tools::Tool {
                    program: "dpkg-query",
                    package: "dpkg",
                }])?;
                (t, format!("{SOURCE_PACKAGE} {}", package_version()?))
            }
        };
        Ok(Self {
            source_tarball,
            source_version,
            fragment_path,
            fragment,
            fragment_sha256,
            patch_paths,
            patches,
        })
    }

    /// The cache key: a hash over the recipe version, source version, fragment hash and
    /// every patch name and hash.
    pub fn cache_key(&self) -> String {
        let mut text = format!(
            "recipe {RECIPE_VERSION}\nsource {}\nfragment {}\n",
            self.source_version, self.fragment_sha256
        );
        for p in &self.patches {
            text.push_str(&format!("patch {} {}\n", p.name, p.sha256));
        }
        sha256_hex(text.as_bytes())[..16].to_string()
    }

    /// Directory of this build's result inside `cache_root`.
    pub fn cache_dir(&self, cache_root: &Path) -> PathBuf {
        cache_root.join("kernel").join(self.cache_key())
    }
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn package_version() -> Result<String, KernelError> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", SOURCE_PACKAGE])
        .output()
        .map_err(|e| KernelError::Unexpected(format!("cannot run dpkg-query: {e}")))?;
    let v = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || v.is_empty() {
        return Err(ToolError::MissingFile {
            what: "kernel source package",
            path: PathBuf::from(DEFAULT_SOURCE_TARBALL),
            package: SOURCE_PACKAGE,
        }
        .into());
    }
    Ok(v)
}

/// The manifest written next to `vmlinux`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The cache key of this build.
    pub cache_key: String,
    /// Source package and version (or tarball hash).
    pub source_version: String,
    /// Kernel version from the source's Makefile (e.g. `6.1.192`).
    pub kernel_version: String,
    /// The fragment, relative to the workspace.
    pub fragment: String,
    /// SHA-256 of the fragment.
    pub fragment_sha256: String,
    /// The patches applied, in order.
    pub patches: Vec<PatchInfo>,
    /// SHA-256 of `vmlinux`.
    pub vmlinux_sha256: String,
    /// Size of `vmlinux` in bytes.
    pub vmlinux_size: u64,
    /// Wall time of the build that filled the cache, in seconds.
    pub build_seconds: u64,
}

/// A finished kernel build (in the cache or copied out).
#[derive(Debug, Clone)]
pub struct KernelArtifacts {
    /// The directory holding the three files.
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
}

impl KernelArtifacts {
    /// Opens a directory holding `vmlinux`, `vmlinux.config` and the manifest; `None`
    /// when any of them is missing or the manifest does not parse.
    pub fn open(dir: &Path) -> Option<Self> {
        if !dir.join(VMLINUX).is_file() || !dir.join(VMLINUX_CONFIG).is_file() {
            return None;
        }
        let text = std::fs::read_to_string(dir.join(MANIFEST)).ok()?;
        let manifest = serde_json::from_str(&text).ok()?;
        Some(Self {
            dir: dir.to_path_buf(),
            manifest,
        })
    }

    /// Path of `vmlinux`.
    pub fn vmlinux(&self) -> PathBuf {
        self.dir.join(VMLINUX)
    }

    /// Path of the final `.config`.
    pub fn config(&self) -> PathBuf {
        self.dir.join(VMLINUX_CONFIG)
    }

    /// Copies the three files into `out` (created if needed).
    pub fn copy_to(&self, out: &Path) -> Result<KernelArtifacts, KernelError> {
        std::fs::create_dir_all(out).map_err(io_err(out))?;
        for name in [VMLINUX, VMLINUX_CONFIG, MANIFEST] {
            let dst = out.join(name);
            if dst.exists() && same_file(&self.dir.join(name), &dst) {
                continue;
            }
            std::fs::copy(self.dir.join(name), &dst).map_err(io_err(&dst))?;
        }
        Ok(KernelArtifacts {
            dir: out.to_path_buf(),
            manifest: self.manifest.clone(),
        })
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Returns the cached build for `inputs`, if there is one.
pub fn cached(inputs: &KernelInputs, cache_root: &Path) -> Option<KernelArtifacts> {
    KernelArtifacts::open(&inputs.cache_dir(cache_root))
}

/// Options of a kernel build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Parallel make jobs.
    pub jobs: usize,
    /// Keep the build tree (`<cache>/kernel/build-<key>`) after a successful build.
    pub keep_tree: bool,
}

/// Returns the cached kernel for `inputs`, building it first on a cache miss.
pub fn build(
    inputs: &KernelInputs,
    cache_root: &Path,
    opts: &BuildOptions,
    progress: &Progress,
) -> Result<KernelArtifacts, KernelError> {
    let key = inputs.cache_key();
    if let Some(hit) = cached(inputs, cache_root) {
        progress.stage("cache", format!("hit {}", hit.dir.display()));
        return Ok(hit);
    }
    tools::require(tools::KERNEL_TOOLS)?;
    tools::require_files(tools::KERNEL_HEADERS)?;
    let kernel_root = cache_root.join("kernel");
    let _lock = cache::Lock::acquire(&kernel_root.join(format!("{key}.lock")))?;
    if let Some(hit) = cached(inputs, cache_root) {
        progress.stage(
            "cache",
            format!("hit {} (built by another run)", hit.dir.display()),
        );
        return Ok(hit);
    }
    progress.stage(
        "cache",
        format!("miss (key {key}); building from {}", inputs.source_version),
    );

    cache::sweep_trash(&kernel_root);
    let work = kernel_root.join(format!("build-{key}"));
    if work.exists() {
        cache::discard_dir(&work)?;
    }
    std::fs::create_dir_all(&work).map_err(io_err(&work))?;
    let log = work.join("build.log");
    let started = Instant::now();

    progress.stage("extract", inputs.source_tarball.display());
    let src = extract(&inputs.source_tarball, &work, &log)?;
    let kernel_version = makefile_version(&src)?;
    progress.stage("extract", format!("Linux {kernel_version}"));
    apply_patches(&src, &inputs.patch_paths, &log, progress)?;
    configure(&src, &inputs.fragment, &log, progress)?;
    let dot_config = src.join(".config");

    // Compile.
    progress.stage("compile", format!("make -j{} vmlinux", opts.jobs));
    let jobs = format!("-j{}", opts.jobs);
    compile(make(&src, &[&jobs, "vmlinux"]), &log, progress)?;

    // Install into the cache.
    let staging = kernel_root.join(format!("{key}.tmp-{}", std::process::id()));
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(io_err(&staging))?;
    }
    std::fs::create_dir_all(&staging).map_err(io_err(&staging))?;
    let vmlinux = staging.join(VMLINUX);
    std::fs::copy(src.join("vmlinux"), &vmlinux).map_err(io_err(&vmlinux))?;
    let cfg = staging.join(VMLINUX_CONFIG);
    std::fs::copy(&dot_config, &cfg).map_err(io_err(&cfg))?;
    let manifest = Manifest {
        cache_key: key.clone(),
        source_version: inputs.source_version.clone(),
        kernel_version,
        fragment: FRAGMENT.to_string(),
        fragment_sha256: inputs.fragment_sha256.clone(),
        patches: inputs.patches.clone(),
        vmlinux_sha256: sha256_file(&vmlinux).map_err(io_err(&vmlinux))?,
        vmlinux_size: std::fs::metadata(&vmlinux).map_err(io_err(&vmlinux))?.len(),
        build_seconds: started.elapsed().as_secs(),
    };
    let mpath = staging.join(MANIFEST);
    let json = serde_json::to_string_pretty(&manifest).expect("manifest serializes");
    std::fs::write(&mpath, json + "\n").map_err(io_err(&mpath))?;
    let dest = inputs.cache_dir(cache_root);
    cache::install_dir(&staging, &dest)?;
    if !opts.keep_tree {
        progress.stage(
            "cleanup",
            format!("removing {} in the background", work.display()),
        );
        cache::discard_dir(&work)?;
    }
    progress.stage("done", dest.display());
    KernelArtifacts::open(&dest)
        .ok_or_else(|| KernelError::Unexpected(format!("{} is incomplete", dest.display())))
}

/// Extracts a kernel source tarball into `into` and returns the source tree (the
/// tarball's single top-level directory).
pub fn extract(tarball: &Path, into: &Path, log: &Path) -> Result<PathBuf, KernelError> {
    let mut tar = Command::new("tar");
    tar.arg("-xf").arg(tarball).arg("-C").arg(into);
    run_logged("extract", tar, log)?;
    single_subdir(into)
}

/// Applies `patches` in order with `patch -p1` inside `src`.
pub fn apply_patches(
    src: &Path,
    patches: &[PathBuf],
    log: &Path,
    progress: &Progress,
) -> Result<(), KernelError> {
    for path in patches {
        progress.stage("patch", file_name(path));
        let mut patch = Command::new("patch");
        patch
            .args(["-p1", "--forward", "--batch", "-i"])
            .arg(path)
            .current_dir(src);
        run_logged("patch", patch, log)?;
    }
    Ok(())
}

/// Configures `src`: checks that every fragment option exists in this tree's Kconfig,
/// runs `make tinyconfig`, merges the fragment, runs `make olddefconfig`, and checks
/// that every fragment option kept its value. Returns the final `.config` options.
pub fn configure(
    src: &Path,
    fragment: &Fragment,
    log: &Path,
    progress: &Progress,
) -> Result<kconfig::Options, KernelError> {
    progress.stage("configure", "checking the fragment against Kconfig");
    let symbols = kconfig::kconfig_symbols(src)?;
    fragment.check_known(&symbols)?;
    progress.stage("configure", "make tinyconfig");
    run_logged("configure", make(src, &["tinyconfig"]), log)?;
    let dot_config = src.join(".config");
    let base = std::fs::read_to_string(&dot_config).map_err(io_err(&dot_config))?;
    std::fs::write(&dot_config, fragment.merge_into(&base)).map_err(io_err(&dot_config))?;
    progress.stage("configure", "make olddefconfig");
    run_logged("configure", make(src, &["olddefconfig"]), log)?;
    let options = kconfig::load_config(&dot_config)?;
    fragment.check_applied(&options)?;
    Ok(options)
}

/// A `make` command in the source tree with a reproducible build identity and without
/// a jobserver inherited from an outer make.
fn make(src: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("make");
    cmd.args(args)
        .current_dir(src)
        .env_remove("MAKEFLAGS")
        .env_remove("MFLAGS")
        .env_remove("MAKELEVEL")
        .env("LC_ALL", "C")
        .env("KBUILD_BUILD_TIMESTAMP", "1970-01-01 00:00:00 UTC")
        .env("KBUILD_BUILD_USER", "ember")
        .env("KBUILD_BUILD_HOST", "ember")
        .env("KBUILD_BUILD_VERSION", "1");
    cmd
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn open_log(log: &Path) -> Result<File, KernelError> {
    File::options()
        .create(true)
        .append(true)
        .open(log)
        .map_err(io_err(log))
}

fn log_tail(log: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Runs `cmd` with stdout and stderr appended to `log`.
fn run_logged(stage: &'static str, mut cmd: Command, log: &Path) -> Result<(), KernelError> {
    let out = open_log(log)?;
    let err = out.try_clone().map_err(io_err(log))?;
    let status = cmd
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .status()
        .map_err(|e| KernelError::Unexpected(format!("cannot run `{}`: {e}", describe(&cmd))))?;
    if status.success() {
        Ok(())
    } else {
        Err(KernelError::Command {
            stage,
            command: describe(&cmd),
            status: status.to_string(),
            log: log.to_path_buf(),
            tail: log_tail(log, 30),
        })
    }
}

/// Runs the compile, logging all output and reporting progress every few seconds.
fn compile(mut cmd: Command, log: &Path, progress: &Progress) -> Result<(), KernelError> {
    let mut out = open_log(log)?;
    let err = out.try_clone().map_err(io_err(log))?;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::from(err))
        .spawn()
        .map_err(|e| KernelError::Unexpected(format!("cannot run `{}`: {e}", describe(&cmd))))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut last_report = Instant::now();
    // Kbuild prints one `  CC      path` style line per step.
    let mut steps = 0usize;
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        let _ = writeln!(out, "{line}");
        if line.starts_with("  ") {
            steps += 1;
        }
        if last_report.elapsed() >= Duration::from_secs(15) {
            last_report = Instant::now();
            let step = line.split_whitespace().collect::<Vec<_>>().join(" ");
            progress.stage("compile", format!("{steps} steps, at {step}"));
        }
    }
    let status = child
        .wait()
        .map_err(|e| KernelError::Unexpected(format!("waiting for make: {e}")))?;
    if status.success() {
        progress.stage("compile", format!("{steps} steps done"));
        Ok(())
    } else {
        Err(KernelError::Command {
            stage: "compile",
            command: describe(&cmd),
            status: status.to_string(),
            log: log.to_path_buf(),
            tail: log_tail(log, 30),
        })
    }
}

fn single_subdir(dir: &Path) -> Result<PathBuf, KernelError> {
    let dirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io_err(dir))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    match dirs.as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(KernelError::Unexpected(format!(
            "expected the source tarball to hold one top-level directory, found {}",
            dirs.len()
        ))),
    }
}

/// Reads `VERSION.PATCHLEVEL.SUBLEVEL` from a kernel tree's Makefile.
pub fn makefile_version(src: &Path) -> Result<String, KernelError> {
    let path = src.join("Makefile");
    let text = std::fs::read_to_string(&path).map_err(|source| KernelError::Input {
        path: path.clone(),
        source,
    })?;
    let get = |key: &str| {
        text.lines()
            .find_map(|l| {
                let (k, v) = l.split_once('=')?;
                (k.trim() == key).then(|| v.trim().to_string())
            })
            .unwrap_or_default()
    };
    let (v, p, s) = (get("VERSION"), get("PATCHLEVEL"), get("SUBLEVEL"));
    if v.is_empty() || p.is_empty() {
        return Err(KernelError::Unexpected(format!(
            "{} has no VERSION/PATCHLEVEL; is this a kernel tree?",
            path.display()
        )));
    }
    Ok(format!("{v}.{p}.{s}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workspace_with(fragment: &str, patches: &[(&str, &str)]) -> tempfile::TempDir {
        let ws = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(ws.path().join(PATCH_DIR)).unwrap();
        std::fs::write(ws.path().join(FRAGMENT), fragment).unwrap();
        for (name, body) in patches {
            std::fs::write(ws.path().join(PATCH_DIR).join(name), body).unwrap();
        }
        ws
    }

    fn inputs(ws: &Path, tarball: &Path) -> KernelInputs {
        KernelInputs::discover(ws, Some(tarball)).unwrap()
    }

    #[test]
    fn cache_key_follows_fragment_patches_and_source() {
        let tar = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(tar.path(), b"source one").unwrap();
        let a = workspace_with(
            "CONFIG_A=y\n",
            &[("0001-a.patch", "x"), ("0002-b.patch", "y")],
        );
        let k1 = inputs(a.path(), tar.path());
        assert_eq!(
            k1.patches
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>(),
            ["0001-a.patch", "0002-b.patch"]
        );
        assert_eq!(k1.cache_key(), inputs(a.path(), tar.path()).cache_key());

        let b = workspace_with(
            "CONFIG_A=n\n",
            &[("0001-a.patch", "x"), ("0002-b.patch", "y")],
        );
        assert_ne!(k1.cache_key(), inputs(b.path(), tar.path()).cache_key());
        let c = workspace_with(
            "CONFIG_A=y\n",
            &[("0001-a.patch", "x"), ("0002-b.patch", "z")],
        );
        assert_ne!(k1.cache_key(), inputs(c.path(), tar.path()).cache_key());
        std::fs::write(tar.path(), b"source two").unwrap();
        assert_ne!(k1.cache_key(), inputs(a.path(), tar.path()).cache_key());
    }

    #[test]
    fn repo_patches_apply_in_name_order_and_first_skips_int3_selftest() {
        let ws = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let tar = tempfile::NamedTempFile::new().unwrap();
        let k = inputs(&ws, tar.path());
        let first = k.patch_paths.first().expect("at least one patch");
        let text = std::fs::read_to_string(first).unwrap();
        assert!(
            text.contains("+++ b/arch/x86/kernel/alternative.c"),
            "{text}"
        );
        assert!(text.contains("-\tint3_selftest();"), "{text}");
    }

    #[test]
    fn reads_makefile_version() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("Makefile"),
            "# SPDX\nVERSION = 6\nPATCHLEVEL = 1\nSUBLEVEL = 192\nEXTRAVERSION =\n",
        )
        .unwrap();
        assert_eq!(makefile_version(d.path()).unwrap(), "6.1.192");
    }
}
