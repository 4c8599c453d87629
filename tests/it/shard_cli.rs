//! `mobilenet classify --shard K/N|auto --output FILE --resume` end to end (`mobilenet::shard`):
//! N processes over one folder give, merged and sorted, exactly the lines of one process; files
//! added in another subfolder move no file to another shard; a run killed half-way and resumed
//! (or resumed from a cut `FILE.partial` beside an old `FILE`) gives the same lines, none twice;
//! bad usage exits 2 with a message.
//!
//! Every run classifies with `--batch-size 1`, so each image's numbers do not depend on which
//! images share its batch (batching is checked to 1e-5 in `classify_cli`), and lines compare
//! byte for byte.

use crate::common::{model_fixture, BIN};
use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes a `width` x `height` RGB PNG at `path` whose pixels come from `seed`.
fn write_png(path: &Path, width: u32, height: u32, seed: u64) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut encoder = png::Encoder::new(file, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let pixels: Vec<u8> = (0..width * height * 3)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 56) as u8
        })
        .collect();
    let mut writer = encoder.write_header().unwrap();
    writer.write_image_data(&pixels).unwrap();
}

/// `count` small PNGs under `root/sub/`, spread over nested folders; their paths.
fn write_images(root: &Path, sub: &str, count: usize, size: u32) -> Vec<PathBuf> {
    (0..count)
        .map(|i| {
            let path = root
                .join(sub)
                .join(format!("class_{}", i % 3))
                .join(format!("img_{i:03}.png"));
            write_png(
                &path,
                size,
                size * 3 / 4,
                i as u64 + 1000 * sub.len() as u64,
            );
            path
        })
        .collect()
}

/// A `mobilenet classify` command on the CPU with the small fixture model, one image per
/// batch, 64 x 64 crops unless `args` says `--crop`, over `paths`, with `args`.
fn classify(args: &[&str], paths: &[&Path]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("classify")
        .args(["--device", "cpu", "--threads", "1", "--workers", "2"])
        .args(["--batch-size", "1"])
        .args(match args.contains(&"--crop") {
            true => &[][..],
            false => &["--resize", "64", "--crop", "64"][..],
        })
        .arg("--weights")
        .arg(model_fixture("v2_050.safetensors"))
        .args(args)
        .args(paths)
        .env_remove("JOB_COMPLETION_INDEX")
        .env_remove("SLURM_ARRAY_TASK_ID");
    cmd
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `cmd`, checking it exits with `code` and does not panic.
fn run(cmd: &mut Command, code: i32) -> Output {
    let out = cmd.output().unwrap();
    let err = stderr(&out);
    assert!(!err.contains("panicked"), "{cmd:?} panicked: {err}");
    assert_eq!(out.status.code(), Some(code), "{cmd:?}: stderr: {err}");
    out
}

/// The lines of a JSON Lines file (every one complete).
fn lines(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "{}",
        path.display()
    );
    text.lines().map(str::to_string).collect()
}

fn record_path(line: &str) -> String {
    let value: serde_json::Value = serde_json::from_str(line).unwrap();
    value["path"].as_str().unwrap().to_string()
}

fn sorted(mut lines: Vec<String>) -> Vec<String> {
    lines.sort();
    lines
}

/// Asserts that no path has two lines.
fn assert_unique(lines: &[String]) {
    let mut seen = HashSet::new();
    for line in lines {
        assert!(seen.insert(record_path(line)), "twice: {line}");
    }
}

/// `out.jsonl` in `dir` written by one process over `tree`: the reference lines.
fn single_process(dir: &Path, tree: &Path, code: i32) -> Vec<String> {
    let file = dir.join("single.jsonl");
    let out = run(
        &mut classify(&["--output", file.to_str().unwrap()], &[tree]),
        code,
    );
    assert!(out.stdout.is_empty(), "--output leaves stdout empty");
    lines(&file)
}

