//! `ember-rootfs-builder`: builds the guest kernel and the agent's guest image.

use clap::{Args, Parser, Subcommand};
use ember_rootfs_builder::image::{self, Format, ImageSpec};
use ember_rootfs_builder::kernel::{self, BuildOptions, KernelInputs};
use ember_rootfs_builder::progress::{format_elapsed, Progress};
use ember_rootfs_builder::{agent, cache, default_workspace};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Builds ember's guest assets: the guest kernel and the guest image with ember-agent.
///
/// Missing host tools are reported with the `apt-get install` line that provides them.
/// Progress goes to stderr as `[kernel m:ss] stage: detail`; the artefacts and their
/// sizes are printed on stdout.
#[derive(Debug, Parser)]
#[command(name = "ember-rootfs-builder", version)]
struct Cli {
    /// Workspace root (holds `rootfs-builder/kernel/` and the agent crate). Default:
    /// the workspace this binary was built from.
    #[arg(long, global = true, value_name = "DIR")]
    workspace: Option<PathBuf>,
    /// Cache directory. Default: `${XDG_CACHE_HOME:-$HOME/.cache}/ember`.
    #[arg(long, global = true, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Build the guest kernel (vmlinux, its .config, a manifest), cached.
    ///
    /// Builds Debian's linux-source-6.1 with `make tinyconfig`, ember's config fragment (rootfs-builder/kernel/ember.config) and patches
    /// (rootfs-builder/kernel/patches/, in name order). Writes DIR/vmlinux (uncompressed,
    /// PVH-bootable), DIR/vmlinux.config and DIR/kernel-manifest.json. Results are cached
    /// by source version + fragment hash + patch hashes, so a second run is instant.
    Kernel(KernelArgs),
    /// Build the guest image (initramfs.cpio or rootfs.ext4) with ember-agent as /init.
    ///
    /// Packs ember-agent (cargo build --release) as /init, the shared
    /// libraries the dynamic loader resolves for it, and the mount-point directories;
    /// --debug adds busybox. Writes DIR/initramfs.cpio (newc) or DIR/rootfs.ext4,
    /// byte-for-byte reproducible.
    Image(ImageArgs),
    /// Build the kernel and both image formats into DIR (what `make guest` runs).
    ///
    /// Writes DIR/vmlinux, DIR/vmlinux.config, DIR/kernel-manifest.json,
    /// DIR/initramfs.cpio and DIR/rootfs.ext4.
    All(AllArgs),
}

#[derive(Debug, Args)]
struct KernelArgs {
    /// Output directory.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    #[command(flatten)]
    build: KernelBuildArgs,
}

#[derive(Debug, Args)]
struct KernelBuildArgs {
    /// Kernel source tarball. Default: Debian's linux-source-6.1 package.
    #[arg(long, value_name = "TARBALL")]
    source: Option<PathBuf>,
    /// Parallel make jobs. Default: the number of CPUs.
    #[arg(long, short = 'j')]
    jobs: Option<usize>,
    /// Keep the kernel build tree in the cache after a successful build.
    #[arg(long)]
    keep_tree: bool,
}

#[derive(Debug, Args)]
struct ImageArgs {
    /// Output directory.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Image format.
    #[arg(long, value_enum, default_value = "cpio")]
    format: Format,
    #[command(flatten)]
    content: ImageContentArgs,
}

#[derive(Debug, Args)]
struct ImageContentArgs {
    /// Add a static busybox as /bin/busybox with its applets (a debug shell).
    #[arg(long)]
    debug: bool,
    /// Pack this agent binary instead of building ember-agent with cargo.
    #[arg(long, value_name = "BIN")]
    agent: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct AllArgs {
    /// Output directory.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    #[command(flatten)]
    build: KernelBuildArgs,
    #[command(flatten)]
    content: ImageContentArgs,
}

type BoxError = Box<dyn std::error::Error>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ember-rootfs-builder: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), BoxError> {
    let workspace = cli.workspace.unwrap_or_else(default_workspace);
    if !workspace.join(kernel::FRAGMENT).is_file() {
        return Err(format!(
            "{} is not ember's workspace (no {}); pass --workspace",
            workspace.display(),
            kernel::FRAGMENT
        )
        .into());
    }
    let cache_root = match cli.cache_dir {
        Some(d) => d,
        None => cache::default_root()?,
    };
    match cli.command {
        Cmd::Kernel(a) => build_kernel(&workspace, &cache_root, &a.build, &a.out),
        Cmd::Image(a) => build_images(&workspace, &a.content, &[a.format], &a.out),
        Cmd::All(a) => {
            build_kernel(&workspace, &cache_root, &a.build, &a.out)?;
            build_images(
                &workspace,
                &a.content,
                &[Format::Cpio, Format::Ext4],
                &a.out,
            )
        }
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn build_kernel(
    workspace: &Path,
    cache_root: &Path,
    args: &KernelBuildArgs,
    out: &Path,
) -> Result<(), BoxError> {
    let progress = Progress::new("kernel");
    let inputs = KernelInputs::discover(workspace, args.source.as_deref())?;
    let jobs = args.jobs.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let opts = BuildOptions {
        jobs,
        keep_tree: args.keep_tree,
    };
    let built = kernel::build(&inputs, cache_root, &opts, &progress)?;
    let copied = built.copy_to(out)?;
    let m = &copied.manifest;
    println!(
        "kernel: {} ({}, Linux {}, key {}, cache build took {}) in {}",
        copied.vmlinux().display(),
        mib(m.vmlinux_size),
        m.kernel_version,
        m.cache_key,
        format_elapsed(std::time::Duration::from_secs(m.build_seconds)),
        format_elapsed(progress.elapsed()),
    );
    Ok(())
}

fn build_images(
    workspace: &Path,
    content: &ImageContentArgs,
    formats: &[Format],
    out: &Path,
) -> Result<(), BoxError> {
    let progress = Progress::new("image");
    for f in formats {
        image::require_tools(*f)?;
    }
    let busybox = if content.debug {
        Some(image::find_busybox()?)
    } else {
        None
    };
    let agent = match &content.agent {
        Some(a) => a.clone(),
        None => {
            progress.stage("agent", "cargo build --release -p ember-agent");
            agent::build(workspace)?
        }
    };
    progress.stage("agent", agent.display());
    let tree = image::assemble(&ImageSpec { agent, busybox })?;
    progress.stage(
        "assemble",
        format!(
            "{} entries, {} of files",
            tree.len(),
            mib(image::content_bytes(&tree))
        ),
    );
    for f in formats {
        let (path, size) = image::write(&tree, *f, out)?;
        println!("image: {} ({}, {} bytes)", path.display(), mib(size), size);
    }
    progress.stage("done", out.display());
    Ok(())
}
