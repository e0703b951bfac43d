//! Container features through the agent API: terminals, user/env/cwd, read-only rootfs,
//! bind mounts, seccomp, cgroup limits, stats, pause/resume, OOM events, process listing
//! and signalling. Run as root; skipped otherwise.

mod common;

use std::time::Duration;

use common::{ctx, sh, skip, TestAgent};
use ember_agent_protocol::agent as pb;
use ember_agent_protocol::stream;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminal_process_gets_a_tty_and_resizes() {
    if skip("terminal_process_gets_a_tty_and_resizes") {
        return;
    }
    let a = TestAgent::start().await;
    let mut spec = sh("read x; stty size; test -t 0 && echo is-a-tty; echo bye-$x");
    spec["process"]["terminal"] = json!(true);
    // A terminal carries stderr on stdout: a stderr stream is refused, naming the field.
    let e = a
        .create("tty", &spec, "tty-i", "tty-o", "tty-e")
        .await
        .unwrap_err();
    assert!(e.contains("stdio.stderr"), "{e}");
    a.create("tty", &spec, "tty-i", "tty-o", "").await.unwrap();
    let mut input = stream::connect_unix(&a.stdio, "tty-i").await.unwrap();
    let mut output = stream::connect_unix(&a.stdio, "tty-o").await.unwrap();
    a.start_c("tty").await.unwrap();
    let mut req = pb::TtyWinResizeRequest::new();
    req.container_id = "tty".into();
    req.rows = 37;
    req.cols = 101;
    a.agent.tty_win_resize(ctx(), &req).await.unwrap();
    input.write_all(b"go\n").await.unwrap();
    assert_eq!(a.wait("tty", "").await.unwrap(), 0);
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), output.read_to_end(&mut out)).await;
    let out = String::from_utf8_lossy(&out);
    assert!(out.contains("37 101"), "terminal output: {out:?}");
    assert!(out.contains("is-a-tty"), "terminal output: {out:?}");
    assert!(out.contains("bye-go"), "terminal output: {out:?}");
    a.remove("tty", false).await.unwrap();

    // An exec with its own terminal, resized through its exec id.
    a.create("ttyx", &sh("sleep 100"), "", "", "")
        .await
        .unwrap();
    a.start_c("ttyx").await.unwrap();
    let p = json!({"args": ["/bin/sh", "-c", "read x; stty size; test -t 1 && echo exec-tty"],
                   "env": ["PATH=/bin"], "cwd": "/", "terminal": true,
                   "user": {"uid": 0, "gid": 0}});
    a.exec("ttyx", "t", &p, "ttyx-i", "ttyx-o", "")
        .await
        .unwrap();
    let mut input = stream::connect_unix(&a.stdio, "ttyx-i").await.unwrap();
    let mut output = stream::connect_unix(&a.stdio, "ttyx-o").await.unwrap();
    let mut req = pb::TtyWinResizeRequest::new();
    req.container_id = "ttyx".into();
    req.exec_id = "t".into();
    req.rows = 12;
    req.cols = 34;
    a.agent.tty_win_resize(ctx(), &req).await.unwrap();
    input.write_all(b"go\n").await.unwrap();
    assert_eq!(a.wait("ttyx", "t").await.unwrap(), 0);
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), output.read_to_end(&mut out)).await;
    let out = String::from_utf8_lossy(&out);
    assert!(
        out.contains("12 34") && out.contains("exec-tty"),
        "exec terminal output: {out:?}"
    );
    a.remove("ttyx", true).await.unwrap();

    // Resizing a process without a terminal is refused.
    a.create("notty", &sh("sleep 100"), "", "", "")
        .await
        .unwrap();
    let mut req = pb::TtyWinResizeRequest::new();
    req.container_id = "notty".into();
    let e = a
        .agent
        .tty_win_resize(ctx(), &req)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("no terminal"), "{e}");
    a.remove("notty", true).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_cwd_and_user_are_applied() {
    if skip("env_cwd_and_user_are_applied") {
        return;
    }
    let a = TestAgent::start().await;
    let mut spec = sh("echo $FOO; pwd; id -u; id -g; id -G");
    spec["process"]["env"] = json!(["PATH=/bin", "FOO=bar baz"]);
    spec["process"]["cwd"] = json!("/home/user");
    spec["process"]["user"] = json!({"uid": 1000, "gid": 1000, "additionalGids": [1000, 10]});
    let (s, out, err) = a.run("user", &spec).await;
    assert_eq!(s, 0, "stderr: {err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        &lines[..4],
        &["bar baz", "/home/user", "1000", "1000"],
        "{out}"
    );
    assert!(lines[4].split(' ').any(|g| g == "10"), "{out}");

    // Exec with its own user and cwd.
    a.create("user2", &sh("sleep 100"), "", "", "")
        .await
        .unwrap();
    a.start_c("user2").await.unwrap();
    let p = json!({"args": ["/bin/sh", "-c", "id -u; pwd; echo $X"], "env": ["PATH=/bin", "X=y"],
                   "cwd": "/tmp", "user": {"uid": 1000, "gid": 1000}});
    a.exec("user2", "x", &p, "", "x-o", "").await.unwrap();
    assert_eq!(a.wait("user2", "x").await.unwrap(), 0);
    assert_eq!(a.read_stream("x-o").await, "1000\n/tmp\ny\n");
    a.remove("user2", true).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_rootfs_rejects_writes() {
    if skip("read_only_rootfs_rejects_writes") {
        return;
    }
    let a = TestAgent::start().await;
    let mut spec = sh("touch /newfile; echo $?; touch /tmp/ok && echo tmp-ok");
    spec["root"]["readonly"] = json!(true);
    let (s, out, err) = a.run("ro", &spec).await;
    assert_eq!(s, 0);
    assert!(err.contains("Read-only file system"), "stderr: {err}");
    assert_eq!(out, "1\ntmp-ok\n");
    assert!(!a.bundle.join("rootfs/newfile").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_mount_is_visible() {
    if skip("bind_mount_is_visible") {
        return;
    }
    let a = TestAgent::start().await;
    let host = a.dir.path().join("shared");
    std::fs::create_dir_all(&host).unwrap();
    std::fs::write(host.join("marker"), "from the host\n").unwrap();
    let mut spec = sh("cat /data/marker; echo back > /data/reply; touch /ro/x || echo ro-denied");
    let mounts = spec["mounts"].as_array_mut().unwrap();
    mounts.push(
        json!({"destination": "/data", "type": "bind", "source": host, "options": ["rbind", "rw"]}),
    );
    mounts.push(
        json!({"destination": "/ro", "type": "bind", "source": host, "options": ["rbind", "ro"]}),
    );
    let (s, out, _) = a.run("bind", &spec).await;
    assert_eq!(s, 0);
    assert_eq!(out, "from the host\nro-denied\n");
    assert_eq!(
        std::fs::read_to_string(host.join("reply")).unwrap(),
        "back\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seccomp_profile_denies_mkdir_with_eperm() {
    if skip("seccomp_profile_denies_mkdir_with_eperm") {
        return;
    }
    let a = TestAgent::start().await;
    // Control: without the profile mkdir works.
    let (s, out, _) = a.run("noseccomp", &sh("mkdir /tmp/d && echo made")).await;
    assert_eq!((s, out.as_str()), (0, "made\n"));

    let mut spec = sh("mkdir /tmp/d; echo status=$?");
    spec["linux"]["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
    });
    let (s, out, err) = a.run("seccomp", &spec).await;
    assert_eq!(s, 0);
    assert_eq!(out, "status=1\n");
    assert!(err.contains("Operation not permitted"), "stderr: {err}");

    // A profile that cannot be applied fails the create, naming the field.
    let mut spec = sh("true");
    spec["linux"]["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_BOGUS"}]
    });
    let e = a.create("badseccomp", &spec, "", "", "").await.unwrap_err();
    assert!(e.contains("linux.seccomp.syscalls[0].action"), "{e}");
    assert!(common::cgroup_dirs("badseccomp").is_empty());

    // A syscall name this libseccomp does not know is skipped (as runc does), but the rest
    // of the profile is still enforced.
    let mut spec = sh("mkdir /tmp/d; echo status=$?");
    spec["linux"]["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["no_such_syscall_ember", "mkdir", "mkdirat"],
                      "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
    });
    let (s, out, _) = a.run("seccomp2", &spec).await;
    assert_eq!((s, out.as_str()), (0, "status=1\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_list_pause_resume_and_signal_all() {
    if skip("stats_list_pause_resume_and_signal_all") {
        return;
    }
    let a = TestAgent::start().await;
    let spec = sh("i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; sleep 100 & sleep 100 & wait");
    let init = a.create("st", &spec, "", "", "").await.unwrap();
    a.start_c("st").await.unwrap();
    let mut list = pb::ListProcessesRequest::new();
    list.container_id = "st".into();
    let mut pids = Vec::new();
    for _ in 0..200 {
        pids = a.agent.list_processes(ctx(), &list).await.unwrap().pids;
        if pids.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(pids.contains(&init), "{pids:?} lacks the init {init}");
    assert_eq!(pids.len(), 3, "sh and two sleeps: {pids:?}");

    let st = a.stats("st").await;
    assert!(st.cpu.usage_total_ns > 0, "{st:?}");
    assert!(st.memory.usage_bytes > 0, "{st:?}");
    assert_eq!(st.pids.current, 3, "{st:?}");

    let mut p = pb::PauseContainerRequest::new();
    p.container_id = "st".into();
    a.agent.pause_container(ctx(), &p).await.unwrap();
    assert_eq!(freezer_state("st"), "FROZEN");
    for pid in &pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        assert!(
            !stat.contains(") R "),
            "pid {pid} runs while frozen: {stat}"
        );
    }
    let mut r = pb::ResumeContainerRequest::new();
    r.container_id = "st".into();
    a.agent.resume_container(ctx(), &r).await.unwrap();
    assert_eq!(freezer_state("st"), "THAWED");

    // SIGKILL to every process of the container.
    a.signal("st", "", 9, true).await.unwrap();
    assert_eq!(a.wait("st", "").await.unwrap(), 137);
    for pid in &pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}/cmdline")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                    .unwrap_or_default()
                    .is_empty(),
            "pid {pid} survived signal all"
        );
    }
    a.remove("st", false).await.unwrap();
}

