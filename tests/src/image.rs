//! An OCI image-layout tarball built offline from Debian's busybox-static, for
//! `ctr image import`: the same root filesystem as [`crate::fixtures::busybox_rootfs`],
//! packed as one gzip layer with fixed mtimes and owners, so the same host busybox always
//! gives the same layer, config and manifest digests.
//!
//! Layout of the tarball: `oci-layout`, `index.json` (one manifest, named by the
//! `io.containerd.image.name` and `org.opencontainers.image.ref.name` annotations) and
//! `blobs/sha256/<hex>` for the layer, the image config and the manifest.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::fixtures::{busybox_rootfs, FixtureError};

/// The mtime of every file in the layer and in the outer tarball (the epoch).
const MTIME: u64 = 0;

/// The media types of the blobs.
const MT_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MT_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MT_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// The `PATH` in the image config.
const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The entrypoint of [`pause_image_tar`]'s image: waits forever, ends on SIGTERM.
pub const PAUSE_SCRIPT: &str = "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait; done";

/// Errors building an image tarball.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The busybox root filesystem could not be built (busybox-static missing, or I/O).
    #[error("building the busybox root filesystem: {0}")]
    Rootfs(#[from] FixtureError),
    /// The image name is not a usable reference.
    #[error(
        "image name {0:?} is empty or has whitespace; use e.g. docker.io/library/busybox:ember"
    )]
    BadName(String),
    /// Reading the rootfs or writing the tarball failed.
    #[error("{path}: {source}")]
    Io {
        /// The file being read or written.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What the image config says to run.
#[derive(Debug, Clone, Default)]
pub struct RunConfig {
    /// `config.Entrypoint` (empty: none).
    pub entrypoint: Vec<String>,
    /// `config.Cmd`.
    pub cmd: Vec<String>,
}

/// The digests of a built image (each `sha256:<hex>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageDigests {
    /// The manifest's digest (what `ctr image ls` shows as DIGEST).
    pub manifest: String,
    /// The image config's digest (the image ID).
    pub config: String,
    /// The gzip layer blob's digest.
    pub layer: String,
    /// The uncompressed layer's digest (`rootfs.diff_ids[0]`).
    pub diff_id: String,
}

/// Writes an OCI image-layout tarball of the busybox image to `out`, named `name` (for
/// example `docker.io/library/busybox:ember`), whose config runs `sh`.
pub fn busybox_image_tar(out: &Path, name: &str) -> Result<ImageDigests, ImageError> {
    let run = RunConfig {
        entrypoint: vec![],
        cmd: vec!["sh".into()],
    };
    image_tar(out, name, &run)
}

/// Writes the busybox image like [`busybox_image_tar`], with a Docker-archive
/// `manifest.json` next to the OCI layout (as `docker save` writes since Docker 25), so that
/// Docker 20.10's `docker load`, which reads only `manifest.json`, loads it too. `name` is
/// its tag (`busybox:ember`).
pub fn busybox_docker_archive(out: &Path, name: &str) -> Result<ImageDigests, ImageError> {
    let tmp = tempfile::tempdir().map_err(io(Path::new("temporary directory")))?;
    let oci = tmp.path().join("oci.tar");
    let digests = busybox_image_tar(&oci, name)?;
    let hex = |d: &str| d.trim_start_matches("sha256:").to_string();
    let manifest = to_vec(&json!([{
        "Config": format!("blobs/sha256/{}", hex(&digests.config)),
        "RepoTags": [name],
        "Layers": [format!("blobs/sha256/{}", hex(&digests.layer))],
    }]));
    let file = std::fs::File::create(out).map_err(io(out))?;
    let mut outer = tar::Builder::new(std::io::BufWriter::new(file));
    let input = std::fs::File::open(&oci).map_err(io(&oci))?;
    let mut archive = tar::Archive::new(input);
    for entry in archive.entries().map_err(io(&oci))? {
        let mut entry = entry.map_err(io(&oci))?;
        let mut h = entry.header().clone();
        let path = entry.path().map_err(io(&oci))?.into_owned();
        outer
            .append_data(&mut h, path, &mut entry)
            .map_err(io(out))?;
    }
    let mut h = header(tar::EntryType::Regular, 0o644);
    h.set_size(manifest.len() as u64);
    outer
        .append_data(&mut h, "manifest.json", manifest.as_slice())
        .map_err(io(out))?;
    outer
        .into_inner()
        .and_then(|mut w| w.flush())
        .map_err(io(out))?;
    Ok(digests)
}

