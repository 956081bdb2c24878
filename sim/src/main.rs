//! `blksnap-sim`: run scenario suites, sweep seeds, print the ABI.

use clap::Parser;

fn main() {
    // Engine panics are oopses the simulator reports itself; the default
    // hook would print each one a second time.
    std::panic::set_hook(Box::new(|_| {}));
    let cli = blksnap_sim::cli::Cli::parse();
    std::process::exit(blksnap_sim::cli::main_with(cli));
}
