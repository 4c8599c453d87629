//! Data-parallel `train` under PyTorch's own launcher (`torchrun --no-python`), over loopback
//! with c10d's Gloo backend: 2 ranks x batch B take the same steps as 1 rank x batch 2B (with
//! GroupNorm, whose statistics do not depend on the batch), within 1e-5 of each tensor's scale;
//! a rank whose peer never comes fails after `--dist-timeout` with an error, not a hang.

use crate::common::BIN;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn out_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mobilenet-dist-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn common_args(steps: &str) -> Vec<String> {
    let fixtures = root().join("fixtures/train");
    let data = fixtures.join("data").display().to_string();
    let init = fixtures
        .join("v2_group8_sgd/init.pth")
        .display()
        .to_string();
    [
        "train",
        "--arch",
        "mobilenet_v2",
        "--width-mult",
        "0.35",
        "--norm",
        "group:8",
        "--dropout",
        "0",
        "--steps",
        steps,
        "--resolution",
        "64",
        "--augment",
        "none",
        "--no-shuffle",
        "--optimizer",
        "sgd",
        "--lr",
        "0.001",
        "--momentum",
        "0.9",
        "--weights",
        &init,
        "--data",
        &data,
        "--val",
        &data,
        "--device",
        "cpu",
        "--threads",
        "1",
        "--workers",
        "1",
        "--json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[test]
fn two_ranks_take_the_steps_of_one_with_twice_the_batch() {
    let one = out_dir("one");
    let two = out_dir("two");
    let run = Command::new(BIN)
        .args(common_args("3"))
        .args(["--batch-size", "4", "--out"])
        .arg(&one)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let run = Command::new(root().join(".venv/bin/torchrun"))
        .args(["--no-python", "--standalone", "--nproc-per-node", "2", BIN])
        .args(common_args("3"))
        .args(["--batch-size", "2", "--dist-timeout", "60", "--out"])
        .arg(&two)
        .env("OMP_NUM_THREADS", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    // Rank 0 alone reports: one summary line, 3 (global) steps.
    let stdout = String::from_utf8_lossy(&run.stdout);
    let done: Vec<&str> = stdout.lines().filter(|l| l.contains("\"done\"")).collect();
    assert_eq!(done.len(), 1, "{stdout}");
    assert!(done[0].contains("\"steps\":3"), "{stdout}");
    let read = |d: &Path| -> std::collections::HashMap<String, tch::Tensor> {
        mobilenet::weights::read(&d.join("model.pth"))
            .unwrap()
            .tensors
            .into_iter()
            .collect()
    };
    let (a, b) = (read(&one), read(&two));
    assert_eq!(a.len(), b.len());
    let mut worst = 0.0f64;
    for (k, x) in &a {
        let y = &b[k];
        let scale = x.abs().max().double_value(&[]).max(1e-12);
        let d = (x - y).abs().max().double_value(&[]) / scale;
        assert!(
            d <= 1e-5,
            "{k}: 2 ranks differ from 1 by {d:e} of its scale"
        );
        worst = worst.max(d);
    }
    eprintln!("2 ranks x 2 vs 1 rank x 4, 3 steps: worst difference {worst:e} of a tensor's scale");
    // Rank 0 alone wrote the outputs; the step count is the global one.
    let rows = std::fs::read_to_string(two.join("metrics.jsonl")).unwrap();
    assert_eq!(rows.lines().count(), 2);
    for d in [one, two] {
        std::fs::remove_dir_all(d).unwrap();
    }
}

#[test]
fn a_missing_rank_is_an_error_after_the_timeout() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = out_dir("alone");
    let started = Instant::now();
    let run = Command::new(BIN)
        .args(common_args("2"))
        .args(["--batch-size", "2", "--dist-timeout", "3", "--out"])
        .arg(&out)
        .env("WORLD_SIZE", "2")
        .env("RANK", "0")
        .env("LOCAL_RANK", "0")
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("rank 0 of 2 could not join"), "{stderr}");
    assert!(!stderr.contains("Exception raised from"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(60));
    // RANK beyond WORLD_SIZE is a usage error.
    let run = Command::new(BIN)
        .args(common_args("2"))
        .args(["--batch-size", "2", "--out"])
        .arg(&out)
        .env("WORLD_SIZE", "2")
        .env("RANK", "2")
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&run.stderr).contains("not below WORLD_SIZE 2"));
    let _ = std::fs::remove_dir_all(out);
}
