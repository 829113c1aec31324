//! Compiles `../proto/todo/v1/todo.proto` without a system `protoc` (protox): the messages and
//! the generated client only. The server crate generates its server stubs against these
//! messages (`extern_path`), so a message is one type whether a caller or the server holds it.

const PROTO: &str = "../proto/todo/v1/todo.proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=../proto");
    let descriptors = protox::compile([PROTO], ["../proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .compile_fds(descriptors)?;
    Ok(())
}
