//! Links the functions a broker runs ahead of the rest of its code (`link/hot-text.ld`,
//! written by `link/order.py`): the kernel maps code in 64 KiB blocks around each page a
//! program first touches, so packing them leaves most of the binary unmapped.
//!
//! Release builds for Linux only; the script augments the linker's own (GNU ld and lld
//! alike). Not in builds with debug information (the `profiling` profile) nor with
//! `TERN_HOT_TEXT=off` (how `link/order.py` builds the binary it profiles): the hot
//! functions sit in their own output section, and valgrind reads symbols only in `.text`.

use std::env;
use std::io::Write;
use std::path::Path;

/// The dashboard's files, served gzipped as they are compressed here.
const DASHBOARD: &[&str] = &["dashboard.html", "dashboard.js"];

fn main() {
    compress_dashboard();
    link_hot_text();
}

fn compress_dashboard() {
    let out = env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    for name in DASHBOARD {
        let source = Path::new("src/admin").join(name);
        println!("cargo::rerun-if-changed={}", source.display());
        let text = std::fs::read(&source).expect("the dashboard's files are in src/admin");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&text).expect("compressing into memory");
        let packed = gz.finish().expect("compressing into memory");
        std::fs::write(Path::new(&out).join(format!("{name}.gz")), packed)
            .expect("OUT_DIR is writable");
    }
}

fn link_hot_text() {
    let script = Path::new("link/hot-text.ld");
    println!("cargo::rerun-if-changed={}", script.display());
    println!("cargo::rerun-if-env-changed=TERN_HOT_TEXT");
    let linux = env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux");
    let release = env::var("PROFILE").as_deref() == Ok("release");
    let debug_info = env::var("DEBUG").as_deref() == Ok("true");
    let off = env::var("TERN_HOT_TEXT").as_deref() == Ok("off");
    if linux && release && !debug_info && !off {
        let dir = env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
        let path = Path::new(&dir).join(script);
        println!("cargo::rustc-link-arg-bin=tern=-T");
        println!("cargo::rustc-link-arg-bin=tern={}", path.display());
    }
}