/// Writes the busybox image like [`busybox_image_tar`], but with an entrypoint that
/// sleeps until SIGTERM ([`PAUSE_SCRIPT`]): a stand-in for the CRI sandbox ("pause") image,
/// since there is no registry to pull the real one from.
pub fn pause_image_tar(out: &Path, name: &str) -> Result<ImageDigests, ImageError> {
    let run = RunConfig {
        entrypoint: vec!["/bin/sh".into(), "-c".into(), PAUSE_SCRIPT.into()],
        cmd: vec![],
    };
    image_tar(out, name, &run)
}

/// Writes an OCI image-layout tarball of the busybox root filesystem to `out`, named
/// `name`, with `run` as its entrypoint and command.
pub fn image_tar(out: &Path, name: &str, run: &RunConfig) -> Result<ImageDigests, ImageError> {
    if name.is_empty() || name.chars().any(char::is_whitespace) {
        return Err(ImageError::BadName(name.to_string()));
    }
    let Layer {
        diff_id,
        gzipped: layer,
        digest: layer_digest,
    } = &*busybox_layer()?;

    let mut config = json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {
            "Env": [PATH_ENV],
            "Cmd": run.cmd,
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "ember-tests busybox image"}],
    });
    if !run.entrypoint.is_empty() {
        config["config"]["Entrypoint"] = json!(run.entrypoint);
    }
    let config = to_vec(&config);
    let config_digest = sha256(&config);

    let manifest = to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": {"mediaType": MT_CONFIG, "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": MT_LAYER, "digest": layer_digest, "size": layer.len()}],
    }));
    let manifest_digest = sha256(&manifest);

    let tag = ref_name(name);
    let index = to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MT_INDEX,
        "manifests": [{
            "mediaType": MT_MANIFEST,
            "digest": manifest_digest,
            "size": manifest.len(),
            "annotations": {
                "io.containerd.image.name": name,
                "org.opencontainers.image.ref.name": tag,
            },
            "platform": {"architecture": "amd64", "os": "linux"},
        }],
    }));

    let file = std::fs::File::create(out).map_err(io(out))?;
    let mut outer = tar::Builder::new(std::io::BufWriter::new(file));
    let mut add = |path: &str, data: &[u8]| {
        let mut h = header(tar::EntryType::Regular, 0o644);
        h.set_size(data.len() as u64);
        outer.append_data(&mut h, path, data).map_err(io(out))
    };
    add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    add("index.json", &index)?;
    for (digest, blob) in [
        (layer_digest, layer),
        (&config_digest, &config),
        (&manifest_digest, &manifest),
    ] {
        let hex = digest.trim_start_matches("sha256:");
        add(&format!("blobs/sha256/{hex}"), blob)?;
    }
    outer
        .into_inner()
        .and_then(|mut w| w.flush())
        .map_err(io(out))?;
    Ok(ImageDigests {
        manifest: manifest_digest,
        config: config_digest,
        layer: layer_digest.clone(),
        diff_id: diff_id.clone(),
    })
}

/// The busybox layer: its uncompressed digest, the gzipped tarball and that one's digest.
#[derive(Debug)]
struct Layer {
    diff_id: String,
    gzipped: Vec<u8>,
    digest: String,
}

