//! The nested KVM test host: a Linux VM, emulated by QEMU's TCG, whose `/dev/kvm` has
//! hardware-virtualization semantics, for running ember's microVM tests on hosts that
//! have none (such as a PVM host, where a stock guest kernel's user space cannot run).
//!
//! QEMU's TCG emulates AMD-V with nested paging (`-cpu max` shows `svm` and `npt`), so
//! Debian's stock kernel (`linux-image-amd64`, `kvm_amd` as a module) booted under it has
//! the real `kvm_amd` code path. Everything inside runs under TCG: timings taken there
//! mean nothing, only that the microVM path works.
//!
//! How it is put together ([`Assets::prepare`], cached under
//! `${XDG_CACHE_HOME:-~/.cache}/ember/kvm-host/<kernel package>_<version>/`):
//! - the kernel and its modules, from `apt-get download` of the package that
//!   `linux-image-amd64` depends on, unpacked with `dpkg-deb -x`, indexed by `depmod -b`;
//! - an initramfs of busybox-static and the modules that mount the host's root (virtio_pci,
//!   9p over virtio, overlay), whose init mounts the host's `/` read-only (9p) as the lower
//!   layer of an overlay on tmpfs, mounts the run folder (9p, read-write), moves /proc, /sys
//!   and /dev into the overlay and switches to it;
//! - there, [`KvmHost::run`]'s stage-2 script gives /run, /tmp, /var/lib and /root their own
//!   tmpfs (an overlay cannot be an overlayfs upper layer, and containerd's snapshotter
//!   needs one), loads `kvm_amd` and the network modules with `modprobe -d`, mounts the
//!   cgroup hierarchies ([`Cgroups`]), runs the command in the given folder, records its
//!   exit status in the run folder and powers off.
//!
//! The command's output and the outer VM's serial console are kept in separate files; a
//! failure (timeout, a crash of the outer VM) carries the last lines of both.

use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// The modules the initramfs loads, in dependency order resolved by `modprobe
/// --show-depends`, to mount the host's root: the PCI virtio transport, 9p over virtio and
/// overlayfs.
const INITRAMFS_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p", "overlay"];

/// Parameters of the outer VM's `kvm_amd` (`EMBER_KVM_HOST_KVM_AMD` replaces them, for
/// diagnosis). Empty: the module's defaults.
const KVM_AMD_PARAMS: &str = "";

/// The modules stage 2 loads: KVM (AMD-V, which TCG emulates), vhost-vsock (QEMU's vsock
/// for reference benchmarks), and what pod networking and its tests use.
const HOST_MODULES: &[&str] = &[
    "kvm_amd",
    "vhost_vsock",
    "tun",
    "veth",
    "bridge",
    "overlay",
    "sch_ingress",
    "act_mirred",
    "cls_u32",
    "cls_matchall",
    "loop",
    "ext4",
];

/// Lines in the outer VM's console that mean the outer VM itself broke (it is emulated
/// too, and has been seen to fail on its own), as opposed to the command failing.
const OUTER_FAILURE_MARKERS: &[&str] = &[
    "Kernel panic",
    "BUG: ",
    "Oops: ",
    "general protection fault",
    "stack guard page",
    "kernel stack overflow",
    "ember-kvm-host: the outer VM froze",
];

/// How often the outer console is read for [`OUTER_FAILURE_MARKERS`] while a command runs.
const CONSOLE_LOOK_EVERY: Duration = Duration::from_secs(2);

/// How long an outer VM whose console shows it broke gets to power itself off (a panic
/// does at once) before QEMU is killed.
const OUTER_FAILURE_GRACE: Duration = Duration::from_secs(30);

/// Bumped whenever the initramfs (its init or modules) changes, so cached assets of an
/// older revision are rebuilt rather than used.
const ASSETS_REVISION: u32 = 1;

/// Where the run folder is mounted inside the outer VM.
const RUN_MOUNT: &str = "/ember-kvm-host";

/// Where the host's root (the overlay's read-only lower layer) stays visible inside the
/// outer VM, for re-exposing folders that a tmpfs covers.
const LOWER_MOUNT: &str = "/.ember-kvm-host-lower";

/// The folders stage 2 covers with their own tmpfs: an overlay cannot be an overlayfs
/// upper layer, and containerd's snapshotter and the tests' temporary folders need one.
const TMPFS_DIRS: &[&str] = &["/run", "/tmp", "/var/lib", "/var/tmp"];

/// What can go wrong preparing or running the nested host.
#[derive(Debug, thiserror::Error)]
pub enum KvmHostError {
    /// A tool or package is missing on this host: the nested host cannot run here. Tests
    /// report this as a SKIP line naming what to install.
    #[error("{what} is missing: {install}")]
    Missing {
        /// What is missing.
        what: String,
        /// What to install or run to get it.
        install: String,
    },
    /// QEMU's `-cpu max` offers no SVM here, so the outer VM would have no KVM.
    #[error("QEMU's -cpu max shows no svm to the outer VM: this QEMU cannot emulate AMD-V (qemu-system-x86 7.2 or later can)")]
    NoSvm,
    /// A step of preparing the assets failed.
    #[error("preparing the nested KVM host: {step}: {detail}")]
    Prepare {
        /// The step, e.g. `dpkg-deb -x`.
        step: String,
        /// What it said.
        detail: String,
    },
    /// The command did not finish in time.
    #[error("the nested KVM host did not finish within {} s\n--- last lines of the command's output ---\n{output}\n--- last lines of the outer VM's console ---\n{console}", .timeout.as_secs())]
    Timeout {
        /// The time allowed.
        timeout: Duration,
        /// The command output's last lines.
        output: String,
        /// The outer console's last lines.
        console: String,
    },
    /// An I/O error on a named path.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The error.
        source: std::io::Error,
    },
}

impl KvmHostError {
    /// Whether this error means the nested host cannot run on this machine at all (a
    /// missing tool or package, no emulated SVM): tests skip, naming it.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Missing { .. } | Self::NoSvm)
    }
}

fn io(path: impl AsRef<Path>) -> impl FnOnce(std::io::Error) -> KvmHostError {
    let path = path.as_ref().display().to_string();
    move |source| KvmHostError::Io { path, source }
}

