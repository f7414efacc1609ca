/work/main/benches/noop-filter/target/wasm32-wasip1/release/deps/equivalent-bd5ccf3e769c7874.d: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/equivalent-1.0.3/src/lib.rs

/work/main/benches/noop-filter/target/wasm32-wasip1/release/deps/libequivalent-bd5ccf3e769c7874.rlib: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/equivalent-1.0.3/src/lib.rs

/work/main/benches/noop-filter/target/wasm32-wasip1/release/deps/libequivalent-bd5ccf3e769c7874.rmeta: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/equivalent-1.0.3/src/lib.rs

/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/equivalent-1.0.3/src/lib.rs:
