fn main() -> std::process::ExitCode {
    phonerig::cli::main()
}
