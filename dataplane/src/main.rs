//! `keyplane-dataplane`: the proxy clients talk to. Built in the next issue; this binary exists so
//! that the workspace builds all three binaries of the operator contract.

fn main() -> std::process::ExitCode {
    eprintln!("keyplane-dataplane: not built yet (see issue 4)");
    std::process::ExitCode::from(2)
}
