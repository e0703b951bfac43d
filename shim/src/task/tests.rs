//! The task service against a fake pod and an event recorder: containerd's calls mapped
//! onto the pod, and the events that come of them, with no VM and no containerd.

use std::sync::Arc;

use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::TtrpcResult;
use containerd_shim_protos::api::{self, Status};
use containerd_shim_protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskOOM, TaskStart,
};
use containerd_shim_protos::shim_async::Task;
use containerd_shim_protos::topics;
use containerd_shim_protos::ttrpc::r#async::TtrpcContext;
use containerd_shim_protos::ttrpc::{self as shim_ttrpc, Code};
use ember_agent_protocol::ttrpc as agent_ttrpc;
use ember_runtime::sandbox::SandboxError;
use serde_json::json;

use super::{EmberTask, CONTAINER_TYPE, SANDBOX_ID};
use crate::pod::PodStartError;
use crate::testing::{
    rpc_status, FakeStarter, RecordingPublisher, Script, FIRST_EXEC_PID, POD_PID,
};

const NAMESPACE: &str = "k8s.io";

/// A task service on a fake pod, with bundles in a temporary folder.
struct Harness {
    task: EmberTask<FakeStarter, RecordingPublisher>,
    script: Arc<Script>,
    events: RecordingPublisher,
    dir: tempfile::TempDir,
}

fn ctx() -> TtrpcContext {
    TtrpcContext {
        mh: Default::default(),
        metadata: Default::default(),
        timeout_nano: 0,
    }
}

/// The ttrpc code of a failed call.
fn code<T: std::fmt::Debug>(r: TtrpcResult<T>) -> Code {
    match r {
        Err(shim_ttrpc::Error::RpcStatus(s)) => s.code(),
        other => panic!("expected a ttrpc status, got {other:?}"),
    }
}

/// The annotations CRI puts on a container of pod `pod`.
fn in_pod(pod: &str) -> serde_json::Value {
    json!({CONTAINER_TYPE: "container", SANDBOX_ID: pod})
}

impl Harness {
    fn new() -> Harness {
        let starter = FakeStarter::default();
        let events = RecordingPublisher::default();
        Harness {
            script: starter.script.clone(),
            task: EmberTask::with_seams(
                NAMESPACE,
                starter,
                events.clone(),
                Arc::new(ExitSignal::default()),
            ),
            events,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// Writes the bundle of container `id` (a spec with `annotations` and a rootfs folder).
    fn bundle(&self, id: &str, annotations: serde_json::Value) -> String {
        let b = self.dir.path().join(id);
        std::fs::create_dir_all(b.join("rootfs")).unwrap();
        let spec = json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "annotations": annotations,
        });
        std::fs::write(b.join("config.json"), spec.to_string()).unwrap();
        b.to_string_lossy().into_owned()
    }

    async fn create(
        &self,
        id: &str,
        annotations: serde_json::Value,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        let req = api::CreateTaskRequest {
            id: id.into(),
            bundle: self.bundle(id, annotations),
            ..Default::default()
        };
        self.task.create(&ctx(), req).await
    }

    async fn start(&self, id: &str, exec_id: &str) -> TtrpcResult<api::StartResponse> {
        let req = api::StartRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        };
        self.task.start(&ctx(), req).await
    }

    async fn exec(&self, id: &str, exec_id: &str) -> TtrpcResult<api::Empty> {
        let mut req = api::ExecProcessRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        };
        req.spec.mut_or_insert_default().value = br#"{"args":["ls"]}"#.to_vec();
        self.task.exec(&ctx(), req).await
    }

    async fn kill(&self, id: &str, exec_id: &str, signal: u32) -> TtrpcResult<api::Empty> {
        let req = api::KillRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            signal,
            ..Default::default()
        };
        self.task.kill(&ctx(), req).await
    }

    async fn delete(&self, id: &str, exec_id: &str) -> TtrpcResult<api::DeleteResponse> {
        let req = api::DeleteRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        };
        self.task.delete(&ctx(), req).await
    }

    async fn state(&self, id: &str, exec_id: &str) -> TtrpcResult<api::StateResponse> {
        let req = api::StateRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        };
        self.task.state(&ctx(), req).await
    }

    async fn status(&self, id: &str, exec_id: &str) -> Status {
        self.state(id, exec_id)
            .await
            .unwrap()
            .status
            .enum_value()
            .unwrap()
    }

    async fn wait(&self, id: &str, exec_id: &str) -> TtrpcResult<api::WaitResponse> {
        let req = api::WaitRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        };
        self.task.wait(&ctx(), req).await
    }
}

