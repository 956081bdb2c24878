//! Tells the fuzz targets whether a sanitizer is on (`cfg(sanitized)`).
//!
//! Without one they install the CLI's mimalloc allocator (blksnap-alloc):
//! glibc's malloc and free were about 9 % of a stable libFuzzer run of
//! `lifecycle`. With one (cargo-fuzz's default `-Zsanitizer=address`, as
//! ClusterFuzzLite and OSS-Fuzz build) they must keep glibc's, the only
//! heap that ASan and LeakSanitizer intercept: a leak in a mimalloc heap
//! would go unreported. cargo-fuzz passes the sanitizer in RUSTFLAGS, which
//! cargo hands to build scripts as CARGO_ENCODED_RUSTFLAGS.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(sanitized)");
    println!("cargo::rerun-if-env-changed=CARGO_ENCODED_RUSTFLAGS");
    let flags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    if names_sanitizer(&flags) {
        println!("cargo::rustc-cfg=sanitized");
    }
}

/// Whether the flags (separated by 0x1f) turn a sanitizer on: `-Zsanitizer=X`
/// in one flag, or `-Z` followed by `sanitizer=X`.
fn names_sanitizer(flags: &str) -> bool {
    let mut previous = "";
    for flag in flags.split('\u{1f}') {
        let value = flag
            .strip_prefix("-Z")
            .or((previous == "-Z").then_some(flag))
            .unwrap_or("");
        if value.starts_with("sanitizer=") {
            return true;
        }
        previous = flag;
    }
    false
}