/// Runs `cmd`, returning its stdout, or a [`KvmHostError::Prepare`] naming `step`.
fn output_of(step: &str, cmd: &mut Command) -> Result<String, KvmHostError> {
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            KvmHostError::Missing {
                what: format!("{:?}", cmd.get_program()),
                install: "run scripts/install-deps.sh".into(),
            }
        } else {
            KvmHostError::Prepare {
                step: step.into(),
                detail: e.to_string(),
            }
        }
    })?;
    if !out.status.success() {
        return Err(KvmHostError::Prepare {
            step: step.into(),
            detail: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether this process runs inside the nested KVM test host (its stage 2 sets
/// `EMBER_IN_KVM_HOST=1`).
pub fn inside() -> bool {
    std::env::var_os("EMBER_IN_KVM_HOST").is_some()
}

/// Whether this host has hardware virtualization for KVM guests: `vmx` or `svm` in
/// /proc/cpuinfo and a `/dev/kvm`. (A PVM host has `/dev/kvm` but neither flag.)
pub fn hardware_kvm() -> bool {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    cpuinfo.split_whitespace().any(|f| f == "vmx" || f == "svm") && Path::new("/dev/kvm").exists()
}

/// The cache folder: `${XDG_CACHE_HOME:-~/.cache}/ember/kvm-host`.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"))
        .join("ember/kvm-host")
}

/// The versioned kernel package behind `linux-image-amd64` (e.g.
/// `linux-image-6.1.0-56-amd64`) and its version, as apt knows them.
pub fn kernel_package() -> Result<(String, String), KvmHostError> {
    let missing = || KvmHostError::Missing {
        what: "the Debian package linux-image-amd64 in apt's lists".into(),
        install: "run `apt-get update` (scripts/install-deps.sh does)".into(),
    };
    let deps = output_of(
        "apt-cache depends linux-image-amd64",
        Command::new("apt-cache").args(["depends", "linux-image-amd64"]),
    )
    .map_err(|e| match e {
        KvmHostError::Prepare { .. } => missing(),
        e => e,
    })?;
    let package = deps
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .map(str::trim)
        .find(|p| p.starts_with("linux-image-") && p.ends_with("-amd64"))
        .ok_or_else(missing)?
        .to_string();
    let policy = output_of(
        "apt-cache policy",
        Command::new("apt-cache").args(["policy", &package]),
    )?;
    let version = policy
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Candidate: "))
        .map(str::trim)
        .find(|v| *v != "(none)")
        .ok_or_else(missing)?
        .to_string();
    Ok((package, version))
}

/// The nested host's kernel, modules and initramfs, prepared once per kernel package
/// version.
#[derive(Debug, Clone)]
pub struct Assets {
    /// The kernel image (`vmlinuz`).
    pub kernel: PathBuf,
    /// The unpacked package root, for `modprobe -d` (holds `lib/modules/<release>`).
    pub modules: PathBuf,
    /// The kernel release (`uname -r` inside), e.g. `6.1.0-56-amd64`.
    pub release: String,
    /// The initramfs that mounts the host's root and runs stage 2.
    pub initramfs: PathBuf,
}

impl Assets {
    /// Prepares the assets, or finds them in the cache: downloads the kernel package (apt),
    /// unpacks it, runs depmod and builds the initramfs. Safe to call from several
    /// processes at once (each builds in its own folder; the first rename wins).
    pub fn prepare() -> Result<Assets, KvmHostError> {
        for (tool, package) in [
            ("qemu-system-x86_64", "qemu-system-x86"),
            ("busybox", "busybox-static"),
            ("dpkg-deb", "dpkg"),
            ("depmod", "kmod"),
            ("cpio", "cpio"),
        ] {
            if which(tool).is_none() {
                return Err(KvmHostError::Missing {
                    what: tool.into(),
                    install: format!("apt-get install {package} (scripts/install-deps.sh)"),
                });
            }
        }
        let (package, version) = kernel_package()?;
        let dir = cache_dir().join(format!("{package}_{version}-r{ASSETS_REVISION}"));
        let release = package.trim_start_matches("linux-image-").to_string();
        let assets = Assets {
            kernel: dir.join(format!("root/boot/vmlinuz-{release}")),
            modules: dir.join("root"),
            initramfs: dir.join("initramfs.cpio"),
            release,
        };
        if dir.join("ready").is_file() {
            return Ok(assets);
        }
        let parent = cache_dir();
        std::fs::create_dir_all(&parent).map_err(io(&parent))?;
        let work = tempfile::Builder::new()
            .prefix(".prepare-")
            .tempdir_in(&parent)
            .map_err(io(&parent))?;
        build_assets(work.path(), &package, &version, &assets.release)?;
        std::fs::write(work.path().join("ready"), format!("{package} {version}\n"))
            .map_err(io(work.path()))?;
        let work = work.keep();
        if std::fs::rename(&work, &dir).is_err() {
            // Another process finished first: use its copy.
            let _ = std::fs::remove_dir_all(&work);
            if !dir.join("ready").is_file() {
                return Err(KvmHostError::Prepare {
                    step: "rename".into(),
                    detail: format!("could not move the assets to {}", dir.display()),
                });
            }
        }
        Ok(assets)
    }
}

/// `PATH` lookup (also /sbin and /usr/sbin, where Debian keeps depmod for root).
fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.is_file());
    found
}

/// The package's `.deb`: the one `scripts/install-deps.sh` left in the cache, else
/// downloaded now.
fn kernel_deb(package: &str, version: &str) -> Result<PathBuf, KvmHostError> {
    let debs = cache_dir().join("debs");
    std::fs::create_dir_all(&debs).map_err(io(&debs))?;
    let file_version = version.replace(':', "%3a");
    let deb = debs.join(format!("{package}_{file_version}_amd64.deb"));
    if deb.is_file() {
        return Ok(deb);
    }
    // apt-get download writes into the current folder; the _apt user must be able to.
    let tmp = tempfile::tempdir_in(&debs).map_err(io(&debs))?;
    let _ = std::fs::set_permissions(
        tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    );
    output_of(
        "apt-get download",
        Command::new("apt-get")
            .args(["download", &format!("{package}={version}")])
            .current_dir(tmp.path()),
    )
    .map_err(|e| KvmHostError::Missing {
        what: format!("the kernel package {package} {version}"),
        install: format!("apt-get download failed ({e}); run scripts/install-deps.sh"),
    })?;
    let got = std::fs::read_dir(tmp.path())
        .map_err(io(tmp.path()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or_else(|| KvmHostError::Prepare {
            step: "apt-get download".into(),
            detail: "no .deb was written".into(),
        })?;
    std::fs::rename(&got, &deb).map_err(io(&deb))?;
    Ok(deb)
}

fn build_assets(
    work: &Path,
    package: &str,
    version: &str,
    release: &str,
) -> Result<(), KvmHostError> {
    let deb = kernel_deb(package, version)?;
    let root = work.join("root");
    output_of(
        "dpkg-deb -x",
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root),
    )?;
    output_of(
        "depmod",
        Command::new(which("depmod").unwrap_or_else(|| "depmod".into()))
            .arg("-b")
            .arg(&root)
            .arg(release),
    )?;
    // The initramfs tree: busybox, the modules in load order, the init script.
    let tree = work.join("initramfs");
    for d in [
        "bin", "dev", "proc", "sys", "lower", "upper", "newroot", "modules",
    ] {
        std::fs::create_dir_all(tree.join(d)).map_err(io(tree.join(d)))?;
    }
    let busybox = which("busybox").expect("checked above");
    std::fs::copy(&busybox, tree.join("bin/busybox")).map_err(io(&busybox))?;
    let mut order = String::new();
    for module in INITRAMFS_MODULES {
        let deps = output_of(
            "modprobe --show-depends",
            Command::new(which("modprobe").unwrap_or_else(|| "modprobe".into()))
                .arg("-d")
                .arg(&root)
                .args(["-S", release, "--show-depends", module]),
        )?;
        for ko in deps.lines().filter_map(|l| l.strip_prefix("insmod ")) {
            let ko = Path::new(ko.trim());
            let name = ko.file_name().unwrap().to_string_lossy().into_owned();
            if order.lines().any(|l| l == name) {
                continue;
            }
            std::fs::copy(ko, tree.join("modules").join(&name)).map_err(io(ko))?;
            order.push_str(&name);
            order.push('\n');
        }
    }
    std::fs::write(tree.join("modules/order"), order).map_err(io(&tree))?;
    let init = tree.join("init");
    std::fs::write(&init, initramfs_init()).map_err(io(&init))?;
    std::fs::set_permissions(&init, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .map_err(io(&init))?;
    let cpio = work.join("initramfs.cpio");
    let file = std::fs::File::create(&cpio).map_err(io(&cpio))?;
    let status = Command::new("sh")
        .args(["-c", "find . | LC_ALL=C sort | cpio -o -H newc --quiet"])
        .current_dir(&tree)
        .stdout(file)
        .status()
        .map_err(io("cpio"))?;
    if !status.success() {
        return Err(KvmHostError::Prepare {
            step: "cpio".into(),
            detail: status.to_string(),
        });
    }
    std::fs::remove_dir_all(&tree).map_err(io(&tree))?;
    Ok(())
}

/// The initramfs's `/init`: mount the host's root read-only under a tmpfs overlay, mount
/// the run folder, and switch to stage 2 (which the run folder holds).
fn initramfs_init() -> String {
    format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
fail() {{ echo "ember-kvm-host init: $*"; echo o > /proc/sysrq-trigger; sleep 60; }}
for m in $(cat /modules/order); do insmod /modules/$m || fail "insmod $m failed"; done
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot /lower || fail "cannot mount the host's root"
mount -t tmpfs -o mode=0755 upper /upper
mkdir -p /upper/u /upper/w
mount -t overlay -o lowerdir=/lower,upperdir=/upper/u,workdir=/upper/w overlay /newroot || fail "cannot mount the overlay"
mkdir -p /newroot{RUN_MOUNT} /newroot{LOWER_MOUNT}
mount --move /lower /newroot{LOWER_MOUNT}
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 emberrun /newroot{RUN_MOUNT} || fail "cannot mount the run folder"
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
mount --move /dev /newroot/dev
exec switch_root /newroot /bin/sh {RUN_MOUNT}/stage2.sh
"#
    )
}

/// The cgroup layout the outer VM's stage 2 mounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cgroups {
    /// Only the unified cgroup v2 hierarchy at /sys/fs/cgroup (Debian 12's default).
    Unified,
    /// cgroup v1 controllers under /sys/fs/cgroup/<controller> and cgroup2 at
    /// /sys/fs/cgroup/unified (as on the machines ember is built on).
    Hybrid,
}

impl std::str::FromStr for Cgroups {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "unified" | "v2" => Ok(Self::Unified),
            "hybrid" | "v1" => Ok(Self::Hybrid),
            _ => Err(format!(
                "unknown cgroup layout {s:?}: use unified or hybrid"
            )),
        }
    }
}