#[tokio::test]
async fn create_then_start_publishes_task_create_and_task_start() {
    let h = Harness::new();
    let created = h.create("pod1", json!({})).await.unwrap();
    assert_eq!(created.pid, POD_PID);
    assert_eq!(h.script.calls(), ["start pod1", "create pod1"]);
    let ev = h.events.wait_for::<TaskCreate>(|_| true).await;
    assert_eq!(ev.container_id, "pod1");
    assert_eq!(ev.bundle, h.dir.path().join("pod1").to_string_lossy());
    assert_eq!(ev.pid, POD_PID);

    let started = h.start("pod1", "").await.unwrap();
    assert_eq!(started.pid, POD_PID);
    assert!(h
        .script
        .calls()
        .contains(&"start_container pod1".to_string()));
    let ev = h.events.wait_for::<TaskStart>(|_| true).await;
    assert_eq!(ev.container_id, "pod1");
    assert_eq!(ev.pid, POD_PID);
    assert_eq!(
        h.events.topics()[..2],
        [
            topics::TASK_CREATE_EVENT_TOPIC,
            topics::TASK_START_EVENT_TOPIC
        ]
    );
    assert!(h.events.namespaces().iter().all(|n| n == NAMESPACE));
    // A second Start of a running container is refused, and the agent is not asked.
    assert_eq!(code(h.start("pod1", "").await), Code::FAILED_PRECONDITION);
    assert_eq!(h.script.count("start_container"), 1);
}

#[tokio::test]
async fn a_waiters_exit_publishes_task_exit_and_wait_returns_it() {
    let h = Harness::new();
    h.create("pod1", json!({})).await.unwrap();
    h.start("pod1", "").await.unwrap();
    let task = h.task.clone();
    let waiting = tokio::spawn(async move {
        task.wait(
            &ctx(),
            api::WaitRequest {
                id: "pod1".into(),
                ..Default::default()
            },
        )
        .await
    });
    tokio::task::yield_now().await;
    assert!(!waiting.is_finished(), "Wait returned before the exit");
    h.script.exit("pod1", "", 3);
    let waited = waiting.await.unwrap().unwrap();
    assert_eq!(waited.exit_status, 3);
    let ev = h.events.wait_for::<TaskExit>(|_| true).await;
    assert_eq!(ev.container_id, "pod1");
    assert_eq!(ev.id, "pod1");
    assert_eq!(ev.pid, POD_PID);
    assert_eq!(ev.exit_status, 3);
    assert_eq!(h.wait("pod1", "").await.unwrap().exit_status, 3);
    // Once exited, a signal to the process is NOT_FOUND and never reaches the agent.
    assert_eq!(code(h.kill("pod1", "", 9).await), Code::NOT_FOUND);
    assert_eq!(h.script.count("signal"), 0);
}

#[tokio::test]
async fn kill_goes_to_the_agent_and_an_unknown_container_is_not_found() {
    let h = Harness::new();
    h.create("pod1", json!({})).await.unwrap();
    h.start("pod1", "").await.unwrap();
    assert_eq!(code(h.kill("nope", "", 9).await), Code::NOT_FOUND);
    assert_eq!(code(h.kill("pod1", "nope", 9).await), Code::NOT_FOUND);
    assert_eq!(h.script.count("signal"), 0);
    h.kill("pod1", "", 15).await.unwrap();
    assert_eq!(h.script.count("signal pod1 exec= signal=15 all=false"), 1);
}

