//! Container lifecycle benchmark: create + start + wait + delete of `/bin/true` through
//! the agent's ttrpc API, against `runc run` and `crun run` on the same busybox bundle.
//! Prints the medians of each and the ratios (goal: agent ≤ 0.5× runc and ≤ 1.0× crun).
//!
//! `cargo bench -p ember-agent --bench container_lifecycle` (as root). `EMBER_BENCH_RUNS` sets the
//! number of measured runs per runtime (default 30, at least 20).
//!
//! crun 1.8 refuses hybrid cgroup hosts, so its runs happen in a private mount namespace
//! (`unshare -m --propagation slave`) with `/sys/fs/cgroup/unified` unmounted there: the
//! benchmark re-executes itself as that namespace's worker, which leaves the host alone.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ember_agent_protocol::agent as pb;
use ember_agent_protocol::agent_ttrpc::AgentClient;
use ember_agent_protocol::ttrpc::context;
use ember_agent_protocol::ttrpc::r#async::Client;

const WARMUP: usize = 3;
const CRUN_WORKER: &str = "EMBER_BENCH_CRUN_WORKER";

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// One `RUNTIME --root ROOT run --bundle BUNDLE ID`, timed.
fn oci_run(runtime: &str, root: &Path, bundle: &Path, id: &str) -> Result<Duration, String> {
    let t = Instant::now();
    let status = Command::new(runtime)
        .arg("--root")
        .arg(root)
        .args(["run", "--bundle"])
        .arg(bundle)
        .arg(id)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("{runtime}: {e}"))?;
    let d = t.elapsed();
    if !status.status.success() {
        return Err(format!(
            "{runtime} run failed ({}): {}",
            status.status,
            String::from_utf8_lossy(&status.stderr)
        ));
    }
    Ok(d)
}

/// The crun worker, inside its private mount namespace: for each id read on stdin it runs
/// crun once and prints the duration in nanoseconds (or `error: ...`).
fn crun_worker(bundle: &str, root: &str) {
    let st = Command::new("umount")
        .arg("/sys/fs/cgroup/unified")
        .status();
    if !matches!(st, Ok(s) if s.success()) {
        eprintln!("crun worker: cannot unmount /sys/fs/cgroup/unified in the private namespace");
    }
    let stdout = std::io::stdout();
    for line in std::io::stdin().lines() {
        let Ok(id) = line else { break };
        let answer = match oci_run("crun", Path::new(root), Path::new(bundle), id.trim()) {
            Ok(d) => d.as_nanos().to_string(),
            Err(e) => format!("error: {}", e.replace('\n', " ")),
        };
        let mut out = stdout.lock();
        let _ = writeln!(out, "{answer}");
        let _ = out.flush();
    }
}

/// A running crun worker.
struct Crun {
    child: std::process::Child,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl Crun {
    fn start(bundle: &Path, root: &Path) -> Result<Crun, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut child = Command::new("unshare")
            .args(["-m", "--propagation", "slave"])
            .arg(exe)
            .env(
                CRUN_WORKER,
                format!("{}\n{}", bundle.display(), root.display()),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("unshare: {e}"))?;
        let stdout = std::io::BufReader::new(child.stdout.take().expect("piped"));
        Ok(Crun { child, stdout })
    }

    fn run(&mut self, id: &str) -> Result<Duration, String> {
        let stdin = self.child.stdin.as_mut().expect("piped");
        writeln!(stdin, "{id}").map_err(|e| format!("crun worker: {e}"))?;
        stdin.flush().map_err(|e| format!("crun worker: {e}"))?;
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .map_err(|e| format!("crun worker: {e}"))?;
        line.trim()
            .parse::<u64>()
            .map(Duration::from_nanos)
            .map_err(|_| format!("crun: {}", line.trim()))
    }
}

