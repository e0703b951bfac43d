//! mount(8)-style options, as the agent protocol's `Storage.options` carries them (and as
//! containerd describes a rootfs mount): the ones that are mount(2) flags, and the rest
//! joined as the data string. The agent (storages) and the runtime (containerd's rootfs
//! mounts, OCI mounts) both split them here.

/// Splits `options` into mount(2) flags (`libc::MS_*`) and the comma-joined data string.
/// `rw` and `defaults` clear nothing but are not data either.
pub fn split(options: &[String]) -> (libc::c_ulong, String) {
    let mut flags: libc::c_ulong = 0;
    let mut data = Vec::new();
    for o in options {
        match o.as_str() {
            "ro" => flags |= libc::MS_RDONLY,
            "rw" => flags &= !libc::MS_RDONLY,
            "defaults" => {}
            "nosuid" => flags |= libc::MS_NOSUID,
            "nodev" => flags |= libc::MS_NODEV,
            "noexec" => flags |= libc::MS_NOEXEC,
            "relatime" => flags |= libc::MS_RELATIME,
            "noatime" => flags |= libc::MS_NOATIME,
            "sync" => flags |= libc::MS_SYNCHRONOUS,
            "rbind" => flags |= libc::MS_BIND | libc::MS_REC,
            "bind" => flags |= libc::MS_BIND,
            other => data.push(other.to_string()),
        }
    }
    (flags, data.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_data_are_told_apart() {
        let (f, d) = split(&[
            "ro".into(),
            "nosuid".into(),
            "lowerdir=/a:/b".into(),
            "size=64m".into(),
        ]);
        assert_eq!(f, libc::MS_RDONLY | libc::MS_NOSUID);
        assert_eq!(d, "lowerdir=/a:/b,size=64m");
        let (f, d) = split(&["ro".into(), "rw".into(), "defaults".into()]);
        assert_eq!((f, d.as_str()), (0, ""));
        assert_eq!(split(&["rbind".into()]).0, libc::MS_BIND | libc::MS_REC);
    }
}
