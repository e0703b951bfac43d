//! Generates the protobuf messages and ttrpc services of `proto/agent.proto` with
//! `ttrpc-codegen` (pure Rust: no protoc) into `OUT_DIR`.

use std::fs;
use std::path::PathBuf;

use ttrpc_codegen::{Codegen, Customize, ProtobufCustomize};

fn main() {
    println!("cargo:rerun-if-changed=proto/agent.proto");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));

    Codegen::new()
        .out_dir(&out_dir)
        .include("proto")
        .input("proto/agent.proto")
        .rust_protobuf()
        .rust_protobuf_customize(ProtobufCustomize::default().gen_mod_rs(false))
        .customize(Customize {
            async_all: true,
            ..Default::default()
        })
        .run()
        .expect("ttrpc-codegen failed on proto/agent.proto");

    // The generated files start with inner attributes (`#![allow(..)]`) and inner doc
    // comments, which `include!` cannot take; the crate sets those lints on the modules.
    for name in ["agent.rs", "agent_ttrpc.rs"] {
        let path = out_dir.join(name);
        let text = fs::read_to_string(&path).expect("generated file is readable");
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with("#![") && !l.starts_with("//!"))
            .collect();
        fs::write(&path, kept.join("\n")).expect("generated file is writable");
    }
}
