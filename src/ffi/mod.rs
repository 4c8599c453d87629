//! Bindings to src/ffi/shim.cpp: libtorch's fused CPU convolution that tch 0.24 does not bind,
//! and [`clear_grad`] (`p.grad = None`).
//!
//! [`conv_pointwise`] / [`conv_pointwise_add`] call oneDNN's `mkldnn::_convolution_pointwise`, a
//! convolution with its activation (or its residual add) fused as a post-op, on channels-last
//! fp32 tensors. The weight may be pre-reordered by [`pack_weight`] into oneDNN's blocked layout,
//! which spares the reorder on every call. This is what TorchInductor's CPU freezing pass emits
//! for `torch.compile`d convolutions.
//!
//! Every call goes through libtorch's dispatcher with the op's registered schema, as
//! `torch.ops.mkldnn._convolution_pointwise(...)` does from Python; a C++ exception comes back as
//! [`Error::Torch`].

mod engine;
pub use engine::{engine_available, engine_load_error, engine_version, Engine, Lane, Lanes};

use crate::{Error, Result};
use std::ffi::{c_char, CStr};
use std::ptr::NonNull;
use tch::Tensor;
use torch_sys::C_tensor;

extern "C" {
    fn mn_free_error(err: *mut c_char);
    fn mn_conv_pointwise_available() -> bool;
    fn mn_graph_create(
        source: *const c_char,
        names: *const *const c_char,
        tensors: *const *const C_tensor,
        n: usize,
        err: *mut *mut c_char,
    ) -> *mut std::ffi::c_void;
    fn mn_graph_forward(
        module: *mut std::ffi::c_void,
        x: *const C_tensor,
        err: *mut *mut c_char,
    ) -> *mut C_tensor;
    fn mn_graph_free(module: *mut std::ffi::c_void);
    fn mn_enable_onednn_fusion(enabled: bool);
    fn mn_clear_grad(t: *const C_tensor);
    fn mn_serial_thread() -> i32;
    fn mn_hardtanh(
        t: *const C_tensor,
        lo: f64,
        hi: f64,
        inplace: bool,
        err: *mut *mut c_char,
    ) -> *mut C_tensor;
    fn mn_autocast_enter(device: i32, dtype: i32);
    #[allow(clippy::too_many_arguments)]
    fn mn_dist_init(
        addr: *const c_char,
        port: i32,
        rank: i32,
        world: i32,
        agent_store: bool,
        restart: i32,
        timeout_ms: i64,
        nccl_lib: *const c_char,
        err: *mut *mut c_char,
    ) -> *mut std::ffi::c_void;
    fn mn_dist_free(g: *mut std::ffi::c_void);
    fn mn_dist_broadcast(
        g: *mut std::ffi::c_void,
        t: *const C_tensor,
        root: i32,
        err: *mut *mut c_char,
    ) -> bool;
    fn mn_dist_all_reduce_autograd(
        g: *mut std::ffi::c_void,
        t: *const C_tensor,
        err: *mut *mut c_char,
    ) -> *mut C_tensor;
    fn mn_reducer_new(
        g: *mut std::ffi::c_void,
        params: *const *const C_tensor,
        names: *const *const c_char,
        n: i64,
        cap: i64,
        first_cap: i64,
        err: *mut *mut c_char,
    ) -> *mut std::ffi::c_void;
    fn mn_reducer_free(r: *mut std::ffi::c_void);
    fn mn_reducer_pre_forward(
        r: *mut std::ffi::c_void,
        rebuilt: *mut bool,
        err: *mut *mut c_char,
    ) -> bool;
    fn mn_reducer_post_forward(r: *mut std::ffi::c_void, err: *mut *mut c_char) -> bool;
    fn mn_reducer_buckets(
        r: *mut std::ffi::c_void,
        params: *const *const C_tensor,
        n: i64,
        out: *mut i64,
        cap: i64,
        err: *mut *mut c_char,
    ) -> i64;
    fn mn_autocast_exit(device: i32);
    fn mn_scaled_op(
        op: i32,
        t: *const C_tensor,
        a: *const C_tensor,
        b: *const C_tensor,
        s: f64,
        err: *mut *mut c_char,
    ) -> *mut C_tensor;
    #[allow(clippy::too_many_arguments)]
    fn mn_conv_pointwise(
        x: *const C_tensor,
        other: *const C_tensor,
        w: *const C_tensor,
        b: *const C_tensor,
        geometry: *const ConvGeometry,
        attr: *const c_char,
        scalars: *const f64,
        n_scalars: usize,
        err: *mut *mut c_char,
    ) -> *mut C_tensor;
}

