//! The operator's flag table in the root README must match the code: every flag, its env
//! variable and its default.

use clap::CommandFactory;
use orb_operator::config::Cli;

fn readme_rows() -> Vec<(String, String, String)> {
    let readme = include_str!("../../README.md");
    let section = readme
        .split("### orb-operator flags")
        .nth(1)
        .expect("README has an '### orb-operator flags' section");
    section
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2) // header and separator
        .map(|l| {
            let cells: Vec<String> = l.split('|').map(|c| c.trim().trim_matches('`').to_owned()).collect();
            (cells[1].clone(), cells[2].clone(), cells[3].clone())
        })
        .collect()
}

fn code_rows() -> Vec<(String, String, String)> {
    Cli::command()
        .get_arguments()
        .filter(|a| !matches!(a.get_id().as_str(), "help" | "version"))
        .map(|a| {
            let flag = format!("--{}", a.get_long().expect("every operator setting is a long flag"));
            let env = a
                .get_env()
                .map(|e| e.to_string_lossy().into_owned())
                .unwrap_or_default();
            let default: Vec<String> = a
                .get_default_values()
                .iter()
                .map(|v| v.to_string_lossy().into_owned())
                .collect();
            let default = if default.is_empty() || default == [""] {
                "(unset)".to_owned()
            } else {
                default.join(",")
            };
            (flag, env, default)
        })
        .collect()
}

#[test]
fn readme_documents_every_flag_env_and_default() {
    let readme = readme_rows();
    let code = code_rows();
    for row in &code {
        assert!(
            readme.contains(row),
            "README lacks or misstates {row:?}; the README has {readme:#?}"
        );
    }
    for row in &readme {
        assert!(
            code.contains(row),
            "README documents {row:?}, which the code does not have"
        );
    }
}
