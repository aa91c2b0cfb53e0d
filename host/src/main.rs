//! The `llmlocal` binary.

fn main() -> std::process::ExitCode {
    llmlocal::cli::main()
}