impl Drop for Crun {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

async fn agent_cycle(client: &AgentClient, spec: &str, bundle: &Path, id: &str) -> [Duration; 4] {
    let ctx = || context::with_timeout(0);
    let mut t = Instant::now();
    let mut phases = [Duration::ZERO; 4];
    let mut lap = |i: usize| {
        phases[i] = t.elapsed();
        t = Instant::now();
    };
    let mut c = pb::CreateContainerRequest::new();
    c.container_id = id.into();
    c.spec_json = spec.into();
    c.bundle_path = bundle.display().to_string();
    client.create_container(ctx(), &c).await.expect("create");
    lap(0);
    let mut s = pb::StartContainerRequest::new();
    s.container_id = id.into();
    client.start_container(ctx(), &s).await.expect("start");
    lap(1);
    let mut w = pb::WaitProcessRequest::new();
    w.container_id = id.into();
    let status = client
        .wait_process(ctx(), &w)
        .await
        .expect("wait")
        .exit_status;
    assert_eq!(status, 0, "/bin/true exited {status}");
    lap(2);
    let mut r = pb::RemoveContainerRequest::new();
    r.container_id = id.into();
    client.remove_container(ctx(), &r).await.expect("remove");
    lap(3);
    phases
}

/// Starts `ember-agent` on a Unix socket under `dir` and connects to it.
async fn start_agent(dir: &Path) -> (std::process::Child, AgentClient) {
    let sock = dir.join("agent.sock");
    let agent = Command::new(env!("CARGO_BIN_EXE_ember-agent"))
        .arg("--listen")
        .arg(format!("unix://{}", sock.display()))
        .arg("--state-dir")
        .arg(dir.join("agent-state"))
        .arg("--log-level")
        .arg("warning")
        .spawn()
        .expect("ember-agent starts");
    let stdio = PathBuf::from(format!("{}.stdio", sock.display()));
    for _ in 0..500 {
        if sock.exists() && stdio.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The socket file exists between bind and listen: retry the connection briefly.
    let addr = format!("unix://{}", sock.display());
    let mut client = None;
    for _ in 0..500 {
        if let Ok(c) = Client::connect(&addr).await {
            client = Some(AgentClient::new(c));
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let client = client.expect("the agent socket accepts connections");
    (agent, client)
}

fn main() {
    if let Ok(w) = std::env::var(CRUN_WORKER) {
        let mut parts = w.lines();
        let (b, r) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        crun_worker(b, r);
        return;
    }
    if !ember_tests::is_root() {
        println!("SKIP container_lifecycle: needs root (containers need namespaces and cgroups)");
        return;
    }
    if !ember_tests::fixtures::busybox_available() {
        println!("SKIP container_lifecycle: needs Debian's busybox-static for the bundle");
        return;
    }
    let runs: usize = std::env::var("EMBER_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30)
        .max(20);
    let dir = tempfile::Builder::new()
        .prefix("ember-bench")
        .tempdir()
        .expect("tempdir");
    let bundle = dir.path().join("bundle");
    ember_tests::fixtures::busybox_rootfs(&bundle.join("rootfs")).expect("busybox rootfs");
    let spec = ember_tests::fixtures::default_spec(&["/bin/true"]);
    ember_tests::fixtures::write_spec(&bundle, &spec).expect("config.json");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let (mut agent_proc, client) = rt.block_on(start_agent(dir.path()));
    let spec_json = spec.to_string();
    let runc_root = dir.path().join("runc-root");
    let mut runc_err =
        (!which("runc")).then(|| "runc is not installed (apt-get install runc)".to_string());
    let mut crun = if which("crun") {
        Crun::start(&bundle, &dir.path().join("crun-root"))
    } else {
        Err("crun is not installed (apt-get install crun)".into())
    };
    let mut crun_err = crun.as_ref().err().cloned();

    // Interleaved, so that load from elsewhere hits all three alike.
    let (mut phases, mut runc, mut crun_t) = (Vec::new(), Vec::new(), Vec::new());
    let mut settles = Vec::new();
    for i in 0..WARMUP + runs {
        let keep = i >= WARMUP;
        let p = rt.block_on(agent_cycle(
            &client,
            &spec_json,
            &bundle,
            &format!("bench-agent-{i}"),
        ));
        // RemoveContainer returns before an exited container's cgroups and state are
        // deleted (the agent finishes that in the background). Wait for it here, outside
        // the measured agent time, so that it never overlaps (and slows) the reference
        // runs; its duration is reported separately.
        let settle = settle(dir.path(), &format!("bench-agent-{i}"));
        if keep {
            phases.push(p);
            settles.push(settle);
        }
        if runc_err.is_none() {
            match oci_run("runc", &runc_root, &bundle, &format!("bench-runc-{i}")) {
                Ok(d) if keep => runc.push(d),
                Ok(_) => {}
                Err(e) => runc_err = Some(e),
            }
        }
        if let (Ok(c), None) = (crun.as_mut(), &crun_err) {
            match c.run(&format!("bench-crun-{i}")) {
                Ok(d) if keep => crun_t.push(d),
                Ok(_) => {}
                Err(e) => crun_err = Some(e),
            }
        }
    }
    drop(crun);
    // SAFETY: kill on our own child's pid.
    unsafe { libc::kill(agent_proc.id() as i32, libc::SIGTERM) };
    let _ = agent_proc.wait();

    let mut agent: Vec<Duration> = phases.iter().map(|p| p.iter().sum()).collect();
    let agent_m = median(&mut agent);
    let phase_m = |i: usize| median(&mut phases.iter().map(|p| p[i]).collect::<Vec<_>>());
    println!(
        "lifecycle of /bin/true, median of {runs} interleaved runs after {WARMUP} warm-up runs:"
    );
    println!(
        "  ember-agent API (create+start+wait+delete): {:8.2} ms",
        ms(agent_m)
    );
    println!(
        "    phases: create {:.2} ms, start {:.2} ms, wait {:.2} ms, remove {:.2} ms",
        ms(phase_m(0)),
        ms(phase_m(1)),
        ms(phase_m(2)),
        ms(phase_m(3))
    );
    let mut with_settle: Vec<Duration> = phases
        .iter()
        .zip(&settles)
        .map(|(p, s)| p.iter().sum::<Duration>() + *s)
        .collect();
    let settle_m = median(&mut settles.clone());
    let total_m = median(&mut with_settle);
    println!(
        "    deferred cleanup after RemoveContainer returned: {:.2} ms (not overlapping the reference runs); agent including it: {:.2} ms",
        ms(settle_m),
        ms(total_m)
    );
    let report = |name: &str, mut v: Vec<Duration>, err: Option<String>, goal: f64| {
        if let Some(e) = err {
            println!("  {name}: not measured: {e}");
            return;
        }
        let m = median(&mut v);
        let ratio = agent_m.as_secs_f64() / m.as_secs_f64();
        let with = total_m.as_secs_f64() / m.as_secs_f64();
        println!(
            "  {name:<10} run:                              {:8.2} ms   agent/{name} = {ratio:.2} (goal <= {goal}); including the deferred cleanup {with:.2}",
            ms(m)
        );
    };
    report("runc", runc, runc_err, 0.5);
    report("crun", crun_t, crun_err, 1.0);
}

/// Waits until the agent has deleted container `id`'s libcontainer state and cgroups, and
/// returns how long that took.
fn settle(dir: &Path, id: &str) -> Duration {
    let t = Instant::now();
    let state = dir.join("agent-state/containers").join(id);
    let cgroups = |id: &str| {
        std::fs::read_dir("/sys/fs/cgroup")
            .map(|d| {
                d.flatten()
                    .any(|h| h.path().join("ember").join(id).exists())
            })
            .unwrap_or(false)
    };
    while (state.exists() || cgroups(id)) && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_micros(200));
    }
    t.elapsed()
}

fn which(bin: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
        .unwrap_or(false)
}
