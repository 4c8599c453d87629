//! The binary runs without LD_LIBRARY_PATH, reports the pinned libtorch (`torch==X` in
//! weights/requirements.txt, exported by build.rs), and links libtorch_cpu only: libtorch_cuda is
//! loaded at run time where there is a GPU driver; `info` and `bench --precision bf16` report the
//! CPU's instruction sets and whether bf16 is native or emulated, as /proc/cpuinfo says.

use std::process::Command;

use crate::common::{output_ok, BIN};

/// The PyTorch release weights/requirements.txt pins.
const TORCH_PIN: &str = env!("MOBILENET_TORCH_PIN");

#[test]
fn info_json_reports_pinned_libtorch() {
    let out = Command::new(BIN)
        .args(["info", "--json"])
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .expect("run mobilenet info --json");
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let version = v["libtorch_version"]
        .as_str()
        .expect("libtorch_version is a string");
    assert!(
        version.starts_with(TORCH_PIN),
        "libtorch_version = {version}"
    );
    assert_eq!(v["tch_version"], "0.24.0");
    for key in [
        "cuda_available",
        "cuda_device_count",
        "cuda_devices",
        "cudnn_available",
        "cudnn_version",
        "intra_op_threads",
        "default_device",
        "nccl",
    ] {
        assert!(v.get(key).is_some(), "missing field {key} in {v}");
    }
    let cuda = v["cuda_available"].as_bool().unwrap();
    let count = v["cuda_device_count"].as_i64().unwrap();
    assert_eq!(
        cuda,
        count > 0,
        "cuda_available={cuda} but device count {count}"
    );
    assert_eq!(v["default_device"], if cuda { "cuda:0" } else { "cpu" });
    assert!(v["intra_op_threads"].as_i64().unwrap() >= 1);
    // A CUDA libtorch from the pinned wheel, with the headers weights/requirements.txt installs.
    if version.contains("+cu") {
        assert_eq!(v["nccl"], true, "{v}");
    }
}

#[test]
fn info_text_runs() {
    let out = Command::new(BIN)
        .arg("info")
        .output()
        .expect("run mobilenet info");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("libtorch") && text.contains(TORCH_PIN),
        "{text}"
    );
}

#[cfg(target_os = "linux")]
#[test]
fn binary_needs_libtorch_cpu_only_and_has_rpath() {
    let out = Command::new("readelf")
        .args(["-d", BIN])
        .output()
        .expect("readelf -d (binutils)");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Shared library: [libtorch_cpu.so]"),
        "libtorch_cpu.so is not NEEDED:\n{text}"
    );
    for lazy in ["libtorch_cuda.so", "libtorch.so"] {
        assert!(
            !text.contains(&format!("[{lazy}]")),
            "{lazy} is NEEDED: every run would load CUDA's libraries:\n{text}"
        );
    }
    assert!(
        text.contains("RPATH") || text.contains("RUNPATH"),
        "no rpath:\n{text}"
    );
}

/// `info --json` with `MOBILENET_LOAD_CUDA` set to `value` (unset: `None`), and whether the
/// process loaded libtorch_cuda.so (the dynamic loader's own log, `LD_DEBUG=files`).
fn info_with_load_cuda(value: Option<&str>) -> (serde_json::Value, bool) {
    let mut cmd = Command::new(BIN);
    cmd.args(["info", "--json"]).env("LD_DEBUG", "files");
    match value {
        Some(v) => cmd.env("MOBILENET_LOAD_CUDA", v),
        None => cmd.env_remove("MOBILENET_LOAD_CUDA"),
    };
    let out = output_ok(&mut cmd);
    let log = String::from_utf8_lossy(&out.stderr);
    let loaded = log.contains("file=libtorch_cuda.so") || log.contains("/libtorch_cuda.so");
    (
        serde_json::from_slice(&out.stdout).expect("one JSON object"),
        loaded,
    )
}

