//! The direct oneDNN engine (src/ffi/engine.cpp): a folded model's forward as oneDNN primitives
//! called one after another, with no TorchScript or ATen between the layers.
//!
//! build.rs builds it into its own shared library against the oneDNN that `make setup` installs
//! into the venv, and this module loads it on first use with `dlopen(RTLD_LOCAL |
//! RTLD_DEEPBIND)`. Linked into the binary, that oneDNN's exported C++ symbols (the vtables of its
//! primitive caches' results, among others) would replace libtorch's own, whose layouts differ,
//! and libtorch's oneDNN calls would free memory they never allocated. Loaded this way, each
//! library binds to its own.

use super::ConvGeometry;
use crate::{Error, Result};
use std::ffi::{c_char, c_void, CStr, CString};
use std::ptr::NonNull;
use std::sync::OnceLock;
use tch::Tensor;

type Handle = *mut c_void;
type ErrOut = *mut *mut c_char;

/// The engine library's entry points.
struct Api {
    free_error: unsafe extern "C" fn(*mut c_char),
    version: unsafe extern "C" fn() -> *const c_char,
    new: unsafe extern "C" fn(bool, ErrOut) -> Handle,
    free: unsafe extern "C" fn(Handle),
    conv: unsafe extern "C" fn(
        Handle,
        *const f32,
        *const f32,
        i64,
        i64,
        i64,
        ConvGeometry,
        i32,
        ErrOut,
    ) -> bool,
    residual_start: unsafe extern "C" fn(Handle),
    residual_end: unsafe extern "C" fn(Handle),
    squeeze_excite: unsafe extern "C" fn(
        Handle,
        *const f32,
        *const f32,
        *const f32,
        *const f32,
        i64,
        i64,
        ErrOut,
    ) -> bool,
    pool: unsafe extern "C" fn(Handle),
    run: unsafe extern "C" fn(Handle, *const f32, i64, i64, i64, *mut f32, i64, ErrOut) -> bool,
    /// Own-thread lanes (absent from older builds of the library).
    lanes: Option<LaneApi>,
    /// Tests only, so that an older build of the library (`MOBILENET_ENGINE_OVERRIDE`) loads.
    #[cfg(test)]
    dense: unsafe extern "C" fn(
        *const f32,
        *const f32,
        i64,
        i64,
        i32,
        *const f32,
        i64,
        *mut f32,
        bool,
        ErrOut,
    ) -> bool,
}

/// The entry points of [`Lanes`].
struct LaneApi {
    new: unsafe extern "C" fn(Handle, i32, i64, i64, *mut i64, ErrOut) -> Handle,
    free: unsafe extern "C" fn(Handle),
    run: unsafe extern "C" fn(Handle, i32, *const f32, *mut f32, ErrOut) -> bool,
    head: unsafe extern "C" fn(Handle, *const f32, i64, i64, *mut f32, i64, ErrOut) -> bool,
}

/// The loaded library, or why it is not there.
fn api() -> std::result::Result<&'static Api, &'static str> {
    static API: OnceLock<std::result::Result<Api, String>> = OnceLock::new();
    API.get_or_init(load).as_ref().map_err(String::as_str)
}

/// The run-time override of the engine's library path (another build of it, to compare two).
const OVERRIDE: &str = "MOBILENET_ENGINE_OVERRIDE";

/// [`OVERRIDE`]'s path, when set and not empty.
fn override_path() -> Option<std::path::PathBuf> {
    std::env::var_os(OVERRIDE)
        .filter(|p| !p.is_empty())
        .map(Into::into)
}

/// Where the library is: [`OVERRIDE`]'s path when set, else the path build.rs wrote, else
/// beside the executable.
fn library_path() -> std::result::Result<std::path::PathBuf, String> {
    if let Some(path) = override_path() {
        return Ok(path);
    }
    super::built_library(env!("MOBILENET_ENGINE_LIB"), "libmobilenet_engine.so")
        .unwrap_or_else(|| Err("built without oneDNN (run `make setup`, then rebuild)".into()))
}

