fn main() -> std::process::ExitCode {
    drgw::cli::main()
}