#[tokio::test]
async fn deleting_the_last_container_destroys_the_sandbox() {
    let h = Harness::new();
    h.create("pod1", json!({CONTAINER_TYPE: "sandbox"}))
        .await
        .unwrap();
    h.create("app", in_pod("pod1")).await.unwrap();
    assert_eq!(h.script.count("start "), 1, "one sandbox for the pod");

    let deleted = h.delete("app", "").await.unwrap();
    assert_eq!(deleted.pid, POD_PID);
    assert_eq!(h.script.count("remove app force=true"), 1);
    assert_eq!(h.script.count("destroy"), 0, "pod1 is still there");
    let ev = h.events.wait_for::<TaskDelete>(|_| true).await;
    assert_eq!((ev.container_id.as_str(), ev.id.as_str()), ("app", "app"));

    h.delete("pod1", "").await.unwrap();
    assert_eq!(h.script.count("remove pod1 force=true"), 1);
    assert_eq!(h.script.count("destroy pod1"), 1);
    let connected = h
        .task
        .connect(&ctx(), api::ConnectRequest::new())
        .await
        .unwrap();
    assert_eq!(connected.task_pid, 0, "no sandbox after the last delete");
    // A deleted container is gone, and the next container starts a new sandbox.
    assert_eq!(code(h.state("pod1", "").await), Code::NOT_FOUND);
    h.create("pod2", json!({})).await.unwrap();
    assert_eq!(h.script.count("start pod2"), 1);
}

#[tokio::test]
async fn delete_of_a_running_container_is_refused() {
    let h = Harness::new();
    h.create("pod1", json!({})).await.unwrap();
    h.start("pod1", "").await.unwrap();
    assert_eq!(code(h.delete("pod1", "").await), Code::FAILED_PRECONDITION);
    assert_eq!(h.script.count("remove"), 0);
    assert_eq!(h.script.count("destroy"), 0);
}

#[tokio::test]
async fn state_maps_the_process_statuses() {
    let h = Harness::new();
    h.create("pod1", json!({})).await.unwrap();
    assert_eq!(h.status("pod1", "").await, Status::CREATED);
    h.start("pod1", "").await.unwrap();
    assert_eq!(h.status("pod1", "").await, Status::RUNNING);
    let pause = api::PauseRequest {
        id: "pod1".into(),
        ..Default::default()
    };
    h.task.pause(&ctx(), pause).await.unwrap();
    assert_eq!(h.status("pod1", "").await, Status::PAUSED);
    let resume = api::ResumeRequest {
        id: "pod1".into(),
        ..Default::default()
    };
    h.task.resume(&ctx(), resume).await.unwrap();
    assert_eq!(h.status("pod1", "").await, Status::RUNNING);
    h.script.exit("pod1", "", 137);
    h.events.wait_for::<TaskExit>(|_| true).await;
    let st = h.state("pod1", "").await.unwrap();
    assert_eq!(st.status.enum_value().unwrap(), Status::STOPPED);
    assert_eq!(st.exit_status, 137);
    assert_eq!(st.id, "pod1");
    assert_eq!(st.pid, POD_PID);
    assert_eq!(st.bundle, h.dir.path().join("pod1").to_string_lossy());
}

#[tokio::test]
async fn an_oom_notice_for_an_unknown_container_is_dropped() {
    let h = Harness::new();
    h.create("pod1", json!({})).await.unwrap();
    h.script.oom("someone-else");
    h.script.oom("pod1");
    let ev = h.events.wait_for::<TaskOOM>(|_| true).await;
    assert_eq!(ev.container_id, "pod1");
    let ooms = h.events.all::<TaskOOM>();
    assert_eq!(ooms.len(), 1, "{ooms:?}");
}

