//! Hostile command lines and images (issue 13): a PNG decompression bomb beside good images,
//! truncated JPEGs, out-of-range count flags, libtorch's C++ backtraces and decoder messages;
//! `train` steps too large for memory.
//!
//! Every run is the binary under an address-space limit (`RLIMIT_AS`, 4 GiB) and a deadline
//! (killed past it: a hang fails the test). Hostile files are generated into a temp folder.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::BIN;

/// The address-space limit of every run.
const LIMIT_AS: u64 = 4 << 30;

/// What a run printed and how it ended (`code` is `None` when killed by a signal or the
/// deadline).
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    timed_out: bool,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}{}\nstdout: {}\nstderr: {}",
            self.code,
            if self.timed_out { " (timed out)" } else { "" },
            self.stdout,
            self.stderr
        )
    }
}

/// A fresh folder for one test.
fn temp_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("hostile_cli")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A fresh folder for one test and an `images` folder in it.
fn images_dir(name: &str) -> (PathBuf, PathBuf) {
    let dir = temp_dir(name);
    let images = dir.join("images");
    std::fs::create_dir_all(&images).unwrap();
    (dir, images)
}

/// Runs the binary with `args` under [`LIMIT_AS`], killed after `deadline`; its output goes to
/// files in `dir` (no pipe to fill).
fn run(dir: &Path, args: &[&str], deadline: Duration) -> Run {
    let (out_path, err_path) = (dir.join("stdout.txt"), dir.join("stderr.txt"));
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap());
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: LIMIT_AS,
                rlim_max: LIMIT_AS,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("run mobilenet");
    let start = Instant::now();
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > deadline {
            timed_out = true;
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let read = |p: &Path| String::from_utf8_lossy(&std::fs::read(p).unwrap()).into_owned();
    Run {
        code: if timed_out { None } else { status.code() },
        stdout: read(&out_path),
        stderr: read(&err_path),
        timed_out,
    }
}

/// Asserts that nothing of a panic, an abort or a C++ backtrace is in `text`.
fn assert_clean(text: &str, run: &Run) {
    for bad in [
        "panicked",
        "Exception raised from",
        "frame #",
        "ChunkType",
        "preprocess: preprocess",
        "RUST_BACKTRACE",
    ] {
        assert!(!text.contains(bad), "`{bad}` in the output: {run:?}");
    }
}

fn sample(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("weights/samples")
        .join(name)
}

fn seeded_weights() -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/classify/mobilenet_v2-seeded.pth");
    assert!(
        p.is_file(),
        "{} is missing: run `make fixtures`",
        p.display()
    );
    p.display().to_string()
}

/// `classify --json` over `inputs`: the run, and each input's JSON record by file name.
fn classify(dir: &Path, inputs: &[&Path]) -> (Run, Vec<(String, serde_json::Value)>) {
    let weights = seeded_weights();
    let mut args = vec![
        "classify",
        "--json",
        "--device",
        "cpu",
        "--workers",
        "2",
        "--threads",
        "2",
        "--weights",
    ];
    args.push(&weights);
    let inputs: Vec<String> = inputs.iter().map(|p| p.display().to_string()).collect();
    args.extend(inputs.iter().map(String::as_str));
    let out = run(dir, &args, Duration::from_secs(300));
    assert_clean(&(out.stdout.clone() + &out.stderr), &out);
    let records = out
        .stdout
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let name = Path::new(v["path"].as_str().unwrap())
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            (name, v)
        })
        .collect();
    (out, records)
}

/// The record of `name`'s error, failing the test if it has none.
fn error_of<'a>(records: &'a [(String, serde_json::Value)], name: &str, run: &Run) -> &'a str {
    let (_, record) = records
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no record for {name}: {run:?}"));
    let error = record["error"]
        .as_str()
        .unwrap_or_else(|| panic!("{name} was classified, not refused: {run:?}"));
    assert_eq!(error, error.trim(), "{name}: message has stray whitespace");
    error
}

/// Asserts that `name` was classified.
fn assert_classified(records: &[(String, serde_json::Value)], name: &str, run: &Run) {
    assert!(
        records
            .iter()
            .any(|(n, r)| n == name && r["top"].as_array().is_some_and(|t| !t.is_empty())),
        "{name} was not classified: {run:?}"
    );
}

/// A `width` x `height` 8-bit gray PNG of zeros, written row by row (the test never holds the
/// pixels): a 20000x20000 one is about 400 KB on disk.
fn write_zeros_png(path: &Path, width: u32, height: u32) {
    let file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut encoder = png::Encoder::new(file, width, height);
    encoder.set_color(png::ColorType::Grayscale);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Balanced);
    let mut writer = encoder
        .write_header()
        .unwrap()
        .into_stream_writer()
        .unwrap();
    let row = vec![0u8; width as usize];
    for _ in 0..height {
        writer.write_all(&row).unwrap();
    }
    writer.finish().unwrap();
}

