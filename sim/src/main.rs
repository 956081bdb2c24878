//! `blksnap-sim`: run scenario suites, sweep seeds, print the ABI.

use clap::Parser;

fn main() {
    // Engine panics are oopses the simulator reports itself; the default
    // hook would print each one a second time. Panics of the simulator
    // itself still print.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if blksnap_sim::kernel::in_task_poll() {
            return;
        }
        // `blksnap-sim ... | head`: the reader went away; stop quietly, as
        // a C tool dies of SIGPIPE.
        let message = info.payload_as_str().unwrap_or_default();
        if message.contains("Broken pipe") {
            std::process::exit(141);
        }
        default_hook(info);
    }));
    let cli = blksnap_sim::cli::Cli::parse();
    std::process::exit(blksnap_sim::cli::main_with(cli));
}