/// Turns the shim's (pointer, error) pair into a result.
fn take<T>(ptr: *mut T, err: *mut c_char, what: &str) -> Result<NonNull<T>> {
    if !err.is_null() {
        // SAFETY: the shim sets `err` to a NUL-terminated malloc'd string, freed here once.
        let msg = unsafe { CStr::from_ptr(err) }
            .to_string_lossy()
            .into_owned();
        unsafe { mn_free_error(err) };
        return Err(shim_error(what, &msg));
    }
    NonNull::new(ptr).ok_or_else(|| shim_error(what, "no result"))
}

/// An error from the shim, reported as libtorch's own errors are.
fn shim_error(what: &str, msg: &str) -> Error {
    Error::Torch(tch::TchError::Torch(format!("{what}: {msg}")))
}

fn opt_ptr(t: Option<&Tensor>) -> *const C_tensor {
    t.map_or(std::ptr::null(), |t| t.as_ptr())
}

// `ConvGeometry`: padding, stride, dilation (both spatial dims alike) and groups, a `#[repr(C)]`
// struct that build.rs declares once for Rust and C++ (`OUT_DIR/mn_ffi.h`).
include!(concat!(env!("OUT_DIR"), "/ffi_types.rs"));

/// Makes libtorch run single-threaded (intra-op) in the calling thread only, as
/// `torch.set_num_threads(1)` does in each DataLoader worker process: for threads that prepare
/// inputs beside a model that uses every core. Returns the thread count this thread now sees.
pub fn serial_thread() -> i32 {
    // SAFETY: no arguments; sets this thread's OpenMP thread count.
    unsafe { mn_serial_thread() }
}

/// Whether this libtorch has the fused convolution on the CPU (builds without oneDNN do not).
pub fn conv_pointwise_available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    // SAFETY: a dispatcher lookup without arguments.
    *AVAILABLE.get_or_init(|| unsafe { mn_conv_pointwise_available() })
}

/// `post_op(conv2d(x, w, b))` through oneDNN with the post-op fused: `attr` and `scalars` as
/// [`crate::nn::Activation::onednn_post_op`] gives them (`"none"`, `"relu"`, `"hardtanh"` with
/// min and max, `"hardswish"`).
pub fn conv_pointwise(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    g: ConvGeometry,
    (attr, scalars): (&CStr, &[f64]),
) -> Result<Tensor> {
    let what = "mkldnn::_convolution_pointwise";
    call(x, None, w, b, g, attr, scalars, what)
}

/// `conv2d(x, w, b) + other` through oneDNN with the add fused (a residual shortcut).
pub fn conv_pointwise_add(
    x: &Tensor,
    other: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    g: ConvGeometry,
) -> Result<Tensor> {
    let what = "mkldnn::_convolution_pointwise.binary";
    call(x, Some(other), w, b, g, c"none", &[], what)
}

#[allow(clippy::too_many_arguments)]
fn call(
    x: &Tensor,
    other: Option<&Tensor>,
    w: &Tensor,
    b: Option<&Tensor>,
    g: ConvGeometry,
    attr: &CStr,
    scalars: &[f64],
    what: &str,
) -> Result<Tensor> {
    let mut err = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; the shim copies what it keeps.
    let out = unsafe {
        mn_conv_pointwise(
            x.as_ptr(),
            opt_ptr(other),
            w.as_ptr(),
            opt_ptr(b),
            &g,
            attr.as_ptr(),
            scalars.as_ptr(),
            scalars.len(),
            &mut err,
        )
    };
    let ptr = take(out, err, what)?;
    // SAFETY: the shim returns a new heap `at::Tensor*`, tch's `C_tensor`; Tensor owns it now.
    Ok(unsafe { Tensor::from_ptr(ptr.as_ptr()) })
}

