//! Links the binary, tests and examples to the libtorch that torch-sys found, so that they run
//! without `LD_LIBRARY_PATH`.
//!
//! torch-sys exports the libtorch lib folder as `DEP_TCH_LIBTORCH_LIB` (its `links = "tch"`).
//! A dependent binary gets no rpath from it: hence the rpath link arg. torch-sys also asks for
//! libtorch_cuda, but no symbol of it is referenced, so `--as-needed` drops it: the binary needs
//! only libtorch_cpu, and src/device.rs loads libtorch_cuda (with cuBLAS, cuDNN and NCCL behind
//! it, 0.3 s and 350 MB) at run time, only where there is a GPU driver.
//!
//! The PyTorch release tch is generated against is pinned once, as `torch==X` in
//! weights/requirements.txt; it is checked against the libtorch found here and exported to the
//! crate as `MOBILENET_TORCH_PIN`.

use std::path::{Path, PathBuf};

/// Where the torch pin is written (the Python side's requirements, which `make setup` installs).
const REQUIREMENTS: &str = "weights/requirements.txt";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    write_ffi_types();
    build_jpeg();
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let pin = torch_pin();
    println!("cargo:rustc-env=MOBILENET_TORCH_PIN={pin}");
    let lib = match std::env::var("DEP_TCH_LIBTORCH_LIB") {
        Ok(lib) => PathBuf::from(lib),
        Err(_) => {
            println!("cargo:warning=torch-sys did not report its libtorch folder; no rpath is set");
            return;
        }
    };
    let version = torch_version(&lib);
    if let Some(v) = &version {
        let base = v.split('+').next().unwrap_or(v);
        if base != pin {
            panic!(
                "libtorch at {} is PyTorch {v}, but this crate (tch 0.24) needs PyTorch {pin} \
                 ({REQUIREMENTS}); run `make setup` to install the pinned torch into .venv",
                lib.display()
            );
        }
    }
    println!(
        "cargo:rustc-env=MOBILENET_LIBTORCH_VERSION={}",
        version.unwrap_or_else(|| "unknown".into())
    );
    println!("cargo:rustc-env=MOBILENET_LIBTORCH_LIB={}", lib.display());
    build_shim(&lib);
    build_nccl(&lib);
    build_engine(&lib);
    if cfg!(target_os = "linux") || std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-link-arg=-Wl,-rpath={}", lib.display());
    }
}

/// The version in the `torch==X` line of [`REQUIREMENTS`].
fn torch_pin() -> String {
    println!("cargo:rerun-if-changed={REQUIREMENTS}");
    let text = std::fs::read_to_string(REQUIREMENTS)
        .unwrap_or_else(|e| panic!("cannot read {REQUIREMENTS} (the torch pin): {e}"));
    text.lines()
        .map(|line| line.split('#').next().unwrap_or("").trim())
        .find_map(|line| line.strip_prefix("torch=="))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("{REQUIREMENTS} has no `torch==X` line"))
}