fn load() -> std::result::Result<Api, String> {
    let path = library_path()?;
    let c = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| format!("NUL in {}", path.display()))?;
    // SAFETY: a NUL-terminated path; the handle is never closed (the library lives as long as
    // the process).
    let handle = unsafe {
        libc::dlopen(
            c.as_ptr(),
            libc::RTLD_NOW | libc::RTLD_LOCAL | libc::RTLD_DEEPBIND,
        )
    };
    if handle.is_null() {
        // SAFETY: dlerror returns a NUL-terminated message (or null) after a failed dlopen.
        let why = unsafe { libc::dlerror() };
        let why = if why.is_null() {
            "unknown error".into()
        } else {
            unsafe { CStr::from_ptr(why) }
                .to_string_lossy()
                .into_owned()
        };
        return Err(format!("cannot load {}: {why}", path.display()));
    }
    macro_rules! sym {
        ($name:literal) => {{
            // SAFETY: a NUL-terminated name looked up in the handle opened above.
            let p = unsafe { libc::dlsym(handle, concat!($name, "\0").as_ptr().cast()) };
            if p.is_null() {
                return Err(format!("{} has no {}", path.display(), $name));
            }
            // SAFETY: engine.cpp defines the symbol with the signature of the field it fills.
            unsafe { fn_pointer(p) }
        }};
    }
    macro_rules! optional {
        ($name:literal) => {{
            // SAFETY: as in `sym!`.
            let p = unsafe { libc::dlsym(handle, concat!($name, "\0").as_ptr().cast()) };
            // SAFETY: engine.cpp defines the symbol with the signature of the field it fills.
            (!p.is_null()).then(|| unsafe { fn_pointer(p) })
        }};
    }
    let lanes = (|| {
        Some(LaneApi {
            new: optional!("mn_engine_lanes_new")?,
            free: optional!("mn_engine_lanes_free")?,
            run: optional!("mn_engine_lane_run")?,
            head: optional!("mn_engine_head")?,
        })
    })();
    Ok(Api {
        lanes,
        free_error: sym!("mn_engine_free_error"),
        version: sym!("mn_engine_version"),
        new: sym!("mn_engine_new"),
        free: sym!("mn_engine_free"),
        conv: sym!("mn_engine_conv"),
        residual_start: sym!("mn_engine_residual_start"),
        residual_end: sym!("mn_engine_residual_end"),
        squeeze_excite: sym!("mn_engine_squeeze_excite"),
        pool: sym!("mn_engine_pool"),
        run: sym!("mn_engine_run"),
        #[cfg(test)]
        dense: sym!("mn_engine_dense"),
    })
}

/// `p` as the function pointer type `F`.
///
/// # Safety
/// `p` must be a function of that signature.
unsafe fn fn_pointer<F: Copy>(p: *mut c_void) -> F {
    assert_eq!(std::mem::size_of::<F>(), std::mem::size_of::<*mut c_void>());
    // SAFETY: same size (checked); the caller vouches for the signature.
    unsafe { std::mem::transmute_copy::<*mut c_void, F>(&p) }
}

/// An error of the engine: its message (freed here), or `what` failed without one.
fn checked(api: &Api, ok: bool, err: *mut c_char, what: &str) -> Result<()> {
    if ok && err.is_null() {
        return Ok(());
    }
    let msg = if err.is_null() {
        "failed".to_string()
    } else {
        // SAFETY: the engine sets `err` to a NUL-terminated malloc'd string, freed here once.
        let m = unsafe { CStr::from_ptr(err) }
            .to_string_lossy()
            .into_owned();
        unsafe { (api.free_error)(err) };
        m
    };
    Err(engine_error(&format!("{what}: {msg}")))
}

fn engine_error(msg: &str) -> Error {
    Error::Torch(tch::TchError::Torch(format!("oneDNN engine: {msg}")))
}

/// Whether the direct oneDNN engine ([`Engine`]) was built and loads (`make setup` installs the
/// oneDNN it links).
pub fn engine_available() -> bool {
    api().is_ok()
}

/// Why the engine did not load, where this build has one (or [`OVERRIDE`] names one): a
/// library that is missing, or that `dlopen` refused (under a tight memory limit, its mappings
/// can fail). `None` when it loaded or when the build has none.
pub fn engine_load_error() -> Option<String> {
    let built = !env!("MOBILENET_ENGINE_LIB").is_empty() || override_path().is_some();
    api().err().filter(|_| built).map(str::to_string)
}

