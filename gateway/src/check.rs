//! `meshgate check`: validate files, or show what a reload would change.

use std::path::PathBuf;
use std::process::ExitCode;

use meshgate_config::{ConfigDiff, load_file};

pub fn run(diff: bool, files: &[PathBuf]) -> ExitCode {
    if diff {
        let [old, new] = files else {
            eprintln!("error: --diff takes exactly two files: OLD NEW");
            return ExitCode::from(2);
        };
        return match (load_file(old), load_file(new)) {
            (Ok(a), Ok(b)) => {
                let d = ConfigDiff::between(&a, &b);
                print!("{d}");
                for c in d.needs_restart() {
                    println!(
                        "note: {} {} changes only take effect after a restart",
                        c.section, c.name
                    );
                }
                ExitCode::SUCCESS
            }
            (a, b) => {
                for r in [a, b] {
                    if let Err(e) = r {
                        eprintln!("{e}");
                    }
                }
                ExitCode::FAILURE
            }
        };
    }
    let mut failed = false;
    for f in files {
        match load_file(f) {
            Ok(s) => println!(
                "{}: ok ({} listener(s), {} route(s), {} service(s))",
                f.display(),
                s.listeners.len(),
                s.routes.len(),
                s.services.len()
            ),
            Err(e) => {
                failed = true;
                eprintln!("{e}");
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