/// Compiles src/ffi/shim.cpp, graph.cpp and dist.cpp (libtorch APIs tch does not bind) against the
/// headers of the same libtorch.
fn build_shim(lib: &Path) {
    println!("cargo:rerun-if-changed=src/ffi/shim.cpp");
    println!("cargo:rerun-if-changed=src/ffi/graph.cpp");
    println!("cargo:rerun-if-changed=src/ffi/dist.cpp");
    println!("cargo:rerun-if-changed=third_party/gloo/include");
    println!("cargo:rerun-if-changed=src/ffi/protect.h");
    libtorch_cpp(lib, &[])
        .file("src/ffi/shim.cpp")
        .file("src/ffi/graph.cpp")
        .file("src/ffi/dist.cpp")
        .include(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"))
        // Gloo's headers, which the torch wheel does not ship (third_party/gloo/README.md).
        .flag("-isystem")
        .flag("third_party/gloo/include")
        .compile("mobilenet_shim");
}

/// A C++17 build against libtorch's headers (as system headers: -Wall -Wextra then warn about
/// our code only), searched after `first` (system headers too), with libtorch's C++ ABI
/// (`LIBTORCH_CXX11_ABI`, default 1).
fn libtorch_cpp(lib: &Path, first: &[PathBuf]) -> cc::Build {
    let include = lib.parent().unwrap_or(lib).join("include");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    let mut build = cc::Build::new();
    build.cpp(true);
    for dir in first {
        build.flag("-isystem").flag(dir.display().to_string());
    }
    build
        .flag("-isystem")
        .flag(include.display().to_string())
        .flag("-isystem")
        .flag(include.join("torch/csrc/api/include").display().to_string())
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .warnings(true)
        .extra_warnings(true);
    build
}

/// Builds src/ffi/nccl.cpp (c10d's ProcessGroupNCCL, for data-parallel training on CUDA) into
/// `OUT_DIR/libmobilenet_nccl.so`, linked to libtorch_cuda with an rpath to libtorch's folder,
/// when this libtorch has CUDA and NCCL's headers are beside it (see [`nccl_includes`]). The
/// binary itself links only libtorch_cpu: src/ffi/dist.cpp loads this library with dlopen, and
/// src/device.rs loads libtorch_cuda when there is a GPU driver. Its path is exported as
/// `MOBILENET_NCCL_LIB`, empty where it is not built (no NCCL then).
fn build_nccl(lib: &Path) {
    println!("cargo:rerun-if-changed=src/ffi/nccl.cpp");
    println!("cargo:rerun-if-changed=src/ffi/protect.h");
    let Some(includes) = nccl_includes(lib) else {
        println!("cargo:rustc-env=MOBILENET_NCCL_LIB=");
        return;
    };
    // NCCL's and CUDA's headers first, as before the shared setup.
    let mut build = libtorch_cpp(lib, &includes);
    build
        .pic(true)
        .file("src/ffi/nccl.cpp")
        .flag("-fvisibility=hidden");
    let so = link_shared(
        &build,
        "libmobilenet_nccl.so",
        lib,
        &[
            "-Wl,--no-as-needed",
            "-ltorch_cuda",
            "-lc10_cuda",
            "-ltorch_cpu",
            "-lc10",
        ],
    );
    println!("cargo:rustc-env=MOBILENET_NCCL_LIB={}", so.display());
}

/// Builds src/ffi/engine.cpp (the whole forward as direct oneDNN calls) into
/// `OUT_DIR/libmobilenet_engine.so`, against the oneDNN that `make setup` installs into the venv
/// beside libtorch (PyPI `onednn-cpu-gomp` and `onednn-devel-cpu-gomp`: `<venv>/lib/libdnnl.so.3`,
/// `<venv>/include/oneapi/dnnl`), with an rpath to it. It is compiled apart from the shim,
/// without libtorch's headers (which ship another oneDNN's), and not linked into the binary:
/// src/ffi/engine.rs loads it with dlopen, isolated from libtorch's symbols. Its path is
/// exported as `MOBILENET_ENGINE_LIB`, empty where no oneDNN was found (no engine then).
fn build_engine(lib: &Path) {
    println!("cargo:rerun-if-changed=src/ffi/engine.cpp");
    println!("cargo:rerun-if-changed=src/ffi/protect.h");
    println!("cargo:rerun-if-env-changed=MOBILENET_DNNL_ROOT");
    let Some(root) = dnnl_root(lib) else {
        println!(
            "cargo:warning=no oneDNN (lib/libdnnl.so.3 and include/oneapi/dnnl/dnnl.hpp) above \
             libtorch's folder; the direct oneDNN engine is left out (run `make setup`)"
        );
        println!("cargo:rustc-env=MOBILENET_ENGINE_LIB=");
        return;
    };
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .pic(true)
        .file("src/ffi/engine.cpp")
        .include(&out)
        .flag("-isystem")
        .flag(root.join("include").display().to_string())
        .flag("-std=c++17")
        .flag("-fvisibility=hidden")
        .flag("-fopenmp")
        .warnings(true)
        .extra_warnings(true);
    let so = link_shared(
        &build,
        "libmobilenet_engine.so",
        &root.join("lib"),
        &["-ldnnl", "-fopenmp"],
    );
    println!("cargo:rustc-env=MOBILENET_ENGINE_LIB={}", so.display());
}

/// Compiles `build`'s sources and links them into `OUT_DIR/name`, a shared library that needs
/// `args` (`-l` flags) from `libdir`, with an rpath to it. Returns its path.
fn link_shared(build: &cc::Build, name: &str, libdir: &Path, args: &[&str]) -> PathBuf {
    let objects = build.compile_intermediates();
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let so = out.join(name);
    let compiler = build.get_compiler();
    let status = std::process::Command::new(compiler.path())
        .arg("-shared")
        .arg("-o")
        .arg(&so)
        .args(&objects)
        .arg(format!("-L{}", libdir.display()))
        .args(args)
        .arg(format!("-Wl,-rpath,{}", libdir.display()))
        .status()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", compiler.path().display()));
    assert!(status.success(), "linking {} failed", so.display());
    so
}

/// The prefix holding `lib/libdnnl.so.3` and `include/oneapi/dnnl/dnnl.hpp`:
/// `MOBILENET_DNNL_ROOT`, else the nearest folder above libtorch's (the venv it was installed
/// in) that has both.
fn dnnl_root(lib: &Path) -> Option<PathBuf> {
    let has = |root: &Path| {
        root.join("lib/libdnnl.so.3").exists() && root.join("include/oneapi/dnnl/dnnl.hpp").exists()
    };
    if let Ok(root) = std::env::var("MOBILENET_DNNL_ROOT") {
        let root = PathBuf::from(root);
        return has(&root).then_some(root);
    }
    let lib = lib.canonicalize().ok()?;
    lib.ancestors()
        .skip(1)
        .take(6)
        .find(|r| has(r))
        .map(Path::to_path_buf)
}

/// The include folders that c10d's `ProcessGroupNCCL.hpp` needs, when this libtorch has CUDA
/// (libtorch_cuda) and the pip packages beside it hold NCCL's and CUDA's headers (nvidia-nccl,
/// nvidia-cuda-runtime, and nvidia-cuda-crt and nvidia-cuda-cccl from weights/requirements.txt):
/// `site-packages/nvidia/{nccl,cuXY}/include`. `None` builds the shim without NCCL.
fn nccl_includes(lib: &Path) -> Option<Vec<PathBuf>> {
    let lib = lib.canonicalize().ok()?;
    if !lib.join("libtorch_cuda.so").exists() {
        return None;
    }
    let nvidia = lib.parent()?.parent()?.join("nvidia");
    let nccl = nvidia.join("nccl/include");
    if !nccl.join("nccl.h").exists() {
        return None;
    }
    let cuda = std::fs::read_dir(&nvidia)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("include")))
        .find(|inc| {
            inc.join("cuda_runtime.h").exists() && inc.join("crt/host_config.h").exists()
        })?;
    let mut dirs = vec![nccl, cuda.clone()];
    if cuda.join("cccl/nv/target").exists() {
        dirs.push(cuda.join("cccl"));
    } else if !cuda.join("nv/target").exists() {
        return None;
    }
    Some(dirs)
}