/// The freezer state of a container's cgroup (v1 freezer.state or v2 cgroup.freeze).
fn freezer_state(id: &str) -> String {
    let v1 = format!("/sys/fs/cgroup/freezer/ember/{id}/freezer.state");
    if let Ok(s) = std::fs::read_to_string(&v1) {
        return s.trim().to_string();
    }
    let v2 = format!("/sys/fs/cgroup/ember/{id}/cgroup.freeze");
    match std::fs::read_to_string(v2).unwrap().trim() {
        "1" => "FROZEN".into(),
        _ => "THAWED".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pids_limit_stops_forks() {
    if skip("pids_limit_stops_forks") {
        return;
    }
    let a = TestAgent::start().await;
    // Without a limit eight background processes start fine.
    let script = "for i in 1 2 3 4 5 6 7 8; do sleep 1 & done; echo forked";
    let (s, out, _) = a.run("nopids", &sh(script)).await;
    assert_eq!((s, out.as_str()), (0, "forked\n"));
    let mut spec = sh(script);
    spec["linux"]["resources"]["pids"] = json!({"limit": 4});
    let (s, out, err) = a.run("pids", &spec).await;
    assert_ne!(s, 0, "the shell fails when it cannot fork");
    assert_eq!(out, "");
    assert!(
        err.contains("can't fork") || err.contains("Resource temporarily unavailable"),
        "stderr: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limit_oom_kills_and_reports_an_event() {
    if skip("memory_limit_oom_kills_and_reports_an_event") {
        return;
    }
    let a = TestAgent::start().await;
    let mut spec = sh("x=0123456789abcdef; while true; do x=$x$x; done");
    let limit = 32 * 1024 * 1024;
    // Keep the allocation from going to swap where the kernel accounts swap per cgroup.
    let swap_accounting = [
        "/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes",
        "/sys/fs/cgroup/memory.swap.max",
    ]
    .iter()
    .any(|f| std::path::Path::new(f).exists())
        || std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
            .is_ok_and(|c| c.contains("memory"));
    spec["linux"]["resources"]["memory"] = if swap_accounting {
        json!({"limit": limit, "swap": limit})
    } else {
        json!({"limit": limit})
    };
    a.create("oom", &spec, "", "", "").await.unwrap();
    let st = a.stats("oom").await;
    assert_eq!(st.memory.limit_bytes, limit as u64, "{st:?}");
    // The long poll is pending before the container runs.
    let client = a.agent.clone();
    let oom = tokio::spawn(async move {
        client
            .get_oom_event(ctx(), &pb::GetOOMEventRequest::new())
            .await
    });
    a.start_c("oom").await.unwrap();
    assert_eq!(a.wait("oom", "").await.unwrap(), 137);
    let ev = tokio::time::timeout(Duration::from_secs(10), oom)
        .await
        .expect("an OOM event within 10 s")
        .unwrap()
        .unwrap();
    assert_eq!(ev.container_id, "oom");
    a.remove("oom", false).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_changes_the_pids_limit() {
    if skip("update_changes_the_pids_limit") {
        return;
    }
    let a = TestAgent::start().await;
    a.create("upd", &sh("sleep 100"), "", "", "").await.unwrap();
    let mut req = pb::UpdateContainerRequest::new();
    req.container_id = "upd".into();
    req.resources_json = json!({"pids": {"limit": 42}}).to_string();
    a.agent.update_container(ctx(), &req).await.unwrap();
    assert_eq!(a.stats("upd").await.pids.limit, 42);
    req.resources_json = json!({"pids": {"limit": "many"}}).to_string();
    let e = a
        .agent
        .update_container(ctx(), &req)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("resources_json") && e.contains("pids.limit"),
        "{e}"
    );
    a.remove("upd", true).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capabilities_rlimits_and_masked_paths_are_applied() {
    if skip("capabilities_rlimits_and_masked_paths_are_applied") {
        return;
    }
    let a = TestAgent::start().await;
    // A masked path that exists on this kernel (masked paths are bind mounts of /dev/null).
    let masked = ["/proc/timer_list", "/proc/keys", "/proc/kcore"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("a maskable /proc file");
    let script = format!(
        "grep -E '^(CapBnd|CapEff|NoNewPrivs)' /proc/self/status; ulimit -n; \
         wc -c < {masked}; echo 1 > /proc/sys/kernel/domainname || echo sys-ro; hostname"
    );
    let (s, out, _) = a.run("sec", &sh(&script)).await;
    assert_eq!(s, 0);
    let lines: Vec<&str> = out.lines().map(|l| l.trim()).collect();
    // The default set: CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID SETPCAP
    // NET_BIND_SERVICE NET_RAW SYS_CHROOT MKNOD AUDIT_WRITE SETFCAP.
    assert_eq!(lines[0], "CapEff:\t00000000a80425fb".trim(), "{out}");
    assert_eq!(lines[1], "CapBnd:\t00000000a80425fb".trim(), "{out}");
    assert_eq!(lines[2], "NoNewPrivs:\t1".trim(), "{out}");
    assert_eq!(lines[3], "1024", "{out}");
    assert_eq!(lines[4], "0", "{masked} is masked: {out}");
    assert_eq!(lines[5], "sys-ro", "{out}");
    assert_eq!(lines[6], "ember", "uts namespace hostname: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_run_in_the_agent_namespace() {
    if skip("hooks_run_in_the_agent_namespace") {
        return;
    }
    let a = TestAgent::start().await;
    let marker = a.dir.path().join("hook-marker");
    let mut spec = sh("true");
    spec["hooks"] = json!({
        "poststart": [{"path": "/bin/sh", "args": ["sh", "-c", format!("echo started >> {}", marker.display())]}],
        "poststop": [{"path": "/bin/sh", "args": ["sh", "-c", format!("echo stopped >> {}", marker.display())]}]
    });
    let (s, _, _) = a.run("hooks", &spec).await;
    assert_eq!(s, 0);
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap(),
        "started\nstopped\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_container_can_be_removed_with_force() {
    if skip("a_paused_container_can_be_removed_with_force") {
        return;
    }
    let a = TestAgent::start().await;
    a.create("pz", &sh("sleep 100 & sleep 100"), "", "", "")
        .await
        .unwrap();
    a.start_c("pz").await.unwrap();
    let mut p = pb::PauseContainerRequest::new();
    p.container_id = "pz".into();
    a.agent.pause_container(ctx(), &p).await.unwrap();
    assert_eq!(freezer_state("pz"), "FROZEN");
    a.remove("pz", true).await.unwrap();
    assert!(common::cgroup_dirs("pz").is_empty());
    let e = a.wait("pz", "").await.unwrap_err();
    assert!(e.contains("does not exist"), "{e}");
}
