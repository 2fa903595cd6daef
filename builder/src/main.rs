fn main() {
    eprintln!("hyperbuild: not built yet");
    std::process::exit(2);
}
