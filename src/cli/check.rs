//! `levee check -f FILE`: validates every policy in a file with the API server's rules.

use super::{EXIT_PROBLEM, EXIT_USAGE, read_input};
use crate::api::validation::check_documents;
use std::io::Write;
use std::process::ExitCode;

/// Prints one line per problem (`<policy>: <field>: <what to change>`) and exits 1, or a
/// summary and exits 0.
pub fn run(path: &str, out: &mut impl Write) -> ExitCode {
    let text = match read_input(path) {
        Ok(text) => text,
        Err(message) => {
            let _ = writeln!(out, "{message}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let checked = check_documents(path, &text);
    for problem in &checked.problems {
        let _ = writeln!(out, "{problem}");
    }
    if !checked.problems.is_empty() {
        return ExitCode::from(EXIT_PROBLEM);
    }
    if checked.policies.is_empty() {
        let _ = writeln!(
            out,
            "{path}: no BackpressurePolicy (apiVersion levee.dev/v1alpha1) found"
        );
        return ExitCode::from(EXIT_PROBLEM);
    }
    let _ = writeln!(out, "{path}: {} policies valid", checked.policies.len());
    ExitCode::SUCCESS
}
