//! Container lifecycle through the real ttrpc API over a Unix socket: exit codes, stdio
//! streams, exec, bad specs and crash resilience. Run as root; skipped otherwise.

mod common;

use common::{cgroup_dirs, ctx, sh, sh_process, skip, without_pid_ns, TestAgent};
use ember_agent_protocol::agent as pb;
use ember_agent_protocol::stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_serving_and_protocol_version() {
    if skip("health_reports_serving_and_protocol_version") {
        return;
    }
    let a = TestAgent::start().await;
    let r = a
        .health
        .check(ctx(), &pb::CheckRequest::new())
        .await
        .unwrap();
    assert_eq!(
        r.status.enum_value().unwrap(),
        pb::check_response::ServingStatus::SERVING
    );
    let v = a
        .health
        .version(ctx(), &pb::VersionRequest::new())
        .await
        .unwrap();
    assert_eq!(v.protocol_version, ember_agent_protocol::PROTOCOL_VERSION);
    ember_agent_protocol::check_version(&v).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_are_exact() {
    if skip("exit_codes_are_exact") {
        return;
    }
    let a = TestAgent::start().await;
    let (s, out, _) = a.run("exit0", &sh("echo hello")).await;
    assert_eq!((s, out.as_str()), (0, "hello\n"));
    let (s, _, _) = a.run("exit3", &sh("exit 3")).await;
    assert_eq!(s, 3);

    // SIGKILL of a container init (in its own pid namespace): 128 + 9.
    a.create("kill9", &sh("sleep 100"), "", "", "")
        .await
        .unwrap();
    a.start_c("kill9").await.unwrap();
    a.signal("kill9", "", 9, false).await.unwrap();
    assert_eq!(a.wait("kill9", "").await.unwrap(), 137);
    a.remove("kill9", false).await.unwrap();

    // SIGTERM of an init without a pid namespace (a pid-namespace init ignores it): 128 + 15.
    a.create("term15", &without_pid_ns(sh("sleep 100")), "", "", "")
        .await
        .unwrap();
    a.start_c("term15").await.unwrap();
    a.signal("term15", "", 15, false).await.unwrap();
    assert_eq!(a.wait("term15", "").await.unwrap(), 143);
    a.remove("term15", false).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdout_and_stderr_are_kept_for_a_late_reader() {
    if skip("stdout_and_stderr_are_kept_for_a_late_reader") {
        return;
    }
    let a = TestAgent::start().await;
    a.create(
        "late",
        &sh("echo out; echo err >&2; exit 5"),
        "",
        "late-o",
        "late-e",
    )
    .await
    .unwrap();
    a.start_c("late").await.unwrap();
    // The process has exited before anyone reads its output.
    assert_eq!(a.wait("late", "").await.unwrap(), 5);
    assert_eq!(a.read_stream("late-o").await, "out\n");
    assert_eq!(a.read_stream("late-e").await, "err\n");
    // A stream attaches once.
    let e = stream::connect_unix(&a.stdio, "late-o").await.unwrap_err();
    assert!(
        e.to_string().contains("AlreadyAttached") || e.to_string().contains("UnknownStream"),
        "{e}"
    );
    a.remove("late", false).await.unwrap();
    let e = stream::connect_unix(&a.stdio, "nope").await.unwrap_err();
    assert!(e.to_string().contains("UnknownStream"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_is_echoed_to_stdout_and_eof_ends_it() {
    if skip("stdin_is_echoed_to_stdout_and_eof_ends_it") {
        return;
    }
    let a = TestAgent::start().await;
    a.create("echo", &sh("cat"), "echo-i", "echo-o", "")
        .await
        .unwrap();
    let mut input = stream::connect_unix(&a.stdio, "echo-i").await.unwrap();
    let output = stream::connect_unix(&a.stdio, "echo-o").await.unwrap();
    a.start_c("echo").await.unwrap();
    input.write_all(b"hello through the agent\n").await.unwrap();
    input.shutdown().await.unwrap();
    let mut out = String::new();
    let mut output = output;
    output.read_to_string(&mut out).await.unwrap();
    assert_eq!(out, "hello through the agent\n");
    assert_eq!(a.wait("echo", "").await.unwrap(), 0);
    a.remove("echo", false).await.unwrap();

    // CloseStdin gives EOF too.
    a.create("close", &sh("cat; echo done"), "close-i", "close-o", "")
        .await
        .unwrap();
    a.start_c("close").await.unwrap();
    let mut req = pb::CloseStdinRequest::new();
    req.container_id = "close".into();
    a.agent.close_stdin(ctx(), &req).await.unwrap();
    assert_eq!(a.wait("close", "").await.unwrap(), 0);
    assert_eq!(a.read_stream("close-o").await, "done\n");
    a.remove("close", false).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_runs_in_a_running_container() {
    if skip("exec_runs_in_a_running_container") {
        return;
    }
    let a = TestAgent::start().await;
    a.create("ex", &sh("echo ready > /tmp/ready; sleep 100"), "", "", "")
        .await
        .unwrap();
    // Exec before start is refused.
    let e = a
        .exec("ex", "early", &sh_process("true"), "", "", "")
        .await
        .unwrap_err();
    assert!(e.contains("not running"), "{e}");
    a.start_c("ex").await.unwrap();
    // The exec sees the container's /tmp once the init has written it.
    let mut seen = false;
    for n in 0..100 {
        let probe = format!("probe{n}");
        let pid = a
            .exec("ex", &probe, &sh_process("test -f /tmp/ready"), "", "", "")
            .await
            .unwrap();
        assert!(pid > 0);
        if a.wait("ex", &probe).await.unwrap() == 0 {
            seen = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(seen, "the exec never saw the container's /tmp/ready");
    a.exec(
        "ex",
        "e1",
        &sh_process("cat /tmp/ready; echo $$ >&2; exit 3"),
        "",
        "e1-o",
        "e1-e",
    )
    .await
    .unwrap();
    assert_eq!(a.wait("ex", "e1").await.unwrap(), 3);
    assert_eq!(a.read_stream("e1-o").await, "ready\n");
    // The exec shares the container's pid namespace: it is not pid 1 there.
    let pid: i32 = a.read_stream("e1-e").await.trim().parse().unwrap();
    assert!(pid > 1);
    // The id of a running exec is refused; once it has exited it can be reused.
    a.exec("ex", "long", &sh_process("sleep 100"), "", "", "")
        .await
        .unwrap();
    let e = a
        .exec("ex", "long", &sh_process("true"), "", "", "")
        .await
        .unwrap_err();
    assert!(
        e.contains("already has a process with exec_id") && e.contains("long"),
        "{e}"
    );
    a.exec("ex", "e1", &sh_process("echo again"), "", "e1b-o", "")
        .await
        .unwrap();
    assert_eq!(a.wait("ex", "e1").await.unwrap(), 0);
    assert_eq!(a.read_stream("e1b-o").await, "again\n");
    // Exec stdin/stdout.
    a.exec(
        "ex",
        "e2",
        &sh_process("read x; echo got:$x"),
        "e2-i",
        "e2-o",
        "",
    )
    .await
    .unwrap();
    let mut i = stream::connect_unix(&a.stdio, "e2-i").await.unwrap();
    i.write_all(b"abc\n").await.unwrap();
    assert_eq!(a.read_stream("e2-o").await, "got:abc\n");
    assert_eq!(a.wait("ex", "e2").await.unwrap(), 0);
    // Removing a running container needs force.
    let e = a.remove("ex", false).await.unwrap_err();
    assert!(e.contains("is running"), "{e}");
    a.remove("ex", true).await.unwrap();
    assert!(cgroup_dirs("ex").is_empty());
}

/// Asserts that nothing of container `id` is left: state, bundle copy, cgroups.
fn assert_nothing_left(a: &TestAgent, id: &str) {
    let state = a.dir.path().join("state");
    assert!(
        !state.join("containers").join(id).exists(),
        "libcontainer state left for {id}"
    );
    assert!(
        !state.join("bundles").join(id).exists(),
        "bundle copy left for {id}"
    );
    assert_eq!(
        cgroup_dirs(id),
        Vec::<std::path::PathBuf>::new(),
        "cgroups left for {id}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_specs_name_the_field_and_leave_nothing_behind() {
    if skip("bad_specs_name_the_field_and_leave_nothing_behind") {
        return;
    }
    let a = TestAgent::start().await;
    let mounts_before = common::mounts_under(a.dir.path());

    let mut req = pb::CreateContainerRequest::new();
    req.container_id = "badjson".into();
    req.spec_json = "{\"ociVersion\": \"1.0.2\", \"process\": ".into();
    let e = a
        .agent
        .create_container(ctx(), &req)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("spec_json") && e.contains("invalid JSON"), "{e}");
    assert_nothing_left(&a, "badjson");

    let mut spec = sh("true");
    spec["linux"]["namespaces"][1]["type"] = "bogus".into();
    let e = a
        .create("badns", &spec, "", "badns-o", "")
        .await
        .unwrap_err();
    assert!(e.contains("linux.namespaces[1].type"), "{e}");
    assert!(e.contains("bogus"), "{e}");
    assert_nothing_left(&a, "badns");

    let mut spec = sh("true");
    spec["root"]["path"] = "no-such-rootfs".into();
    let e = a
        .create("noroot", &spec, "", "noroot-o", "")
        .await
        .unwrap_err();
    assert!(
        e.contains("root.path") && e.contains("no-such-rootfs"),
        "{e}"
    );
    assert_nothing_left(&a, "noroot");

    // Valid JSON that libcontainer itself rejects while building the container.
    let mut spec = sh("true");
    spec["mounts"].as_array_mut().unwrap().push(serde_json::json!(
        {"destination": "/data", "type": "bind", "source": "/nonexistent/ember-source", "options": ["rbind"]}
    ));
    let e = a
        .create("badmount", &spec, "", "badmount-o", "")
        .await
        .unwrap_err();
    assert!(e.contains("badmount"), "{e}");
    assert_nothing_left(&a, "badmount");

    // No process is left: only the agent's warm spawn helper remains as its child.
    let mut children = common::agent_children(a.pid());
    for _ in 0..500 {
        if children.iter().all(|c| c == "ember-agent") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        children = common::agent_children(a.pid());
    }
    assert!(children.iter().all(|c| c == "ember-agent"), "{children:?}");
    // The stream ids of failed creates are free again and no mount is left.
    let e = stream::connect_unix(&a.stdio, "badns-o").await.unwrap_err();
    assert!(e.to_string().contains("UnknownStream"), "{e}");
    let mounts_after = common::mounts_under(a.dir.path());
    assert_eq!(mounts_before, mounts_after);
    // And the same ids work now.
    let (s, out, _) = a.run("badns", &sh("echo fine")).await;
    assert_eq!((s, out.as_str()), (0, "fine\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_keeps_serving_after_a_container_crashes() {
    if skip("agent_keeps_serving_after_a_container_crashes") {
        return;
    }
    let a = TestAgent::start().await;
    // A segfaulting init (no pid namespace, so the signal is not ignored).
    let (s, _, _) = a.run("crash", &without_pid_ns(sh("kill -SEGV $$"))).await;
    assert_eq!(s, 128 + 11);
    // A process that cannot be executed.
    a.create("noexec", &common::sh("true"), "", "", "")
        .await
        .unwrap();
    a.remove("noexec", false).await.unwrap();
    let mut spec = sh("true");
    spec["process"]["args"] = serde_json::json!(["/bin/no-such-program"]);
    let r = a.create("noprog", &spec, "", "", "").await;
    if r.is_ok() {
        let started = a.start_c("noprog").await;
        if started.is_ok() {
            assert_ne!(a.wait("noprog", "").await.unwrap(), 0);
        }
        a.remove("noprog", true).await.unwrap();
    }
    let r = a
        .health
        .check(ctx(), &pb::CheckRequest::new())
        .await
        .unwrap();
    assert_eq!(
        r.status.enum_value().unwrap(),
        pb::check_response::ServingStatus::SERVING
    );
    let (s, out, _) = a.run("after", &sh("echo alive")).await;
    assert_eq!((s, out.as_str()), (0, "alive\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_is_reusable_right_after_removal() {
    if skip("an_id_is_reusable_right_after_removal") {
        return;
    }
    let a = TestAgent::start().await;
    // Removal of an exited container returns before its cgroup and state are deleted; a
    // create with the same id at once waits for that and then succeeds.
    for i in 0..5 {
        let (s, out, _) = a.run("again", &sh(&format!("echo run{i}"))).await;
        assert_eq!((s, out.as_str()), (0, format!("run{i}\n").as_str()));
    }
    // Once settled (state, then the bundle moved to the spares, then the cgroups gone),
    // nothing of it is left.
    let state = a.dir.path().join("state");
    for _ in 0..100 {
        if !state.join("containers").join("again").exists()
            && !state.join("bundles").join("again").exists()
            && cgroup_dirs("again").is_empty()
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(!state.join("containers").join("again").exists());
    assert!(!state.join("bundles").join("again").exists());
    assert_eq!(cgroup_dirs("again"), Vec::<std::path::PathBuf>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_spawn_helper_is_replaced() {
    if skip("a_killed_spawn_helper_is_replaced") {
        return;
    }
    let a = TestAgent::start().await;
    let (s, _, _) = a.run("before", &sh("true")).await;
    assert_eq!(s, 0);
    // The agent's child named ember-agent is the spawn helper (containers have exited).
    let mut helpers = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let Some((head, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        if rest.split(' ').nth(1) == Some(a.pid().to_string().as_str())
            && head.ends_with("(ember-agent")
        {
            helpers.push(head.split(' ').next().unwrap().parse::<i32>().unwrap());
        }
    }
    assert_eq!(helpers.len(), 1, "one spawn helper: {helpers:?}");
    // SAFETY: kill on the agent's helper.
    unsafe { libc::kill(helpers[0], libc::SIGKILL) };
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    // The helper's waiting worker may serve one more request; then a new helper does.
    for id in ["after1", "after2", "after3"] {
        let (s, out, _) = a.run(id, &sh("echo again")).await;
        assert_eq!((s, out.as_str()), (0, "again\n"));
    }
}
