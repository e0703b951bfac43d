//! CRI-O-style pods: whether a container gets its own sandbox or joins another container's,
//! read from its annotations, and the checks that the sandbox it names can take it.
//!
//! CRI-O's `io.kubernetes.cri-o.ContainerType` and `io.kubernetes.cri-o.SandboxID`, or
//! containerd CRI's `io.kubernetes.cri.container-type` and `io.kubernetes.cri.sandbox-id`
//! (CRI-O's are read first). A container of type `sandbox`, or one without a type, gets its
//! own sandbox; one of type `container` joins the sandbox of the container its sandbox-id
//! annotation names, which must be a `sandbox`-type container of the same `--root` whose
//! holder still runs.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::store::{Record, Status, Store};
use crate::oci::{CRIO_CONTAINER_TYPE, CRIO_SANDBOX_ID, CRI_CONTAINER_TYPE, CRI_SANDBOX_ID};

/// The container-type and sandbox-id annotations, CRI-O's first.
const ANNOTATIONS: [(&str, &str); 2] = [
    (CRIO_CONTAINER_TYPE, CRIO_SANDBOX_ID),
    (CRI_CONTAINER_TYPE, CRI_SANDBOX_ID),
];

/// Why a container's pod annotations cannot be followed.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    /// A container type that is neither `sandbox` nor `container`.
    #[error("annotation {annotation} is {value:?}: it must be \"sandbox\" or \"container\"")]
    BadType {
        /// The container-type annotation.
        annotation: &'static str,
        /// Its value.
        value: String,
    },
    /// Type `container` without a sandbox id.
    #[error("annotation {type_annotation} is \"container\" but no {id_annotation} annotation names the sandbox to join")]
    NoSandboxId {
        /// The container-type annotation.
        type_annotation: &'static str,
        /// The sandbox-id annotation that is missing.
        id_annotation: &'static str,
    },
    /// The named sandbox is not a container of this `--root`.
    #[error("annotation {annotation} names sandbox {sandbox}, which does not exist (no container {sandbox} under {root}): create the sandbox container first")]
    NoSuchSandbox {
        /// The sandbox-id annotation.
        annotation: &'static str,
        /// Its value.
        sandbox: String,
        /// The `--root` directory.
        root: PathBuf,
    },
    /// The named sandbox container's holder (which owns the sandbox) is gone.
    #[error("annotation {annotation} names sandbox {sandbox}, whose holder is gone (the sandbox container is {status}): delete it and create the pod again")]
    SandboxGone {
        /// The sandbox-id annotation.
        annotation: &'static str,
        /// Its value.
        sandbox: String,
        /// The sandbox container's status.
        status: &'static str,
    },
    /// The named container is not of type `sandbox`.
    #[error("annotation {annotation} names container {sandbox}, which is not a sandbox (its {CRIO_CONTAINER_TYPE} or {CRI_CONTAINER_TYPE} annotation is not \"sandbox\")")]
    NotASandbox {
        /// The sandbox-id annotation.
        annotation: &'static str,
        /// Its value.
        sandbox: String,
    },
    /// The sandbox's holder could not be asked, or refused.
    #[error("sandbox {sandbox}: its holder {socket}: {message}")]
    Owner {
        /// The sandbox container's id.
        sandbox: String,
        /// The holder's socket.
        socket: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// Where a container runs, by its annotations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodRole {
    /// No pod annotations: its own sandbox.
    Standalone,
    /// Type `sandbox`: its own sandbox, which containers of type `container` may join.
    Sandbox,
    /// Type `container`: joins the sandbox of container `sandbox`.
    Member {
        /// The sandbox container's id.
        sandbox: String,
        /// The annotation that named it (for error messages).
        annotation: &'static str,
    },
}

/// The role the annotations give a container.
pub fn role(annotations: &BTreeMap<String, String>) -> Result<PodRole, PodError> {
    for (type_key, id_key) in ANNOTATIONS {
        let Some(value) = annotations.get(type_key) else {
            continue;
        };
        return match value.as_str() {
            "sandbox" => Ok(PodRole::Sandbox),
            "container" => match annotations.get(id_key).filter(|s| !s.is_empty()) {
                Some(sandbox) => Ok(PodRole::Member {
                    sandbox: sandbox.clone(),
                    annotation: id_key,
                }),
                None => Err(PodError::NoSandboxId {
                    type_annotation: type_key,
                    id_annotation: id_key,
                }),
            },
            _ => Err(PodError::BadType {
                annotation: type_key,
                value: value.clone(),
            }),
        };
    }
    Ok(PodRole::Standalone)
}

/// The record of the sandbox container a [`PodRole::Member`] joins, after checking that it
/// exists, is of type `sandbox` and that its holder still runs.
pub fn sandbox_record(
    store: &Store,
    sandbox: &str,
    annotation: &'static str,
) -> Result<Record, super::OciCliError> {
    let no_such = || PodError::NoSuchSandbox {
        annotation,
        sandbox: sandbox.to_string(),
        root: store.root().to_path_buf(),
    };
    let dir = match store.open(sandbox) {
        Ok(d) => d,
        Err(super::OciCliError::NotExist { .. } | super::OciCliError::BadId { .. }) => {
            return Err(no_such().into())
        }
        Err(e) => return Err(e),
    };
    let record = dir.record()?;
    if role(&record.annotations).ok() != Some(PodRole::Sandbox) {
        return Err(PodError::NotASandbox {
            annotation,
            sandbox: sandbox.to_string(),
        }
        .into());
    }
    match dir.status(&record) {
        Status::Created | Status::Running | Status::Paused => Ok(record),
        s => Err(PodError::SandboxGone {
            annotation,
            sandbox: sandbox.to_string(),
            status: s.as_str(),
        }
        .into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn annotations_give_the_role() {
        assert_eq!(role(&ann(&[])).unwrap(), PodRole::Standalone);
        assert_eq!(
            role(&ann(&[(CRIO_CONTAINER_TYPE, "sandbox")])).unwrap(),
            PodRole::Sandbox
        );
        assert_eq!(
            role(&ann(&[(CRI_CONTAINER_TYPE, "sandbox")])).unwrap(),
            PodRole::Sandbox
        );
        assert_eq!(
            role(&ann(&[
                (CRIO_CONTAINER_TYPE, "container"),
                (CRIO_SANDBOX_ID, "pod1")
            ]))
            .unwrap(),
            PodRole::Member {
                sandbox: "pod1".into(),
                annotation: CRIO_SANDBOX_ID
            }
        );
        assert_eq!(
            role(&ann(&[
                (CRI_CONTAINER_TYPE, "container"),
                (CRI_SANDBOX_ID, "pod2")
            ]))
            .unwrap(),
            PodRole::Member {
                sandbox: "pod2".into(),
                annotation: CRI_SANDBOX_ID
            }
        );
    }

    #[test]
    fn bad_annotations_are_named() {
        let e = role(&ann(&[(CRIO_CONTAINER_TYPE, "pause")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(CRIO_CONTAINER_TYPE) && e.contains("\"pause\""),
            "{e}"
        );
        let e = role(&ann(&[(CRI_CONTAINER_TYPE, "container")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains(CRI_SANDBOX_ID), "{e}");
    }

    #[test]
    fn a_missing_sandbox_is_named_with_its_annotation() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::new(tmp.path());
        let e = sandbox_record(&store, "pod9", CRIO_SANDBOX_ID)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(
                "annotation io.kubernetes.cri-o.SandboxID names sandbox pod9, which does not exist"
            ),
            "{e}"
        );
    }
}
