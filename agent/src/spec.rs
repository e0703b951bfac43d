//! The OCI documents the runtime sends (spec, process, resources): parsed with the same
//! `oci-spec` types libcontainer uses, with errors that name the offending field, and the
//! agent's copy of the bundle (absolute rootfs, default cgroup path).

use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxResources, Process, Spec};
use serde::de::DeserializeOwned;

/// Errors in an OCI document or a request field.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The JSON text does not parse into the expected OCI type.
    #[error("{doc}: {path}: {message}")]
    Invalid {
        /// Which request field (spec_json, process_json, resources_json).
        doc: &'static str,
        /// The JSON path of the bad field (`linux.namespaces[0].type`), or `.` for syntax.
        path: String,
        /// The parser's message.
        message: String,
    },
    /// A required field is missing or empty.
    #[error("{field}: {message}")]
    Field {
        /// The field name in the OCI document or the request.
        field: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// Writing the agent's bundle copy failed.
    #[error("cannot write the container bundle {path}: {source}")]
    Write {
        /// Path written.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

fn field(field: impl Into<String>, message: impl Into<String>) -> SpecError {
    SpecError::Field {
        field: field.into(),
        message: message.into(),
    }
}

/// Parses `json` as `T`, naming the JSON path of the first bad field.
pub fn parse<T: DeserializeOwned>(doc: &'static str, json: &str) -> Result<T, SpecError> {
    if json.trim().is_empty() {
        return Err(field(doc, "is empty; expected a JSON document"));
    }
    let de = &mut serde_json::Deserializer::from_str(json);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = if inner.is_syntax() || inner.is_eof() {
            format!("invalid JSON: {inner}")
        } else {
            inner.to_string()
        };
        SpecError::Invalid { doc, path, message }
    })
}

/// Checks a container or exec id ([`ember_sys::id`]'s rule: 1..=128 of `[A-Za-z0-9_.-]`,
/// not starting with `.`), naming the request field `name` when it is broken.
pub fn check_id(name: &str, id: &str) -> Result<(), SpecError> {
    ember_sys::id::check(id).map_err(|e| field(name, format!("{id:?} is not a valid id: {e}")))
}

/// Checks an exec process: args must be present.
pub fn check_process(p: &Process, prefix: &str) -> Result<(), SpecError> {
    match p.args() {
        Some(a) if !a.is_empty() => Ok(()),
        _ => Err(field(
            format!("{prefix}args"),
            "is missing or empty; name the program to run",
        )),
    }
}

/// Takes the `net.*` keys out of `linux.sysctl` of a spec whose container has no network
/// namespace of its own (no `network` entry in `linux.namespaces`: it stays in the agent's),
/// and returns them in key order; leaves any other spec as it is.
pub fn take_shared_network_sysctls(spec: &mut Spec) -> Vec<(String, String)> {
    let Some(mut linux) = spec.linux().clone() else {
        return Vec::new();
    };
    let own_netns = linux.namespaces().as_ref().is_some_and(|ns| {
        ns.iter()
            .any(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::Network)
    });
    let Some(mut sysctl) = linux.sysctl().clone() else {
        return Vec::new();
    };
    if own_netns {
        return Vec::new();
    }
    let mut taken: Vec<(String, String)> = sysctl
        .iter()
        .filter(|(k, _)| k.starts_with("net."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if taken.is_empty() {
        return taken;
    }
    taken.sort();
    sysctl.retain(|k, _| !k.starts_with("net."));
    linux.set_sysctl(Some(sysctl));
    spec.set_linux(Some(linux));
    taken
}

/// Parses and validates a container spec, resolves `root.path` against `bundle_path`,
/// sets `linux.cgroupsPath` to `/ember/<id>` when empty, and returns the spec with the
/// container's cgroup path.
pub fn prepare(id: &str, spec_json: &str, bundle_path: &str) -> Result<(Spec, PathBuf), SpecError> {
    let mut spec: Spec = parse("spec_json", spec_json)?;
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| {
            field(
                "root",
                "is missing; root.path must name the container's root filesystem",
            )
        })?
        .clone();
    let mut rootfs = root.path().clone();
    if rootfs.as_os_str().is_empty() {
        return Err(field(
            "root.path",
            "is empty; name the container's root filesystem",
        ));
    }
    if rootfs.is_relative() {
        if bundle_path.is_empty() {
            return Err(field(
                "root.path",
                format!(
                    "{} is relative but bundle_path is empty; send bundle_path or an absolute root.path",
                    rootfs.display()
                ),
            ));
        }
        rootfs = Path::new(bundle_path).join(rootfs);
    }
    if !rootfs.is_dir() {
        return Err(field(
            "root.path",
            format!("{} does not exist or is not a directory", rootfs.display()),
        ));
    }
    let mut root = root;
    root.set_path(rootfs);
    spec.set_root(Some(root));

    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| field("process", "is missing; a container needs a process to run"))?;
    check_process(process, "process.")?;
    if let Some(cwd) = Some(process.cwd()) {
        if !cwd.is_absolute() {
            return Err(field(
                "process.cwd",
                format!("{} must be an absolute path", cwd.display()),
            ));
        }
    }

    let linux = spec
        .linux()
        .as_ref()
        .ok_or_else(|| field("linux", "is missing; ember runs Linux containers only"))?
        .clone();
    let cgroup = match linux.cgroups_path() {
        Some(p) if !p.as_os_str().is_empty() => p.clone(),
        _ => PathBuf::from(format!("/ember/{id}")),
    };
    if !cgroup.is_absolute() {
        return Err(field(
            "linux.cgroupsPath",
            format!("{} must be an absolute cgroup path", cgroup.display()),
        ));
    }
    let mut linux = linux;
    linux.set_cgroups_path(Some(cgroup.clone()));
    spec.set_linux(Some(linux));
    Ok((spec, cgroup))
}

