//! Every binary's flag table — in the root README for the operator, next to the code for signaling
//! and the orb — lists exactly the flags clap knows, with their env variables and defaults.
//!
//! A table row is `| --flag | ENV | default | …`. A default in backticks is the literal default;
//! anything else (`(unset)`, `none`, `required`, an explanation) says there is none.

mod support;

use clap::CommandFactory;
use support::root;

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Row {
    flag: String,
    env: String,
    /// `None`: no default value.
    default: Option<String>,
}

fn documented(file: &str, section: Option<&str>) -> Vec<Row> {
    let text = std::fs::read_to_string(root().join(file)).unwrap();
    let text = match section {
        Some(heading) => text
            .split(heading)
            .nth(1)
            .unwrap_or_else(|| panic!("{file} has no '{heading}' section"))
            .to_owned(),
        None => text,
    };
    let mut rows: Vec<Row> = text
        .lines()
        .skip_while(|l| !l.starts_with("| `--"))
        .take_while(|l| l.starts_with('|'))
        .filter(|l| l.starts_with("| `--"))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
            let literal = |c: &str| c.strip_prefix('`').and_then(|c| c.strip_suffix('`')).map(str::to_owned);
            Row {
                flag: literal(cells[0]).unwrap(),
                env: literal(cells[1]).unwrap_or_default(),
                default: literal(cells[2]).filter(|d| d != "\"\""),
            }
        })
        .collect();
    rows.sort();
    rows
}

fn in_code(command: clap::Command) -> Vec<Row> {
    let mut command = command;
    // Building fills in implied defaults such as `false` for boolean flags.
    command.build();
    let mut rows: Vec<Row> = command
        .get_arguments()
        .filter_map(|a| {
            let long = a.get_long()?;
            if long == "help" || long == "version" {
                return None;
            }
            let defaults: Vec<String> = a
                .get_default_values()
                .iter()
                .map(|v| v.to_string_lossy().into_owned())
                .collect();
            Some(Row {
                flag: format!("--{long}"),
                env: a
                    .get_env()
                    .map(|e| e.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                default: Some(defaults.join(",")).filter(|d| !d.is_empty()),
            })
        })
        .collect();
    rows.sort();
    rows
}

#[test]
fn the_operator_flags_in_the_readme_match_the_code() {
    assert_eq!(
        documented("README.md", Some("### orb-operator flags")),
        in_code(orb_operator::config::Cli::command())
    );
}

#[test]
fn the_signaling_flags_in_its_readme_match_the_code() {
    assert_eq!(
        documented("signaling/README.md", Some("## Configuration")),
        in_code(orb_signaling::config::Args::command())
    );
}

#[test]
fn the_orb_flags_in_its_readme_match_the_code() {
    assert_eq!(
        documented("orb/README.md", Some("## Flags")),
        in_code(orb::config::Cli::command())
    );
}
