//! `ember check` against fixture hosts (hardware KVM, PVM, no KVM) and on this machine.

use ember_config::{Backend, Config};
use ember_runtime::check::{self, Capability, CapabilitySource, Host, Inputs, Status};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

/// The kinds of host a fixture tree can describe.
#[derive(Clone, Copy)]
enum Kind {
    Hardware,
    Pvm,
    NoKvm,
}

const HYBRID_MOUNTINFO: &str = "\
30 23 0:26 / /sys/fs/cgroup ro - tmpfs tmpfs ro,mode=755\n\
31 30 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n\
32 30 0:28 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
const UNIFIED_MOUNTINFO: &str = "25 1 0:22 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";

fn put(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, text).unwrap();
}

/// A fixture host tree, with guest assets next to it and a fake `containerd`.
fn fixture(kind: Kind, uid: u32, containerd_version: Option<&str>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let flags = match kind {
        Kind::Hardware => "fpu vme de pse tsc msr pae vmx sse sse2",
        Kind::Pvm | Kind::NoKvm => "fpu vme de pse tsc msr pae sse sse2 hypervisor",
    };
    put(
        &root,
        "proc/cpuinfo",
        &format!("processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n"),
    );
    put(
        &root,
        "proc/self/status",
        &format!("Name:\tember\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n"),
    );
    match kind {
        Kind::Hardware => {
            put(&root, "dev/kvm", "");
            put(&root, "proc/self/mountinfo", UNIFIED_MOUNTINFO);
        }
        Kind::Pvm => {
            put(&root, "dev/kvm", "");
            fs::create_dir_all(root.join("sys/module/kvm_pvm")).unwrap();
            put(&root, "proc/self/mountinfo", HYBRID_MOUNTINFO);
        }
        Kind::NoKvm => put(&root, "proc/self/mountinfo", UNIFIED_MOUNTINFO),
    }
    put(&root, "dev/net/tun", "");
    put(dir.path(), "guest/vmlinux", "kernel");
    put(dir.path(), "guest/initramfs.cpio", "initrd");
    if let Some(v) = containerd_version {
        let bin = dir.path().join("bin/containerd");
        put(
            dir.path(),
            "bin/containerd",
            &format!(
                "#!/bin/sh\necho \"containerd github.com/containerd/containerd {v} deadbeef\"\n"
            ),
        );
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
    }
    dir
}

fn inputs(dir: &Path, backend: Backend, caps: Vec<Capability>) -> Inputs {
    let mut config = Config::default();
    config.sandbox.backend = backend;
    config.hypervisor.kernel = dir.join("guest/vmlinux");
    config.hypervisor.initrd = Some(dir.join("guest/initramfs.cpio"));
    Inputs {
        host: Host::new(dir.join("root")),
        capabilities: CapabilitySource::Fixed(caps),
        path_var: dir.join("bin").into_os_string(),
        config: Ok((config, "fixture".to_string())),
    }
}

fn finding<'a>(r: &'a check::Report, name: &str) -> &'a check::Finding {
    r.findings
        .iter()
        .find(|f| f.name == name)
        .unwrap_or_else(|| panic!("no finding {name} in {r:#?}"))
}

#[test]
fn hardware_kvm_host_runs_microvm() {
    let dir = fixture(Kind::Hardware, 0, Some("1.7.13"));
    let r = check::run(&inputs(
        dir.path(),
        Backend::Microvm,
        Capability::ALL.to_vec(),
    ));
    assert!(r.can_run, "{}", r.to_text());
    assert_eq!(r.exit_code(), 0);
    assert_eq!(r.runnable_backends, vec!["microvm", "process"]);
    let v = finding(&r, "virtualization");
    assert_eq!(v.status, Status::Ok);
    assert!(v.message.contains("VT-x"), "{}", v.message);
    assert_eq!(finding(&r, "kvm-capabilities").status, Status::Ok);
    assert_eq!(finding(&r, "cgroups").message, "cgroup v2 (unified)");
    assert!(finding(&r, "containerd").message.contains("1.7.13"));
    assert!(
        r.findings.iter().all(|f| f.status == Status::Ok),
        "{}",
        r.to_text()
    );
}

