//! What libtorch this build runs on and what it sees: versions, CUDA devices, cuDNN, threads.

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
    pub default_device: String,
}

impl Info {
    /// Collects the report. Never fails: what cannot be read is left empty.
    pub fn collect() -> Info {
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
            default_device: if cuda_available { "cuda:0" } else { "cpu" }.to_string(),
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
