//! `blksnap-sim`: run scenario suites, sweep seeds, print the ABI.

use clap::Parser;

/// Allocation speed only (see the crate's comment).
#[global_allocator]
static ALLOCATOR: blksnap_alloc::SimAllocator = blksnap_alloc::SimAllocator;

fn main() {
    // Panics inside a simulated task are reported by the executor (an oops
    // or a bench error; `panics.rs` keeps them quiet); any other panic is
    // a bug of the tool and prints as usual. Output errors never panic:
    // the console writers in `cli.rs` handle them.
    let cli = match blksnap_sim::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version go to stdout, usage errors to stderr.
            if e.use_stderr() {
                let _ = e.print();
            } else {
                blksnap_sim::cli::write_stdout(&e.render().to_string());
            }
            std::process::exit(e.exit_code());
        }
    };
    std::process::exit(blksnap_sim::cli::main_with(cli));
}
