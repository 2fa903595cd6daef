fn main() {
    eprintln!("hyperlaunch: not built yet");
    std::process::exit(2);
}