#[tokio::test]
async fn execs_are_named_by_their_exec_id() {
    let h = Harness::new();
    h.create("pod1", json!({})).await.unwrap();
    h.start("pod1", "").await.unwrap();
    assert_eq!(code(h.exec("nope", "e1").await), Code::NOT_FOUND);
    h.exec("pod1", "e1").await.unwrap();
    assert_eq!(code(h.exec("pod1", "e1").await), Code::ALREADY_EXISTS);
    let ev = h.events.wait_for::<TaskExecAdded>(|_| true).await;
    assert_eq!(
        (ev.container_id.as_str(), ev.exec_id.as_str()),
        ("pod1", "e1")
    );
    assert_eq!(h.status("pod1", "e1").await, Status::CREATED);
    assert_eq!(h.state("pod1", "e1").await.unwrap().exec_id, "e1");

    let started = h.start("pod1", "e1").await.unwrap();
    assert_eq!(started.pid, FIRST_EXEC_PID as u32);
    assert_eq!(h.script.count(r#"exec_process pod1 e1 {"args":["ls"]}"#), 1);
    let ev = h.events.wait_for::<TaskExecStarted>(|_| true).await;
    assert_eq!(
        (ev.container_id.as_str(), ev.exec_id.as_str(), ev.pid),
        ("pod1", "e1", FIRST_EXEC_PID as u32)
    );
    assert_eq!(code(h.start("pod1", "e1").await), Code::FAILED_PRECONDITION);
    assert_eq!(
        code(h.delete("pod1", "e1").await),
        Code::FAILED_PRECONDITION,
        "a running exec is not deleted"
    );

    h.script.exit("pod1", "e1", 2);
    let ev = h.events.wait_for::<TaskExit>(|_| true).await;
    assert_eq!(
        (
            ev.container_id.as_str(),
            ev.id.as_str(),
            ev.pid,
            ev.exit_status
        ),
        ("pod1", "e1", FIRST_EXEC_PID as u32, 2)
    );
    assert_eq!(h.status("pod1", "").await, Status::RUNNING, "init runs on");
    let deleted = h.delete("pod1", "e1").await.unwrap();
    assert_eq!(
        (deleted.pid, deleted.exit_status),
        (FIRST_EXEC_PID as u32, 2)
    );
    assert_eq!(code(h.state("pod1", "e1").await), Code::NOT_FOUND);
    assert_eq!(
        h.script.count("destroy"),
        0,
        "deleting an exec keeps the pod"
    );
}

#[tokio::test]
async fn agent_errors_map_to_ttrpc_codes() {
    let h = Harness::new();
    // Before any Create there is no sandbox to ask.
    let pids = |id: &str| api::PidsRequest {
        id: id.into(),
        ..Default::default()
    };
    assert_eq!(
        code(h.task.pids(&ctx(), pids("pod1")).await),
        Code::FAILED_PRECONDITION
    );
    h.create("pod1", json!({})).await.unwrap();
    let listed = h.task.pids(&ctx(), pids("pod1")).await.unwrap();
    let listed: Vec<u32> = listed.processes.iter().map(|p| p.pid).collect();
    assert_eq!(listed, [1, 7]);
    for (agent, shim) in [
        (agent_ttrpc::Code::NOT_FOUND, Code::NOT_FOUND),
        (agent_ttrpc::Code::INVALID_ARGUMENT, Code::INVALID_ARGUMENT),
        (agent_ttrpc::Code::ALREADY_EXISTS, Code::ALREADY_EXISTS),
        (
            agent_ttrpc::Code::FAILED_PRECONDITION,
            Code::FAILED_PRECONDITION,
        ),
        (agent_ttrpc::Code::PERMISSION_DENIED, Code::UNKNOWN),
    ] {
        h.script.fail_rpc("ListProcesses", rpc_status(agent, "no"));
        assert_eq!(
            code(h.task.pids(&ctx(), pids("pod1")).await),
            shim,
            "{agent:?}"
        );
    }
    // An agent that cannot be reached at all is UNAVAILABLE.
    h.script
        .fail_rpc("StartContainer", agent_ttrpc::Error::RemoteClosed);
    assert_eq!(code(h.start("pod1", "").await), Code::UNAVAILABLE);
    assert_eq!(
        h.status("pod1", "").await,
        Status::CREATED,
        "a failed start leaves the container created"
    );
    h.script.fail_rpc(
        "StatsContainer",
        rpc_status(agent_ttrpc::Code::NOT_FOUND, "gone"),
    );
    let stats = api::StatsRequest {
        id: "pod1".into(),
        ..Default::default()
    };
    match h.task.stats(&ctx(), stats).await {
        Err(shim_ttrpc::Error::RpcStatus(s)) => {
            assert_eq!(s.code(), Code::NOT_FOUND);
            assert_eq!(s.message(), "ember agent StatsContainer: gone");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn sandbox_start_errors_map_to_ttrpc_codes() {
    let h = Harness::new();
    h.script
        .fail_start(PodStartError::Sandbox(SandboxError::Unsupported {
            id: "pod1".into(),
            message: "no KVM".into(),
        }));
    assert_eq!(
        code(h.create("pod1", json!({})).await),
        Code::FAILED_PRECONDITION
    );
    h.script
        .fail_start(PodStartError::Sandbox(SandboxError::Backend {
            id: "pod1".into(),
            message: "broke".into(),
        }));
    assert_eq!(code(h.create("pod1", json!({})).await), Code::UNKNOWN);
    h.script.fail_start(PodStartError::Config(
        ember_config::ConfigError::ExplicitFileMissing {
            path: "/etc/ember/none.toml".into(),
        },
    ));
    assert_eq!(
        code(h.create("pod1", json!({})).await),
        Code::INVALID_ARGUMENT
    );
    assert_eq!(
        h.script.count("create"),
        0,
        "no container without a sandbox"
    );
    assert!(h.events.topics().is_empty());
}

#[tokio::test]
async fn a_failed_create_drops_the_sandbox_made_for_it() {
    let h = Harness::new();
    h.script.fail_create(SandboxError::Backend {
        id: "pod1".into(),
        message: "no rootfs".into(),
    });
    assert_eq!(
        code(h.create("pod1", json!({})).await),
        Code::INVALID_ARGUMENT
    );
    assert_eq!(
        h.script.calls(),
        ["start pod1", "create pod1", "destroy pod1"]
    );
    assert!(h.events.all::<TaskCreate>().is_empty());
    // The next Create starts afresh.
    h.create("pod1", json!({})).await.unwrap();
    assert_eq!(h.script.count("start pod1"), 2);
}

#[tokio::test]
async fn a_container_of_another_pod_is_refused() {
    let h = Harness::new();
    h.create("pod1", json!({})).await.unwrap();
    assert_eq!(
        code(h.create("app", in_pod("pod2")).await),
        Code::FAILED_PRECONDITION
    );
    assert_eq!(
        code(h.create("pod1", json!({})).await),
        Code::ALREADY_EXISTS
    );
    assert_eq!(h.script.count("start "), 1);
    assert_eq!(h.script.count("create app"), 0);
}

#[tokio::test]
async fn an_unexpected_sandbox_end_exits_the_running_processes() {
    let h = Harness::new();
    h.create("pod1", json!({CONTAINER_TYPE: "sandbox"}))
        .await
        .unwrap();
    h.start("pod1", "").await.unwrap();
    h.create("app", in_pod("pod1")).await.unwrap();
    h.script.end("killed by signal 9");
    let ev = h.events.wait_for::<TaskExit>(|_| true).await;
    assert_eq!((ev.container_id.as_str(), ev.exit_status), ("pod1", 137));
    assert_eq!(h.status("pod1", "").await, Status::STOPPED);
    // A container never started has no process to exit.
    assert_eq!(h.status("app", "").await, Status::CREATED);
    assert_eq!(h.events.all::<TaskExit>().len(), 1);
}

/// Log records as containerd-shim's logger lays them out: the key-value pairs, then the
/// message (`sandbox="p" container="c" msg="created"`).
struct CaptureLog(std::sync::Mutex<Vec<String>>);

impl log::Log for CaptureLog {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }

    fn log(&self, record: &log::Record) {
        struct Fields(String);
        impl<'kvs> log::kv::VisitSource<'kvs> for Fields {
            fn visit_pair(
                &mut self,
                k: log::kv::Key<'kvs>,
                v: log::kv::Value<'kvs>,
            ) -> Result<(), log::kv::Error> {
                self.0.push_str(&format!("{k}=\"{v}\" "));
                Ok(())
            }
        }
        let mut f = Fields(String::new());
        let _ = record.key_values().visit(&mut f);
        self.0
            .lock()
            .unwrap()
            .push(format!("{}msg=\"{}\"", f.0, record.args()));
    }

    fn flush(&self) {}
}

/// The process's logger, installed once for the tests that read it.
fn captured_log() -> &'static CaptureLog {
    static LOG: std::sync::OnceLock<&'static CaptureLog> = std::sync::OnceLock::new();
    LOG.get_or_init(|| {
        let l: &'static CaptureLog = Box::leak(Box::new(CaptureLog(Default::default())));
        log::set_logger(l).expect("no other logger in the shim's unit tests");
        log::set_max_level(log::LevelFilter::Info);
        l
    })
}

#[tokio::test]
async fn log_lines_carry_the_sandbox_and_container_as_fields() {
    let log = captured_log();
    let h = Harness::new();
    h.create("logpod", json!({})).await.unwrap();
    h.start("logpod", "").await.unwrap();
    let lines = log.0.lock().unwrap().clone();
    for msg in ["created", "started"] {
        let want = format!("sandbox=\"logpod\" container=\"logpod\" msg=\"{msg}\"");
        assert!(lines.contains(&want), "no {want:?} in {lines:#?}");
    }
}
