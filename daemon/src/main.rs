fn main() -> std::process::ExitCode {
    tune_malloc();
    drgw::cli::main()
}

/// The data path allocates and frees buffers of up to tens of MiB many times
/// a second (frames, batches, pre-images). Above its mmap threshold glibc
/// serves each one with a fresh mapping, which the kernel faults in and zeroes
/// page by page and unmaps on free. Keeping buffers up to 32 MiB in the heap,
/// and up to 256 MiB of free heap before returning it to the kernel, cut the
/// target's CPU per GiB by about a fifth and the tap's by about a third under
/// a steady load (docs/benchmarks.md, "Target side"). The cost: the resident
/// size stays near its peak instead of shrinking between bursts.
fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; it runs before any other
    // thread exists. A refusal (return 0) leaves glibc's defaults, which work.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}
