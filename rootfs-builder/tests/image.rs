//! Guest image tests: contents of both formats, `/init` is the agent, every library
//! `ldd` names is inside, and builds are reproducible.

mod common;

use common::{agent_binary, builder_ok, have, s, skip, workspace};
use ember_rootfs_builder::cpio::{self, S_IFDIR, S_IFLNK, S_IFMT, S_IFREG};
use ember_rootfs_builder::image::MOUNT_POINTS;
use ember_rootfs_builder::{ext4, libs};
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

fn ws() -> String {
    workspace().to_string_lossy().into_owned()
}

/// Guest paths of the agent's libraries as `ldd` reports them.
fn agent_libraries() -> Vec<String> {
    libs::shared_libraries(&agent_binary())
        .unwrap()
        .into_iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect()
}

#[test]
fn cpio_image_lists_agent_as_init_its_libraries_and_mount_points() {
    let out = tempfile::tempdir().unwrap();
    let report = builder_ok(&["image", "--workspace", &ws(), "--out", s(out.path())]);
    assert!(
        report.contains("initramfs.cpio"),
        "size report missing: {report}"
    );

    let bytes = std::fs::read(out.path().join("initramfs.cpio")).unwrap();
    let entries = cpio::read(&bytes).unwrap();
    let listing: Vec<String> = entries
        .iter()
        .map(|e| format!("{:o} {} {}", e.mode, e.data.len(), e.name))
        .collect();
    eprintln!("initramfs.cpio:\n{}", listing.join("\n"));

    let init = entries.iter().find(|e| e.name == "init").expect("/init");
    assert_eq!(init.mode & S_IFMT, S_IFREG);
    assert_eq!(init.mode & 0o111, 0o111, "/init is not executable");
    assert_eq!(
        init.data,
        std::fs::read(agent_binary()).unwrap(),
        "/init is not the agent"
    );

    let names: BTreeSet<String> = entries.iter().map(|e| format!("/{}", e.name)).collect();
    let libs = agent_libraries();
    assert!(
        !libs.is_empty(),
        "the agent links glibc, ldd must name libraries"
    );
    for lib in &libs {
        assert!(
            names.contains(lib),
            "{lib} (named by ldd) is not in the initramfs"
        );
    }
    for (dir, mode) in MOUNT_POINTS {
        let e = entries
            .iter()
            .find(|e| format!("/{}", e.name) == *dir)
            .expect(dir);
        assert_eq!(e.mode, S_IFDIR | mode, "{dir}");
    }
    let sbin_init = entries
        .iter()
        .find(|e| e.name == "sbin/init")
        .expect("/sbin/init");
    assert_eq!(sbin_init.mode & S_IFMT, S_IFLNK);
    assert_eq!(sbin_init.data, b"/init");
    // Nothing else: every entry is /init, /sbin/init, a library, a directory on a
    // library's path, or a mount point.
    for e in &entries {
        let p = format!("/{}", e.name);
        let ok = p == "/init"
            || p == "/sbin"
            || p == "/sbin/init"
            || libs.contains(&p)
            || MOUNT_POINTS.iter().any(|(d, _)| *d == p)
            || (e.mode & S_IFMT == S_IFDIR && libs.iter().any(|l| l.starts_with(&format!("{p}/"))));
        assert!(ok, "unexpected entry {p}");
        assert_eq!((e.uid, e.gid, e.mtime), (0, 0, 0), "{p} owner/mtime");
    }
    // Entries are sorted.
    let order: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted);

    // The host's cpio agrees with our reader.
    if have("cpio") {
        let listed = Command::new("cpio")
            .args(["-t", "--quiet", "-F"])
            .arg(out.path().join("initramfs.cpio"))
            .output()
            .unwrap();
        assert!(listed.status.success());
        assert_eq!(
            String::from_utf8_lossy(&listed.stdout)
                .lines()
                .collect::<Vec<_>>(),
            order
        );
    }
}

