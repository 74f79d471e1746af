//! The `miteos-stream` binary: everything lives in the library; see `cli`.

/// Chosen by measurement: see BENCHMARKS.md, "Allocator".
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    miteos_stream::cli::main()
}