#[test]
fn pvm_host_fails_microvm_and_points_to_process_backend() {
    let dir = fixture(Kind::Pvm, 0, Some("1.6.20~ds1"));
    let r = check::run(&inputs(
        dir.path(),
        Backend::Microvm,
        Capability::ALL.to_vec(),
    ));
    assert!(!r.can_run);
    assert_eq!(r.exit_code(), 1);
    let v = finding(&r, "virtualization");
    assert_eq!(v.status, Status::Fail);
    assert!(v.message.contains("PVM"), "{}", v.message);
    assert!(
        v.message.contains("only under KVM's instruction emulator"),
        "{}",
        v.message
    );
    assert!(v.fix.contains("sandbox.backend = \"process\""), "{}", v.fix);
    assert!(v.fix.contains("hardware KVM"), "{}", v.fix);
    assert!(finding(&r, "cgroups").message.starts_with("hybrid"));
    assert_eq!(r.runnable_backends, vec!["process"]);

    // The same host with the process backend: it can run, the PVM note stays as a warning.
    let r = check::run(&inputs(
        dir.path(),
        Backend::Process,
        Capability::ALL.to_vec(),
    ));
    assert!(r.can_run, "{}", r.to_text());
    assert_eq!(r.exit_code(), 0);
    assert_eq!(finding(&r, "virtualization").status, Status::Warn);
    assert!(r.to_text().contains("backend \"process\" can run"));
}

#[test]
fn no_kvm_host_fails_microvm_but_runs_process() {
    let dir = fixture(Kind::NoKvm, 0, None);
    let r = check::run(&inputs(
        dir.path(),
        Backend::Microvm,
        Capability::ALL.to_vec(),
    ));
    assert_eq!(r.exit_code(), 1);
    let dev = finding(&r, "kvm-device");
    assert_eq!(
        (dev.status, dev.message.as_str()),
        (Status::Fail, "/dev/kvm does not exist")
    );
    assert!(finding(&r, "virtualization").message.contains("no KVM"));
    // Capabilities cannot be asked without a device.
    assert!(r.findings.iter().all(|f| f.name != "kvm-capabilities"));
    let c = finding(&r, "containerd");
    assert_eq!(c.status, Status::Warn);
    assert!(c.fix.contains("apt-get install containerd"));

    let r = check::run(&inputs(
        dir.path(),
        Backend::Process,
        Capability::ALL.to_vec(),
    ));
    assert_eq!(r.exit_code(), 0, "{}", r.to_text());
    assert_eq!(finding(&r, "kvm-device").status, Status::Warn);
}

#[test]
fn missing_kvm_capability_is_named() {
    let dir = fixture(Kind::Hardware, 0, Some("1.6.20"));
    let caps = vec![
        Capability::Irqchip,
        Capability::UserMemory,
        Capability::ExtCpuid,
    ];
    let r = check::run(&inputs(dir.path(), Backend::Microvm, caps));
    let f = finding(&r, "kvm-capabilities");
    assert_eq!(f.status, Status::Fail);
    assert_eq!(f.message, "KVM lacks KVM_CAP_IRQFD, KVM_CAP_IOEVENTFD");
    assert_eq!(r.exit_code(), 1);
}

#[test]
fn missing_guest_assets_fail_microvm_only() {
    let dir = fixture(Kind::Hardware, 0, Some("1.6.20"));
    fs::remove_file(dir.path().join("guest/initramfs.cpio")).unwrap();
    let r = check::run(&inputs(
        dir.path(),
        Backend::Microvm,
        Capability::ALL.to_vec(),
    ));
    let f = finding(&r, "guest-initrd");
    assert_eq!(f.status, Status::Fail);
    assert!(
        f.message
            .contains("initramfs.cpio (hypervisor.initrd) does not exist"),
        "{}",
        f.message
    );
    assert!(f.fix.contains("make guest && make install"));
    assert_eq!(finding(&r, "guest-kernel").status, Status::Ok);
    let r = check::run(&inputs(
        dir.path(),
        Backend::Process,
        Capability::ALL.to_vec(),
    ));
    assert_eq!(finding(&r, "guest-initrd").status, Status::Warn);
    assert_eq!(r.exit_code(), 0);
}