/// The oneDNN the engine links (version, threading runtime, commit), or why there is no engine.
pub fn engine_version() -> String {
    match api() {
        // SAFETY: a static NUL-terminated string.
        Ok(api) => unsafe { CStr::from_ptr((api.version)()) }
            .to_string_lossy()
            .into_owned(),
        Err(why) => format!("none ({why})"),
    }
}

/// A folded model's forward as direct oneDNN primitives (src/ffi/engine.cpp): recorded op by op
/// ([`Engine::conv`], [`Engine::squeeze_excite`], ...), compiled for each input shape on its
/// first forward. The engine copies the weights it is given. CPU only, computing in fp32 or in
/// bf16 ([`Engine::new`]).
#[derive(Debug)]
pub struct Engine {
    engine: NonNull<c_void>,
    classes: i64,
    bf16: bool,
}

// SAFETY: the engine is owned by this value and not shared; it can move to another thread (the
// type is not Sync).
unsafe impl Send for Engine {}

/// A contiguous fp32 CPU copy (or view) of `t`, checked to hold `numel` values.
fn f32_data(t: &Tensor, numel: i64, what: &str) -> Result<Tensor> {
    let t = t.f_to_kind(tch::Kind::Float)?.f_contiguous()?;
    if t.device() != tch::Device::Cpu || t.numel() as i64 != numel {
        return Err(engine_error(&format!(
            "{what}: expected {numel} fp32 values on the CPU, got {:?} on {:?}",
            t.size(),
            t.device()
        )));
    }
    Ok(t)
}

impl Engine {
    /// An engine computing in fp32, or with `bf16` in bf16: weights and activations in bf16,
    /// every layer's output rounded to bf16 as in PyTorch's bf16 model (oneDNN accumulates in
    /// fp32), biases in fp32. A bf16 engine takes fp32 or bf16 images and gives bf16 logits.
    pub fn new(bf16: bool) -> Result<Engine> {
        let api = api().map_err(engine_error)?;
        let mut err = std::ptr::null_mut();
        // SAFETY: a new heap object, freed on drop; `err` is set when it is null.
        let engine = unsafe { (api.new)(bf16, &mut err) };
        checked(api, !engine.is_null(), err, "new")?;
        Ok(Engine {
            engine: NonNull::new(engine).ok_or_else(|| engine_error("no engine"))?,
            classes: 0,
            bf16,
        })
    }

    /// A convolution (weight `[oc, in / groups, k, k]`, bias `[oc]`) with `activation`.
    pub fn conv(
        &mut self,
        weight: &Tensor,
        bias: &Tensor,
        geometry: ConvGeometry,
        activation: crate::nn::Activation,
    ) -> Result<()> {
        let size = weight.size();
        if size.len() != 4 || size[2] != size[3] {
            return Err(engine_error(&format!(
                "conv weight {size:?} is not [O, I, k, k]"
            )));
        }
        let (oc, icg, k) = (size[0], size[1], size[2]);
        let w = f32_data(weight, oc * icg * k * k, "conv weight")?;
        let b = f32_data(bias, oc, "conv bias")?;
        let mut err = std::ptr::null_mut();
        // SAFETY: `w` and `b` hold the counts checked above for the call; the engine copies them.
        let api = api().map_err(engine_error)?;
        let ok = unsafe {
            (api.conv)(
                self.engine.as_ptr(),
                w.data_ptr() as *const f32,
                b.data_ptr() as *const f32,
                oc,
                icg,
                k,
                geometry,
                activation.engine_code(),
                &mut err,
            )
        };
        checked(api, ok, err, "conv")?;
        self.classes = oc;
        Ok(())
    }

    /// Remembers the current activation as a shortcut.
    pub fn residual_start(&mut self) {
        if let Ok(api) = api() {
            // SAFETY: the engine is valid.
            unsafe { (api.residual_start)(self.engine.as_ptr()) }
        }
    }

    /// Adds the last remembered shortcut.
    pub fn residual_end(&mut self) {
        if let Ok(api) = api() {
            // SAFETY: the engine is valid.
            unsafe { (api.residual_end)(self.engine.as_ptr()) }
        }
    }

