//! Writing parsed flags back as a command line. Each Twin flag struct (`EtcdArgs`,
//! `UpstreamTlsArgs`, the sidecar's `Flags`) has a `to_argv` built on these two functions, so
//! whoever launches a binary — the Kubernetes injector, the test lab, drills — writes its
//! arguments from the same struct the binary parses, and a round-trip test can check that
//! they parse back to it.

use std::fmt::Display;
use std::path::Path;

/// Appends `FLAG VALUE`, or `FLAG=VALUE` when the value starts with `-` (as a separate word
/// clap would take such a value for a flag of its own).
pub fn push(argv: &mut Vec<String>, flag: &str, value: &str) {
    if value.starts_with('-') {
        argv.push(format!("{flag}={value}"));
    } else {
        argv.push(flag.to_string());
        argv.push(value.to_string());
    }
}

/// Appends `FLAG VALUE` when `value` is set, nothing when it is not.
pub fn push_opt<T: Display>(argv: &mut Vec<String>, flag: &str, value: Option<T>) {
    if let Some(v) = value {
        push(argv, flag, &v.to_string());
    }
}

/// Appends `FLAG PATH` when `path` is set. A path that is not UTF-8 comes out with U+FFFD in
/// place of its bad bytes (Kubernetes args and every Twin launcher are UTF-8).
pub fn push_path(argv: &mut Vec<String>, flag: &str, path: Option<&Path>) {
    push_opt(argv, flag, path.map(Path::display));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_that_looks_like_a_flag_is_joined_to_its_flag() {
        let mut argv = Vec::new();
        push(&mut argv, "--dc", "m6v");
        push(&mut argv, "--prefix", "-x");
        push_opt(&mut argv, "--threads", Some(4));
        push_opt(&mut argv, "--worker", None::<u32>);
        push_path(&mut argv, "--config", Some(Path::new("/etc/twin.yaml")));
        assert_eq!(
            argv,
            [
                "--dc",
                "m6v",
                "--prefix=-x",
                "--threads",
                "4",
                "--config",
                "/etc/twin.yaml"
            ]
        );
    }
}
