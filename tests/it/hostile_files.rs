//! Hostile weight and reference files (issue #13): device files, a FIFO and a sparse 3 GiB file
//! refused before they are read; a million tensor views of one storage refused in bounded
//! memory; NaN, infinity and a negative running variance refused at load by every command;
//! truncated safetensors named as such; control characters escaped; clean messages.
//!
//! The binary runs as a child under an address-space limit ([`AS_LIMIT`]) and a wall-clock guard
//! (`timeout`), so a file that makes it allocate without bound or block fails the test instead
//! of taking the machine down or hanging it. Files are written here into a scratch folder.

use crate::common::{model_fixture as fixture, BIN};
use mobilenet::models::{Arch, Model, ModelConfig};
use mobilenet::weights;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use tch::{Kind, Tensor};

/// The child's address-space limit: 4 GiB.
const AS_LIMIT: u64 = 4 << 30;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mobilenet-hostile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Runs the binary with `args` under [`AS_LIMIT`] and a 30 s guard: (exit code, stdout, stderr).
/// Asserts it neither panicked, aborted, hung nor leaked a backtrace.
fn run_limited<I, S>(args: I) -> (i32, String, String)
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut cmd = Command::new("timeout");
    cmd.args(["-s", "KILL", "30"]).arg(BIN).args(args);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: AS_LIMIT as libc::rlim_t,
                rlim_max: AS_LIMIT as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    let code = out.status.code().unwrap_or(-1);
    assert!(
        code != 137 && code != 134 && code != -1,
        "{cmd:?}: killed, aborted or hung (exit {code}): {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{cmd:?}: {stderr}");
    (code, stdout, stderr)
}

/// Asserts the run failed with a message holding every word of `words`.
fn refused(what: &str, run: (i32, String, String), words: &[&str]) {
    let (code, stdout, stderr) = run;
    assert!(code != 0, "{what}: exit 0: {stdout}{stderr}");
    for w in words {
        assert!(stderr.contains(w), "{what}: no {w:?} in: {stderr}");
    }
}

/// `parity` of the V2 fixture with these weights and reference in `mode`.
fn parity(weights: &Path, reference: &Path, mode: &str) -> (i32, String, String) {
    let mut args: Vec<std::ffi::OsString> = ["parity", "--arch", "mobilenet_v2", "--device", "cpu"]
        .iter()
        .map(Into::into)
        .collect();
    args.extend(["--mode".into(), mode.into(), "--weights".into()]);
    args.push(weights.into());
    args.push("--reference".into());
    args.push(reference.into());
    run_limited(args)
}

#[test]
fn device_files_and_huge_files_are_refused_before_reading() {
    let sparse = scratch("sparse.pth");
    std::fs::File::create(&sparse)
        .unwrap()
        .set_len(3 << 30)
        .unwrap();
    let good = fixture("v2_100.safetensors");
    let reference = fixture("v2_100_eval_224.safetensors");
    for dev in ["/dev/zero", "/dev/urandom"] {
        refused(
            dev,
            run_limited(["inspect", dev]),
            &[dev, "not a regular file"],
        );
        refused(
            dev,
            parity(&good, Path::new(dev), "eval"),
            &[dev, "not a regular file"],
        );
        refused(
            dev,
            parity(Path::new(dev), &reference, "eval"),
            &[dev, "not a regular file"],
        );
    }
    let s = sparse.to_str().unwrap();
    refused(s, run_limited(["inspect", s]), &[s, "2 GiB"]);
    refused(s, parity(&good, &sparse, "eval"), &[s, "2 GiB"]);
    let _ = std::fs::remove_file(&sparse);
}

#[test]
fn a_fifo_is_refused_without_blocking() {
    let fifo = scratch("weights.fifo");
    let _ = std::fs::remove_file(&fifo);
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let f = fifo.to_str().unwrap();
    refused(
        "inspect",
        run_limited(["inspect", f]),
        &[f, "not a regular file (a FIFO)"],
    );
    let good = fixture("v2_100.safetensors");
    let reference = fixture("v2_100_eval_224.safetensors");
    refused("--reference", parity(&good, &fifo, "eval"), &[f, "FIFO"]);
    refused("--weights", parity(&fifo, &reference, "eval"), &[f, "FIFO"]);
    let _ = std::fs::remove_file(&fifo);
}

/// Appends a BINUNICODE string.
fn unicode(p: &mut Vec<u8>, s: &str) {
    p.push(b'X');
    p.extend((s.len() as u32).to_le_bytes());
    p.extend(s.as_bytes());
}