/// Reorders a conv weight `[O, I/groups, k, k]` into the blocked layout oneDNN picks for an input
/// of `input_size` (`[N, C, H, W]`), as TorchInductor's freezing does; the result is an opaque
/// mkldnn tensor that only [`conv_pointwise`] reads.
pub fn pack_weight(w: &Tensor, g: ConvGeometry, input_size: [i64; 4]) -> Result<Tensor> {
    Ok(w.f_contiguous()?
        .f_to_mkldnn(None)?
        .f_mkldnn_reorder_conv2d_weight(
            [g.padding; 2],
            [g.stride; 2],
            [g.dilation; 2],
            g.groups,
            Some(input_size.as_slice()),
        )?)
}

/// Turns libtorch's oneDNN Graph (LLGA) fuser on or off for the whole process, as
/// `torch.jit.enable_onednn_fusion(enabled)` does: a registered TorchScript pass, so every
/// TorchScript module run in the process afterwards is fused, not only ours.
pub fn enable_onednn_fusion(enabled: bool) {
    // SAFETY: sets a process-wide flag in libtorch.
    unsafe { mn_enable_onednn_fusion(enabled) }
}

/// Drops `t`'s gradient, as `t.grad = None` does in Python (what torch.optim's
/// `zero_grad(set_to_none=True)` does; tch's `zero_grad` fills the gradient with zeros instead).
pub fn clear_grad(t: &Tensor) {
    // SAFETY: `t` is valid for the call; only its gradient slot is reset.
    unsafe { mn_clear_grad(t.as_ptr()) }
}

/// `F.hardtanh(t, lo, hi, inplace)`, what `nn.ReLU6` runs: the gradient is zero where the input
/// is at a bound (clamp's passes there), which matters where values land exactly on 0 or 6, as
/// bf16 values often do.
pub fn hardtanh(t: &Tensor, lo: f64, hi: f64, inplace: bool) -> Result<Tensor> {
    let mut err = std::ptr::null_mut();
    // SAFETY: `t` is valid for the call; the result is a new handle we own.
    let ptr = unsafe { mn_hardtanh(t.as_ptr(), lo, hi, inplace, &mut err) };
    let ptr = take(ptr, err, "hardtanh")?;
    // SAFETY: a fresh `at::Tensor*` from the shim, owned by the returned Tensor.
    Ok(unsafe { Tensor::from_ptr(ptr.as_ptr()) })
}

/// A c10d process group (src/ffi/dist.cpp), joined through a TCPStore as
/// `init_process_group(init_method="env://")` joins it: Gloo for CPU tensors, and NCCL or Gloo
/// for CUDA tensors.
#[derive(Debug)]
pub struct ProcessGroup {
    group: NonNull<std::ffi::c_void>,
}

// SAFETY: the group is owned by this value. c10d's ProcessGroupGloo takes collectives from any
// thread (its work queue is guarded by its own mutex; DDP's reducer calls it from autograd's
// threads), so shared references may be used from several threads.
unsafe impl Send for ProcessGroup {}
unsafe impl Sync for ProcessGroup {}

/// Where and how to join a process group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendezvous {
    pub addr: String,
    pub port: u16,
    pub rank: usize,
    pub world: usize,
    /// torchrun's agent hosts the store (`TORCHELASTIC_USE_AGENT_STORE=True`).
    pub agent_store: bool,
    /// `TORCHELASTIC_RESTART_COUNT`.
    pub restart: u32,
    pub timeout: std::time::Duration,
    /// CUDA tensors go through NCCL (see [`has_nccl`]), else through Gloo.
    pub nccl: bool,
}

/// Whether this build has c10d's NCCL backend (libmobilenet_nccl.so, built against a CUDA
/// libtorch with NCCL's and CUDA's headers at build time) and the library is there, where it
/// was built or beside the binary. Without it, CUDA tensors go through Gloo.
pub fn has_nccl() -> bool {
    matches!(nccl_library(), Some(Ok(_)))
}