impl Cgroups {
    fn script(self) -> &'static str {
        match self {
            Cgroups::Unified => "mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup\n",
            Cgroups::Hybrid => {
                "mount -t tmpfs -o mode=0755 cgroup /sys/fs/cgroup\n\
                 for c in cpu cpuacct cpuset memory devices freezer blkio pids; do\n\
                 \tmkdir -p /sys/fs/cgroup/$c && mount -t cgroup -o $c cgroup /sys/fs/cgroup/$c\n\
                 done\n\
                 mkdir -p /sys/fs/cgroup/systemd && mount -t cgroup -o none,name=systemd cgroup /sys/fs/cgroup/systemd\n\
                 mkdir -p /sys/fs/cgroup/unified && mount -t cgroup2 cgroup2 /sys/fs/cgroup/unified\n"
            }
        }
    }
}

/// What to run inside the nested host.
#[derive(Debug, Clone)]
pub struct Job {
    /// The shell command (run by `/bin/sh -c`, with stdin from /dev/null).
    pub command: String,
    /// Its working folder (a host path: the host's root is the outer VM's lower layer).
    pub cwd: PathBuf,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// How long the whole run (boot included) may take.
    pub timeout: Duration,
    /// A moment no run of this job may go past, reruns included (a CI time budget): the
    /// run's timeout is cut down to it.
    pub deadline: Option<Instant>,
    /// Copy the command's output to this process's stdout while it runs (for people
    /// watching, e.g. `make demo`); the [`Outcome`] holds it all the same.
    pub echo: bool,
    /// Host paths the command needs besides `cwd` (e.g. a test binary): kept visible even
    /// where stage 2's tmpfs folders would cover them.
    pub keep: Vec<PathBuf>,
    /// When the command's output stays the same for this long, stage 2 appends what every
    /// process is waiting on (and the tails of the logs under /run and /tmp) to the output,
    /// kills the command and records [`Outcome::stalled`]: a hung step inside the outer VM
    /// then ends with a record of where it hung, long before the run's timeout.
    pub stall: Option<Duration>,
}

impl Job {
    /// A job running `command` in the current folder, with a 10-minute timeout.
    pub fn new(command: impl Into<String>) -> Job {
        Job {
            command: command.into(),
            cwd: std::env::current_dir().unwrap_or_else(|_| "/".into()),
            env: Vec::new(),
            timeout: Duration::from_secs(600),
            deadline: None,
            echo: false,
            keep: Vec::new(),
            stall: None,
        }
    }
}

/// How a run ended.
#[derive(Debug)]
pub struct Outcome {
    /// The command's exit status; `None` when the outer VM ended without recording one.
    pub status: Option<i32>,
    /// The command's stdout and stderr, interleaved.
    pub output: String,
    /// The outer VM's serial console (its kernel log and stage 2's own lines).
    pub console: String,
    /// When the console shows the outer VM itself failing (a kernel crash), the line
    /// that shows it: such a run says nothing about the command.
    pub outer_failure: Option<String>,
    /// From QEMU's start to its end.
    pub elapsed: Duration,
    /// The command stalled ([`Job::stall`]) and was killed: the first line of stage 2's
    /// record of it (the record itself is at the end of `output`).
    pub stalled: Option<String>,
}

impl Outcome {
    /// Whether the command ran and exited 0.
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }

    /// The last `n` lines of the command's output and of the outer console, for a failure
    /// message.
    pub fn tails(&self, n: usize) -> String {
        format!(
            "--- last lines of the command's output ---\n{}\n--- last lines of the outer VM's console ---\n{}",
            ember_sys::tail::lines(&self.output, n),
            ember_sys::tail::lines(&self.console, n)
        )
    }
}

/// The first line of `console` that shows the outer VM's kernel failing before stage 2
/// powered it off (what follows `sysrq: Power Off`, such as init ending before the power
/// is cut, is no failure).
pub fn outer_failure(console: &str) -> Option<String> {
    console
        .lines()
        .take_while(|l| !l.contains("sysrq: Power Off"))
        .find(|l| {
            OUTER_FAILURE_MARKERS.iter().any(|m| l.contains(m))
                || rcu_stall_ticks(l).is_some_and(|t| t >= OUTER_RCU_STALL_TICKS)
        })
        .map(|l| l.trim().to_string())
}

/// How long (in ticks of the outer kernel, HZ=250 in Debian's: 3 minutes) one CPU of the
/// outer VM may hold an RCU grace period before the VM counts as broken. Seen under TCG:
/// a CPU of the outer kernel stuck in the emulated VMRUN of a nested guest, the command
/// hung behind it until its timeout. Shorter stalls (a loaded host slowing TCG) pass.
pub const OUTER_RCU_STALL_TICKS: u64 = 45_000;

/// The ticks an RCU stall report line gives (`rcu: 1-....: (90178 ticks this GP) ...`).
fn rcu_stall_ticks(line: &str) -> Option<u64> {
    let before = &line[..line.find(" ticks this GP")?];
    before.rsplit('(').next()?.trim().parse().ok()
}

/// How long past a job's stall time ([`Job::stall`]) its output may stay unchanged before
/// the outer VM counts as frozen: the stall watch inside looks every
/// [`STALL_LOOK_EVERY`] seconds and then needs a moment to write its record.
const FROZEN_MARGIN: Duration = Duration::from_secs(180);

/// What the console of a frozen outer VM ends with (an [`outer_failure`] marker).
const FROZEN_MARKER: &str = "[ember-kvm-host: the outer VM froze";

/// Whether output unchanged for `quiet`, under a stall watch of `stall`, means the outer VM
/// froze: the watch inside would have written its record and ended the command by then.
fn frozen(quiet: Duration, stall: Duration) -> bool {
    quiet > stall + FROZEN_MARGIN
}

/// The outer kernel's command line, with `extra` (`EMBER_KVM_HOST_APPEND`: parameters to try
/// against the outer VM's own failures, for diagnosis) at its end.
fn outer_cmdline(extra: Option<&str>) -> String {
    let base = "console=ttyS0 panic=-1 softlockup_panic=1 watchdog_thresh=30 quiet loglevel=4";
    match extra.map(str::trim) {
        Some(extra) if !extra.is_empty() => format!("{base} {extra}"),
        _ => base.to_string(),
    }
}

/// How often (seconds) stage 2 writes its heartbeat ([`heartbeat_script`]).
const HEARTBEAT_EVERY: u64 = 5;

/// How old the outer VM's heartbeat may get before the outer VM counts as frozen. An outer
/// VM whose timers stopped firing (seen: QEMU at 0 % CPU, nothing printed for good) is
/// caught after this rather than after the stall watch's time plus [`FROZEN_MARGIN`]
/// (13 minutes for a test binary). Generous: a loaded but live outer VM rewrites it every
/// [`HEARTBEAT_EVERY`] seconds, and its own soft-lockup watchdog fires after 60.
const HEARTBEAT_STALE: Duration = Duration::from_secs(120);