/// A torch zip whose state dict holds `n` keys, each a `_rebuild_tensor_v2` view of one
/// 1-element float storage: the call and its arguments are memoized by the first key and
/// fetched by the others (17 bytes a key). `torch.load(weights_only=True)` reads it.
fn views_of_one_storage(n: usize) -> Vec<u8> {
    let mut p = vec![0x80, 2];
    p.extend(b"ccollections\nOrderedDict\n)R");
    for chunk in 0..n.div_ceil(1000) {
        p.push(b'(');
        for i in chunk * 1000..((chunk + 1) * 1000).min(n) {
            unicode(&mut p, &format!("k{i}"));
            if i > 0 {
                p.extend(b"h\x01h\x02R"); // BINGET the call, BINGET its arguments, REDUCE
                continue;
            }
            p.extend(b"ctorch._utils\n_rebuild_tensor_v2\nq\x01((");
            unicode(&mut p, "storage");
            p.extend(b"ctorch\nFloatStorage\n");
            unicode(&mut p, "0");
            unicode(&mut p, "cpu");
            p.extend(b"K\x01tQ"); // numel 1, TUPLE, BINPERSID
            p.extend(b"K\x00K\x01\x85K\x01\x85\x89ccollections\nOrderedDict\n)Rtq\x02R");
        }
        p.push(b'u');
    }
    p.push(b'.');
    crate::weights_limits::zip_of(&[
        ("archive/data.pkl", &p),
        ("archive/data/0", &1f32.to_le_bytes()),
    ])
}

#[test]
fn a_million_views_of_one_storage_are_refused_in_bounded_memory() {
    let file = scratch("views.pth");
    std::fs::write(&file, views_of_one_storage(1_000_000)).unwrap();
    let f = file.to_str().unwrap();
    for json in [false, true] {
        let mut args = vec!["inspect", f];
        if json {
            args.push("--json");
        }
        refused(
            "a million views",
            run_limited(args),
            &[f, "1000000 tensors", "at most one tensor per 64 bytes"],
        );
    }
    let _ = std::fs::remove_file(&file);
    // A few thousand views are a plausible file: read.
    let small = views_of_one_storage(3000);
    let sd = weights::read_bytes(&small, Path::new("views.pth")).unwrap();
    assert_eq!(sd.tensors.len(), 3000);
}

/// The V2 fixture with `key` edited by `edit`, written as `name`.
fn edited_weights(name: &str, key: &str, edit: impl Fn(&Tensor) -> Tensor) -> PathBuf {
    let mut tensors = Tensor::read_safetensors(fixture("v2_100.safetensors")).unwrap();
    let t = tensors.iter_mut().find(|(k, _)| k == key).unwrap();
    t.1 = edit(&t.1);
    let path = scratch(name);
    Tensor::write_safetensors(&tensors, &path).unwrap();
    path
}

#[test]
fn non_finite_or_impossible_weights_are_refused_at_load() {
    let cases = [
        (
            "nan.safetensors",
            "classifier.1.weight",
            "NaN or infinity",
            edited_weights("nan.safetensors", "classifier.1.weight", |t| {
                t.copy()
                    .index_fill(0, &Tensor::from_slice(&[3i64]), f64::NAN)
            }),
        ),
        (
            "inf.safetensors",
            "features.0.0.weight",
            "NaN or infinity",
            edited_weights("inf.safetensors", "features.0.0.weight", |t| {
                t.copy()
                    .index_fill(0, &Tensor::from_slice(&[0i64]), f64::INFINITY)
            }),
        ),
        (
            "negvar.safetensors",
            "features.0.1.running_var",
            "negative running variance",
            edited_weights("negvar.safetensors", "features.0.1.running_var", |t| {
                t.ones_like().f_neg().unwrap()
            }),
        ),
    ];
    let reference = fixture("v2_100_eval_224.safetensors");
    for (name, key, problem, path) in &cases {
        // The library's loader (classify and bench load through it).
        let err = Model::load(ModelConfig::new(Arch::MobilenetV2), path)
            .err()
            .unwrap_or_else(|| panic!("{name}: loaded"))
            .to_string();
        assert!(err.contains(key) && err.contains(problem), "{name}: {err}");
        refused(name, parity(path, &reference, "eval"), &[key, problem]);
        let out = scratch(&format!("{name}.ot"));
        let p = path.to_str().unwrap();
        let o = out.to_str().unwrap();
        refused(
            name,
            run_limited(["convert", p, o, "--arch", "mobilenet_v2"]),
            &[p, key, problem],
        );
    }
    // The fixture itself still loads.
    Model::load(
        ModelConfig::new(Arch::MobilenetV2),
        &fixture("v2_100.safetensors"),
    )
    .unwrap();
}

