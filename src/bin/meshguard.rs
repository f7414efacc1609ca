//! `meshguard validate FILE...`: checks pluginConfig JSON files the way the filter does, and
//! prints the same path-and-reason errors, so a bad configuration fails in CI, not in Envoy.

use std::process::ExitCode;

fn usage() -> ExitCode {
    eprintln!("usage: meshguard validate FILE...   (a pluginConfig JSON document per file)");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, files)) = args.split_first() else {
        return usage();
    };
    if command != "validate" || files.is_empty() {
        return usage();
    }
    let mut failed = false;
    for file in files {
        match std::fs::read(file) {
            Err(err) => {
                eprintln!("{file}: cannot read: {err}");
                failed = true;
            }
            Ok(bytes) => match meshguard::config::parse(&bytes) {
                Ok(config) => println!(
                    "{file}: ok ({} providers, {} rate limits, {} rules)",
                    config.providers.len(),
                    config.rate_limits.len(),
                    config.rules.len()
                ),
                Err(err) => {
                    eprintln!("{file}: configuration refused: {err}");
                    failed = true;
                }
            },
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