/// The outer VM's second serial port, which QEMU writes to the run folder's `heartbeat`.
const HEARTBEAT_TTY: &str = "/dev/ttyS1";

/// Stage 2's background loop that writes a byte to `target` every `every` seconds, so the
/// host sees by the file's mtime that the outer VM's user space is alive; `copy_dir` is
/// where busybox is copied (`/`, the root's tmpfs layer, in the outer VM).
///
/// It must not depend on 9p: with the root's 9p busy (`scripts/install.sh` stripping
/// 700 MB of binaries read over it), a loop that ran `date` and `sleep` from the 9p root
/// and wrote into the 9p run folder once went 120 s without a beat in a live outer VM. So
/// the loop writes to a serial port (`target`, [`HEARTBEAT_TTY`]) and runs a static
/// busybox copied into the root's tmpfs layer first (the host's `sleep` when busybox is
/// missing).
fn heartbeat_script(every: u64, target: &str, copy_dir: &str) -> String {
    format!(
        "hb={copy_dir}/.ember-kvm-host-heartbeat\n\
         if b=$(command -v busybox) && mkdir -p $hb && cp \"$b\" $hb/busybox && $hb/busybox true; then hb_sleep=\"$hb/busybox sleep\"; else hb_sleep=sleep; fi\n\
         ( while :; do echo . >> {target}; $hb_sleep {every} || sleep {every}; done ) </dev/null >/dev/null 2>&1 &\n"
    )
}

/// How long ago the heartbeat file `path` was last written, by the host's clock; `None`
/// before stage 2 has written to it (QEMU makes it empty at start) or when it cannot be
/// read.
fn heartbeat_age(path: &Path) -> Option<Duration> {
    let meta = std::fs::metadata(path).ok().filter(|m| m.len() > 0)?;
    let written = meta.modified().ok()?;
    Some(
        SystemTime::now()
            .duration_since(written)
            .unwrap_or_default(),
    )
}

/// Why the host decided the outer VM froze.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Frozen {
    /// Output unchanged and no stall record for this long ([`frozen`]).
    Quiet(Duration),
    /// The heartbeat stopped this long ago ([`HEARTBEAT_STALE`]).
    Heartbeat(Duration),
}

/// Whether the outer VM counts as frozen, given how long its output has been unchanged,
/// the job's stall watch and how old its heartbeat is.
fn frozen_now(
    quiet: Duration,
    stall: Option<Duration>,
    heartbeat: Option<Duration>,
) -> Option<Frozen> {
    if let Some(age) = heartbeat.filter(|age| *age > HEARTBEAT_STALE) {
        return Some(Frozen::Heartbeat(age));
    }
    stall
        .is_some_and(|stall| frozen(quiet, stall))
        .then_some(Frozen::Quiet(quiet))
}

/// A nested KVM test host: the outer VM's shape and assets.
#[derive(Debug, Clone)]
pub struct KvmHost {
    /// The prepared assets.
    pub assets: Assets,
    /// The outer VM's memory (MiB). Memory under TCG is allocated as touched.
    pub memory_mib: u32,
    /// The outer VM's vCPUs (TCG runs one host thread per vCPU).
    pub cpus: u32,
    /// The cgroup layout inside.
    pub cgroups: Cgroups,
}

impl KvmHost {
    /// Prepares the assets ([`Assets::prepare`]); 4 GiB, 2 vCPUs, unified cgroups.
    pub fn prepare() -> Result<KvmHost, KvmHostError> {
        Ok(KvmHost {
            assets: Assets::prepare()?,
            memory_mib: 4096,
            cpus: 2,
            cgroups: Cgroups::Unified,
        })
    }

    /// The stage-2 script: runs as PID 1 on the overlay root.
    fn stage2(&self, job: &Job) -> String {
        let mut s = String::new();
        let m = self.assets.modules.display();
        let _ = write!(
            s,
            "#!/bin/sh\n\
             R={RUN_MOUNT}\n\
             KVM_AMD_PARAMS={kvm_amd}\n\
             off() {{ sync; echo o > /proc/sysrq-trigger; while :; do read -r _ < /dev/console; done 2>/dev/null; }}\n\
             echo 'ember-kvm-host: stage 2'\n\
             for d in {tmpfs}; do mount -t tmpfs -o mode=0755 tmpfs $d; done\n\
             {heartbeat}\
             chmod 1777 /tmp /var/tmp\n\
             {keep}\
             mkdir -p /dev/pts /dev/shm && mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts && mount -t tmpfs tmpfs /dev/shm\n\
             [ -e /dev/ptmx ] || ln -s pts/ptmx /dev/ptmx\n\
             grep -qw svm /proc/cpuinfo || {{ echo nosvm > $R/status; off; }}\n\
             for mod in {mods}; do p=; [ $mod = kvm_amd ] && p=\"$KVM_AMD_PARAMS\"; modprobe -d {m} $mod $p || echo \"ember-kvm-host: modprobe $mod $p failed\"; done\n\
             [ -c /dev/kvm ] || {{ echo 'ember-kvm-host: no /dev/kvm after modprobe kvm_amd'; echo nokvm > $R/status; off; }}\n\
             {cgroups}\
             ip link set lo up\n\
             hostname ember-kvm-host\n\
             export HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin EMBER_IN_KVM_HOST=1\n",
            mods = HOST_MODULES.join(" "),
            kvm_amd = shell_quote(
                &std::env::var("EMBER_KVM_HOST_KVM_AMD").unwrap_or_else(|_| KVM_AMD_PARAMS.into())
            ),
            cgroups = self.cgroups.script(),
            tmpfs = TMPFS_DIRS.join(" "),
            keep = keep_script(&[&job.keep[..], std::slice::from_ref(&job.cwd)].concat()),
            heartbeat = heartbeat_script(HEARTBEAT_EVERY, HEARTBEAT_TTY, ""),
        );
        for (k, v) in &job.env {
            let _ = writeln!(s, "export {k}={}", shell_quote(v));
        }
        let _ = write!(
            s,
            "cd {cwd} || {{ echo 'ember-kvm-host: no folder {cwd}'; echo 126 > $R/status; off; }}\n\
             {launch}\
             off\n",
            cwd = shell_quote(&job.cwd.display().to_string()),
            launch = launch_script(&job.command, &job.stall.map(stall_script).unwrap_or_default()),
        );
        s
    }

