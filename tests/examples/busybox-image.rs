//! Writes the offline busybox OCI image tarball: `busybox-image OUT NAME [--pause]`.
//!
//! `--pause` gives the image an entrypoint that sleeps until SIGTERM (the CRI sandbox
//! image stand-in). Prints the manifest digest.

use std::path::PathBuf;
use std::process::ExitCode;

use ember_tests::image::{busybox_image_tar, pause_image_tar};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let pause = args.iter().any(|a| a == "--pause");
    let pos: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let [out, name] = pos.as_slice() else {
        eprintln!("usage: busybox-image OUT NAME [--pause]   (e.g. busybox.tar docker.io/library/busybox:ember)");
        return ExitCode::from(2);
    };
    let out = PathBuf::from(out);
    let built = if pause {
        pause_image_tar(&out, name)
    } else {
        busybox_image_tar(&out, name)
    };
    match built {
        Ok(d) => {
            println!("{} {}", out.display(), d.manifest);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("busybox-image: {e}");
            ExitCode::FAILURE
        }
    }
}
