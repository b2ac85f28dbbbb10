//! The CUDA layer's self-check alone, as `gsinfer selftest --cuda` runs it,
//! in a small binary that can be copied to a GPU machine without the rest
//! of the appliance: `cargo build --example cuda_selftest --features tensorrt`.

fn main() -> std::process::ExitCode {
    let device = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(0);
    match gsinfer::cli::selftest::cuda_report(device) {
        Ok((report, ok)) => {
            print!("{report}");
            if ok {
                std::process::ExitCode::SUCCESS
            } else {
                std::process::ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