/// The busybox layer, made once per process: every test starts a containerd of its own and
/// imports an image, and where everything is emulated (the nested KVM test host) building,
/// hashing and compressing the layer again took seconds each time.
fn busybox_layer() -> Result<std::sync::Arc<Layer>, ImageError> {
    static LAYER: std::sync::Mutex<Option<std::sync::Arc<Layer>>> = std::sync::Mutex::new(None);
    let mut made = LAYER.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(layer) = made.as_ref() {
        return Ok(layer.clone());
    }
    let tmp = tempfile::tempdir().map_err(io(Path::new("temporary directory")))?;
    let rootfs = tmp.path().join("rootfs");
    busybox_rootfs(&rootfs)?;
    let layer_tar = layer_tarball(&rootfs)?;
    let gzipped = gzip(&layer_tar);
    let layer = std::sync::Arc::new(Layer {
        diff_id: sha256(&layer_tar),
        digest: sha256(&gzipped),
        gzipped,
    });
    *made = Some(layer.clone());
    Ok(layer)
}

/// The `org.opencontainers.image.ref.name` of `name`: its tag (`latest` when it has none).
fn ref_name(name: &str) -> &str {
    let last = name.rsplit('/').next().unwrap_or(name);
    match last.rsplit_once(':') {
        Some((_, tag)) if !tag.is_empty() => tag,
        _ => "latest",
    }
}

/// A header with the fixed owner (root) and mtime.
fn header(kind: tar::EntryType, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(MTIME);
    h.set_size(0);
    h
}

/// The uncompressed layer: every file under `rootfs`, sorted by path, owned by root, with
/// mtime 0 (directories 0755, files keep their permission bits, symlinks as symlinks).
fn layer_tarball(rootfs: &Path) -> Result<Vec<u8>, ImageError> {
    let mut paths = Vec::new();
    walk(rootfs, &mut paths)?;
    paths.sort();
    let mut b = tar::Builder::new(Vec::new());
    for path in paths {
        let rel = path.strip_prefix(rootfs).expect("walked under rootfs");
        let meta = std::fs::symlink_metadata(&path).map_err(io(&path))?;
        let ft = meta.file_type();
        if ft.is_dir() {
            let mut h = header(tar::EntryType::Directory, 0o755);
            let name = format!("{}/", rel.display());
            b.append_data(&mut h, name, std::io::empty())
                .map_err(io(&path))?;
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&path).map_err(io(&path))?;
            let mut h = header(tar::EntryType::Symlink, 0o777);
            b.append_link(&mut h, rel, target).map_err(io(&path))?;
        } else {
            use std::os::unix::fs::PermissionsExt;
            let data = std::fs::read(&path).map_err(io(&path))?;
            let mut h = header(tar::EntryType::Regular, meta.permissions().mode() & 0o7777);
            h.set_size(data.len() as u64);
            b.append_data(&mut h, rel, data.as_slice())
                .map_err(io(&path))?;
        }
    }
    b.into_inner().map_err(io(rootfs))
}

/// Every path under `dir` (not `dir` itself), not following symlinks.
fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), ImageError> {
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        let is_dir = std::fs::symlink_metadata(&path)
            .map_err(io(&path))?
            .is_dir();
        out.push(path.clone());
        if is_dir {
            walk(&path, out)?;
        }
    }
    Ok(())
}

/// gzip with a fixed header (mtime 0, no file name), so the output depends on the input only.
fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::default());
    enc.write_all(data).expect("writing to a Vec");
    enc.finish().expect("writing to a Vec")
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

fn to_vec(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("JSON serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ref_name_is_the_tag() {
        assert_eq!(ref_name("docker.io/library/busybox:ember"), "ember");
        assert_eq!(ref_name("localhost:5000/busybox"), "latest");
        assert_eq!(ref_name("busybox"), "latest");
    }

    #[test]
    fn bad_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = busybox_image_tar(&dir.path().join("x.tar"), "a b").unwrap_err();
        assert!(matches!(err, ImageError::BadName(_)), "{err}");
    }
}
