//! The `miteos-stream` binary: everything lives in the library; see `cli`.

fn main() -> std::process::ExitCode {
    miteos_stream::cli::main()
}
