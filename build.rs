//! Compiles the wire contract. `protoc` comes from the vendored crate, so a fresh machine
//! needs nothing installed by hand; a `PROTOC` set in the environment still wins.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    }
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure().file_descriptor_set_path(out.join("creditd_descriptor.bin")).compile_protos(
        &["proto/creditd/v1/metering.proto", "proto/creditd/v1/admin.proto", "proto/creditd/v1/reporting.proto"],
        &["proto"],
    )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
