//! The `cadvlm` command-line tool; all work lives in the library (`cadvlm::cli`).

fn main() -> std::process::ExitCode {
    cadvlm::cli::main()
}