fn st_entry(name: &str, dtype: &str, begin: usize, end: usize) -> String {
    let n = (end.max(begin) - begin) / 4;
    format!(r#""{name}":{{"dtype":"{dtype}","shape":[{n}],"data_offsets":[{begin},{end}]}}"#)
}

#[test]
fn truncated_safetensors_names_the_real_problem() {
    let bytes = std::fs::read(fixture("v2_100.safetensors")).unwrap();
    let half = &bytes[..bytes.len() / 2];
    let err = weights::read_bytes(half, Path::new("half.safetensors"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("half.safetensors") && err.contains("past the end of the file"),
        "{err}"
    );
    assert!(!err.contains("trailing comma"), "{err}");
    assert!(!err.contains("safetensors: safetensors "), "{err}");

    let data = [0u8; 16];
    let cases = [
        (
            format!(
                "{{{},{}}}",
                st_entry("a", "X9", 0, 8),
                st_entry("b", "F32", 8, 16)
            ),
            r#"tensor "a": unknown dtype "X9""#,
        ),
        (
            format!(
                "{{{},{}}}",
                st_entry("a", "F32", 8, 4),
                st_entry("b", "F32", 8, 16)
            ),
            r#"tensor "a": bad data_offsets [8, 4]"#,
        ),
        (
            format!(
                "{{{},{}}}",
                st_entry("a", "F32", 0, 400),
                st_entry("b", "F32", 8, 16)
            ),
            r#"tensor "a": data_offsets [0, 400] run past the end of the file"#,
        ),
    ];
    for (header, want) in cases {
        let file = crate::weights_limits::safetensors(&header, &data);
        let err = weights::read_bytes(&file, Path::new("x.safetensors"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{header}: {err}");
        assert!(!err.contains("trailing comma"), "{err}");
    }
}

#[test]
fn control_characters_are_escaped() {
    // A refused global named with escape sequences.
    let mut p = vec![0x80, 2];
    p.extend(b"c\x1b[2J\x1b[H\nevil\n.");
    let file = scratch("global.pth");
    std::fs::write(
        &file,
        crate::weights_limits::zip_of(&[("archive/data.pkl", &p)]),
    )
    .unwrap();
    let (code, stdout, stderr) = run_limited(["inspect".as_ref(), file.as_os_str()]);
    assert!(code != 0, "{stdout}{stderr}");
    assert!(
        stderr.contains(r"refused global `\u{1b}[2J\u{1b}[H.evil`"),
        "{stderr}"
    );
    assert!(!stderr.contains('\x1b'), "{stderr:?}");

    // Keys with ESC and a newline, printed by `inspect`.
    let header = format!(
        "{{{},{}}}",
        st_entry("a\\u001b[2Jb", "F32", 0, 8),
        st_entry("c\\nd", "F32", 8, 16)
    );
    let file = scratch("keys.safetensors");
    std::fs::write(
        &file,
        crate::weights_limits::safetensors(&header, &[0u8; 16]),
    )
    .unwrap();
    let (code, stdout, stderr) = run_limited(["inspect".as_ref(), file.as_os_str()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        !stdout.contains('\x1b') && !stdout.contains("c\nd"),
        "{stdout:?}"
    );
    assert!(
        stdout.contains(r"a\u{1b}[2Jb") && stdout.contains(r"c\nd"),
        "{stdout}"
    );
}

#[test]
fn messages_are_clean() {
    // A negative LONG4 length.
    let p = b"\x80\x02\x8b\xfb\xff\xff\xff.".to_vec();
    let file = crate::weights_limits::zip_of(&[("archive/data.pkl", &p)]);
    let err = weights::read_bytes(&file, Path::new("long4.pth"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("negative length (-5)"), "{err}");

    // A reference that is a folder, or too short: one path, no Rust debug text.
    let good = fixture("v2_100.safetensors");
    let dir = scratch("refdir");
    std::fs::create_dir_all(&dir).unwrap();
    let short = scratch("short.safetensors");
    std::fs::write(&short, b"abc").unwrap();
    for r in [&dir, &short] {
        let (code, _, stderr) = parity(&good, r, "eval");
        assert_eq!(code, 2, "{stderr}");
        let r = r.to_str().unwrap();
        assert_eq!(stderr.matches(r).count(), 1, "{stderr}");
        for bad in ["IoError", "Os {", "HeaderTooSmall", "kind:"] {
            assert!(!stderr.contains(bad), "{stderr}");
        }
    }

    // A state dict of another network: the first 20 problems of each kind and the counts.
    let other: Vec<(String, Tensor)> = (0..300)
        .map(|i| {
            (
                format!("layer{i}.weight"),
                Tensor::zeros([2], (Kind::Float, tch::Device::Cpu)),
            )
        })
        .collect();
    let file = scratch("other.safetensors");
    Tensor::write_safetensors(&other, &file).unwrap();
    let f = file.to_str().unwrap();
    let o = scratch("other.ot");
    let (code, _, stderr) =
        run_limited(["convert", f, o.to_str().unwrap(), "--arch", "mobilenet_v2"]);
    assert!(code != 0, "{stderr}");
    assert!(
        stderr.contains(f) && stderr.contains("unexpected keys (300)"),
        "{stderr}"
    );
    assert!(stderr.contains("(280 more)"), "{stderr}");
    assert!(stderr.len() < 8000, "{} bytes: {stderr}", stderr.len());
}

#[test]
fn parity_checks_the_reference_names_and_mode() {
    let good = fixture("v2_100.safetensors");
    let bogus =
        crate::parity_cli::edited("v2_100_eval_224.safetensors", "bogus.safetensors", |t| {
            let f = t
                .iter()
                .find(|(k, _)| k == "feature.features.3")
                .unwrap()
                .1
                .copy();
            t.push(("feature.features.99".into(), f));
        });
    let (code, _, stderr) = parity(&good, &bogus, "eval");
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("features.99"), "{stderr}");
    let train = fixture("v2_100_train_224.safetensors");
    let (code, _, stderr) = parity(&good, &train, "eval");
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("train mode") && stderr.contains("modes differ"),
        "{stderr}"
    );
}
