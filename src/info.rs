//! What libtorch this build runs on and what it sees: versions, CUDA devices, cuDNN, threads,
//! and the CPU's instruction sets that decide its kernels ([`CpuIsa`]: AVX2, AVX-512, native bf16).

use serde::Serialize;

/// The PyTorch version tch 0.24 is generated against (the `torch==X` pin of
/// weights/requirements.txt, which build.rs checks libtorch against).
pub const EXPECTED_TORCH_VERSION: &str = env!("MOBILENET_TORCH_PIN");

/// A report of the runtime, printed by `mobilenet info`.
#[derive(Debug, Clone, Serialize)]
pub struct Info {
    pub mobilenet_version: String,
    pub tch_version: String,
    /// The libtorch (PyTorch) version this binary was built against, e.g. `2.11.0+cu130`.
    pub libtorch_version: String,
    /// The libtorch lib folder the binary's rpath points at.
    pub libtorch_lib: String,
    /// Whether libtorch_cuda is loaded in this process, or why not (see
    /// [`crate::device::load_cuda`]).
    pub cuda_library: String,
    /// Whether libtorch has CUDA built in (ATen's `hasCUDART`, true once libtorch_cuda is loaded
    /// and has registered its hooks). Devices still need a driver and a GPU.
    pub cuda_built: bool,
    pub cuda_available: bool,
    pub cuda_device_count: i64,
    pub cuda_devices: Vec<String>,
    pub cudnn_available: bool,
    /// cuDNN version as libtorch reports it (e.g. 91002), when cuDNN is available.
    pub cudnn_version: Option<i64>,
    pub cuda_runtime_version: Option<i64>,
    pub intra_op_threads: i32,
    pub inter_op_threads: i32,
    pub mkldnn: bool,
    pub openmp: bool,
    /// Whether data-parallel training has c10d's NCCL backend for CUDA tensors (else Gloo).
    pub nccl: bool,
    /// The direct oneDNN engine's library: its oneDNN (version, threading, commit), or
    /// `none (why)`.
    pub engine: String,
    pub default_device: String,
    /// The CPU and the instruction sets that matter to its kernels.
    pub cpu: CpuIsa,
}

impl Info {
    /// Collects the report. Never fails: what cannot be read is left empty.
    pub fn collect() -> Info {
        let cuda_library = crate::device::load_cuda().to_string();
        let cuda_available = tch::Cuda::is_available();
        let cuda_device_count = if cuda_available {
            tch::Cuda::device_count()
        } else {
            0
        };
        let cudnn_available = cuda_available && tch::Cuda::cudnn_is_available();
        Info {
            mobilenet_version: env!("CARGO_PKG_VERSION").to_string(),
            tch_version: "0.24.0".to_string(),
            libtorch_version: env!("MOBILENET_LIBTORCH_VERSION").to_string(),
            libtorch_lib: env!("MOBILENET_LIBTORCH_LIB").to_string(),
            cuda_library,
            cuda_built: tch::utils::has_cudart(),
            cuda_available,
            cuda_device_count,
            cuda_devices: cuda_device_names(cuda_device_count),
            cudnn_available,
            cudnn_version: cudnn_available.then(tch::utils::version_cudnn),
            cuda_runtime_version: cuda_available.then(tch::utils::version_cudart),
            intra_op_threads: tch::get_num_threads(),
            inter_op_threads: tch::get_num_interop_threads(),
            mkldnn: tch::utils::has_mkldnn(),
            openmp: tch::utils::has_openmp(),
            nccl: crate::ffi::has_nccl(),
            engine: crate::ffi::engine_version(),
            default_device: if cuda_available { "cuda:0" } else { "cpu" }.to_string(),
            cpu: CpuIsa::detect(),
        }
    }
}

/// The CPU's model name and which of [`CpuIsa::FLAGS`] it has, as Linux lists them in
/// /proc/cpuinfo's `flags` (what the CPU has and the kernel enabled: AMX needs both).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CpuIsa {
    /// `model name`, empty when unknown.
    pub model: String,
    /// The flags of [`CpuIsa::FLAGS`] present, in that order.
    pub flags: Vec<String>,
    /// `native` where the CPU computes in bf16 ([`CpuIsa::bf16_native`]), else `emulated`.
    pub bf16: &'static str,
}

