fn main() {
    println!("cargo:rerun-if-changed=proto/keyflow.proto");
    prost_build::Config::new()
        .bytes(["."])
        .extern_path(".io.statefun.sdk.reqreply", "::keyflow_protocol::reqreply")
        .compile_protos(&["proto/keyflow.proto"], &["proto", "../protocol/proto"])
        .unwrap_or_else(|e| {
            panic!(
                "compiling engine/proto/keyflow.proto failed: {e}\n\
                 protoc is needed (Debian: `apt-get install protobuf-compiler`, or run scripts/setup.sh)"
            )
        });
}
