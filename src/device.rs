//! Where and in what precision a model runs: `--device auto|cpu|cuda|cuda:N`,
//! `--precision fp32|fp16|bf16`, and the [`Placement`] a loaded model is prepared for.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::str::FromStr;
use tch::{Device, Kind};

/// A device choice as the command line spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// CUDA device 0 when available, else the CPU.
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceChoice {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(DeviceChoice::Cuda(n)),
                _ => Err(Error::config(
                    "device",
                    format!("{s:?} is not one of auto, cpu, cuda, cuda:N"),
                )),
            },
        }
    }
}

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceChoice::Auto => f.write_str("auto"),
            DeviceChoice::Cpu => f.write_str("cpu"),
            DeviceChoice::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceChoice {
    /// The device, or an error when CUDA is asked for and absent (or the index is too large).
    pub fn resolve(self) -> Result<Device> {
        match self {
            DeviceChoice::Auto => {
                if let CudaLibrary::Failed(why) = load_cuda() {
                    eprintln!("warning: libtorch_cuda.so did not load ({why}); running on the CPU");
                }
                Ok(Device::cuda_if_available())
            }
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Cuda(n) => {
                let state = load_cuda();
                let count = if tch::Cuda::is_available() {
                    tch::Cuda::device_count()
                } else {
                    0
                };
                if (n as i64) < count {
                    Ok(Device::Cuda(n))
                } else {
                    Err(Error::config(
                        "device",
                        match state {
                            CudaLibrary::Loaded => format!(
                                "cuda:{n} was asked for, but libtorch sees {count} CUDA device(s)"
                            ),
                            state => {
                                format!("cuda:{n} was asked for, but libtorch_cuda is {state}")
                            }
                        },
                    ))
                }
            }
        }
    }
}

/// Whether this process has libtorch's CUDA library, which the binary does not link: libtorch_cuda
/// pulls in cuBLAS, cuDNN, cuFFT, NCCL and more, 0.3 s and 350 MB to load, for nothing on a
/// machine without a GPU. [`load_cuda`] loads it, once, before anything asks libtorch about CUDA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CudaLibrary {
    /// Loaded: libtorch sees CUDA devices if the driver has any.
    Loaded,
    /// Not loaded: no NVIDIA driver (`libcuda.so.1`) here, so libtorch could see no device.
    NoDriver,
    /// Not loaded: `MOBILENET_LOAD_CUDA=0`.
    Disabled,
    /// This libtorch has no libtorch_cuda.so (a CPU build).
    CpuOnlyLibtorch,
    /// Loading failed, with the loader's message; libtorch sees no CUDA device.
    Failed(String),
}

impl std::fmt::Display for CudaLibrary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CudaLibrary::Loaded => f.write_str("loaded"),
            CudaLibrary::NoDriver => f.write_str("not loaded: no NVIDIA driver (libcuda.so.1)"),
            CudaLibrary::Disabled => f.write_str("not loaded: MOBILENET_LOAD_CUDA=0"),
            CudaLibrary::CpuOnlyLibtorch => f.write_str("absent: a CPU-only libtorch"),
            CudaLibrary::Failed(e) => write!(f, "not loaded: {e}"),
        }
    }
}