    /// Runs `job` in a fresh outer VM: boots it, runs the command, powers it off. A timeout
    /// kills QEMU and is an error carrying the last lines of the output and the console.
    pub fn run(&self, job: &Job) -> Result<Outcome, KvmHostError> {
        let rundir = tempfile::Builder::new()
            .prefix("ember-kvm-host-")
            .tempdir()
            .map_err(io(std::env::temp_dir()))?;
        let run = rundir.path();
        let stage2 = run.join("stage2.sh");
        std::fs::write(&stage2, self.stage2(job)).map_err(io(&stage2))?;
        let console = run.join("console.log");
        let started = Instant::now();
        let timeout = match job.deadline {
            Some(d) => job.timeout.min(d.saturating_duration_since(started)),
            None => job.timeout,
        };
        let mut qemu = Command::new("qemu-system-x86_64")
            .args(["-nodefaults", "-no-user-config", "-no-reboot", "-display", "none"])
            .args(["-accel", "tcg,thread=multi", "-cpu", "max"])
            .args(["-smp", &self.cpus.to_string()])
            .args(["-m", &self.memory_mib.to_string()])
            .arg("-kernel")
            .arg(&self.assets.kernel)
            .arg("-initrd")
            .arg(&self.assets.initramfs)
            // A soft lockup of the outer kernel (seen once: both vCPUs stuck for the rest of
            // a 40-minute run) panics it, and the panic powers it off (`panic=-1` with
            // `-no-reboot`), which `run_with_rerun` then sees. Thirty seconds of threshold
            // (a lockup after 60 s) so that a host that is merely busy does not trip it.
            .arg("-append")
            .arg(outer_cmdline(
                std::env::var("EMBER_KVM_HOST_APPEND").ok().as_deref(),
            ))
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            // ttyS1: stage 2's heartbeat (see HEARTBEAT_TTY).
            .arg("-serial")
            .arg(format!("file:{}", run.join("heartbeat").display()))
            .args(["-virtfs", "local,path=/,mount_tag=hostroot,security_model=passthrough,readonly=on,multidevs=remap"])
            .arg("-virtfs")
            .arg(format!(
                "local,path={},mount_tag=emberrun,security_model=passthrough",
                run.display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    KvmHostError::Missing {
                        what: "qemu-system-x86_64".into(),
                        install: "apt-get install qemu-system-x86".into(),
                    }
                } else {
                    KvmHostError::Io {
                        path: "qemu-system-x86_64".into(),
                        source: e,
                    }
                }
            })?;
        let read = |name: &str| {
            std::fs::read(run.join(name))
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default()
        };
        let mut echoed = 0;
        let mut echo = |all: bool| {
            if !job.echo {
                return;
            }
            let Ok(bytes) = std::fs::read(run.join("output")) else {
                return;
            };
            // Whole lines only while running, so lines are not split mid-way.
            let end = if all {
                bytes.len()
            } else {
                bytes.iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1)
            };
            if end > echoed {
                use std::io::Write;
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(&bytes[echoed..end]);
                let _ = out.flush();
                echoed = end;
            }
        };
        // The console is watched while the command runs: an outer VM that broke (a soft
        // lockup that `softlockup_panic` did not turn into a power-off, an Oops that left it
        // half-alive) is killed after a grace period rather than left to the timeout, so the
        // rerun still fits the caller's time.
        let mut broke_at: Option<Instant> = None;
        let mut last_look = Instant::now();
        // The output's size and when it last changed: with a stall watch inside, output
        // that stays unchanged well past the stall means the watch itself is not running
        // (an outer VM whose vCPUs all sleep and whose timers no longer fire: seen once,
        // QEMU at 0 % CPU for over 10 minutes), so the outer VM counts as failed.
        let mut output_seen = (0u64, Instant::now());
        let mut froze: Option<Frozen> = None;
        let status = loop {
            if let Some(status) = qemu.try_wait().map_err(io("qemu-system-x86_64"))? {
                echo(true);
                break Some(status);
            }
            echo(false);
            if broke_at.is_none() && last_look.elapsed() >= CONSOLE_LOOK_EVERY {
                last_look = Instant::now();
                if outer_failure(&read("console.log")).is_some() {
                    broke_at = Some(Instant::now());
                }
            }
            if broke_at.is_some_and(|t| t.elapsed() > OUTER_FAILURE_GRACE) {
                let _ = qemu.kill();
                let _ = qemu.wait();
                echo(true);
                break None;
            }
            let size = std::fs::metadata(run.join("output")).map_or(0, |m| m.len());
            if size != output_seen.0 {
                output_seen = (size, Instant::now());
            }
            froze = frozen_now(
                output_seen.1.elapsed(),
                job.stall,
                heartbeat_age(&run.join("heartbeat")),
            );
            if froze.is_some() {
                let _ = qemu.kill();
                let _ = qemu.wait();
                echo(true);
                break None;
            }
            if started.elapsed() > timeout {
                let _ = qemu.kill();
                let _ = qemu.wait();
                let console = read("console.log");
                if outer_failure(&console).is_some() {
                    echo(true);
                    break None;
                }
                return Err(KvmHostError::Timeout {
                    timeout,
                    output: ember_sys::tail::lines(&read("output"), 40),
                    console: ember_sys::tail::lines(&console, 40),
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let elapsed = started.elapsed();
        let mut qemu_err = String::new();
        if let Some(mut e) = qemu.stderr.take() {
            let _ = e.read_to_string(&mut qemu_err);
        }
        let mut console_text = read("console.log");
        match status {
            Some(status) if !status.success() => {
                let _ = write!(console_text, "\n[qemu exited with {status}: {qemu_err}]");
            }
            Some(_) => {}
            None if froze.is_some() => {
                let why = match froze {
                    Some(Frozen::Heartbeat(age)) => {
                        format!("its heartbeat stopped {} s ago", age.as_secs())
                    }
                    _ => format!(
                        "no output and no stall record for {} s",
                        output_seen.1.elapsed().as_secs()
                    ),
                };
                let _ = write!(console_text, "\n{FROZEN_MARKER}: {why}; qemu was killed]");
            }
            None => {
                let _ = write!(
                    console_text,
                    "\n[the outer VM broke; qemu was killed {} s later]",
                    OUTER_FAILURE_GRACE.as_secs()
                );
            }
        }
        let recorded = read("status");
        let recorded = recorded.trim();
        if recorded == "nosvm" {
            return Err(KvmHostError::NoSvm);
        }
        let stalled = read("stalled");
        let outcome = Outcome {
            status: recorded.parse().ok(),
            stalled: (!stalled.trim().is_empty()).then(|| stalled.trim().to_string()),
            output: read("output"),
            outer_failure: outer_failure(&console_text),
            console: console_text,
            elapsed,
        };
        if outcome.status.is_none() && recorded == "nokvm" {
            return Err(KvmHostError::Prepare {
                step: "modprobe kvm_amd".into(),
                detail: outcome.tails(20),
            });
        }
        Ok(outcome)
    }

    /// [`KvmHost::run`], run once more when the outer VM itself failed (its console shows
    /// a kernel crash, or it ended without recording a status). Returns the outcome and
    /// how many reruns it took (0 or 1), so callers can count them.
    pub fn run_with_rerun(&self, job: &Job) -> Result<(Outcome, u32), KvmHostError> {
        let first = self.run(job)?;
        if first.outer_failure.is_none() && first.status.is_some() {
            return Ok((first, 0));
        }
        let why = first
            .outer_failure
            .clone()
            .unwrap_or_else(|| "the outer VM ended without recording a status".into());
        // What the failed run saw is shown (on stderr, not in the counted output), so that
        // the outer VM's crash can be looked into from a CI log.
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            format!(
                "RERUN nested KVM host: the outer VM failed ({why}); running once more\n\
                 --- the failed run, for the record ---\n{}\n--- end of the failed run ---\n",
                // Indented, so that no line of it counts in run-tests.sh's summary.
                first
                    .tails(60)
                    .lines()
                    .map(|l| format!("  | {l}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            )
            .as_bytes(),
        );
        Ok((self.run(job)?, 1))
    }
}

/// Stage 2's lines that run `command` with its output in `$R/output`, under `watch` (lines
/// that see the command as `$pid`), and record its exit status in `$R/status`. The output
/// file exists before the command and the watch start, and the command appends to it: a
/// command slow to start cannot truncate what the watch has already written.
fn launch_script(command: &str, watch: &str) -> String {
    format!(
        ": > $R/output\n\
         /bin/sh -c {cmd} </dev/null >>$R/output 2>&1 &\n\
         pid=$!\n\
         {watch}\
         wait $pid\n\
         echo $? > $R/status\n",
        cmd = shell_quote(command),
    )
}

/// Stage 2's watch over the command started as `$pid`: when `$R/output` has not grown for
/// `stall`, it writes `$R/stalled`, appends every process's state, wait channel and kernel
/// stack and the tails of the logs under /run and /tmp to the output, and kills the command.
fn stall_script(stall: Duration) -> String {
    stall_script_every(stall, STALL_LOOK_EVERY)
}

/// [`stall_script`], looking every `every` seconds.
fn stall_script_every(stall: Duration, every: u64) -> String {
    let secs = stall.as_secs().max(every);
    format!(
        "last=-1; quiet=0\n\
         while kill -0 $pid 2>/dev/null; do\n\
         \x20 sleep {every}; size=$(wc -c < $R/output)\n\
         \x20 if [ \"$size\" != \"$last\" ]; then last=$size; quiet=0; else quiet=$((quiet + {every})); fi\n\
         \x20 [ $quiet -ge {secs} ] || continue\n\
         \x20 echo \"no output for {secs} s\" > $R/stalled\n\
         \x20 {{ echo; echo 'ember-kvm-host: STALL: no output for {secs} s; what every process waits on:'\n\
         \x20   ps -eo pid,ppid,stat,etimes,wchan:32,args\n\
         \x20   for p in $(ps -eo pid=,stat= | awk '$2 !~ /^I/ {{print $1}}'); do\n\
         \x20     [ -r /proc/$p/stack ] || continue\n\
         \x20     case \"$(cat /proc/$p/comm 2>/dev/null)\" in kworker*|ksoftirq*|rcu*|migration*|cpuhp*|kthreadd) continue;; esac\n\
         \x20     echo \"--- $p $(tr '\\0' ' ' < /proc/$p/cmdline 2>/dev/null | cut -c1-160)\"; cat /proc/$p/stack 2>/dev/null\n\
         \x20   done\n\
         \x20   for f in $(find /run /tmp -name '*.log' -size +0 2>/dev/null | head -20); do echo \"--- tail of $f\"; tail -n 25 $f; done\n\
         \x20   echo 'ember-kvm-host: end of the STALL record'; }} >> $R/output 2>&1\n\
         \x20 kill -KILL $pid; break\n\
         done\n",
    )
}

/// How often (seconds) stage 2 looks at the command's output for [`Job::stall`].
const STALL_LOOK_EVERY: u64 = 10;

/// Stage 2's lines that bring back what a tmpfs of [`TMPFS_DIRS`] would hide of `paths`
/// (a checkout under /tmp, say): for each, the top folder below that tmpfs (`/tmp/ci` of
/// `/tmp/ci/tests`, so the whole checkout, its `target/` included) as an overlay of its
/// host copy with a tmpfs upper layer.
fn keep_script(paths: &[PathBuf]) -> String {
    let mut tops: Vec<PathBuf> = Vec::new();
    for p in paths {
        for t in TMPFS_DIRS {
            if let Ok(rest) = p.strip_prefix(t) {
                if let Some(first) = rest.components().next() {
                    let top = Path::new(t).join(first);
                    if !tops.contains(&top) {
                        tops.push(top);
                    }
                }
            }
        }
    }
    let mut s = String::new();
    for (i, top) in tops.iter().enumerate() {
        let d = shell_quote(&top.display().to_string());
        let lower = shell_quote(&format!("{LOWER_MOUNT}{}", top.display()));
        let _ = writeln!(
            s,
            "mkdir -p {d} /run/.keep/{i}/u /run/.keep/{i}/w && mount -t overlay -o lowerdir={lower},upperdir=/run/.keep/{i}/u,workdir=/run/.keep/{i}/w overlay {d}"
        );
    }
    s
}

/// Single-quotes `s` for /bin/sh.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    #[test]
    fn an_outer_vm_whose_stall_watch_did_not_act_is_frozen() {
        let stall = Duration::from_secs(600);
        assert!(
            !frozen(Duration::from_secs(700), stall),
            "the watch may still act"
        );
        assert!(frozen(Duration::from_secs(800), stall));
        let console = format!(
            "ember-kvm-host: stage 2\n{FROZEN_MARKER}: no output and no stall record for 800 s; qemu was killed]"
        );
        assert!(
            outer_failure(&console).is_some(),
            "a frozen VM is an outer failure"
        );
    }

    #[test]
    fn a_stopped_heartbeat_means_frozen_long_before_the_stall_margin() {
        let stall = Some(Duration::from_secs(600));
        let short = Duration::from_secs(10);
        // Fresh heartbeat, quiet command: not frozen (the stall watch is still in charge).
        assert_eq!(frozen_now(short, stall, Some(Duration::from_secs(6))), None);
        // No heartbeat yet (stage 2 not started): only the output rule applies.
        assert_eq!(frozen_now(short, stall, None), None);
        let old = HEARTBEAT_STALE + Duration::from_secs(1);
        assert_eq!(
            frozen_now(short, stall, Some(old)),
            Some(Frozen::Heartbeat(old))
        );
        // Without a stall watch the heartbeat still counts.
        assert_eq!(
            frozen_now(short, None, Some(old)),
            Some(Frozen::Heartbeat(old))
        );
        let quiet = Duration::from_secs(800);
        assert_eq!(
            frozen_now(quiet, stall, Some(Duration::from_secs(1))),
            Some(Frozen::Quiet(quiet))
        );
    }

    #[test]
    fn the_heartbeat_loop_keeps_its_file_fresh_and_an_old_file_is_old() {
        let r = tempfile::tempdir().unwrap();
        let file = r.path().join("heartbeat");
        assert_eq!(heartbeat_age(&file), None, "no file yet");
        let mut child = Command::new("/bin/sh")
            .arg("-c")
            .arg(format!(
                "R={}\n{}wait",
                r.path().display(),
                heartbeat_script(
                    1,
                    &file.display().to_string(),
                    &r.path().display().to_string()
                )
            ))
            .process_group(0)
            .spawn()
            .unwrap();
        let start = Instant::now();
        while heartbeat_age(&file).is_none() {
            assert!(start.elapsed() < Duration::from_secs(20), "never written");
            std::thread::sleep(Duration::from_millis(50));
        }
        // One beat per second, not a spinning loop (a sleep that fails at once).
        std::thread::sleep(Duration::from_secs(3));
        let beats = std::fs::metadata(&file).unwrap().len() / 2;
        assert!((2..=6).contains(&beats), "{beats} beats in about 3 s");
        // Set it 200 s into the past; the loop brings it back within its period.
        let back = SystemTime::now() - Duration::from_secs(200);
        std::fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(back)
            .unwrap();
        assert!(heartbeat_age(&file).unwrap() > HEARTBEAT_STALE);
        let start = Instant::now();
        while heartbeat_age(&file).unwrap() > Duration::from_secs(10) {
            assert!(start.elapsed() < Duration::from_secs(20), "not rewritten");
            std::thread::sleep(Duration::from_millis(100));
        }
        // SAFETY: kill(2) of the loop's own process group, which this test made.
        unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
        let _ = child.wait();
    }

    #[test]
    fn outer_failures_are_told_apart_from_command_output() {
        let console = "[    1.0] virtio_blk virtio0: 1 MiB\n\
                       [   80.2] BUG: stack guard page was hit at 0000 (stack is ...)\n\
                       [   80.3] Kernel panic - not syncing: Fatal exception";
        assert_eq!(
            outer_failure(console).as_deref(),
            Some("[   80.2] BUG: stack guard page was hit at 0000 (stack is ...)")
        );
        assert_eq!(
            outer_failure("stage 2\n[ 2292.6] watchdog: BUG: soft lockup - CPU#1 stuck for 2004s! [kthreadd:2]").as_deref(),
            Some("[ 2292.6] watchdog: BUG: soft lockup - CPU#1 stuck for 2004s! [kthreadd:2]")
        );
        assert_eq!(
            outer_failure("stage 2\n[ 1.0] sysrq: Power Off\n[ 1.1] Kernel panic - not syncing: Attempted to kill init!"),
            None
        );
        // An RCU stall counts once it has lasted OUTER_RCU_STALL_TICKS, not before.
        let stall = |ticks: u64| {
            format!("[ 651.7] rcu: INFO: rcu_preempt self-detected stall on CPU\n[ 651.7] rcu: \t1-....: ({ticks} ticks this GP) idle=9fb4/1/0x4000000000000000 softirq=6163/6165 fqs=41681")
        };
        assert_eq!(outer_failure(&stall(5_252)), None);
        assert_eq!(
            outer_failure(&stall(90_178)).as_deref(),
            Some("[ 651.7] rcu: \t1-....: (90178 ticks this GP) idle=9fb4/1/0x4000000000000000 softirq=6163/6165 fqs=41681")
        );
    }

    #[test]
    fn stage2_quotes_the_command_and_records_its_status() {
        let host = KvmHost {
            assets: Assets {
                kernel: "/k".into(),
                modules: "/m".into(),
                release: "6.1.0-1-amd64".into(),
                initramfs: "/i".into(),
            },
            memory_mib: 1024,
            cpus: 1,
            cgroups: Cgroups::Hybrid,
        };
        let mut job = Job::new("echo 'it''s' && exit 3");
        job.cwd = "/some dir".into();
        job.env.push(("A".into(), "b c".into()));
        let s = host.stage2(&job);
        assert!(
            s.contains(r#"/bin/sh -c 'echo '\''it'\'''\''s'\'' && exit 3'"#),
            "{s}"
        );
        assert!(s.contains("cd '/some dir'"), "{s}");
        assert!(s.contains("export A='b c'"), "{s}");
        assert!(s.contains("echo $? > $R/status"), "{s}");
        assert!(s.contains("modprobe -d /m $mod"), "{s}");
        assert!(s.contains("/sys/fs/cgroup/unified"), "{s}");
        assert!(s.contains("echo . >> /dev/ttyS1"), "the heartbeat: {s}");
        // The whole script parses.
        let parsed = Command::new("/bin/sh").arg("-n").arg("-c").arg(&s).status();
        assert!(parsed.unwrap().success(), "stage 2 does not parse:\n{s}");
    }

    /// Runs `cmd` as stage 2 does, watched by [`stall_script_every`] (stall after
    /// [`TEST_STALL`], looking every second), in a fresh `$R`; returns `$R`'s `stalled` and
    /// `output`.
    fn watch(cmd: &str) -> (Option<String>, String) {
        let r = tempfile::tempdir().unwrap();
        let script = format!(
            "R={}\n{}",
            r.path().display(),
            launch_script(cmd, &stall_script_every(TEST_STALL, 1))
        );
        let status = Command::new("/bin/sh")
            .arg("-c")
            .arg(&script)
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        // Lossy, as stage 2's reader is: the record carries log tails, which may hold any
        // bytes (an empty output here once hid a STALL record behind one invalid byte).
        let read = |n: &str| {
            std::fs::read(r.path().join(n))
                .ok()
                .map(|b| String::from_utf8_lossy(&b).into_owned())
        };
        (read("stalled"), read("output").unwrap_or_default())
    }

    /// The stall of [`watch`]: long enough that a command starved of CPU on a loaded CI
    /// host still prints its first line before it (in one CI run, a forked shell took over
    /// 2 s to start).
    const TEST_STALL: Duration = Duration::from_secs(5);

    #[test]
    fn a_silent_command_is_recorded_and_killed() {
        let started = std::time::Instant::now();
        let (stalled, output) = watch("echo started; exec sleep 60");
        assert!(started.elapsed() < Duration::from_secs(30), "not killed");
        assert_eq!(stalled.as_deref().map(str::trim), Some("no output for 5 s"));
        assert!(output.starts_with("started\n"), "{output}");
        assert!(output.contains("ember-kvm-host: STALL"), "{output}");
        // The process table, with the stalled command in it.
        assert!(
            output.contains("WCHAN") && output.contains("sleep 60"),
            "{output}"
        );
        assert!(output.contains("end of the STALL record"), "{output}");
    }

    #[test]
    fn a_command_that_keeps_printing_is_not_a_stall() {
        // Runs 8 s, longer than the stall, printing every second.
        let (stalled, output) = watch("for i in 1 2 3 4 5 6 7 8; do echo $i; sleep 1; done");
        assert_eq!(stalled, None, "{output}");
        assert_eq!(output, "1\n2\n3\n4\n5\n6\n7\n8\n");
    }

    #[test]
    fn folders_under_a_tmpfs_are_kept_whole() {
        let s = keep_script(&[
            "/tmp/ci/tests".into(),
            "/tmp/ci/target/debug/deps/t".into(),
            "/work/main".into(),
            "/var/lib/x/y".into(),
        ]);
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines.len(), 2, "{s}");
        assert!(
            lines[0].contains("lowerdir='/.ember-kvm-host-lower/tmp/ci',upperdir=/run/.keep/0/u"),
            "{s}"
        );
        assert!(lines[0].ends_with("overlay '/tmp/ci'"), "{s}");
        assert!(lines[1].ends_with("overlay '/var/lib/x'"), "{s}");
        assert_eq!(keep_script(&["/work/main".into()]), "");
    }

    #[test]
    fn passed_tests_are_read_from_libtest_output() {
        let out = "running 3 tests\n\
                   test hw_kvm::a ... ok\n\
                   test hw_kvm::b has been running for over 60 seconds\n\
                   test hw_kvm::c ... FAILED\n\
                   test hw_kvm::b ... ok\n\
                   test hw_kvm::d ... ignored\n";
        assert_eq!(passed_tests(out), ["hw_kvm::a", "hw_kvm::b"]);
        assert_eq!(failed_tests(out), ["hw_kvm::c"]);
        assert!(!guest_triple_faulted(out));
        assert!(guest_triple_faulted(
            "ctr: failed to create shim task: sandbox echo: the VM exited while starting (a vCPU triple-faulted (see console.log))"
        ));
        assert_eq!(record_passed(&[]), "");
        let rec = record_passed(&passed_tests(out));
        assert!(rec.contains("test hw_kvm::b ... ok\n"), "{rec}");
        assert!(
            rec.lines()
                .any(|l| l.starts_with("test result: ok. 2 passed; 0 failed;")),
            "{rec}"
        );
    }
}

/// A test binary cargo built, and the package folder it runs in (cargo runs tests there).
#[derive(Debug, Clone)]
pub struct TestBinary {
    /// The executable.
    pub exe: PathBuf,
    /// The package's folder (its `Cargo.toml`'s parent).
    pub package_dir: PathBuf,
    /// How many of its tests matched the filter.
    pub tests: usize,
}

/// Builds the workspace's test binaries (`cargo test --no-run`, plus `extra` arguments
/// such as `-p ember-tests`) and returns those holding at least one test whose name
/// contains `filter` (the `hw_kvm::` modules), by asking each binary for its list. The
/// binaries with the most such tests come first, so that callers running several outer VMs
/// at once start the long ones early.
pub fn test_binaries(extra: &[String], filter: &str) -> Result<Vec<TestBinary>, KvmHostError> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(&cargo)
        .args(["test", "--no-run", "--message-format=json"])
        .args(extra)
        .stderr(Stdio::inherit())
        .output()
        .map_err(io(&cargo))?;
    if !out.status.success() {
        return Err(KvmHostError::Prepare {
            step: "cargo test --no-run".into(),
            detail: out.status.to_string(),
        });
    }
    let mut found = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["reason"] != "compiler-artifact" || v["profile"]["test"] != true {
            continue;
        }
        let (Some(exe), Some(manifest)) = (v["executable"].as_str(), v["manifest_path"].as_str())
        else {
            continue;
        };
        let list = Command::new(exe)
            .args(["--list", filter])
            .stderr(Stdio::null())
            .output()
            .map_err(io(exe))?;
        let listed = String::from_utf8_lossy(&list.stdout);
        let tests = listed
            .lines()
            .filter(|l| l.ends_with(": test") && l.contains(filter))
            .count();
        if tests > 0 {
            found.push(TestBinary {
                exe: exe.into(),
                package_dir: Path::new(manifest)
                    .parent()
                    .unwrap_or(Path::new("/"))
                    .into(),
                tests,
            });
        }
    }
    found.sort_by_key(|b| std::cmp::Reverse(b.tests));
    Ok(found)
}

impl KvmHost {
    /// Runs the tests of `binary` whose names contain `filter` inside a fresh outer VM,
    /// `threads` tests at a time (libtest's `--test-threads`), with `env` added.
    ///
    /// When the outer VM itself fails ([`Outcome::outer_failure`], or no status recorded),
    /// the tests that had not passed yet run again in a fresh outer VM, at most
    /// [`MAX_TEST_RERUNS`] times: a crash of the emulated host late in a long binary
    /// costs only what was left. The returned outcome's output starts with the tests that
    /// passed before (and a `test result:` line counting them), so a summary counts every
    /// test once; the second value is how many reruns it took.
    pub fn run_tests(
        &self,
        binary: &TestBinary,
        filter: &str,
        env: &[(String, String)],
        timeout: Duration,
        deadline: Option<Instant>,
        threads: u32,
    ) -> Result<(Outcome, u32), KvmHostError> {
        let exe = shell_quote(&binary.exe.display().to_string());
        let mut selection = shell_quote(filter);
        let mut passed_before: Vec<String> = Vec::new();
        let mut reruns = 0;
        let mut failure_retries = 0;
        loop {
            let mut job = Job::new(format!(
                "{exe} {selection} --test-threads={}",
                threads.max(1)
            ));
            job.cwd = binary.package_dir.clone();
            job.keep.push(binary.exe.clone());
            job.env = env.to_vec();
            job.env.push((
                "CARGO_MANIFEST_DIR".into(),
                binary.package_dir.display().to_string(),
            ));
            // The tests find the workspace's binaries through it (ember_tests::containerd):
            // without it they would fall back to whatever ember is installed on PATH.
            if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
                job.env
                    .push(("CARGO_TARGET_DIR".into(), t.to_string_lossy().into_owned()));
            }
            job.timeout = timeout;
            job.deadline = deadline;
            job.stall = Some(TEST_STALL);
            let mut outcome = self.run(&job)?;
            let broke = outcome.outer_failure.is_some()
                || outcome.status.is_none()
                || outcome.stalled.is_some();
            let failed = failed_tests(&outcome.output);
            // Tests that failed in a run that itself went fine get one more run in a fresh
            // outer VM: everything in there is emulated, and a guest that crashed once
            // under TCG says little about ember. When a microVM guest triple-faulted
            // (about one boot in 20 to 30 under TCG, at no fixed point), they get a second
            // one. The RERUN record keeps each failure.
            let allowed = if guest_triple_faulted(&outcome.output) {
                2
            } else {
                1
            };
            let retry_failed = !broke && !failed.is_empty() && failure_retries < allowed;
            if (!broke && !retry_failed) || reruns == MAX_TEST_RERUNS {
                outcome.output = record_passed(&passed_before) + &outcome.output;
                return Ok((outcome, reruns));
            }
            passed_before.extend(passed_tests(&outcome.output));
            let left: Vec<String> = if retry_failed {
                failure_retries += 1;
                failed.clone()
            } else {
                list_tests(binary, filter)?
                    .into_iter()
                    .filter(|t| !passed_before.contains(t))
                    .collect()
            };
            let why = match (&outcome.outer_failure, &outcome.stalled) {
                (Some(crash), _) => format!("the outer VM failed ({crash})"),
                (None, Some(stall)) => format!("a test stalled ({stall})"),
                (None, None) if retry_failed => {
                    format!("{} failed ({})", failed.len(), failed.join(", "))
                }
                (None, None) => "the outer VM failed (it ended without recording a status)".into(),
            };
            report_rerun(&why, &outcome, left.len());
            if left.is_empty() {
                // It broke after the last test passed (while powering off, say).
                outcome.status = Some(0);
                outcome.outer_failure = None;
                outcome.output = record_passed(&passed_before);
                return Ok((outcome, reruns));
            }
            reruns += 1;
            selection = std::iter::once("--exact".to_string())
                .chain(left.iter().map(|t| shell_quote(t)))
                .collect::<Vec<_>>()
                .join(" ");
        }
    }
}

