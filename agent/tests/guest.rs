//! Guest-side duties exercised on the host: PID 1 setup (in fresh pid, mount and network
//! namespaces), orphan reaping, vsock listening, storages and sandbox setup. Run as root;
//! skipped otherwise.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{ctx, sh, skip, without_pid_ns, TestAgent};
use ember_agent_protocol::agent as pb;
use ember_agent_protocol::agent::storage::Driver;
use ember_agent_protocol::agent_ttrpc::HealthClient;
use serde_json::json;

fn mountinfo() -> String {
    std::fs::read_to_string("/proc/self/mountinfo").unwrap()
}

fn storage(driver: Driver, source: &str, target: &Path, options: &[&str]) -> pb::Storage {
    let mut s = pb::Storage::new();
    s.driver = driver.into();
    s.source = source.into();
    s.mount_point = target.display().to_string();
    s.options = options.iter().map(|o| o.to_string()).collect();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pid1_mounts_pseudo_filesystems_and_brings_up_loopback() {
    if skip("pid1_mounts_pseudo_filesystems_and_brings_up_loopback") {
        return;
    }
    let targets = [
        "/proc",
        "/sys",
        "/dev",
        "/dev/pts",
        "/dev/shm",
        "/run",
        "/sys/fs/cgroup",
    ];
    let host_before = common::mounts_at(&targets);
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    // The agent is PID 1 of new pid, mount and network namespaces: it does its init duties
    // there without touching the host's mounts or network.
    let mut child = Command::new("unshare")
        .args([
            "--pid",
            "--fork",
            "--mount",
            "--net",
            "--propagation",
            "private",
        ])
        .arg(env!("CARGO_BIN_EXE_ember-agent"))
        .arg("--listen")
        .arg(format!("unix://{}", sock.display()))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..500 {
        if sock.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let client = common::connect(&sock).await;
    let health = HealthClient::new(client);
    let r = health.check(ctx(), &pb::CheckRequest::new()).await.unwrap();
    assert_eq!(
        r.status.enum_value().unwrap(),
        pb::check_response::ServingStatus::SERVING
    );

    // Find the agent (the child of unshare) and look at its namespaces.
    let children =
        std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", child.id())).unwrap();
    let agent: u32 = children.split_whitespace().next().unwrap().parse().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{agent}/status")).unwrap();
    let nspid = status.lines().find(|l| l.starts_with("NSpid:")).unwrap();
    assert!(
        nspid.trim_end().ends_with("\t1"),
        "agent is not PID 1 in its namespace: {nspid}"
    );
    let mounts = std::fs::read_to_string(format!("/proc/{agent}/mountinfo")).unwrap();
    for (target, fstype) in [
        ("/proc", "proc"),
        ("/sys", "sysfs"),
        ("/dev", "devtmpfs"),
        ("/dev/pts", "devpts"),
        ("/dev/shm", "tmpfs"),
        ("/run", "tmpfs"),
        ("/sys/fs/cgroup", "cgroup2"),
    ] {
        let found = mounts.lines().any(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let sep = f.iter().position(|x| *x == "-").unwrap_or(0);
            f.get(4) == Some(&target) && f.get(sep + 1) == Some(&fstype)
        });
        assert!(
            found,
            "{fstype} not mounted on {target} in the agent's namespace:\n{mounts}"
        );
    }
    // The host's own mounts are untouched.
    assert_eq!(common::mounts_at(&targets), host_before);
    // Loopback is up in the agent's network namespace (IFF_UP = 0x1).
    let flags =
        std::fs::read_to_string(format!("/proc/{agent}/root/sys/class/net/lo/flags")).unwrap();
    let flags = u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16).unwrap();
    assert_eq!(flags & 1, 1, "lo is down: flags {flags:#x}");

    // SAFETY: kill on our own child (unshare), which forwards nothing: kill the agent too.
    unsafe {
        libc::kill(agent as i32, libc::SIGTERM);
    }
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphans_are_reaped() {
    if skip("orphans_are_reaped") {
        return;
    }
    let a = TestAgent::start().await;
    // The init leaves an orphan behind (no pid namespace): it is re-parented to the agent,
    // a child subreaper, which must reap it when it exits.
    let spec = without_pid_ns(sh("(sleep 0.3; exit 7) & echo $!"));
    let (s, out, _) = a.run("orphan", &spec).await;
    assert_eq!(s, 0);
    let orphan: u32 = out.trim().parse().unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{orphan}/stat")).unwrap_or_default();
    let ppid = stat
        .rsplit_once(") ")
        .map(|x| x.1.split(' ').nth(1).unwrap_or("").to_string());
    if let Some(ppid) = ppid {
        assert_eq!(
            ppid,
            a.pid().to_string(),
            "the orphan was not adopted by the agent"
        );
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        !Path::new(&format!("/proc/{orphan}")).exists(),
        "orphan {orphan} is still there (a zombie the agent did not reap)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listens_on_vsock() {
    if skip("listens_on_vsock") {
        return;
    }
    // SAFETY: socket/close on a fresh fd.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM, 0) };
    if fd < 0 {
        common::report_skip(
            "listens_on_vsock",
            "this kernel has no AF_VSOCK (vsock module not loaded)",
        );
        return;
    }
    // SAFETY: fd is the socket made above, closed once.
    unsafe { libc::close(fd) };
    let dir = tempfile::tempdir().unwrap();
    let port = 20000 + (std::process::id() % 20000);
    let mut child = Command::new(env!("CARGO_BIN_EXE_ember-agent"))
        .arg("--listen")
        .arg(format!("vsock://{port}"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "the agent exited instead of listening on vsock"
    );
    // The agent holds the ttrpc port and the stdio port (port + 1).
    for p in [port, port + 1] {
        let l = tokio_vsock_bind(p);
        assert_eq!(
            l,
            Err(libc::EADDRINUSE),
            "vsock port {p} is not held by the agent"
        );
    }
    // SAFETY: signal our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
}

/// Binds a vsock port on any cid; returns the errno on failure.
fn tokio_vsock_bind(port: u32) -> Result<(), i32> {
    // SAFETY: plain socket calls on an fd this function owns; sockaddr_vm is zeroed POD.
    unsafe {
        let fd = libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM, 0);
        let mut addr: libc::sockaddr_vm = std::mem::zeroed();
        addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
        addr.svm_port = port;
        addr.svm_cid = libc::VMADDR_CID_ANY;
        let rc = libc::bind(
            fd,
            &addr as *const libc::sockaddr_vm as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        );
        let err = *libc::__errno_location();
        libc::close(fd);
        if rc == 0 {
            Ok(())
        } else {
            Err(err)
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_storages_are_mounted_and_unmounted() {
    if skip("container_storages_are_mounted_and_unmounted") {
        return;
    }
    let a = TestAgent::start().await;
    let host = a.dir.path().join("hostdir");
    std::fs::create_dir_all(&host).unwrap();
    std::fs::write(host.join("f"), "bound\n").unwrap();
    let st = a.dir.path().join("storages");
    let tmpfs_mp = st.join("scratch");
    let bind_mp = st.join("bound");
    let mut storages = vec![
        storage(Driver::TMPFS, "", &tmpfs_mp, &["size=4m", "nosuid"]),
        storage(Driver::BIND, &host.display().to_string(), &bind_mp, &["ro"]),
    ];

    // A block device (a loop device with ext4), when this host can make one.
    let img = a.dir.path().join("disk.img");
    let blk_mp = st.join("disk");
    let mut loopdev = None;
    if std::fs::File::create(&img)
        .and_then(|f| f.set_len(16 << 20))
        .is_ok()
        && Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(&img)
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    {
        if let Ok(o) = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&img)
            .output()
        {
            let dev = String::from_utf8_lossy(&o.stdout).trim().to_string();
            if o.status.success() && dev.starts_with("/dev/") {
                let mut s = storage(Driver::BLOCK, &dev, &blk_mp, &[]);
                s.fstype = "ext4".into();
                storages.push(s);
                loopdev = Some(dev);
            }
        }
    }
    if loopdev.is_none() {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "note: container_storages_are_mounted_and_unmounted: block storage not tested here (no loop device or mkfs.ext4)"
        );
    }

    let mut spec = sh("echo hi > /scratch/x && cat /scratch/x /bound/f; touch /bound/y || echo ro; test -d /disk/lost+found && echo ext4 && echo kept > /disk/written");
    let mounts = spec["mounts"].as_array_mut().unwrap();
    mounts.push(json!({"destination": "/scratch", "type": "bind", "source": tmpfs_mp, "options": ["rbind"]}));
    mounts.push(
        json!({"destination": "/bound", "type": "bind", "source": bind_mp, "options": ["rbind"]}),
    );
    if loopdev.is_some() {
        mounts.push(
            json!({"destination": "/disk", "type": "bind", "source": blk_mp, "options": ["rbind"]}),
        );
    }
    a.create_with("stor", &spec, "", "stor-o", "", storages)
        .await
        .unwrap();
    let m = mountinfo();
    assert!(
        m.contains(&format!(" {} ", tmpfs_mp.display())),
        "tmpfs storage not mounted"
    );
    assert!(
        m.contains(&format!(" {} ", bind_mp.display())),
        "bind storage not mounted"
    );
    a.start_c("stor").await.unwrap();
    let out = a.read_stream("stor-o").await;
    assert_eq!(a.wait("stor", "").await.unwrap(), 0);
    let expected = if loopdev.is_some() {
        "hi\nbound\nro\next4\n"
    } else {
        "hi\nbound\nro\n"
    };
    assert_eq!(out, expected);
    a.remove("stor", false).await.unwrap();
    let m = mountinfo();
    assert!(
        !m.contains(&format!(" {} ", tmpfs_mp.display())),
        "tmpfs storage left mounted"
    );
    assert!(
        !m.contains(&format!(" {} ", bind_mp.display())),
        "bind storage left mounted"
    );
    assert!(
        !m.contains(&format!(" {} ", blk_mp.display())),
        "block storage left mounted"
    );
    assert!(
        !st.exists(),
        "the mount points the storages created are left: {}",
        st.display()
    );
    if let Some(dev) = loopdev {
        let _ = Command::new("losetup").arg("-d").arg(dev).status();
        // The block storage was synced and unmounted at removal, so what the container
        // wrote is in the image (as it must be before a host detaches a virtio-blk slot).
        if let Ok(o) = Command::new("debugfs")
            .args(["-R", "cat /written"])
            .arg(&img)
            .output()
        {
            assert_eq!(
                String::from_utf8_lossy(&o.stdout),
                "kept\n",
                "debugfs: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
    }

    // A bad storage names its index and field, and mounts nothing.
    let bad = vec![
        storage(Driver::TMPFS, "", &st.join("ok"), &[]),
        storage(Driver::BIND, "/nonexistent/ember", &st.join("bad"), &[]),
    ];
    let e = a
        .create_with("badstor", &sh("true"), "", "", "", bad)
        .await
        .unwrap_err();
    assert!(e.contains("storages[1].source"), "{e}");
    assert!(
        !mountinfo().contains(&format!(" {} ", st.join("ok").display())),
        "first storage left mounted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_setup_and_destroy() {
    if skip("sandbox_setup_and_destroy") {
        return;
    }
    let a = TestAgent::start().await;
    let shared = a.dir.path().join("shared-tmpfs");
    let mut req = pb::CreateSandboxRequest::new();
    req.sandbox_id = "sb".into();
    req.dns = vec!["10.0.0.53".into()];
    req.dns_search = vec!["example.test".into()];
    req.storages = vec![storage(Driver::TMPFS, "", &shared, &["size=1m"])];
    a.agent.create_sandbox(ctx(), &req).await.unwrap();
    let resolv = std::fs::read_to_string(a.dir.path().join("state/sandbox/resolv.conf")).unwrap();
    assert_eq!(resolv, "nameserver 10.0.0.53\nsearch example.test\n");
    assert!(mountinfo().contains(&format!(" {} ", shared.display())));

    let mut bad = pb::CreateSandboxRequest::new();
    bad.sysctls.insert("../../etc/x".into(), "1".into());
    let e = a
        .agent
        .create_sandbox(ctx(), &bad)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("sysctls[../../etc/x]"), "{e}");

    a.create("sbc", &sh("sleep 100"), "", "", "").await.unwrap();
    a.start_c("sbc").await.unwrap();
    let mut d = pb::DestroySandboxRequest::new();
    d.sandbox_id = "sb".into();
    a.agent.destroy_sandbox(ctx(), &d).await.unwrap();
    assert!(!mountinfo().contains(&format!(" {} ", shared.display())));
    assert!(common::cgroup_dirs("sbc").is_empty());
    let e = a.wait("sbc", "").await.unwrap_err();
    assert!(e.contains("does not exist"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_sets_hostname_and_sysctls_in_the_agent_namespaces() {
    if skip("sandbox_sets_hostname_and_sysctls_in_the_agent_namespaces") {
        return;
    }
    let host_name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let host_fwd = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    // Own UTS and network namespaces, so the host's hostname and sysctls stay untouched.
    let mut child = Command::new("unshare")
        .args(["--uts", "--net"])
        .arg(env!("CARGO_BIN_EXE_ember-agent"))
        .arg("--listen")
        .arg(format!("unix://{}", sock.display()))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..500 {
        if sock.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let client = common::connect(&sock).await;
    let agent = ember_agent_protocol::agent_ttrpc::AgentClient::new(client);
    let mut req = pb::CreateSandboxRequest::new();
    req.sandbox_id = "sb".into();
    req.hostname = "ember-sandbox".into();
    let fwd = if host_fwd.trim() == "1" { "0" } else { "1" };
    req.sysctls.insert("net.ipv4.ip_forward".into(), fwd.into());
    agent.create_sandbox(ctx(), &req).await.unwrap();
    let pid = child.id();
    let in_ns = |args: &[&str]| {
        let o = Command::new("nsenter")
            .arg("-t")
            .arg(pid.to_string())
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    assert_eq!(
        in_ns(&["-u", "cat", "/proc/sys/kernel/hostname"]),
        "ember-sandbox"
    );
    assert_eq!(in_ns(&["-n", "cat", "/proc/sys/net/ipv4/ip_forward"]), fwd);
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap(),
        host_name
    );
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap(),
        host_fwd
    );
    // SAFETY: signal our own child (unshare exec'd the agent, so this is the agent).
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let _ = child.wait();
}