/// Writes `spec` as `config.json` into `dir` (created).
pub fn write_bundle(dir: &Path, spec: &Spec) -> Result<(), SpecError> {
    let w = |source| SpecError::Write {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(w)?;
    let json = serde_json::to_vec(spec).map_err(|e| w(std::io::Error::other(e)))?;
    std::fs::write(dir.join("config.json"), json).map_err(w)
}

/// Parses a `linux.resources` document.
pub fn resources(json: &str) -> Result<LinuxResources, SpecError> {
    parse("resources_json", json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_bad_field() {
        let e = parse::<Spec>(
            "spec_json",
            r#"{"ociVersion":"1.0.2","linux":{"namespaces":[{"type":"bogus"}]}}"#,
        )
        .unwrap_err();
        let m = e.to_string();
        assert!(m.contains("linux.namespaces[0].type"), "{m}");
        let e = parse::<Spec>("spec_json", "{not json").unwrap_err();
        assert!(e.to_string().starts_with("spec_json: "), "{e}");
        assert!(e.to_string().contains("invalid JSON"), "{e}");
    }

    #[test]
    fn missing_rootfs_is_named() {
        let json = r#"{"ociVersion":"1.0.2","root":{"path":"/nonexistent/ember-rootfs"},
            "process":{"args":["/bin/true"],"cwd":"/","user":{"uid":0,"gid":0}},"linux":{}}"#;
        let e = prepare("c1", json, "").unwrap_err();
        assert!(e.to_string().starts_with("root.path:"), "{e}");
        assert!(e.to_string().contains("/nonexistent/ember-rootfs"), "{e}");
    }

    #[test]
    fn net_sysctls_of_a_container_in_the_agents_network_namespace_are_taken_out() {
        let spec = |namespaces: &str| {
            parse::<Spec>(
                "spec_json",
                &format!(
                    r#"{{"ociVersion":"1.0.2","linux":{{"namespaces":[{namespaces}],
                    "sysctl":{{"net.ipv4.ping_group_range":"0 2147483647",
                    "net.ipv4.ip_unprivileged_port_start":"0","kernel.msgmax":"8192"}}}}}}"#
                ),
            )
            .unwrap()
        };
        let mut shared = spec(r#"{"type":"pid"},{"type":"mount"}"#);
        assert_eq!(
            take_shared_network_sysctls(&mut shared),
            [
                ("net.ipv4.ip_unprivileged_port_start".into(), "0".into()),
                ("net.ipv4.ping_group_range".into(), "0 2147483647".into()),
            ]
        );
        let left = shared.linux().as_ref().unwrap().sysctl().clone().unwrap();
        assert_eq!(left.keys().collect::<Vec<_>>(), ["kernel.msgmax"]);
        // A container with a network namespace of its own keeps them: libcontainer sets
        // them there.
        let mut own = spec(r#"{"type":"pid"},{"type":"network"}"#);
        assert!(take_shared_network_sysctls(&mut own).is_empty());
        assert_eq!(
            own.linux()
                .as_ref()
                .unwrap()
                .sysctl()
                .as_ref()
                .unwrap()
                .len(),
            3
        );
    }

    #[test]
    fn ids_are_checked() {
        assert!(check_id("container_id", "abc-1.2_x").is_ok());
        assert!(check_id("container_id", "").is_err());
        assert!(check_id("container_id", "../x").is_err());
        let e = check_id("exec_id", "a/b").unwrap_err().to_string();
        assert!(e.starts_with("exec_id:"), "{e}");
        assert!(e.contains(r#""a/b" is not a valid id: holds '/'"#), "{e}");
    }
}