    /// torchvision's `SqueezeExcitation` (ReLU, then hardsigmoid) with fc1 `w1 [s, c, 1, 1]`,
    /// `b1 [s]`, fc2 `w2 [c, s, 1, 1]`, `b2 [c]`.
    pub fn squeeze_excite(
        &mut self,
        w1: &Tensor,
        b1: &Tensor,
        w2: &Tensor,
        b2: &Tensor,
    ) -> Result<()> {
        let size = w1.size();
        if size.len() != 4 {
            return Err(engine_error(&format!(
                "squeeze-excitation fc1 weight {size:?}"
            )));
        }
        let (s, c) = (size[0], size[1]);
        let w1 = f32_data(w1, s * c, "squeeze-excitation fc1 weight")?;
        let b1 = f32_data(b1, s, "squeeze-excitation fc1 bias")?;
        let w2 = f32_data(w2, c * s, "squeeze-excitation fc2 weight")?;
        let b2 = f32_data(b2, c, "squeeze-excitation fc2 bias")?;
        let mut err = std::ptr::null_mut();
        // SAFETY: the four tensors hold the counts checked above; the engine copies them.
        let api = api().map_err(engine_error)?;
        let ok = unsafe {
            (api.squeeze_excite)(
                self.engine.as_ptr(),
                w1.data_ptr() as *const f32,
                b1.data_ptr() as *const f32,
                w2.data_ptr() as *const f32,
                b2.data_ptr() as *const f32,
                c,
                s,
                &mut err,
            )
        };
        checked(api, ok, err, "squeeze-excitation")
    }

    /// Global average pooling to `[N, C, 1, 1]`.
    pub fn pool(&mut self) {
        if let Ok(api) = api() {
            // SAFETY: the engine is valid.
            unsafe { (api.pool)(self.engine.as_ptr()) }
        }
    }

    /// A linear layer (`weight [out, in]`) on the pooled features, as a 1x1 convolution.
    pub fn linear(
        &mut self,
        weight: &Tensor,
        bias: &Tensor,
        activation: crate::nn::Activation,
    ) -> Result<()> {
        let size = weight.size();
        if size.len() != 2 {
            return Err(engine_error(&format!(
                "linear weight {size:?} is not [out, in]"
            )));
        }
        let w = weight.f_reshape([size[0], size[1], 1, 1])?;
        let g = ConvGeometry {
            padding: 0,
            stride: 1,
            dilation: 1,
            groups: 1,
        };
        self.conv(&w, bias, g, activation)
    }

    /// Logits `[N, classes]` for `x` `[N, 3, H, W]` on the CPU (fp32, or for a bf16 engine
    /// bf16 too, widened exactly); the last op recorded gives the classes. fp32 logits, bf16
    /// from a bf16 engine.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let size = x.size();
        let kind_ok =
            x.kind() == tch::Kind::Float || (self.bf16 && x.kind() == tch::Kind::BFloat16);
        if size.len() != 4 || size[1] != 3 || x.device() != tch::Device::Cpu || !kind_ok {
            return Err(engine_error(&format!(
                "expected {} CPU images [N, 3, H, W], got {:?} {:?} on {:?}",
                if self.bf16 { "fp32 or bf16" } else { "fp32" },
                x.kind(),
                size,
                x.device()
            )));
        }
        let x = x.f_to_kind(tch::Kind::Float)?.f_contiguous()?;
        let out = Tensor::f_empty(
            [size[0], self.classes],
            (tch::Kind::Float, tch::Device::Cpu),
        )?;
        let mut err = std::ptr::null_mut();
        // SAFETY: `x` is contiguous [N, 3, H, W] fp32 and `out` [N, classes] fp32, both alive for
        // the call; the engine checks that its program gives `classes` values per image.
        let api = api().map_err(engine_error)?;
        let ok = unsafe {
            (api.run)(
                self.engine.as_ptr(),
                x.data_ptr() as *const f32,
                size[0],
                size[2],
                size[3],
                out.data_ptr() as *mut f32,
                self.classes,
                &mut err,
            )
        };
        checked(api, ok, err, "forward")?;
        if self.bf16 {
            // The program's last step rounded to bf16: exact.
            return Ok(out.f_to_kind(tch::Kind::BFloat16)?);
        }
        Ok(out)
    }
}

