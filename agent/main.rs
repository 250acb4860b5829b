//! The `magestack-agent` command: the daemon (`run`), the node init (`init`, internal), and thin
//! clients of the daemon's control socket for everything an operator does.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    // The init is re-executed with a fixed argv; keep it off clap and tracing entirely.
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("init")
        && std::env::var_os("MAGESTACK_NODE_INIT").is_some()
    {
        return ExitCode::from(magestack_agent::init::main() as u8);
    }
    cli::main()
}