/// libtorch_cuda is loaded at run time, and then registers CUDA with libtorch as if linked:
/// forced (`MOBILENET_LOAD_CUDA=1`, even without a driver), libtorch has CUDA built in, and sees
/// devices only where there are some; never (`=0`), it has no CUDA at all and the process never
/// loads the library; by default, it is loaded exactly where the NVIDIA driver is.
#[cfg(target_os = "linux")]
#[test]
fn libtorch_cuda_loads_only_when_wanted() {
    let (never, loaded) = info_with_load_cuda(Some("0"));
    assert_eq!(
        never["cuda_library"], "not loaded: MOBILENET_LOAD_CUDA=0",
        "{never}"
    );
    assert_eq!(never["cuda_built"], false, "{never}");
    assert_eq!(never["cuda_available"], false, "{never}");
    assert!(
        !loaded,
        "libtorch_cuda.so was loaded with MOBILENET_LOAD_CUDA=0"
    );
    let (forced, loaded) = info_with_load_cuda(Some("1"));
    if forced["libtorch_version"].as_str().unwrap().contains("+cu") {
        assert_eq!(forced["cuda_library"], "loaded", "{forced}");
        assert_eq!(forced["cuda_built"], true, "{forced}");
        assert!(loaded, "the loader's log has no libtorch_cuda.so");
    } else {
        assert_eq!(
            forced["cuda_library"], "absent: a CPU-only libtorch",
            "{forced}"
        );
    }
    let (default, loaded) = info_with_load_cuda(None);
    let state = default["cuda_library"].as_str().unwrap();
    assert_eq!(loaded, state == "loaded", "{default}");
    assert_eq!(default["cuda_built"], loaded, "{default}");
    if !loaded {
        assert_eq!(default["cuda_available"], false, "{default}");
    }
    eprintln!("this machine, by default: libtorch_cuda {state}");
}

