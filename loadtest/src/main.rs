//! `loadtest`: a load generator that speaks miteos-stream's real protocol (token in the
//! query, then the `auth` message) over loopback, and reports what the server sustained.
//!
//! Each run prints one JSON line of results, then a short human summary. Every scenario is
//! bounded in time and count. Client sockets are spread over 127.0.0.x source addresses so
//! tens of thousands of connections (and churn) do not exhaust ephemeral ports.

mod client;
mod opts;
mod proc_stat;
mod publish;
mod report;
mod scenario;

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = opts::Cli::parse();
    match scenario::run(cli).await {
        Ok(report) => {
            println!("{}", report.json());
            eprintln!("{}", report.summary());
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("loadtest: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