/// Where libmobilenet_nccl.so is (see [`built_library`]).
fn nccl_library() -> Option<std::result::Result<std::path::PathBuf, String>> {
    built_library(env!("MOBILENET_NCCL_LIB"), "libmobilenet_nccl.so")
}

/// A library build.rs wrote (its path `built`, empty when it was not built: `None`): that path,
/// else `name` beside the executable (a binary copied elsewhere with its libraries), else an
/// error naming the missing path.
fn built_library(
    built: &str,
    name: &str,
) -> Option<std::result::Result<std::path::PathBuf, String>> {
    if built.is_empty() {
        return None;
    }
    let built = std::path::PathBuf::from(built);
    if built.exists() {
        return Some(Ok(built));
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join(name)));
    Some(match beside {
        Some(p) if p.exists() => Ok(p),
        _ => Err(format!("{} is missing", built.display())),
    })
}

impl ProcessGroup {
    /// Joins the group; blocks until every rank has joined or the timeout passes.
    pub fn join(r: &Rendezvous) -> Result<ProcessGroup> {
        let what = "c10d process group";
        let addr = std::ffi::CString::new(r.addr.as_str())
            .map_err(|_| shim_error(what, "MASTER_ADDR holds a NUL byte"))?;
        let int = |v: usize, name: &str| {
            i32::try_from(v).map_err(|_| shim_error(what, &format!("{name} {v} is too large")))
        };
        let nccl_lib = if r.nccl {
            let path = nccl_library()
                .unwrap_or_else(|| Err("this build has no NCCL (see `mobilenet info`)".into()))
                .map_err(|e| shim_error(what, &format!("c10d's NCCL backend: {e}")))?;
            Some(
                std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
                    .map_err(|_| shim_error(what, &format!("NUL in {}", path.display())))?,
            )
        } else {
            None
        };
        let mut err = std::ptr::null_mut();
        // SAFETY: the strings live for the call; the shim returns an owned group or an error.
        let ptr = unsafe {
            mn_dist_init(
                addr.as_ptr(),
                i32::from(r.port),
                int(r.rank, "RANK")?,
                int(r.world, "WORLD_SIZE")?,
                r.agent_store,
                r.restart as i32,
                r.timeout.as_millis().min(i64::MAX as u128) as i64,
                nccl_lib.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
                &mut err,
            )
        };
        Ok(ProcessGroup {
            group: take(ptr, err, what)?,
        })
    }

    /// In place: `t` becomes rank `root`'s `t`.
    pub fn broadcast(&self, t: &Tensor, root: usize) -> Result<()> {
        let mut err = std::ptr::null_mut();
        // SAFETY: the group and the tensor are valid for the call.
        let ok =
            unsafe { mn_dist_broadcast(self.group.as_ptr(), t.as_ptr(), root as i32, &mut err) };
        checked(ok, err, "broadcast")
    }

    /// A new tensor, the sum of every rank's `t`, that autograd differentiates: its backward
    /// all-reduces (sums) the incoming gradient, as SyncBatchNorm's backward does. Every rank
    /// must call it at the same point, in the forward and (through `backward`) in the backward;
    /// the group must outlive the graph.
    pub fn all_reduce_sum_differentiable(&self, t: &Tensor) -> Result<Tensor> {
        let mut err = std::ptr::null_mut();
        // SAFETY: the group and the tensor are valid for the call; the result is a new handle.
        let ptr = unsafe { mn_dist_all_reduce_autograd(self.group.as_ptr(), t.as_ptr(), &mut err) };
        let ptr = take(ptr, err, "differentiable all-reduce")?;
        // SAFETY: a fresh `at::Tensor*` from the shim, owned by the returned Tensor.
        Ok(unsafe { Tensor::from_ptr(ptr.as_ptr()) })
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: the group was created by `mn_dist_init` and is freed once.
        unsafe { mn_dist_free(self.group.as_ptr()) }
    }
}