#[test]
fn non_root_old_containerd_and_bad_config() {
    let dir = fixture(Kind::Hardware, 1000, Some("1.5.9"));
    let mut i = inputs(dir.path(), Backend::Process, Capability::ALL.to_vec());
    let r = check::run(&i);
    let p = finding(&r, "privileges");
    assert_eq!(p.status, Status::Fail);
    assert!(p.message.contains("uid 1000"));
    let c = finding(&r, "containerd");
    assert_eq!(c.status, Status::Warn);
    assert!(c.message.contains("older than 1.6"), "{}", c.message);

    i.config = Err("/etc/ember/config.toml:3: unknown key `hypervisor.vcpu`".to_string());
    let r = check::run(&i);
    let f = finding(&r, "config");
    assert_eq!(f.status, Status::Fail);
    assert!(f.message.contains("hypervisor.vcpu"));
    assert_eq!(r.exit_code(), 1);
}

fn ember() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ember"))
}

#[test]
fn cli_json_on_fixture_host_and_exit_codes() {
    let dir = fixture(Kind::NoKvm, 0, None);
    let cfg = dir.path().join("process.toml");
    fs::write(&cfg, "[sandbox]\nbackend = \"process\"\n").unwrap();
    let run = |config: Option<&Path>| {
        let mut cmd = ember();
        cmd.env_remove("EMBER_CONFIG")
            .env("PATH", dir.path().join("bin"))
            .args(["check", "--json", "--host-root"])
            .arg(dir.path().join("root"));
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        cmd.output().unwrap()
    };
    let out = run(Some(&cfg));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    assert_eq!(json["backend"], "process");
    assert_eq!(json["can_run"], true);
    let names: Vec<&str> = json["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    for n in [
        "config",
        "kvm-device",
        "virtualization",
        "tun",
        "cgroups",
        "guest-kernel",
        "containerd",
    ] {
        assert!(names.contains(&n), "{n} missing from {names:?}");
    }
    // Exit 0 only when the process can actually run (this fixture says uid 0).
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // An unknown key in the config: the config line FAILs and names it; exit 1.
    fs::write(
        &cfg,
        "[sandbox]\nbackend = \"process\"\nstate_dri = \"/x\"\n",
    )
    .unwrap();
    let out = run(Some(&cfg));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let cfg_finding = &json["findings"][0];
    assert_eq!(cfg_finding["status"], "fail");
    assert!(cfg_finding["message"]
        .as_str()
        .unwrap()
        .contains("process.toml:3"));
    assert!(cfg_finding["message"]
        .as_str()
        .unwrap()
        .contains("did you mean `state_dir`?"));
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn cli_on_this_machine_names_its_virtualization() {
    let out = ember()
        .env_remove("EMBER_CONFIG")
        .args(["check"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("virtualization"))
        .unwrap_or_else(|| panic!("no virtualization line in:\n{text}"));
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap();
    let hw = cpuinfo.split_whitespace().any(|w| w == "vmx" || w == "svm");
    if hw {
        assert!(
            line.starts_with("OK") && line.contains("hardware virtualization"),
            "{line}"
        );
    } else if Path::new("/sys/module/kvm_pvm").exists() {
        assert!(line.contains("PVM"), "{line}");
        assert!(line.contains("instruction emulator"), "{line}");
    } else if !Path::new("/dev/kvm").exists() {
        assert!(line.contains("no KVM"), "{line}");
    }
    assert!(matches!(out.status.code(), Some(0) | Some(1)));
    assert!(text.contains("runnable backends:"));
}

#[test]
fn cli_help_explains_check() {
    let out = ember().args(["check", "--help"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.contains("Exits 0 when the configured backend can run"),
        "{text}"
    );
    assert!(text.contains("--json"));
}
