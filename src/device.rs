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
            DeviceChoice::Auto => Ok(Device::cuda_if_available()),
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Cuda(n) => {
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
                        format!("cuda:{n} was asked for, but libtorch sees {count} CUDA device(s)"),
                    ))
                }
            }
        }
    }
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
