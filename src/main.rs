//! The `mobilenet` command line: see `mobilenet --help`.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
