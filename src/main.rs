//! The `unionfuse` program: the command line does everything (`unionfuse::cli`).

#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    unionfuse::cli::main()
}
