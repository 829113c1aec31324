//! Compiles `proto/todo/v1/todo.proto` without a system `protoc`: protox parses the proto
//! (it knows the google/protobuf well-known types), tonic-prost-build generates the server
//! stubs from the descriptor set, over the messages of the `todo-client` crate (`extern_path`:
//! one type per message for the server and its callers), and the encoded descriptor set is
//! written to OUT_DIR for server reflection (`compile_fds` does not write it itself).

use std::{env, fs, path::PathBuf};

use prost::Message;

const PROTO: &str = "proto/todo/v1/todo.proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile([PROTO], ["proto"])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out_dir.join("todo_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .extern_path(".todo.v1", "::todo_client::proto")
        .compile_fds(descriptors)?;
    Ok(())
}
