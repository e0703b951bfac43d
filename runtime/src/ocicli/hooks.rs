//! OCI hooks that run in the runtime's namespaces on the host: `prestart` and
//! `createRuntime` (after the container is created, before `create` returns), `poststart`
//! (after `start`) and `poststop` (at `delete`). They are taken out of the spec sent to the
//! agent: in the agent's mount and PID namespaces (process backend) or in a guest (microvm
//! backend) a host program such as Docker's `libnetwork-setkey` hook (`/proc/<dockerd
//! pid>/exe`) cannot run. Each gets the container's OCI state on stdin, as runc gives it.
//! `createContainer` and `startContainer` hooks, which run in the container's namespaces,
//! stay in the spec for the agent.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::OciCliError;

/// The hooks of a spec that run on the host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostHooks {
    /// `hooks.prestart` (deprecated by the spec, still what Docker 20.10 uses).
    #[serde(default)]
    pub prestart: Vec<Value>,
    /// `hooks.createRuntime`.
    #[serde(default)]
    pub create_runtime: Vec<Value>,
    /// `hooks.poststart`.
    #[serde(default)]
    pub poststart: Vec<Value>,
    /// `hooks.poststop`.
    #[serde(default)]
    pub poststop: Vec<Value>,
}

impl HostHooks {
    /// Removes the host hooks from `spec` and returns them.
    pub fn take(spec: &mut Value) -> HostHooks {
        let Some(hooks) = spec.get_mut("hooks").and_then(Value::as_object_mut) else {
            return HostHooks::default();
        };
        let mut take = |name: &str| match hooks.remove(name) {
            Some(Value::Array(a)) => a,
            _ => Vec::new(),
        };
        let h = HostHooks {
            prestart: take("prestart"),
            create_runtime: take("createRuntime"),
            poststart: take("poststart"),
            poststop: take("poststop"),
        };
        if hooks.is_empty() {
            if let Some(o) = spec.as_object_mut() {
                o.remove("hooks");
            }
        }
        h
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.prestart.is_empty()
            && self.create_runtime.is_empty()
            && self.poststart.is_empty()
            && self.poststop.is_empty()
    }
}

/// Runs `hooks` (of kind `kind`, for messages) in order with `state` (the OCI state JSON)
/// on stdin; the first that fails or outlives its `timeout` ends the run with an error
/// naming it.
pub fn run(kind: &str, hooks: &[Value], state: &str) -> Result<(), OciCliError> {
    for (i, hook) in hooks.iter().enumerate() {
        let fail = |message: String| OciCliError::Hook {
            kind: kind.to_string(),
            index: i,
            message,
        };
        let path = hook
            .get("path")
            .and_then(Value::as_str)
            .ok_or_else(|| fail("no path".into()))?;
        let strings = |key: &str| -> Vec<String> {
            hook.get(key)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        let args = strings("args");
        let mut cmd = Command::new(path);
        if let Some((arg0, rest)) = args.split_first() {
            use std::os::unix::process::CommandExt;
            cmd.arg0(arg0).args(rest);
        }
        cmd.env_clear();
        for kv in strings("env") {
            if let Some((k, v)) = kv.split_once('=') {
                cmd.env(k, v);
            }
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| fail(format!("{path}: {e}")))?;
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(state.as_bytes());
        }
        let timeout = hook
            .get("timeout")
            .and_then(Value::as_u64)
            .filter(|t| *t > 0)
            .map(Duration::from_secs);
        let start = Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break s,
                Ok(None) => {}
                Err(e) => return Err(fail(format!("{path}: {e}"))),
            }
            if timeout.is_some_and(|t| start.elapsed() > t) {
                let _ = child.kill();
                let _ = child.wait();
                return Err(fail(format!("{path}: timed out after {timeout:?}")));
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        if !status.success() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            return Err(fail(format!("{path}: {status}: {}", err.trim())));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn host_hooks_are_taken_out_and_run_with_the_state() {
        let mut spec = json!({"hooks": {
            "prestart": [{"path": "/bin/sh", "args": ["sh", "-c", "grep -q '\"id\":\"c1\"'"]}],
            "createContainer": [{"path": "/bin/true"}],
            "poststop": [{"path": "/bin/sh", "args": ["sh", "-c", "echo bad >&2; exit 3"]}]
        }});
        let h = HostHooks::take(&mut spec);
        assert_eq!(h.prestart.len(), 1);
        assert_eq!(h.poststop.len(), 1);
        assert_eq!(
            spec["hooks"],
            json!({"createContainer": [{"path": "/bin/true"}]})
        );
        run("prestart", &h.prestart, r#"{"id":"c1"}"#).unwrap();
        assert!(run("prestart", &h.prestart, r#"{"id":"c2"}"#).is_err());
        let e = run("poststop", &h.poststop, "{}").unwrap_err().to_string();
        assert!(e.contains("hook poststop[0]") && e.contains("bad"), "{e}");
        let mut none = json!({"hooks": {"prestart": []}});
        assert!(HostHooks::take(&mut none).is_empty());
        assert!(none.get("hooks").is_none());
    }
}