/// `--device cuda` where libtorch sees no GPU is an error that says why: no driver (so
/// libtorch_cuda was not loaded), the override, or no device.
#[test]
fn cuda_asked_for_without_a_gpu_says_why() {
    let (default, _) = info_with_load_cuda(None);
    if default["cuda_available"] == true {
        eprintln!("skipped: this machine has a GPU");
        return;
    }
    let cuda_libtorch = default["libtorch_version"]
        .as_str()
        .unwrap()
        .contains("+cu");
    let why = |state: &str| match state {
        "loaded" => "libtorch sees 0 CUDA device(s)".to_string(),
        state => format!("libtorch_cuda is {state}"),
    };
    let forced = if cuda_libtorch {
        "loaded"
    } else {
        "absent: a CPU-only libtorch"
    };
    for (env, want) in [
        (None, why(default["cuda_library"].as_str().unwrap())),
        (Some("1"), why(forced)),
        (Some("0"), why("not loaded: MOBILENET_LOAD_CUDA=0")),
    ] {
        let mut cmd = Command::new(BIN);
        cmd.args([
            "bench",
            "--device",
            "cuda",
            "--batch-sizes",
            "1",
            "--iters",
            "1",
        ]);
        match env {
            Some(v) => cmd.env("MOBILENET_LOAD_CUDA", v),
            None => cmd.env_remove("MOBILENET_LOAD_CUDA"),
        };
        let out = cmd.output().expect("run mobilenet bench");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "MOBILENET_LOAD_CUDA={env:?}: {err}");
        assert!(
            err.contains("cuda:0 was asked for") && err.contains(&want),
            "MOBILENET_LOAD_CUDA={env:?}: want {want:?} in {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// This machine's CPU flags, read here from /proc/cpuinfo (the first `flags` line), and whether
/// it has bf16 arithmetic (avx512_bf16 or AMX bf16).
pub(crate) fn cpu_flags() -> (Vec<String>, bool) {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags: Vec<String> = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default();
    let native = flags.iter().any(|f| f == "avx512_bf16" || f == "amx_bf16");
    (flags, native)
}

#[test]
fn info_reports_cpu_isa_and_bf16() {
    let (flags, native) = cpu_flags();
    let out = output_ok(Command::new(BIN).args(["info", "--json"]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let reported: Vec<&str> = v["cpu"]["flags"]
        .as_array()
        .expect("cpu.flags")
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    for isa in mobilenet::info::CpuIsa::FLAGS {
        let has = flags.iter().any(|f| f == isa);
        assert_eq!(reported.contains(&isa), has, "{isa}: {v}");
    }
    let bf16 = if native { "native" } else { "emulated" };
    assert_eq!(v["cpu"]["bf16"], bf16, "{v}");
    let text = String::from_utf8(output_ok(Command::new(BIN).arg("info")).stdout).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("cpu bf16"))
        .unwrap_or_else(|| panic!("no cpu bf16 line:\n{text}"));
    assert!(line.contains(bf16), "{line}");
    let isa_line = text.lines().find(|l| l.starts_with("cpu isa")).unwrap();
    assert_eq!(
        isa_line.split_whitespace().skip(2).collect::<Vec<_>>(),
        reported,
        "{text}"
    );
}

#[test]
fn bench_bf16_says_native_or_emulated() {
    let (_, native) = cpu_flags();
    let bf16 = if native { "native" } else { "emulated" };
    let args = [
        "bench",
        "--arch",
        "mobilenet_v3_small",
        "--device",
        "cpu",
        "--precision",
        "bf16",
        "--batch-sizes",
        "1",
        "--resolution",
        "64",
        "--warmup",
        "0",
        "--iters",
        "1",
    ];
    let text = String::from_utf8(output_ok(Command::new(BIN).args(args)).stdout).unwrap();
    assert!(
        text.lines()
            .any(|l| l.starts_with(&format!("bf16 compute: {bf16}"))),
        "{text}"
    );
    let out = output_ok(Command::new(BIN).args(args).arg("--json"));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["bf16_compute"], bf16, "{v}");
    // fp32 has no such line or field.
    // The same flags without `--precision bf16` (args[5..7]).
    let fp32 = output_ok(
        Command::new(BIN)
            .args(&args[..5])
            .args(&args[7..])
            .arg("--json"),
    );
    let v: serde_json::Value = serde_json::from_slice(&fp32.stdout).unwrap();
    assert!(v["bf16_compute"].is_null(), "{v}");
}

/// `MOBILENET_ENGINE_OVERRIDE` naming a file that is not a library: `info` says why the engine did
/// not load, and `classify` warns and still classifies with libtorch's kernels (the same top-5
/// as the engine, probabilities within 1e-5), exit 0.
#[test]
fn an_engine_that_does_not_load_is_reported() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = std::env::temp_dir().join(format!("mn-engine-missing-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let not_a_library = dir.join("libmobilenet_engine.so");
    std::fs::write(&not_a_library, "not an ELF file").unwrap();

    let info = |env: Option<&std::path::Path>| {
        let mut cmd = Command::new(BIN);
        cmd.args(["info", "--json"]);
        if let Some(path) = env {
            cmd.env("MOBILENET_ENGINE_OVERRIDE", path);
        }
        let v: serde_json::Value = serde_json::from_slice(&output_ok(&mut cmd).stdout).unwrap();
        v["engine"]
            .as_str()
            .expect("engine is a string")
            .to_string()
    };
    let built = info(None);
    let broken = info(Some(&not_a_library));
    assert!(
        broken.starts_with(&format!("none (cannot load {}", not_a_library.display())),
        "{broken}"
    );

    let image = root.join("fixtures/classify/png/chelsea.png");
    let weights = root.join("fixtures/classify/mobilenet_v2-seeded.pth");
    let classify_with = |env: Option<&std::path::Path>, extra: &[&str]| {
        let mut cmd = Command::new(BIN);
        cmd.args(["classify", "--device", "cpu", "--json", "--weights"])
            .arg(&weights)
            .args(extra)
            .arg(&image);
        if let Some(path) = env {
            cmd.env("MOBILENET_ENGINE_OVERRIDE", path);
        }
        let out = output_ok(&mut cmd);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let top: Vec<(i64, f64)> = v["top"]
            .as_array()
            .expect("a result")
            .iter()
            .map(|c| {
                (
                    c["index"].as_i64().unwrap(),
                    c["probability"].as_f64().unwrap(),
                )
            })
            .collect();
        (top, String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let classify = |env: Option<&std::path::Path>| classify_with(env, &[]);
    let (fallback, stderr) = classify(Some(&not_a_library));
    assert!(
        stderr.contains("classify: warning: the direct oneDNN engine did not load (cannot load")
            && stderr.contains("libtorch's kernels run instead"),
        "{stderr}"
    );
    let (normal, stderr) = classify(None);
    if built.starts_with("oneDNN") {
        assert!(!stderr.contains("warning"), "{stderr}");
    }
    // Where the engine would not run anyway, the broken library is never loaded or named:
    // `--no-engine`, and bf16 on a CPU that only emulates it.
    let warned = |extra: &[&str]| {
        classify_with(Some(&not_a_library), extra)
            .1
            .contains("did not load")
    };
    assert!(!warned(&["--no-engine"]));
    let v: serde_json::Value =
        serde_json::from_slice(&output_ok(Command::new(BIN).args(["info", "--json"])).stdout)
            .unwrap();
    let native_bf16 = v["cpu"]["bf16"] == "native";
    assert_eq!(warned(&["--precision", "bf16"]), native_bf16, "{v}");
    assert_eq!(fallback.len(), 5);
    for ((i, p), (j, q)) in fallback.iter().zip(&normal) {
        assert_eq!(i, j, "{fallback:?} against {normal:?}");
        assert!((p - q).abs() <= 1e-5, "{fallback:?} against {normal:?}");
    }
    std::fs::remove_dir_all(&dir).ok();
}
