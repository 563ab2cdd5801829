//! Compiles the XDP program (`bpf/dialtone.bpf.c`) with clang for the BPF target into OUT_DIR;
//! `src/program.rs` embeds the object with `include_bytes!`.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let source = PathBuf::from("bpf/dialtone.bpf.c");
    println!("cargo:rerun-if-changed={}", source.display());
    println!("cargo:rerun-if-env-changed=CLANG");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let object = out.join("dialtone.bpf.o");
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".to_owned());
    let mut cmd = Command::new(&clang);
    cmd.args(["-target", "bpf", "-O2", "-g", "-Wall", "-Werror", "-c"]);
    // `-target bpf` does not search the host's multiarch include directory, where
    // <asm/types.h> (needed by <linux/bpf.h>) lives on Debian.
    if let Some(multiarch) = multiarch() {
        cmd.arg(format!("-I/usr/include/{multiarch}"));
    }
    cmd.arg(&source).arg("-o").arg(&object);
    let status = cmd.status().unwrap_or_else(|e| {
        panic!(
            "cannot run {clang} to build the XDP program ({e}); scripts/setup.sh installs clang, llvm and libbpf-dev"
        )
    });
    assert!(status.success(), "{clang} failed to compile {}", source.display());
}

/// The Debian multiarch triple of the target (`x86_64-linux-gnu`), when it has an include dir.
fn multiarch() -> Option<String> {
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").ok()?;
    let triple = match arch.as_str() {
        "x86_64" => "x86_64-linux-gnu",
        "aarch64" => "aarch64-linux-gnu",
        "x86" => "i386-linux-gnu",
        "riscv64" => "riscv64-linux-gnu",
        "powerpc64" => "powerpc64le-linux-gnu",
        "s390x" => "s390x-linux-gnu",
        _ => return None,
    };
    std::path::Path::new("/usr/include").join(triple).is_dir().then(|| triple.to_owned())
}
