//! The image export stream against the test stack's real dockerd: what the encryptor sees is
//! exactly what `docker save` writes, and its ciphertext decrypts back to it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use container_prep::image::{Engine, archive_meta};
use hpcs_core::secret::AgeIdentity;

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

    let work = tempfile::tempdir().unwrap();
    let reader = engine.export(&stack.test_image);
    let identity = AgeIdentity::generate();
    let recipient = identity.to_public();
    let (ct, summary) = tokio::task::spawn_blocking(move || {
        let mut ct = Vec::new();
        let summary = hpcs_core::crypto::encrypt(reader, &mut ct, &[recipient]).unwrap();
        (ct, summary)
    })
    .await
    .unwrap();
    assert_eq!(ct.len() as u64, summary.size);
    let mut plain = Vec::new();
    hpcs_core::crypto::decrypt(&ct[..], &mut plain, &identity, Some(&summary)).unwrap();
    assert_eq!(plain.len(), saved.stdout.len());
    assert!(
        plain == saved.stdout,
        "decrypted export differs from docker save"
    );

    // The archive reader finds the same image ID as the engine.
    let archive = work.path().join("saved.tar");
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
