//! Load generator for miteos-stream. Scenarios arrive with the benchmark work (issue 6);
//! until then this binary only explains that.

fn main() {
    eprintln!("loadtest: no scenarios yet; see BENCHMARKS.md");
    std::process::exit(2);
}
