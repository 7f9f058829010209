fn main() {
    let protos = [
        "proto/request-reply.proto",
        "proto/types.proto",
        "proto/kafka-egress.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    prost_build::Config::new()
        .bytes(["."])
        .compile_protos(&protos, &["proto"])
        .unwrap_or_else(|e| {
            panic!(
                "compiling the protocol's .proto files failed: {e}\n\
                 protoc is needed (Debian: `apt-get install protobuf-compiler`, or run scripts/setup.sh)"
            )
        });
}