/// Turns a shim call's `ok` and `err` into a result.
fn checked(ok: bool, err: *mut c_char, what: &str) -> Result<()> {
    if ok {
        return Ok(());
    }
    take(std::ptr::null_mut::<u8>(), err, what).map(drop)
}

/// c10d's `Reducer`, the engine under `DistributedDataParallel`, over a model's trainable
/// parameters: autograd hooks on the parameters copy each gradient, divided by the world size,
/// into its bucket, and a bucket's all-reduce starts (asynchronously, on Gloo's threads) as soon
/// as its last gradient is ready, while the backward goes on; at the end of the backward the
/// averaged gradients are copied back. The first iteration reduces one bucket; from the second
/// forward the buckets follow the order the first backward produced the gradients in, capped
/// as DDP caps them.
#[derive(Debug)]
pub struct Reducer {
    reducer: NonNull<std::ffi::c_void>,
    params: Vec<Tensor>,
    /// Holds the process group the reducer uses.
    _group: std::sync::Arc<ProcessGroup>,
}

impl Reducer {
    /// DDP's reducer for `params` (named `names`), with `bucket_cap_mb`: `None` is DDP's default
    /// (25 MiB, and 1 MiB for the first bucket), `Some(mb)` caps every bucket at `mb` MiB.
    pub fn new(
        group: std::sync::Arc<ProcessGroup>,
        params: &[Tensor],
        names: &[String],
        bucket_cap_mb: Option<f64>,
    ) -> Result<Reducer> {
        let what = "gradient reducer";
        let mib = |mb: f64| (mb * 1024.0 * 1024.0) as i64;
        let (cap, first_cap) = match bucket_cap_mb {
            None => (mib(25.0), mib(1.0)),
            Some(mb) => (mib(mb), mib(mb)),
        };
        let names: Vec<std::ffi::CString> = names
            .iter()
            .map(|n| std::ffi::CString::new(n.replace('\0', "")).unwrap_or_default())
            .collect();
        if names.len() != params.len() {
            return Err(shim_error(what, "one name per parameter is needed"));
        }
        let ptrs: Vec<*const C_tensor> = params.iter().map(|t| t.as_ptr()).collect();
        let name_ptrs: Vec<*const c_char> = names.iter().map(|n| n.as_ptr()).collect();
        let mut err = std::ptr::null_mut();
        // SAFETY: the arrays hold `params.len()` valid entries for the call; the reducer keeps
        // its own references to the tensors and the group.
        let ptr = unsafe {
            mn_reducer_new(
                group.group.as_ptr(),
                ptrs.as_ptr(),
                name_ptrs.as_ptr(),
                params.len() as i64,
                cap,
                first_cap,
                &mut err,
            )
        };
        Ok(Reducer {
            reducer: take(ptr, err, what)?,
            params: params.iter().map(Tensor::shallow_clone).collect(),
            _group: group,
        })
    }

    /// Before a forward whose backward follows (DDP's `_pre_forward`); true when the buckets
    /// were rebuilt now, in the order the first backward produced the gradients (a collective:
    /// every rank calls it at the same point).
    pub fn pre_forward(&self) -> Result<bool> {
        let (mut rebuilt, mut err) = (false, std::ptr::null_mut());
        // SAFETY: the reducer is valid; `rebuilt` lives for the call.
        let ok = unsafe { mn_reducer_pre_forward(self.reducer.as_ptr(), &mut rebuilt, &mut err) };
        checked(ok, err, "gradient reducer")?;
        Ok(rebuilt)
    }

    /// After that forward (DDP's `_post_forward`): the next backward's gradients are reduced.
    pub fn post_forward(&self) -> Result<()> {
        let mut err = std::ptr::null_mut();
        // SAFETY: the reducer is valid for the call.
        let ok = unsafe { mn_reducer_post_forward(self.reducer.as_ptr(), &mut err) };
        checked(ok, err, "gradient reducer")
    }

