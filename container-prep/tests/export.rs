//! The image export stream against the test stack's real dockerd: what the encryptor sees is
//! exactly what `docker save` writes, and the spool decrypts back to it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use container_prep::image::{Engine, archive_meta};
use hpcs_client::prepare::encrypt_to_spool;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_encrypts_to_the_docker_save_bytes() {
    let Some(stack) = hpcs_test_support::Stack::load_or_skip() else {
        return;
    };
    let engine = Engine::connect(Some(&stack.docker_host)).await.unwrap();
    let meta = engine.inspect(&stack.test_image).await.unwrap();

    let saved = std::process::Command::new("docker")
        .args(["-H", &stack.docker_host, "save", &stack.test_image])
        .output()
        .unwrap();
    assert!(
        saved.status.success(),
        "{}",
        String::from_utf8_lossy(&saved.stderr)
    );

    let spool = tempfile::tempdir().unwrap();
    let reader = engine.export(&stack.test_image);
    let dir = spool.path().to_owned();
    let enc = tokio::task::spawn_blocking(move || encrypt_to_spool(reader, &dir, "test image"))
        .await
        .unwrap()
        .unwrap();
    let ct = std::fs::read(enc.spool_path()).unwrap();
    assert_eq!(ct.len() as u64, enc.summary().size);
    let mut plain = Vec::new();
    hpcs_core::crypto::decrypt(&ct[..], &mut plain, enc.identity(), Some(enc.summary())).unwrap();
    assert_eq!(plain.len(), saved.stdout.len());
    assert!(
        plain == saved.stdout,
        "decrypted export differs from docker save"
    );

    // The archive reader finds the same image ID as the engine.
    let archive = spool.path().join("saved.tar");
    std::fs::write(&archive, &saved.stdout).unwrap();
    let from_archive = archive_meta(&archive).unwrap();
    assert_eq!(from_archive.digest, meta.digest);
    assert_eq!(from_archive.env, meta.env);
}

#[tokio::test]
async fn missing_image_is_a_clear_error() {
    let Some(stack) = hpcs_test_support::Stack::load_or_skip() else {
        return;
    };
    let engine = Engine::connect(Some(&stack.docker_host)).await.unwrap();
    let err = engine
        .inspect("hpcs-test/does-not-exist:nope")
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("failed to inspect image hpcs-test/does-not-exist:nope"),
        "{err}"
    );
}
