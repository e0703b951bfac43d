//! The runtime options containerd passes in CreateTask: the `ConfigPath` that selects
//! ember's config file.
//!
//! CRI (and `ctr run --runtime-config-path`) send them as `runtimeoptions.v1.Options`
//! (`string type_url = 1; string config_path = 2; string config_body = 3;`). That message is
//! not in containerd-shim-protos, so its two string fields are decoded here with protobuf's
//! reader.

use std::path::PathBuf;

use protobuf::well_known_types::any::Any;
use protobuf::CodedInputStream;

/// The options ember understands.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RuntimeOptions {
    /// Config file to load instead of the default search.
    pub config_path: Option<PathBuf>,
}

/// Errors decoding options.
#[derive(Debug, thiserror::Error)]
pub enum OptionsError {
    /// The Any's value is not a valid options message.
    #[error("runtime options ({type_url}): cannot decode: {message}")]
    Decode {
        /// The Any's type.
        type_url: String,
        /// Why.
        message: String,
    },
}

/// Decodes containerd's options (absent or of another type: defaults).
pub fn decode(any: Option<&Any>) -> Result<RuntimeOptions, OptionsError> {
    let Some(any) = any else {
        return Ok(RuntimeOptions::default());
    };
    if !any.type_url.ends_with("runtimeoptions.v1.Options") {
        return Ok(RuntimeOptions::default());
    }
    let err = |e: protobuf::Error| OptionsError::Decode {
        type_url: any.type_url.clone(),
        message: e.to_string(),
    };
    let mut input = CodedInputStream::from_bytes(&any.value);
    let mut opts = RuntimeOptions::default();
    while let Some(tag) = input.read_raw_tag_or_eof().map_err(err)? {
        let (field, wire) = (tag >> 3, tag & 7);
        match (field, wire) {
            (2, 2) => {
                let p = input.read_string().map_err(err)?;
                if !p.is_empty() {
                    opts.config_path = Some(PathBuf::from(p));
                }
            }
            (_, w) => {
                let wt = protobuf::rt::WireType::new(w).ok_or_else(|| OptionsError::Decode {
                    type_url: any.type_url.clone(),
                    message: format!("bad wire type {w}"),
                })?;
                input.skip_field(wt).map_err(err)?;
            }
        }
    }
    Ok(opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(type_url: &str, config_path: &str) -> Any {
        let mut value = Vec::new();
        let mut os = protobuf::CodedOutputStream::vec(&mut value);
        os.write_string(1, "io.containerd.ember.v1.Options")
            .unwrap();
        os.write_string(2, config_path).unwrap();
        os.write_string(3, "body").unwrap();
        os.flush().unwrap();
        drop(os);
        Any {
            type_url: type_url.into(),
            value,
            ..Default::default()
        }
    }

    #[test]
    fn config_path_is_read() {
        let any = encode("runtimeoptions.v1.Options", "/etc/ember/pod.toml");
        assert_eq!(
            decode(Some(&any)).unwrap().config_path,
            Some(PathBuf::from("/etc/ember/pod.toml"))
        );
        assert_eq!(decode(None).unwrap(), RuntimeOptions::default());
        let other = encode("containerd.runc.v1.Options", "/x");
        assert_eq!(decode(Some(&other)).unwrap().config_path, None);
    }

    #[test]
    fn garbage_is_an_error_naming_the_type() {
        let any = Any {
            type_url: "runtimeoptions.v1.Options".into(),
            value: vec![0x12, 0x50, 0x41],
            ..Default::default()
        };
        let e = decode(Some(&any)).unwrap_err().to_string();
        assert!(e.contains("runtimeoptions.v1.Options"), "{e}");
    }
}
