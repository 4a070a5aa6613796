fn main() {
    eprintln!("wharf: not built yet");
    std::process::exit(1);
}