/// Issue 13, item 3: a 20000x20000 PNG bomb is refused from its header, by path, while the
/// good images beside it are classified, under a 4 GiB address-space limit.
#[test]
fn png_bomb_is_refused_and_the_good_images_classified() {
    let (dir, images) = images_dir("bomb");
    let bomb = images.join("b_bomb.png");
    write_zeros_png(&bomb, 20000, 20000);
    let size = std::fs::metadata(&bomb).unwrap().len();
    assert!(size < 2 << 20, "the bomb is {size} bytes on disk");
    std::fs::copy(sample("chelsea.png"), images.join("a_chelsea.png")).unwrap();
    std::fs::copy(sample("rocket.jpg"), images.join("c_rocket.jpg")).unwrap();
    let (out, records) = classify(&dir, &[&images]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert_eq!(records.len(), 3, "{out:?}");
    assert_classified(&records, "a_chelsea.png", &out);
    assert_classified(&records, "c_rocket.jpg", &out);
    let error = error_of(&records, "b_bomb.png", &out);
    assert!(
        error.contains("20000x20000") && error.contains("178956970"),
        "{error}"
    );
}

/// `src` re-encoded by Pillow as a progressive JPEG at `dst`.
fn progressive_jpeg(src: &Path, dst: &Path) {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python3");
    let script = "import sys; from PIL import Image; \
                  Image.open(sys.argv[1]).convert('RGB').save(sys.argv[2], 'JPEG', \
                  progressive=True, quality=90)";
    let status = Command::new(python)
        .args(["-c", script])
        .arg(src)
        .arg(dst)
        .status()
        .expect("run .venv/bin/python3 (make venv)");
    assert!(status.success());
    let bytes = std::fs::read(dst).unwrap();
    // SOF2: progressive DCT.
    assert!(
        bytes.windows(2).any(|w| w == [0xFF, 0xC2]),
        "not progressive"
    );
}

/// Issue 13, item 6: JPEGs cut at 10%, 50% and 90% (baseline and progressive) are refused as
/// truncated, by path; the whole files are classified.
#[test]
fn truncated_jpegs_are_errors() {
    let (dir, images) = images_dir("truncated");
    let baseline = images.join("baseline.jpg");
    std::fs::copy(sample("rocket.jpg"), &baseline).unwrap();
    let progressive = images.join("progressive.jpg");
    progressive_jpeg(&sample("chelsea.png"), &progressive);
    let mut cut_names = Vec::new();
    for whole in [&baseline, &progressive] {
        let bytes = std::fs::read(whole).unwrap();
        let stem = whole.file_stem().unwrap().to_string_lossy().into_owned();
        for percent in [10, 50, 90] {
            let name = format!("{stem}_cut{percent}.jpg");
            std::fs::write(images.join(&name), &bytes[..bytes.len() * percent / 100]).unwrap();
            cut_names.push(name);
        }
    }
    let (out, records) = classify(&dir, &[&images]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert_eq!(records.len(), 8, "{out:?}");
    assert_classified(&records, "baseline.jpg", &out);
    assert_classified(&records, "progressive.jpg", &out);
    for name in &cut_names {
        let error = error_of(&records, name, &out);
        assert!(error.contains("truncated"), "{name}: {error}");
    }
}

/// The smaller message fixes: a PNG CRC error names the chunk (not the `png` crate's
/// `ChunkType { .. }`), a preprocessing error does not say "preprocess" twice, and a corrupt
/// JPEG's message has no trailing newline.
#[test]
fn image_errors_read_well() {
    let (dir, images) = images_dir("messages");
    // A flipped bit in the IHDR chunk's CRC (signature 8, length 4, type 4, data 13).
    let mut png = std::fs::read(sample("chelsea.png")).unwrap();
    png[29] ^= 1;
    std::fs::write(images.join("crc.png"), &png).unwrap();
    // 30000x1: resized to a shorter side of 256, it would be 7680000x256.
    write_zeros_png(&images.join("wide.png"), 30000, 1);
    // A JPEG whose first Huffman table is garbage.
    let mut jpeg = std::fs::read(sample("rocket.jpg")).unwrap();
    let dht = jpeg.windows(2).position(|w| w == [0xFF, 0xC4]).unwrap();
    jpeg[dht + 5..dht + 21].fill(0xFF);
    std::fs::write(images.join("huffman.jpg"), &jpeg).unwrap();
    let (out, records) = classify(&dir, &[&images]);
    assert_eq!(out.code, Some(1), "{out:?}");
    let crc = error_of(&records, "crc.png", &out);
    assert!(crc.contains("CRC") && crc.contains("IHDR chunk"), "{crc}");
    let wide = error_of(&records, "wide.png", &out);
    assert!(
        wide.starts_with("cannot preprocess: a 30000x1 image"),
        "{wide}"
    );
    error_of(&records, "huffman.jpg", &out);
}

/// Issue 13, items 5, 9 and 11: every count flag is bounded, in every command; a value out of
/// range is a usage error naming the flag (exit 2), never a panic, a wrap-around or a hang.
#[test]
fn count_flags_are_bounded() {
    let dir = temp_dir("flags");
    let image = dir.join("x.png");
    std::fs::copy(sample("chelsea.png"), &image).unwrap();
    let image = image.display().to_string();
    let cases: &[(&[&str], &str)] = &[
        (&["summary", "--num-classes", "1000000"], "--num-classes"),
        (&["summary", "--num-classes", "0"], "--num-classes"),
        (
            &["summary", "--resolution", "1099511627776"],
            "--resolution",
        ),
        (&["summary", "--resolution", "8193"], "--resolution"),
        (&["summary", "--width-mult", "1e9"], "--width-mult"),
        (&["summary", "--width-mult", "NaN"], "--width-mult"),
        (&["bench", "--threads", "100000"], "--threads"),
        (&["bench", "--threads", "0"], "--threads"),
        (&["bench", "--num-classes", "1000000"], "--num-classes"),
        (&["bench", "--batch-sizes", "1,100000"], "--batch-sizes"),
        (&["bench", "--resolution", "100000"], "--resolution"),
        (&["bench", "--iters", "100000000"], "--iters"),
        (&["bench", "--iters", "0"], "--iters"),
        (&["bench", "--warmup", "100000000"], "--warmup"),
        (&["parity", "--num-classes", "1000000"], "--num-classes"),
        (&["classify", "--top-k", "1000000", &image], "--top-k"),
        (&["classify", "--workers", "100000", &image], "--workers"),
        (&["classify", "--threads", "100000", &image], "--threads"),
        (
            &["classify", "--batch-size", "100000", &image],
            "--batch-size",
        ),
    ];
    let mut failures = Vec::new();
    for (args, flag) in cases {
        let out = run(&dir, args, Duration::from_secs(60));
        let ok = out.code == Some(2)
            && out.stderr.contains(flag)
            && !out.stderr.contains("panicked")
            && out.stdout.is_empty();
        if !ok {
            failures.push(format!("{args:?}: {out:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Issue 13, item 12: a libtorch error (here an allocation of 3 TB for bench's input, which
/// the flags' bounds allow) is one line: no C++ backtrace.
#[test]
fn libtorch_errors_have_no_backtrace() {
    let dir = temp_dir("backtrace");
    let args = [
        "bench",
        "--device",
        "cpu",
        "--width-mult",
        "0.25",
        "--batch-sizes",
        "4096",
        "--resolution",
        "8192",
        "--warmup",
        "0",
        "--iters",
        "1",
        "--no-graph",
        "--no-fuse",
    ];
    let out = run(&dir, &args, Duration::from_secs(120));
    assert_eq!(out.code, Some(2), "{out:?}");
    assert_clean(&out.stderr, &out);
    assert!(out.stderr.contains("libtorch"), "{out:?}");
    assert_eq!(out.stderr.trim().lines().count(), 1, "{out:?}");
}

/// `train` on the 6 training images of tests/gen_train.py at `resolution`, batch 8 (so 6).
fn train_at(dir: &Path, resolution: &str) -> Run {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/train/data");
    let (data, out) = (data.to_str().unwrap(), dir.join("out"));
    let flags = format!(
        "train --arch mobilenet_v2 --width-mult 0.35 --norm batch --batch-size 8 --steps 1 \
         --resolution {resolution} --augment none --device cpu --threads 1 --workers 1"
    );
    let mut args: Vec<&str> = flags.split_whitespace().collect();
    args.extend(["--data", data, "--out", out.to_str().unwrap()]);
    run(dir, &args, Duration::from_secs(300))
}

#[test]
fn train_steps_too_large_for_memory_are_errors() {
    // Refused before training: at 4096 the floor of what a step keeps for the backward (twice
    // the convolutions' outputs, 7 GiB per image here) is past the 4 GiB address space.
    let dir = temp_dir("train-huge");
    let started = Instant::now();
    let r = train_at(&dir, "4096");
    assert_eq!(r.code, Some(2), "{r:?}");
    assert!(
        r.stderr
            .contains("a training step of 6 images of 4096x4096 keeps at least"),
        "{r:?}"
    );
    assert!(
        r.stderr.contains("lower --batch-size or --resolution"),
        "{r:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(60), "{r:?}");
    assert!(!dir.join("out/model.pth").exists());
    assert_clean(&r.stderr, &r);
    // Past the floor but not past the address space: libtorch's allocation fails in the step,
    // and the error says which step and what to lower.
    let dir = temp_dir("train-large");
    let r = train_at(&dir, "1024");
    assert_eq!(r.code, Some(2), "{r:?}");
    assert!(
        r.stderr
            .contains("out of memory in a step of 6 images of 1024x1024"),
        "{r:?}"
    );
    // Which allocation fails first varies: libtorch's own, or oneDNN's while it creates a
    // primitive, which it reports without a status (then the error names the address space).
    assert!(
        r.stderr.contains("can't allocate memory")
            || r.stderr
                .contains("oneDNN could not create a primitive at a peak of"),
        "{r:?}"
    );
    assert_clean(&r.stderr, &r);
}
