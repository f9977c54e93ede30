//! `cio-gateway demo` passes from the repository's root, through either Customer.io API: the
//! README's first command, kept true.

use std::process::Command;

fn demo(api: &str) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_cio-gateway"))
        .args(["demo", "--api", api])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("the demo runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    (output.status.success(), stdout)
}

#[test]
fn the_demo_passes_through_the_track_api() {
    let (ok, out) = demo("track");
    assert!(ok && out.contains("\nOK: "), "{out}");
    assert!(out.contains("delivering by the track API"), "{out}");
}

#[test]
fn the_demo_passes_through_the_pipelines_api() {
    let (ok, out) = demo("pipelines");
    assert!(ok && out.contains("\nOK: "), "{out}");
    assert!(out.contains("delivering by the pipelines API"), "{out}");
    assert!(out.contains("merged into dana: true"), "{out}");
}