fn debugfs(image: &Path, request: &str) -> String {
    let out = Command::new("debugfs")
        .args(["-R", request])
        .arg(image)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn ext4_image_lists_agent_as_init_and_its_libraries() {
    if !have("mkfs.ext4") || !have("debugfs") {
        skip(
            "ext4_image_lists_agent_as_init_and_its_libraries",
            "mkfs.ext4/debugfs not installed (apt-get install e2fsprogs)",
        );
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let report = builder_ok(&[
        "image",
        "--workspace",
        &ws(),
        "--format",
        "ext4",
        "--out",
        s(out.path()),
    ]);
    assert!(
        report.contains("rootfs.ext4"),
        "size report missing: {report}"
    );
    let image = out.path().join("rootfs.ext4");
    let paths = ext4::list(&image).unwrap();
    eprintln!("rootfs.ext4:\n{}", paths.join("\n"));
    assert!(paths.contains(&"/init".to_string()));
    for lib in agent_libraries() {
        assert!(
            paths.contains(&lib),
            "{lib} (named by ldd) is not in rootfs.ext4"
        );
    }
    for (dir, _) in MOUNT_POINTS {
        assert!(paths.contains(&dir.to_string()), "{dir}");
    }

    let stat = debugfs(&image, "stat /init");
    assert!(stat.contains("Mode:  0755"), "/init mode: {stat}");
    assert!(
        stat.contains("User:     0   Group:     0"),
        "/init owner: {stat}"
    );
    assert!(stat.contains("Type: regular"), "{stat}");

    let dumped = out.path().join("init.dump");
    debugfs(&image, &format!("dump /init {}", s(&dumped)));
    assert_eq!(
        std::fs::read(&dumped).unwrap(),
        std::fs::read(agent_binary()).unwrap(),
        "/init in rootfs.ext4 is not the agent"
    );

    let fsck = Command::new("e2fsck")
        .args(["-fn"])
        .arg(&image)
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "e2fsck: {}",
        String::from_utf8_lossy(&fsck.stdout)
    );
}

#[test]
fn two_builds_give_identical_bytes() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let formats: &[&str] = if have("mkfs.ext4") && have("debugfs") {
        &["cpio", "ext4"]
    } else {
        skip(
            "two_builds_give_identical_bytes (ext4 part)",
            "mkfs.ext4/debugfs not installed (apt-get install e2fsprogs)",
        );
        &["cpio"]
    };
    for format in formats {
        for dir in [&a, &b] {
            builder_ok(&[
                "image",
                "--workspace",
                &ws(),
                "--format",
                format,
                "--out",
                s(dir.path()),
            ]);
            // Space the builds out so any leaked wall-clock time would differ.
            std::thread::sleep(std::time::Duration::from_millis(1100));
        }
        let name = if *format == "cpio" {
            "initramfs.cpio"
        } else {
            "rootfs.ext4"
        };
        let x = std::fs::read(a.path().join(name)).unwrap();
        let y = std::fs::read(b.path().join(name)).unwrap();
        assert!(!x.is_empty());
        assert!(
            x == y,
            "{name} differs between two builds of the same inputs"
        );
    }
}

#[test]
fn debug_image_adds_busybox_shell() {
    if !have("busybox") {
        skip(
            "debug_image_adds_busybox_shell",
            "busybox not installed (apt-get install busybox-static)",
        );
        return;
    }
    let out = tempfile::tempdir().unwrap();
    builder_ok(&[
        "image",
        "--workspace",
        &ws(),
        "--debug",
        "--out",
        s(out.path()),
    ]);
    let bytes = std::fs::read(out.path().join("initramfs.cpio")).unwrap();
    let entries = cpio::read(&bytes).unwrap();
    let bb = entries
        .iter()
        .find(|e| e.name == "bin/busybox")
        .expect("/bin/busybox");
    assert_eq!(bb.mode & 0o111, 0o111);
    let sh = entries
        .iter()
        .find(|e| e.name == "bin/sh")
        .expect("/bin/sh");
    assert_eq!(sh.mode & S_IFMT, S_IFLNK);
    assert_eq!(sh.data, b"busybox");
    // The default image has none of it.
    let plain = tempfile::tempdir().unwrap();
    builder_ok(&["image", "--workspace", &ws(), "--out", s(plain.path())]);
    let plain = cpio::read(&std::fs::read(plain.path().join("initramfs.cpio")).unwrap()).unwrap();
    assert!(plain.iter().all(|e| !e.name.starts_with("bin")));
}

/// The libraries copied into the image are enough for the loader: a dynamically linked
/// binary packed as `/init` (here `ls`, which needs more than libc) runs in a chroot of
/// the unpacked initramfs, with no ld.so.cache there.
#[test]
fn packed_binary_runs_in_a_chroot_of_the_image() {
    let test = "packed_binary_runs_in_a_chroot_of_the_image";
    if !ember_tests::is_root() {
        return skip(test, "chroot needs root");
    }
    let Some(ls) = ember_rootfs_builder::tools::find("ls") else {
        return skip(test, "no `ls` on PATH (apt-get install coreutils)");
    };
    let out = tempfile::tempdir().unwrap();
    builder_ok(&[
        "image",
        "--workspace",
        &ws(),
        "--agent",
        s(&ls),
        "--out",
        s(out.path()),
    ]);
    let bytes = std::fs::read(out.path().join("initramfs.cpio")).unwrap();
    let root = out.path().join("root");
    for e in cpio::read(&bytes).unwrap() {
        let p = root.join(&e.name);
        match e.mode & S_IFMT {
            S_IFDIR => std::fs::create_dir_all(&p).unwrap(),
            S_IFLNK => std::os::unix::fs::symlink(String::from_utf8(e.data).unwrap(), &p).unwrap(),
            _ => {
                use std::os::unix::fs::PermissionsExt;
                std::fs::write(&p, &e.data).unwrap();
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(e.mode & 0o7777))
                    .unwrap();
            }
        }
    }
    let run = Command::new("chroot")
        .arg(&root)
        .args(["/sbin/init", "-d", "/"])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "/init did not run in the image: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&run.stdout).trim(), "/");
}
