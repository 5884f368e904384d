//! The engine implementation against the test stack's real dockerd.
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::collections::HashMap;

use hpcs_node::container::{Bind, ContainerSpec, Engine};
use hpcs_node::policy::{Gpus, Granted, NetworkMode};

fn granted() -> Granted {
    Granted {
        network: NetworkMode::None,
        gpus: Gpus::None,
        mounts: vec![],
        pids_limit: 64,
        read_only_rootfs: true,
        workdir: None,
        shm_size: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_runs_confined_as_the_user() {
    let Some(env) = common::Env::load() else {
        return;
    };
    let engine = common::engine(&env).await;
    let tag = format!("{}:t", common::unique("hpcs-node-test"));
    let (archive, expected_id) = common::unique_image_archive(
        &engine,
        env.get("HPCS_TEST_IMAGE"),
        &tag,
        &[("probe.txt", b"probe")],
    )
    .await;

    // Through the sanitiser, as the runtime does: the tag is recorded and not applied.
    let (stream, facts) = hpcs_node::image::spawn_sanitized(move || {
        Ok(Box::new(std::io::Cursor::new(archive)) as Box<dyn std::io::Read + Send>)
    });
    let id = engine.load_image(stream).await.expect("load");
    assert_eq!(id, expected_id);
    assert_eq!(facts.await.unwrap().unwrap().tags, vec![tag.clone()]);
    assert!(
        engine.docker().inspect_image(&tag).await.is_err(),
        "the tag must not be applied"
    );

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.txt"), "hello").unwrap();
    let spec = ContainerSpec {
        name: common::unique("hpcs-node-test"),
        image: id.clone(),
        entrypoint: None,
        cmd: vec![
            "sh".into(),
            "-c".into(),
            "echo uid=$(id -u) gid=$(id -g) groups=$(id -G); grep -E '^(CapEff|CapPrm|NoNewPrivs)' /proc/self/status; ls /sys/class/net; \
             cat /data/in.txt; echo; cat /probe.txt; echo; touch /rootfs-write 2>/dev/null && echo ROOTFS-WRITABLE; \
             echo to-stderr >&2; exit 3"
                .into(),
        ],
        uid: 2001,
        gid: 2001,
        groups: vec![3000, 3001],
        env: vec!["SLURM_JOB_ID=42".into()],
        binds: vec![Bind { host: dir.path().to_owned(), container: "/data".into(), read_only: true }],
        granted: granted(),
        cgroup_parent: None,
        labels: HashMap::from([("io.hpcs.test".to_owned(), "1".to_owned())]),
    };
    let cid = engine.create(&spec).await.expect("create");
    let mut out = common::Collect::default();
    let code = engine.run_attached(&cid, &mut out).await.expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(code, 3, "{stdout}");
    assert!(
        stdout.contains("uid=2001 gid=2001 groups=2001 3000 3001"),
        "{stdout}"
    );
    assert!(stdout.contains("CapEff:\t0000000000000000"), "{stdout}");
    assert!(stdout.contains("CapPrm:\t0000000000000000"), "{stdout}");
    assert!(stdout.contains("NoNewPrivs:\t1"), "{stdout}");
    let nets: Vec<&str> = stdout
        .lines()
        .filter(|l| *l == "lo" || l.starts_with("eth"))
        .collect();
    assert_eq!(nets, ["lo"], "{stdout}");
    assert!(stdout.contains("hello"), "{stdout}");
    assert!(stdout.contains("probe"), "{stdout}");
    assert!(!stdout.contains("ROOTFS-WRITABLE"), "{stdout}");
    assert_eq!(String::from_utf8_lossy(&out.stderr).trim(), "to-stderr");

    engine
        .remove_container(&cid)
        .await
        .expect("remove container");
    engine.remove_image(&id).await.expect("remove image");
    assert!(engine.docker().inspect_container(&cid, None).await.is_err());
    assert!(
        engine.docker().inspect_image(&id).await.is_err(),
        "image must be gone"
    );
    // Removing twice is fine (cleanup paths may overlap).
    engine.remove_container(&cid).await.expect("remove again");
    engine.remove_image(&id).await.expect("remove image again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tagged_images_of_others_are_left_alone() {
    let Some(env) = common::Env::load() else {
        return;
    };
    let engine = common::engine(&env).await;
    let base = env.get("HPCS_TEST_IMAGE");
    let id = engine
        .docker()
        .inspect_image(base)
        .await
        .unwrap()
        .id
        .unwrap();
    engine.remove_image(&id).await.expect("no error");
    assert!(
        engine.docker().inspect_image(base).await.is_ok(),
        "the stack's image must survive"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_image_stream_loads_nothing() {
    let Some(env) = common::Env::load() else {
        return;
    };
    let engine = common::engine(&env).await;
    let (stream, _h) = hpcs_node::image::spawn_sanitized(|| {
        Err(std::io::Error::other("ciphertext digest mismatch"))
    });
    let err = engine.load_image(stream).await.unwrap_err();
    assert!(
        matches!(err, hpcs_node::container::EngineError::ImageStream(_)),
        "{err:?}"
    );
}
