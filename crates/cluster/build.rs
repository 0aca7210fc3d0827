//! Generates the gRPC code for `proto/peer.proto` and `proto/admin.proto`
//! with the vendored protoc (none needs to be installed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    println!("cargo:rerun-if-changed=../../proto/peer.proto");
    println!("cargo:rerun-if-changed=../../proto/admin.proto");
    tonic_build::configure()
        .bytes(["."])
        .compile_protos(&["../../proto/peer.proto", "../../proto/admin.proto"], &["../../proto"])?;
    Ok(())
}