/// Loads libtorch_cuda.so from libtorch_cpu's folder (the libtorch this process runs on), once,
/// when the NVIDIA driver is there or `MOBILENET_LOAD_CUDA=1`; never with
/// `MOBILENET_LOAD_CUDA=0`. Its static initializers register CUDA with libtorch. Call it before
/// the first CUDA query (`tch::Cuda::is_available`, `Device::cuda_if_available`): libtorch
/// decides once, at that query, whether it has CUDA. [`DeviceChoice::resolve`] calls it for
/// `auto` and `cuda`, so `--device cpu` never pays for it.
pub fn load_cuda() -> &'static CudaLibrary {
    static STATE: std::sync::OnceLock<CudaLibrary> = std::sync::OnceLock::new();
    STATE.get_or_init(|| {
        let forced = match std::env::var("MOBILENET_LOAD_CUDA").as_deref() {
            Ok("0") => return CudaLibrary::Disabled,
            Ok("1") => true,
            _ => false,
        };
        // SAFETY: dlopen/dlsym/dladdr with NUL-terminated names; handles are never closed.
        unsafe {
            if !forced {
                let driver = libc::dlopen(c"libcuda.so.1".as_ptr(), libc::RTLD_LAZY);
                if driver.is_null() {
                    return CudaLibrary::NoDriver;
                }
            }
            let cpu = libc::dlopen(
                c"libtorch_cpu.so".as_ptr(),
                libc::RTLD_LAZY | libc::RTLD_NOLOAD,
            );
            let symbol = if cpu.is_null() {
                std::ptr::null_mut()
            } else {
                libc::dlsym(cpu, c"_ZN2at13globalContextEv".as_ptr())
            };
            let mut info: libc::Dl_info = std::mem::zeroed();
            if symbol.is_null() || libc::dladdr(symbol, &mut info) == 0 || info.dli_fname.is_null()
            {
                return CudaLibrary::Failed("cannot find libtorch_cpu.so in this process".into());
            }
            let cpu_path = std::ffi::CStr::from_ptr(info.dli_fname).to_string_lossy();
            let dir = std::path::Path::new(cpu_path.as_ref())
                .parent()
                .unwrap_or(std::path::Path::new("."));
            let path = dir.join("libtorch_cuda.so");
            if !path.exists() {
                return CudaLibrary::CpuOnlyLibtorch;
            }
            let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
                return CudaLibrary::Failed(format!("NUL in {}", path.display()));
            };
            if libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL).is_null() {
                let e = libc::dlerror();
                let why = if e.is_null() {
                    "unknown error".into()
                } else {
                    std::ffi::CStr::from_ptr(e).to_string_lossy().into_owned()
                };
                return CudaLibrary::Failed(why);
            }
            // Loaded, but libtorch may have decided before (a seed, a backward, a CUDA query
            // before this call): then its CUDA hooks are the empty ones for good.
            if !tch::utils::has_cudart() {
                return CudaLibrary::Failed(
                    "loaded after libtorch had already decided it has no CUDA (call \
                     mobilenet::device::load_cuda first)"
                        .into(),
                );
            }
            CudaLibrary::Loaded
        }
    })
}

/// `tch::Cuda::is_available()`, after [`load_cuda`].
pub fn cuda_is_available() -> bool {
    load_cuda();
    tch::Cuda::is_available()
}

/// Floating-point precision of weights and activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    Fp32,
    Fp16,
    Bf16,
}

impl Precision {
    pub fn kind(self) -> Kind {
        match self {
            Precision::Fp32 => Kind::Float,
            Precision::Fp16 => Kind::Half,
            Precision::Bf16 => Kind::BFloat16,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Fp16 => "fp16",
            Precision::Bf16 => "bf16",
        }
    }

    /// Errors when the precision is not supported on `device`: fp16 is CUDA only; bf16 runs on
    /// the CPU when libtorch has oneDNN (mkldnn).
    pub fn check(self, device: Device) -> Result<()> {
        if device.is_cuda() {
            // A library caller's first step towards CUDA (`Model::from_file`, `Model::to`).
            load_cuda();
        }
        match (self, device) {
            (Precision::Fp16, Device::Cpu) => Err(Error::config(
                "precision",
                "fp16 is for CUDA devices; on the CPU use fp32 or bf16",
            )),
            (Precision::Bf16, Device::Cpu) if !tch::utils::has_mkldnn() => Err(Error::config(
                "precision",
                "bf16 on the CPU needs libtorch with oneDNN (mkldnn), which this one lacks",
            )),
            _ => Ok(()),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a loaded model runs and how it is prepared for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub device: Device,
    pub precision: Precision,
    /// Fold every BatchNorm into its convolution (inference only), in fp32 before the cast:
    /// folding from rounded parameters would not match PyTorch's reduced-precision numbers.
    pub fold: bool,
}

impl Default for Placement {
    /// The CPU, fp32, nothing folded: the model as the file holds it.
    fn default() -> Self {
        Placement {
            device: Device::Cpu,
            precision: Precision::Fp32,
            fold: false,
        }
    }
}
