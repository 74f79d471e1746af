//! What a newcomer or operator sees first: the binary's version, and the deploy files.

use crate::support::bin;

#[tokio::test]
async fn version_prints_the_package_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, out, _) = bin::run(dir.path(), &["--version"]).await;
    assert_eq!(code, 0);
    assert_eq!(out.trim(), format!("miteos-stream {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn the_license_file_matches_cargo_tomls_license() {
    let root = env!("CARGO_MANIFEST_DIR");
    let manifest = std::fs::read_to_string(format!("{root}/Cargo.toml")).expect("Cargo.toml");
    assert!(manifest.contains("license = \"Apache-2.0\""), "Cargo.toml names another license");
    let license = std::fs::read_to_string(format!("{root}/LICENSE")).expect("LICENSE exists");
    assert!(license.contains("Apache License") && license.contains("Version 2.0, January 2004"));
}

#[test]
fn the_container_image_runs_serve_as_a_non_root_user() {
    let root = env!("CARGO_MANIFEST_DIR");
    let file = std::fs::read_to_string(format!("{root}/deploy/Dockerfile")).expect("Dockerfile");
    let stages = file.lines().filter(|l| l.starts_with("FROM ")).count();
    assert!(stages >= 2, "multi-stage: build, then a runtime image");
    let user = file.lines().rfind(|l| l.starts_with("USER ")).expect("a USER line");
    assert_ne!(user.trim(), "USER root");
    let cmd = file.lines().rfind(|l| l.starts_with("CMD ")).expect("a CMD line");
    assert!(cmd.contains("\"serve\""), "{cmd}");
}