impl CpuIsa {
    /// The instruction sets reported: fp32 SIMD width (avx2 + fma, avx512f), bf16 dot products
    /// (avx512_bf16, AMX tiles) and int8 dot products (avx512_vnni).
    pub const FLAGS: [&'static str; 7] = [
        "avx2",
        "fma",
        "avx512f",
        "avx512_bf16",
        "avx512_vnni",
        "amx_bf16",
        "amx_tile",
    ];

    /// Reads /proc/cpuinfo; nothing listed where it cannot be read (not Linux).
    pub fn detect() -> CpuIsa {
        CpuIsa::from_cpuinfo(&std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default())
    }

    /// From the text of /proc/cpuinfo (its first processor's `model name` and `flags`).
    pub fn from_cpuinfo(cpuinfo: &str) -> CpuIsa {
        let field = |name: &str| {
            cpuinfo.lines().find_map(|line| {
                let (key, value) = line.split_once(':')?;
                (key.trim() == name).then(|| value.trim().to_string())
            })
        };
        let present = field("flags").unwrap_or_default();
        let present: Vec<&str> = present.split_whitespace().collect();
        let flags: Vec<String> = CpuIsa::FLAGS
            .iter()
            .filter(|f| present.contains(f))
            .map(|f| f.to_string())
            .collect();
        let native = flags.iter().any(|f| f == "avx512_bf16" || f == "amx_bf16");
        CpuIsa {
            model: field("model name").unwrap_or_default(),
            flags,
            bf16: if native { "native" } else { "emulated" },
        }
    }

    /// Whether the CPU has bf16 arithmetic (avx512_bf16 dot products or AMX bf16 tiles); without
    /// it, oneDNN and ATen widen bf16 to fp32 to compute.
    pub fn bf16_native(&self) -> bool {
        self.bf16 == "native"
    }

    /// How bf16 runs here, e.g. `native (avx512_bf16)`.
    pub fn bf16_summary(&self) -> String {
        let native: Vec<&str> = ["avx512_bf16", "amx_bf16"]
            .into_iter()
            .filter(|f| self.flags.iter().any(|g| g == f))
            .collect();
        if native.is_empty() {
            "emulated (no avx512_bf16 or amx_bf16 on this CPU: bf16 is widened to fp32 to \
             compute)"
                .to_string()
        } else {
            format!("native ({})", native.join(", "))
        }
    }
}

/// Device names through the CUDA driver API (`cuDeviceGetName` in libcuda.so.1, which libtorch
/// has already loaded when CUDA is available); tch exposes no device properties.
fn cuda_device_names(count: i64) -> Vec<String> {
    if count <= 0 {
        return Vec::new();
    }
    type CuInit = unsafe extern "C" fn(u32) -> i32;
    type CuDeviceGet = unsafe extern "C" fn(*mut i32, i32) -> i32;
    type CuDeviceGetName = unsafe extern "C" fn(*mut libc::c_char, i32, i32) -> i32;
    let mut names = Vec::new();
    // SAFETY: dlopen/dlsym with NUL-terminated names; each symbol is cast to the signature the
    // CUDA driver API documents, and the name buffer is larger than the length we pass.
    unsafe {
        let handle = libc::dlopen(c"libcuda.so.1".as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL);
        if handle.is_null() {
            return names;
        }
        let init = libc::dlsym(handle, c"cuInit".as_ptr());
        let get = libc::dlsym(handle, c"cuDeviceGet".as_ptr());
        let get_name = libc::dlsym(handle, c"cuDeviceGetName".as_ptr());
        if init.is_null() || get.is_null() || get_name.is_null() {
            return names;
        }
        let init: CuInit = std::mem::transmute(init);
        let get: CuDeviceGet = std::mem::transmute(get);
        let get_name: CuDeviceGetName = std::mem::transmute(get_name);
        if init(0) != 0 {
            return names;
        }
        for ordinal in 0..count as i32 {
            let mut dev = 0i32;
            let mut buf = [0 as libc::c_char; 256];
            if get(&mut dev, ordinal) == 0 && get_name(buf.as_mut_ptr(), 255, dev) == 0 {
                let name = std::ffi::CStr::from_ptr(buf.as_ptr())
                    .to_string_lossy()
                    .into_owned();
                names.push(name);
            }
        }
    }
    names
}