    /// The buckets in the order they are reduced, as indices into the parameters.
    pub fn buckets(&self) -> Result<Vec<Vec<usize>>> {
        let ptrs: Vec<*const C_tensor> = self.params.iter().map(|t| t.as_ptr()).collect();
        let mut out = vec![0i64; 2 * ptrs.len() + 16];
        loop {
            let mut err = std::ptr::null_mut();
            // SAFETY: `ptrs` holds valid tensors and `out` `out.len()` entries for the call.
            let need = unsafe {
                mn_reducer_buckets(
                    self.reducer.as_ptr(),
                    ptrs.as_ptr(),
                    ptrs.len() as i64,
                    out.as_mut_ptr(),
                    out.len() as i64,
                    &mut err,
                )
            };
            checked(need >= 0, err, "gradient reducer")?;
            let need = need as usize;
            if need > out.len() {
                out.resize(need, 0);
                continue;
            }
            let mut buckets = Vec::new();
            let mut rest = &out[..need];
            while let Some((&len, tail)) = rest.split_first() {
                let len = (len.max(0) as usize).min(tail.len());
                let bucket = tail[..len]
                    .iter()
                    .map(|&i| usize::try_from(i).ok().filter(|&i| i < ptrs.len()))
                    .collect::<Option<Vec<usize>>>()
                    .ok_or_else(|| shim_error("gradient reducer", "a bucket holds a stranger"))?;
                buckets.push(bucket);
                rest = &tail[len..];
            }
            return Ok(buckets);
        }
    }
}

impl Drop for Reducer {
    fn drop(&mut self) {
        // SAFETY: the reducer was created by `mn_reducer_new` and is freed once.
        unsafe { mn_reducer_free(self.reducer.as_ptr()) }
    }
}

/// Automatic mixed precision for the current thread, as `with torch.autocast(device, dtype):`
/// runs it: while the value lives, libtorch's autocast casts the inputs of the ops on its lists
/// (convolutions and linear layers to `dtype`, losses and reductions to float32). Dropping it
/// ends the region. Not nested.
#[derive(Debug)]
pub struct Autocast {
    device: i32,
    /// Autocast state is per thread: the region must end on the thread that began it.
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Autocast {
    /// `kind` is `Kind::BFloat16` or `Kind::Half`.
    pub fn enter(device: tch::Device, kind: tch::Kind) -> Result<Autocast> {
        let dtype = match kind {
            tch::Kind::BFloat16 => 0,
            tch::Kind::Half => 1,
            other => {
                return Err(Error::config(
                    "autocast",
                    format!("{other:?} is not bf16 or fp16"),
                ))
            }
        };
        let device = i32::from(device.is_cuda());
        // SAFETY: sets thread-local autocast state in libtorch.
        unsafe { mn_autocast_enter(device, dtype) };
        Ok(Autocast {
            device,
            _not_send: std::marker::PhantomData,
        })
    }
}

impl Drop for Autocast {
    fn drop(&mut self) {
        // SAFETY: ends the region `enter` began on this thread.
        unsafe { mn_autocast_exit(self.device) }
    }
}

/// An op with a scalar argument that tch binds without it, as torch.optim calls it (the same
/// kernel, so the same bits: `a + alpha * b` is one fused multiply-add in libtorch's vectorized
/// kernels, not two roundings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaledOp {
    /// `t.add_(a, alpha=s)`.
    AddInPlace = 0,
    /// `t.add(a, alpha=s)`.
    Add = 1,
    /// `t.addcmul_(a, b, value=s)`.
    AddcmulInPlace = 2,
    /// `t.addcmul(a, b, value=s)`.
    Addcmul = 3,
    /// `t.addcdiv_(a, b, value=s)`.
    AddcdivInPlace = 4,
}

/// Runs `op` on `t` with `a` (and `b` for the addc* ops; ignored otherwise) and the scalar `s`.
pub fn scaled_op(
    op: ScaledOp,
    t: &Tensor,
    a: &Tensor,
    b: Option<&Tensor>,
    s: f64,
) -> Result<Tensor> {
    let b = b.unwrap_or(a);
    let mut err = std::ptr::null_mut();
    // SAFETY: the tensors are valid for the call; the result is a new handle we own.
    let ptr = unsafe { mn_scaled_op(op as i32, t.as_ptr(), a.as_ptr(), b.as_ptr(), s, &mut err) };
    let ptr = take(ptr, err, "scaled op")?;
    // SAFETY: a fresh `at::Tensor*` from the shim, owned by the returned Tensor.
    Ok(unsafe { Tensor::from_ptr(ptr.as_ptr()) })
}

