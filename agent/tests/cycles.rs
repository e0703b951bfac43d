//! 200 create/delete cycles through the agent leave no file descriptors, mounts, cgroups,
//! state files or processes behind. Run as root; skipped otherwise.

mod common;

use common::{sh, skip, TestAgent};

/// Everything a container could leak, as seen from the host.
#[derive(Debug, PartialEq, Eq)]
struct Footprint {
    agent_fds: usize,
    mounts: Vec<String>,
    cgroups: Vec<String>,
    state_files: Vec<String>,
    agent_children: Vec<String>,
}

fn list(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path().display().to_string())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn footprint(a: &TestAgent, prefix: &str) -> Footprint {
    let pid = a.pid();
    let mut cgroups = Vec::new();
    for ctrl in list(std::path::Path::new("/sys/fs/cgroup")) {
        for c in list(&std::path::Path::new(&ctrl).join("ember")) {
            if c.rsplit('/').next().unwrap_or("").starts_with(prefix) {
                cgroups.push(c);
            }
        }
    }
    let state = a.dir.path().join("state");
    let mut state_files = Vec::new();
    for d in ["containers", "bundles", "consoles"] {
        state_files.extend(list(&state.join(d)));
    }
    let mut agent_children = Vec::new();
    for p in list(std::path::Path::new("/proc")) {
        if let Ok(stat) = std::fs::read_to_string(format!("{p}/stat")) {
            // pid (comm) state ppid ...
            let after = stat.rsplit_once(") ").map(|x| x.1).unwrap_or("");
            let ppid = after.split(' ').nth(1).unwrap_or("");
            if ppid == pid.to_string() {
                // By name, not pid: the agent keeps one warm spawn helper, replaced on use.
                let comm = stat.split_once(" (").map(|x| x.1).unwrap_or("");
                let comm = comm.rsplit_once(") ").map(|x| x.0).unwrap_or("");
                agent_children.push(comm.to_string());
            }
        }
    }
    Footprint {
        agent_children: {
            agent_children.sort();
            agent_children
        },
        agent_fds: list(std::path::Path::new(&format!("/proc/{pid}/fd"))).len(),
        mounts: common::mounts_under(a.dir.path()),
        cgroups,
        state_files,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_cycles_leave_nothing_behind() {
    if skip("two_hundred_cycles_leave_nothing_behind") {
        return;
    }
    let a = TestAgent::start().await;
    // Warm up: the first container creates the parent cgroups and the runtime's threads.
    let (s, out, _) = a.run("cyc-warm", &sh("echo warm")).await;
    assert_eq!((s, out.as_str()), (0, "warm\n"));
    // Removal deletes an exited container's cgroup and state in the background: let the
    // warm-up container's cleanup finish before taking the reference footprint.
    let mut before = footprint(&a, "cyc-");
    for _ in 0..100 {
        if !before.state_files.iter().any(|f| f.contains("cyc-warm")) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        before = footprint(&a, "cyc-");
    }
    assert!(before.cgroups.is_empty(), "{before:?}");
    assert!(
        !before.state_files.iter().any(|f| f.contains("cyc-warm")),
        "{before:?}"
    );
    for i in 0..200 {
        let id = format!("cyc-{i}");
        match i % 4 {
            // Created, never started, then removed.
            0 => {
                a.create(&id, &sh("true"), "", &format!("{id}-o"), "")
                    .await
                    .unwrap();
                a.remove(&id, false).await.unwrap();
            }
            // Killed while running, output never read.
            1 => {
                a.create(
                    &id,
                    &sh("echo unread; sleep 100"),
                    "",
                    &format!("{id}-o"),
                    "",
                )
                .await
                .unwrap();
                a.start_c(&id).await.unwrap();
                a.remove(&id, true).await.unwrap();
            }
            // With an exec.
            2 => {
                a.create(&id, &sh("sleep 100"), "", "", "").await.unwrap();
                a.start_c(&id).await.unwrap();
                a.exec(&id, "e", &common::sh_process("echo x"), "", "e-o", "")
                    .await
                    .unwrap();
                assert_eq!(a.read_stream("e-o").await, "x\n");
                assert_eq!(a.wait(&id, "e").await.unwrap(), 0);
                a.remove(&id, true).await.unwrap();
            }
            // Full run with streams.
            _ => {
                let (s, out, _) = a.run(&id, &sh("echo $0")).await;
                assert_eq!((s, out.as_str()), (0, "/bin/sh\n"));
            }
        }
    }
    // Stream threads and reaping finish asynchronously.
    let mut after = footprint(&a, "cyc-");
    for _ in 0..100 {
        if after == before {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        after = footprint(&a, "cyc-");
    }
    assert_eq!(before, after);
}