/// How many times [`KvmHost::run_tests`] runs a binary's remaining tests again after its
/// outer VM failed or a test stalled (tests that failed get one of these, or two when a
/// microVM guest triple-faulted: [`guest_triple_faulted`]).
pub const MAX_TEST_RERUNS: u32 = 2;

/// Whether a test's output says a microVM guest triple-faulted (the runtime's words for a
/// VM whose vCPU shut down), which under TCG happens now and then to any guest.
pub fn guest_triple_faulted(output: &str) -> bool {
    output.contains("a vCPU triple-faulted")
}

/// How long a nested test binary may print nothing before its run counts as stalled
/// ([`Job::stall`]). The slowest test (a CRI pod of two containers, everything emulated)
/// takes about 3 minutes; a step that hangs is caught after 10.
pub const TEST_STALL: Duration = Duration::from_secs(600);

/// The names of the tests libtest reported as failed (`test NAME ... FAILED`) in `output`.
pub fn failed_tests(output: &str) -> Vec<String> {
    output
        .lines()
        .filter_map(|l| l.strip_prefix("test ")?.strip_suffix(" ... FAILED"))
        .map(str::to_string)
        .collect()
}

/// The names of the tests libtest reported as passed (`test NAME ... ok`) in `output`.
pub fn passed_tests(output: &str) -> Vec<String> {
    output
        .lines()
        .filter_map(|l| l.strip_prefix("test ")?.strip_suffix(" ... ok"))
        .map(str::to_string)
        .collect()
}