/// Runs the `n` shards of `tree` at once, each writing `part-K.jsonl` in `dir`; their lines.
fn shards(dir: &Path, tree: &Path, n: usize) -> Vec<Vec<String>> {
    let files: Vec<PathBuf> = (0..n)
        .map(|k| dir.join(format!("part-{k}.jsonl")))
        .collect();
    let children: Vec<Child> = files
        .iter()
        .enumerate()
        .map(|(k, file)| {
            let shard = format!("{k}/{n}");
            classify(
                &["--shard", &shard, "--output", file.to_str().unwrap()],
                &[tree],
            )
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    children
        .into_iter()
        .zip(&files)
        .map(|(child, file)| {
            let out = child.wait_with_output().unwrap();
            let part = lines(file);
            let failed = part.iter().any(|l| l.contains("\"error\""));
            assert_eq!(
                out.status.code(),
                Some(failed as i32),
                "{}: exit 1 exactly when a line is an error; stderr: {}",
                file.display(),
                stderr(&out)
            );
            part
        })
        .collect()
}

#[test]
fn shards_merged_equal_one_process() {
    let dir = scratch("shard_merge");
    let tree = dir.join("tree");
    write_images(&tree, "a", 14, 40);
    write_images(&tree, "b/deeper", 7, 33);
    // An input that fails: its error line lands in one shard too.
    std::fs::write(tree.join("a/broken.png"), "not an image").unwrap();
    let single = single_process(&dir, &tree, 1);
    assert_eq!(single.len(), 22);
    assert_unique(&single);
    // The file holds what --json prints.
    let json = run(&mut classify(&["--json"], &[&tree]), 1);
    let printed: Vec<String> = String::from_utf8(json.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(printed, single, "--output vs --json");

    let parts = shards(&dir, &tree, 3);
    for (k, part) in parts.iter().enumerate() {
        assert!(!part.is_empty(), "shard {k}/3 is empty");
        // Within a shard, inputs keep their sorted order.
        let paths: Vec<String> = part.iter().map(|l| record_path(l)).collect();
        assert!(paths.windows(2).all(|w| w[0] < w[1]), "{paths:?}");
    }
    let merged: Vec<String> = parts.concat();
    assert_eq!(
        sorted(merged),
        sorted(single.clone()),
        "3 shards vs 1 process"
    );

    // --shard 0/1 is everything, in the same order.
    let all = dir.join("all.jsonl");
    run(
        &mut classify(
            &["--shard", "0/1", "--output", all.to_str().unwrap()],
            &[&tree],
        ),
        1,
    );
    assert_eq!(lines(&all), single);
}

/// Which shard of 3 each image of `tree` lands in, by running the shards.
fn assignment(dir: &Path, tree: &Path) -> BTreeMap<String, usize> {
    let mut owner = BTreeMap::new();
    for (k, part) in shards(dir, tree, 3).iter().enumerate() {
        for line in part {
            assert!(owner.insert(record_path(line), k).is_none(), "{line}");
        }
    }
    owner
}

#[test]
fn added_files_move_nothing() {
    let dir = scratch("shard_stable");
    let tree = dir.join("tree");
    write_images(&tree, "old", 12, 36);
    let before = assignment(&dir, &tree);
    assert_eq!(before.len(), 12);
    write_images(&tree, "new", 15, 36);
    write_images(&tree, "old/more", 4, 36);
    let after = assignment(&dir, &tree);
    assert_eq!(after.len(), 31);
    for (path, k) in &before {
        assert_eq!(after.get(path), Some(k), "{path} moved");
    }
}

/// Waits until `file` has at least `n` complete lines (or the child exits).
fn wait_for_lines(child: &mut Child, file: &Path, n: usize) {
    let start = Instant::now();
    loop {
        let count = std::fs::read(file).map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count());
        if count >= n || child.try_wait().unwrap().is_some() {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no lines in {}",
            file.display()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn killed_run_resumes_without_duplicates() {
    let dir = scratch("shard_killed");
    let tree = dir.join("tree");
    write_images(&tree, "x", 40, 300);
    // Full-size crops: slow enough (tens of ms an image) for the kill to come half-way.
    let slow = ["--resize", "256", "--crop", "224"];
    let reference = dir.join("single.jsonl");
    run(
        &mut classify(
            &[&["--output", reference.to_str().unwrap()], &slow[..]].concat(),
            &[&tree],
        ),
        0,
    );
    let single = lines(&reference);
    assert_eq!(single.len(), 40);

    let file = dir.join("out.jsonl");
    let partial = dir.join("out.jsonl.partial");
    let args = [&["--output", file.to_str().unwrap(), "--resume"], &slow[..]].concat();
    let mut child = classify(&args, &[&tree])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_lines(&mut child, &partial, 3);
    assert!(
        child.try_wait().unwrap().is_none(),
        "finished before the kill"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!file.exists(), "no FILE from a killed run");
    let done = std::fs::read_to_string(&partial).unwrap();
    let done_lines = done.matches('\n').count();
    assert!(
        (3..40).contains(&done_lines),
        "{done_lines} lines before the kill"
    );
    println!("killed after {done_lines} of 40 lines");

    // Resumed, it classifies only what is missing.
    let out = run(&mut classify(&args, &[&tree]), 0);
    assert!(
        stderr(&out).contains(&format!("{done_lines} input(s) done")),
        "{}",
        stderr(&out)
    );
    let resumed = lines(&file);
    assert!(!partial.exists(), "FILE.partial is removed at the end");
    assert_unique(&resumed);
    assert_eq!(resumed.len(), 40);
    // The kept lines come first, as they were.
    let kept: Vec<&str> = done.lines().take(done_lines).collect();
    assert_eq!(&resumed[..done_lines], kept.as_slice());
    assert_eq!(
        sorted(resumed.clone()),
        sorted(single),
        "killed + resumed vs one run"
    );

    // Resuming a finished file classifies nothing and keeps it.
    let again = run(&mut classify(&args, &[&tree]), 0);
    assert!(
        stderr(&again).contains("40 input(s) done, 0 to go"),
        "{}",
        stderr(&again)
    );
    assert_eq!(lines(&file), resumed);
}

#[test]
fn resume_merges_file_and_a_cut_partial() {
    let dir = scratch("shard_resume_cut");
    let tree = dir.join("tree");
    write_images(&tree, "y", 12, 32);
    std::fs::write(tree.join("y/z_broken.png"), b"").unwrap();
    let single = single_process(&dir, &tree, 1);
    assert_eq!(single.len(), 13);
    let last = single.iter().position(|l| l.contains("\"error\"")).unwrap();
    assert_eq!(last, 12, "the broken file sorts last");

    // An earlier run finished FILE with 4 lines (and the error line); a later one was killed
    // after 3 more lines and half of the next.
    let file = dir.join("out.jsonl");
    let old: Vec<String> = single[..4].iter().chain(&single[12..]).cloned().collect();
    std::fs::write(&file, old.join("\n") + "\n").unwrap();
    let mut partial = std::fs::File::create(dir.join("out.jsonl.partial")).unwrap();
    for line in &single[4..7] {
        writeln!(partial, "{line}").unwrap();
    }
    write!(partial, "{}", &single[7][..single[7].len() / 2]).unwrap();
    drop(partial);

    // Resumes, checking the exit code; the stderr.
    let resume = |code| {
        let args = ["--output", file.to_str().unwrap(), "--resume"];
        stderr(&run(&mut classify(&args, &[&tree]), code))
    };
    let err = resume(1);
    assert!(err.contains("8 input(s) done, 5 to go"), "{err}");
    assert!(
        err.contains("1 of 13 input(s) failed"),
        "the kept error counts: {err}"
    );
    let resumed = lines(&file);
    assert_unique(&resumed);
    assert_eq!(&resumed[..5], old.as_slice(), "FILE's old lines first");
    assert_eq!(&resumed[5..8], &single[4..7], "then FILE.partial's");
    assert_eq!(sorted(resumed), sorted(single));

    // A line that is not a result is an error, not silently dropped.
    std::fs::write(&file, "{\"path\": \"a.png\", \"top\": []}\n[1, 2]\n").unwrap();
    let err = resume(2);
    assert!(
        err.contains("out.jsonl: line 2 is not a classify result"),
        "{err}"
    );
}

#[test]
fn shard_auto_reads_kubernetes_and_slurm() {
    let dir = scratch("shard_auto");
    let tree = dir.join("tree");
    write_images(&tree, "w", 9, 32);
    let by_hand = dir.join("by_hand.jsonl");
    run(
        &mut classify(
            &["--shard", "1/3", "--output", by_hand.to_str().unwrap()],
            &[&tree],
        ),
        0,
    );
    let envs: [&[(&str, &str)]; 2] = [
        &[("JOB_COMPLETION_INDEX", "1"), ("MOBILENET_SHARDS", "3")],
        &[
            ("SLURM_ARRAY_TASK_ID", "5"),
            ("SLURM_ARRAY_TASK_COUNT", "3"),
            ("SLURM_ARRAY_TASK_MIN", "4"),
            ("SLURM_ARRAY_TASK_MAX", "6"),
        ],
    ];
    for (i, env) in envs.iter().enumerate() {
        let file = dir.join(format!("auto-{i}.jsonl"));
        let mut cmd = classify(
            &["--shard", "auto", "--output", file.to_str().unwrap()],
            &[&tree],
        );
        cmd.envs(env.iter().copied());
        let out = run(&mut cmd, 0);
        assert!(
            stderr(&out).contains(&format!("shard 1/3 (from {})", env[0].0)),
            "{}",
            stderr(&out)
        );
        assert_eq!(lines(&file), lines(&by_hand), "{env:?}");
    }
}

#[test]
fn usage_errors_exit_2_with_a_message() {
    let dir = scratch("shard_usage");
    let image = dir.join("one.png");
    write_png(&image, 8, 8, 1);
    let file = dir.join("out.jsonl");
    let out_arg = file.to_str().unwrap();
    let cases: [(&[&str], &str); 6] = [
        (&["--shard", "3/3"], "K must be less than N"),
        (&["--shard", "1/0"], "N must be at least 1"),
        (&["--shard", "half"], "expected K/N"),
        (&["--shard", "auto"], "neither JOB_COMPLETION_INDEX"),
        (&["--resume"], "--output"),
        (&["--output", dir.to_str().unwrap()], "is a folder"),
    ];
    for (args, message) in cases {
        let out = run(&mut classify(args, &[&image]), 2);
        let err = stderr(&out);
        assert!(
            err.contains(message),
            "{args:?}: want {message:?} in: {err}"
        );
        println!("{args:?}: {}", err.lines().next().unwrap_or_default());
    }
    let mut k8s = classify(&["--shard", "auto", "--output", out_arg], &[&image]);
    k8s.env("JOB_COMPLETION_INDEX", "0");
    let err = stderr(&run(&mut k8s, 2));
    assert!(err.contains("MOBILENET_SHARDS"), "{err}");
    assert!(!file.exists(), "nothing written on a usage error");
}