impl Engine {
    /// `count` one-image trunks for `h` x `w` images, for the caller's own threads ([`Lane`]),
    /// and the head for their pooled features ([`Lanes::head`]): the forward split so that
    /// each thread can run its own images (and decode them) with no OpenMP team between them.
    /// An image's logits are bit for bit those of [`Engine::forward`]. `None` when the loaded
    /// library is an older build without lanes.
    pub fn lanes(&self, count: usize, h: i64, w: i64) -> Result<Option<Lanes<'_>>> {
        let api = api().map_err(engine_error)?;
        let Some(lane_api) = api.lanes.as_ref() else {
            return Ok(None);
        };
        let count = i32::try_from(count)
            .ok()
            .filter(|&c| c >= 1)
            .ok_or_else(|| engine_error(&format!("lanes: bad count {count}")))?;
        let (mut channels, mut err) = (0i64, std::ptr::null_mut());
        // SAFETY: the engine is alive; the lanes it returns are freed on drop, before the
        // engine (they borrow it).
        let lanes =
            unsafe { (lane_api.new)(self.engine.as_ptr(), count, h, w, &mut channels, &mut err) };
        checked(api, !lanes.is_null(), err, "lanes")?;
        Ok(Some(Lanes {
            api,
            lane_api,
            lanes: NonNull::new(lanes).ok_or_else(|| engine_error("no lanes"))?,
            engine: self,
            count: count as usize,
            image: 3 * h * w,
            channels,
            taken: std::cell::Cell::new(false),
        }))
    }
}

/// One-image trunks of an [`Engine`] for the caller's threads, and its head.
pub struct Lanes<'a> {
    api: &'static Api,
    lane_api: &'static LaneApi,
    lanes: NonNull<c_void>,
    engine: &'a Engine,
    count: usize,
    image: i64,
    channels: i64,
    taken: std::cell::Cell<bool>,
}

impl<'a> Lanes<'a> {
    /// The pooled features per image that a lane gives and [`Lanes::head`] takes.
    pub fn channels(&self) -> usize {
        self.channels as usize
    }

    /// The lanes, each to one thread; given out once (then an empty list).
    pub fn take(&self) -> Vec<Lane<'_>> {
        if self.taken.replace(true) {
            return Vec::new();
        }
        (0..self.count)
            .map(|index| Lane {
                api: self.api,
                lane_api: self.lane_api,
                lanes: self.lanes,
                index: index as i32,
                image: self.image as usize,
                channels: self.channels as usize,
                _lanes: std::marker::PhantomData,
            })
            .collect()
    }

    /// Logits `[n, classes]` (fp32; a bf16 engine's rounded to bf16) for `pooled`, `n` images'
    /// features one after another.
    pub fn head(&self, pooled: &[f32]) -> Result<Tensor> {
        let n = pooled.len() / self.channels as usize;
        if n * self.channels as usize != pooled.len() {
            return Err(engine_error(&format!(
                "head: {} values are not whole images of {} features",
                pooled.len(),
                self.channels
            )));
        }
        let classes = self.engine.classes;
        let mut out = vec![0f32; n * classes as usize];
        let mut err = std::ptr::null_mut();
        // SAFETY: `pooled` holds n x channels values and `out` n x classes; the engine checks
        // that its program gives `classes` values per image.
        let ok = unsafe {
            (self.lane_api.head)(
                self.engine.engine.as_ptr(),
                pooled.as_ptr(),
                n as i64,
                self.channels,
                out.as_mut_ptr(),
                classes,
                &mut err,
            )
        };
        checked(self.api, ok, err, "head")?;
        Ok(Tensor::f_from_slice(&out)?.f_view([n as i64, classes])?)
    }
}

impl Drop for Lanes<'_> {
    fn drop(&mut self) {
        // SAFETY: made by `mn_engine_lanes_new`, freed once; no `Lane` outlives `self`.
        unsafe { (self.lane_api.free)(self.lanes.as_ptr()) }
    }
}

/// One of [`Lanes`]: runs one image at a time on the calling thread.
pub struct Lane<'a> {
    api: &'static Api,
    lane_api: &'static LaneApi,
    lanes: NonNull<c_void>,
    index: i32,
    image: usize,
    channels: usize,
    _lanes: std::marker::PhantomData<&'a ()>,
}

// SAFETY: a lane's plan is used by its one `Lane` only (`Lanes::take` gives each out once),
// from whichever thread holds it; the plans share nothing mutable.
unsafe impl Send for Lane<'_> {}

