//! glibc malloc settings for a long-running server with many threads.
//!
//! With the defaults, glibc gives memory back to the kernel as soon as the top of a heap has
//! 128 KiB free, and hands every allocation above a moving threshold to `mmap`. Under a write
//! load the store allocates and frees request buffers, log entries and values on several
//! threads at once, so the heaps shrank and grew again all the time: `sysmalloc`, `mprotect`
//! and page faults took about 8% of the leader's CPU (perf, 16 pipelined SETs from 50
//! clients). Keeping up to 64 MiB of free memory per heap, growing heaps 16 MiB at a time and
//! a fixed 4 MiB `mmap` threshold end that churn; the memory stays reusable by the process.

/// Free memory a heap keeps before it is returned to the kernel.
const TRIM_THRESHOLD: i32 = 64 << 20;
/// Extra memory requested each time a heap grows.
const TOP_PAD: i32 = 16 << 20;
/// Allocations from this size up get their own mapping.
const MMAP_THRESHOLD: i32 = 4 << 20;

/// Applies the settings. Call once at the start of `main`, before other threads exist.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn tune() {
    for (param, value) in [
        (libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD),
        (libc::M_TOP_PAD, TOP_PAD),
        (libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD),
    ] {
        // SAFETY: mallopt only changes allocator parameters; it is called before any other
        // thread is started, and the values are within glibc's documented ranges.
        unsafe {
            libc::mallopt(param, value);
        }
    }
}

/// Other allocators keep their defaults.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn tune() {}
