//! The whole path, as alice, with the real binaries: container-prep and data-prep register and
//! ship, job-prep submits a real Slurm job that runs the real hpcs-node through the root broker,
//! follows it and fetches the sealed output, which holds exactly what the application received.

#![allow(clippy::unwrap_used, clippy::panic, clippy::expect_used)]

mod common;

use common::{DATA_MARKER, JobSpec, World};

#[test]
fn alice_runs_her_job_end_to_end_and_hostile_arguments_arrive_byte_for_byte() {
    let w = World::new();
    let canary = w.dir.join("pwned");
    let canary_s = canary.display().to_string();
    let (app, data) = w.prepare(&w.alice);
    assert!(app.info.starts_with(&w.alice.at_rest), "{app:?}");
    w.assert_no_plaintext();
    // Positive control of the plaintext scan: it finds the marker in alice's laptop input, and
    // across the boundary of its 64 KiB read chunks.
    assert!(!common::files_containing(&w.alice.laptop, DATA_MARKER).is_empty());
    let straddle = w.dir.join("scan-control");
    std::fs::create_dir(&straddle).unwrap();
    // The first read takes 64 KiB plus the needle's length; the marker starts 5 bytes before.
    let mut body = vec![b'x'; 64 * 1024 + DATA_MARKER.len() - 5];
    body.extend_from_slice(DATA_MARKER.as_bytes());
    std::fs::write(straddle.join("f"), &body).unwrap();
    assert_eq!(
        common::files_containing(&straddle, DATA_MARKER),
        vec![straddle.join("f")]
    );

    // Values of the env file, each a shell hazard; the file format has one line per variable.
    let env_values = [
        ("HOSTILE_QUOTE", "it's \"quoted\"".to_owned()),
        ("HOSTILE_SUBST", format!("$(touch {canary_s})")),
        ("HOSTILE_TICKS", format!("`touch {canary_s}`")),
        ("HOSTILE_SEMI", format!("x; touch {canary_s}; y")),
        ("HOSTILE_SPACES", "inner  spaces\tand a tab".to_owned()),
    ];
    let env_file = w.alice.laptop.join("job.env");
    let mut text = String::from("# hostile values for the container\n");
    for (k, v) in &env_values {
        text.push_str(&format!("{k}={v}\n"));
    }
    std::fs::write(&env_file, text).unwrap();
    common::chown_r(&env_file, w.alice.uid(), w.alice.gid());

    let args = hpcs_test_support::hostile_words(&canary_s);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let data_infos = [data.info.as_path()];
    let mut spec = JobSpec::new("happy", &app.info, &data_infos);
    spec.args = &argv;
    spec.env_file = Some(&env_file);
    let job = w.submit(&w.alice, &spec);
    job.run.expect_code(0, "job-prep --follow --fetch-output");
    assert!(!job.job_id.is_empty(), "no job id: {}", job.run.stdout);

    let out = job.output_dir();
    assert!(
        out.join("app-ran").is_file(),
        "no output in {}",
        out.display()
    );
    // Argument vector, byte for byte.
    let got = std::fs::read(out.join("argv")).unwrap();
    let mut want = Vec::new();
    for a in &args {
        want.extend_from_slice(a.as_bytes());
        want.push(0);
    }
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(&want),
        "the application's argv differs"
    );
    // Env file values, byte for byte.
    let env = std::fs::read_to_string(out.join("env")).unwrap();
    for (k, v) in &env_values {
        let line = format!("{k}={v}");
        assert!(
            env.lines().any(|l| l == line),
            "{k} did not arrive as {line:?}:\n{env}"
        );
    }
    // The dataset was decrypted for the application, and the output came back to alice.
    let secret = std::fs::read_to_string(out.join("secret-copy")).unwrap();
    assert_eq!(secret, format!("{DATA_MARKER} of alice\n"));
    let files = std::fs::read_to_string(out.join("data-files")).unwrap();
    assert!(files.contains("table.csv"), "{files}");
    // Nothing ran that should not have, and the cluster side holds no plaintext.
    assert!(!canary.exists(), "a hostile string was executed");
    w.assert_no_trace(&job);
    let sealed = job
        .workdir
        .join("output")
        .join(format!("{}.tar.age", job.job_id));
    assert!(sealed.is_file(), "no sealed output at {}", sealed.display());
    assert!(job.logs().contains(common::APP_STARTED), "{}", job.logs());
}
