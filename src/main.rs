fn main() {
    std::process::exit(tomex::cli::main());
}