/// A forward pass compiled by TorchScript with the oneDNN Graph fuser (src/ffi/graph.cpp): built
/// from TorchScript `source` whose `forward(self, x)` reads `self.<name>` parameters, frozen.
/// The first calls for each input shape profile and compile (slow); later ones run the compiled
/// oneDNN partitions, when the process-wide fuser is on ([`enable_onednn_fusion`]).
#[derive(Debug)]
pub struct Graph {
    module: NonNull<std::ffi::c_void>,
}

// SAFETY: the module is a `torch::jit::Module` owned by this value; moving it to another thread
// is fine (it is not shared, the type is not Sync).
unsafe impl Send for Graph {}

impl Graph {
    pub fn new(source: &str, params: &[(String, &Tensor)]) -> Result<Graph> {
        let what = "TorchScript graph";
        let c = |s: &str| {
            std::ffi::CString::new(s).map_err(|_| shim_error(what, &format!("NUL in {s:?}")))
        };
        let source = c(source)?;
        let names = params
            .iter()
            .map(|(n, _)| c(n))
            .collect::<Result<Vec<_>>>()?;
        let name_ptrs: Vec<*const c_char> = names.iter().map(|n| n.as_ptr()).collect();
        let tensor_ptrs: Vec<*const C_tensor> = params.iter().map(|(_, t)| t.as_ptr()).collect();
        let mut err = std::ptr::null_mut();
        // SAFETY: the arrays hold `params.len()` valid pointers for the call; the module keeps
        // its own references to the tensors.
        let module = unsafe {
            mn_graph_create(
                source.as_ptr(),
                name_ptrs.as_ptr(),
                tensor_ptrs.as_ptr(),
                params.len(),
                &mut err,
            )
        };
        Ok(Graph {
            module: take(module, err, what)?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut err = std::ptr::null_mut();
        // SAFETY: `module` lives until drop; `x` is valid for the call.
        let out = unsafe { mn_graph_forward(self.module.as_ptr(), x.as_ptr(), &mut err) };
        let ptr = take(out, err, "TorchScript graph forward")?;
        // SAFETY: a new heap `at::Tensor*` from the shim; Tensor owns it now.
        Ok(unsafe { Tensor::from_ptr(ptr.as_ptr()) })
    }
}

impl Drop for Graph {
    fn drop(&mut self) {
        // SAFETY: created by mn_graph_create, freed once.
        unsafe { mn_graph_free(self.module.as_ptr()) }
    }
}

#[cfg(test)]
mod tests {
    use super::built_library;

    /// A library build.rs wrote: not built, at its built path, beside the executable (a binary
    /// copied to another machine with its libraries, as scripts/gpu-prepare.sh does), missing.
    #[test]
    fn built_library_is_found_where_it_was_built_or_beside_the_binary() {
        assert!(built_library("", "libx.so").is_none());
        let dir = std::env::temp_dir().join(format!("mn-built-library-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let built = dir.join("libmn_test_built.so");
        std::fs::write(&built, b"").unwrap();
        let at = built_library(built.to_str().unwrap(), "libmn_test_built.so");
        assert_eq!(at.unwrap().unwrap(), built);
        let gone = dir.join("gone/libmn_test_beside.so");
        let name = format!("libmn_test_beside_{}.so", std::process::id());
        let beside = std::env::current_exe()
            .unwrap()
            .parent()
            .unwrap()
            .join(&name);
        std::fs::write(&beside, b"").unwrap();
        let found = built_library(gone.to_str().unwrap(), &name);
        std::fs::remove_file(&beside).unwrap();
        assert_eq!(found.unwrap().unwrap(), beside);
        let missing = built_library(gone.to_str().unwrap(), &name)
            .unwrap()
            .unwrap_err();
        assert!(
            missing.contains("gone/libmn_test_beside.so is missing"),
            "{missing}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
