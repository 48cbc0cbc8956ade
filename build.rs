//! Generates the KEDA external scaler's gRPC messages and service from `proto/` with protox (a
//! protobuf compiler in Rust: building levee needs no `protoc`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(["externalscaler.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        // No `connect` helper: it needs tonic's channel feature, which only the tests use.
        .build_transport(false)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
