//! Names the source revision the binary is built from, for `cio_gateway_build_info`: the
//! `CIO_GATEWAY_REVISION` variable where the build sets it (the Dockerfile's build argument,
//! since an image build has no .git), else `git rev-parse`, else "unknown".

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=CIO_GATEWAY_REVISION");
    // Watched only where they exist: a missing path would rerun this on every build.
    for path in [".git/HEAD", ".git/refs/heads", ".git/packed-refs"] {
        if Path::new(path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    let revision = std::env::var("CIO_GATEWAY_REVISION")
        .ok()
        .filter(|r| !r.trim().is_empty())
        .or_else(git_revision)
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=CIO_GATEWAY_REVISION={}", revision.trim());
}

fn git_revision() -> Option<String> {
    let output = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    String::from_utf8(output.stdout).ok()
}