impl Lane<'_> {
    /// The pooled features (`pooled`, [`Lanes::channels`] values) of one image `x`
    /// (`[3, H, W]`, contiguous, of the size the lanes were made for).
    pub fn run(&mut self, x: &[f32], pooled: &mut [f32]) -> Result<()> {
        if x.len() != self.image || pooled.len() != self.channels {
            return Err(engine_error(&format!(
                "lane: expected {} input and {} output values, got {} and {}",
                self.image,
                self.channels,
                x.len(),
                pooled.len()
            )));
        }
        let mut err = std::ptr::null_mut();
        // SAFETY: sizes checked above; this lane runs on one thread at a time (`&mut self`).
        let ok = unsafe {
            (self.lane_api.run)(
                self.lanes.as_ptr(),
                self.index,
                x.as_ptr(),
                pooled.as_mut_ptr(),
                &mut err,
            )
        };
        checked(self.api, ok, err, "lane")
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Ok(api) = api() {
            // SAFETY: created by the library's `mn_engine_new`, freed once.
            unsafe { (api.free)(self.engine.as_ptr()) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The engine's classifier kernel (`Dense`) on `x` [n, inp]: its AVX2 code, then its portable
    /// code.
    fn dense(w: &[f32], b: &[f32], inp: usize, act: i32, x: &[f32], portable: bool) -> Vec<f32> {
        let api = api().expect("the engine library loads");
        let (out, n) = (b.len(), x.len() / inp);
        let mut y = vec![f32::NAN; n * out];
        let mut err = std::ptr::null_mut();
        // SAFETY: w is [out, inp], b [out], x [n, inp] and y [n, out], alive for the call.
        let ok = unsafe {
            (api.dense)(
                w.as_ptr(),
                b.as_ptr(),
                inp as i64,
                out as i64,
                act,
                x.as_ptr(),
                n as i64,
                y.as_mut_ptr(),
                portable,
                &mut err,
            )
        };
        checked(api, ok, err, "dense").expect("dense runs");
        y
    }

    /// Seeded values in [-1, 1).
    fn values(count: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..count)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// Each output is the same sum whatever the batch, the row block and the code path: the
    /// AVX2 and portable kernels give the same bits, an image alone gives what it gives in a
    /// batch, and the values are within float rounding of a float64 reference.
    #[test]
    fn dense_is_one_sum_per_output() {
        if env!("MOBILENET_ENGINE_LIB").is_empty() {
            eprintln!("skipped: built without oneDNN, so without the engine");
            return;
        }
        // (in, out): a classifier's shape, rows beyond a block of 8, inputs not a multiple of 8.
        for (inp, out) in [(1280, 1000), (64, 13), (20, 9)] {
            for act in [0, 1, 2, 3, 4] {
                let w = values(inp * out, 1);
                let b = values(out, 2);
                let x = values(5 * inp, 3);
                let batch = dense(&w, &b, inp, act, &x, false);
                assert_eq!(
                    batch.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    dense(&w, &b, inp, act, &x, true)
                        .iter()
                        .map(|v| v.to_bits())
                        .collect::<Vec<_>>(),
                    "{inp} -> {out}, activation {act}: AVX2 and portable code differ"
                );
                for i in 0..5 {
                    let alone = dense(&w, &b, inp, act, &x[i * inp..(i + 1) * inp], false);
                    assert_eq!(
                        alone.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        batch[i * out..(i + 1) * out]
                            .iter()
                            .map(|v| v.to_bits())
                            .collect::<Vec<_>>(),
                        "{inp} -> {out}: image {i} alone differs from the batch"
                    );
                    for o in 0..out {
                        let z: f64 = b[o] as f64
                            + (0..inp)
                                .map(|j| w[o * inp + j] as f64 * x[i * inp + j] as f64)
                                .sum::<f64>();
                        let want = match act {
                            1 => z.max(0.0),
                            2 => z.clamp(0.0, 6.0),
                            3 => z * (z + 3.0).clamp(0.0, 6.0) / 6.0,
                            4 => (z + 3.0).clamp(0.0, 6.0) / 6.0,
                            _ => z,
                        };
                        let got = batch[i * out + o] as f64;
                        assert!(
                            (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                            "{inp} -> {out}, activation {act}, image {i}, output {o}: {got} against {want}"
                        );
                    }
                }
            }
        }
    }
}