/// Lines standing for tests that passed in an outer VM that failed later: each test's
/// `... ok` line and one `test result:` line counting them (empty when there are none).
fn record_passed(passed: &[String]) -> String {
    if passed.is_empty() {
        return String::new();
    }
    let mut s = String::from("\n(passed before the outer VM failed)\n");
    for t in passed {
        let _ = writeln!(s, "test {t} ... ok");
    }
    let _ = writeln!(
        s,
        "\ntest result: ok. {} passed; 0 failed; 0 ignored; 0 measured; 0 filtered out (before the outer VM failed)\n",
        passed.len()
    );
    s
}

/// The names of `binary`'s tests whose names contain `filter` (`--list`, run here).
fn list_tests(binary: &TestBinary, filter: &str) -> Result<Vec<String>, KvmHostError> {
    let out = Command::new(&binary.exe)
        .args(["--list", filter])
        .stderr(Stdio::null())
        .output()
        .map_err(io(&binary.exe))?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_suffix(": test"))
        .map(str::to_string)
        .collect())
}

/// Says on stderr that the outer VM failed and what is run again, with what the failed
/// run saw (the console from the crash on), indented so that none of it counts in
/// run-tests.sh's summary.
fn report_rerun(why: &str, outcome: &Outcome, left: usize) {
    let from_crash: Vec<&str> = outcome
        .console
        .lines()
        .skip_while(|l| !OUTER_FAILURE_MARKERS.iter().any(|m| l.contains(m)))
        .take(80)
        .collect();
    // A stall's record (every process's wait channel and stack, the logs' tails) in full,
    // up to a bound; otherwise the output's last lines.
    let stall_record: Vec<&str> = match outcome.stalled {
        Some(_) => outcome
            .output
            .lines()
            .skip_while(|l| !l.contains("ember-kvm-host: STALL"))
            .take(400)
            .collect(),
        None => Vec::new(),
    };
    let failures: Vec<&str> = outcome
        .output
        .lines()
        .skip_while(|l| *l != "failures:")
        .take(150)
        .collect();
    let output = if !failures.is_empty() && stall_record.is_empty() {
        // Failed tests: libtest's report of them (messages, containerd's log tails).
        failures.join("\n")
    } else if stall_record.is_empty() {
        ember_sys::tail::lines(&outcome.output, 30)
    } else {
        // The test's last lines before the record, then the record.
        let before = outcome
            .output
            .split("ember-kvm-host: STALL")
            .next()
            .unwrap_or("");
        format!(
            "{}\n{}",
            ember_sys::tail::lines(before, 30),
            stall_record.join("\n")
        )
    };
    let record = format!(
        "--- last lines of the command's output ---\n{}\n--- the outer console from the crash on ---\n{}",
        output,
        if from_crash.is_empty() {
            ember_sys::tail::lines(&outcome.console, 40)
        } else {
            from_crash.join("\n")
        }
    );
    let indented: Vec<String> = record.lines().map(|l| format!("  | {l}")).collect();
    print_block(&format!(
        "RERUN nested KVM host: {why}; running the {left} tests that had not passed once more\n{}\n",
        indented.join("\n")
    ));
}

/// Writes `text` to stdout in one piece, never interleaved with another thread's block:
/// with several outer VMs at once, each binary's libtest output (which run-tests.sh
/// counts line by line) and each RERUN record stay whole.
pub fn print_block(text: &str) {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _held = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut out = std::io::stdout().lock();
    let _ = std::io::Write::write_all(&mut out, text.as_bytes());
    let _ = std::io::Write::flush(&mut out);
}