/// Compiles src/ffi/jpeg.c (the libjpeg API with Pillow's settings) against the libjpeg-turbo
/// headers that turbojpeg-sys installed with the library it built (`DEP_TURBOJPEG_INCLUDE`).
fn build_jpeg() {
    println!("cargo:rerun-if-changed=src/ffi/jpeg.c");
    println!("cargo:rerun-if-env-changed=DEP_TURBOJPEG_INCLUDE");
    let mut build = cc::Build::new();
    build
        .file("src/ffi/jpeg.c")
        .warnings(true)
        .extra_warnings(true);
    if let Ok(dirs) = std::env::var("DEP_TURBOJPEG_INCLUDE") {
        for dir in dirs.split(',').filter(|d| !d.is_empty()) {
            build.include(dir);
        }
    }
    build.compile("mobilenet_jpeg");
}

/// Reads `torch/version.py` (a PyPI wheel) or `build-version` (a libtorch zip) next to `lib`.
fn torch_version(lib: &Path) -> Option<String> {
    let root = lib.parent()?;
    if let Ok(text) = std::fs::read_to_string(root.join("version.py")) {
        println!(
            "cargo:rerun-if-changed={}",
            root.join("version.py").display()
        );
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("__version__") {
                let v = rest.trim_start_matches([' ', '=', ':']).trim();
                let v = v.split('=').next_back().unwrap_or(v).trim();
                return Some(v.trim_matches(['\'', '"']).to_string());
            }
        }
    }
    std::fs::read_to_string(root.join("build-version"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// The structs that cross the FFI boundary, declared once here: name, doc, `int64_t` fields.
const FFI_STRUCTS: &[(&str, &str, &[&str])] = &[(
    "ConvGeometry",
    "Geometry of a 2-D convolution: padding, stride and dilation (the same along both spatial \
     dims) and groups.",
    &["padding", "stride", "dilation", "groups"],
)];

/// Writes [`FFI_STRUCTS`] as C (`OUT_DIR/mn_ffi.h`, `MnConvGeometry`, included by the C++ shim)
/// and as `#[repr(C)]` Rust (`OUT_DIR/ffi_types.rs`, included by src/ffi/mod.rs), so the two
/// sides cannot disagree on a field.
fn write_ffi_types() {
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let mut c = String::from(
        "// Generated by build.rs from FFI_STRUCTS.\n#pragma once\n#include <stdint.h>\n",
    );
    let mut rust = String::from("// Generated by build.rs from FFI_STRUCTS.\n");
    for (name, doc, fields) in FFI_STRUCTS {
        c += &format!("\n// {doc}\ntypedef struct Mn{name} {{\n");
        rust += &format!(
            "\n/// {doc}\n#[repr(C)]\n#[derive(Debug, Clone, Copy, PartialEq, Eq)]\npub struct {name} {{\n"
        );
        for f in *fields {
            c += &format!("  int64_t {f};\n");
            rust += &format!("    pub {f}: i64,\n");
        }
        c += &format!("}} Mn{name};\n");
        rust += "}\n";
    }
    std::fs::write(out.join("mn_ffi.h"), c).expect("write OUT_DIR/mn_ffi.h");
    std::fs::write(out.join("ffi_types.rs"), rust).expect("write OUT_DIR/ffi_types.rs");
}
