fn main() {
    eprintln!("wharf-loadgen: not built yet");
    std::process::exit(1);
}
