//! `wegweiser`: the control plane binary. Everything lives in the library; see [`wegweiser_cp::cli`].
fn main() -> std::process::ExitCode {
    wegweiser_cp::cli::main()
}
