//! Generates the gRPC code with the protoc shipped by `protoc-bin-vendored`, never the system's,
//! so that a fresh machine builds without installing anything.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc);
    // Shared buffers, not copies: a data plane hands out slices of its spool's frames.
    config.bytes([".keyplane.v1.ReportUsageRequestEncoded.records"]);
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure().compile_with_config(
        config,
        &["proto/keyplane/v1/keyplane.proto"],
        &["proto"],
    )?;
    Ok(())
}
