//! glibc malloc settings for inference.
//!
//! libtorch's CPU allocator is plain `posix_memalign`/`free`. glibc serves every block above its
//! mmap threshold (at most 32 MiB, e.g. one 16x112x112x96 fp32 activation of 77 MiB) with a fresh
//! `mmap` and gives it back with `munmap` on free, so each such activation is faulted in page by
//! page and zeroed by the kernel on every forward pass. On MobileNetV2 at batch 16 that is about
//! 45,000 page faults and half of the forward's time on the 2-core machine of the README.
//! [`keep_freed_memory`] turns that off: large blocks come from the heap and freed memory stays
//! there for the next pass (the process keeps its peak heap instead of returning it).

/// Serves large blocks from the heap (`M_MMAP_MAX = 0`) and keeps freed heap memory up to 2 GiB
/// (`M_TRIM_THRESHOLD`). Returns whether both settings took (always false off glibc).
///
/// Process-wide: the CLI calls it before `bench` and `classify`; a library user may call it once
/// at start-up, or not.
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes allocator parameters; valid at any time.
        unsafe {
            libc::mallopt(libc::M_MMAP_MAX, 0) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
