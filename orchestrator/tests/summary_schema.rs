//! `summary.json` has a documented JSON Schema, checked in at `docs/summary.schema.json`: it is
//! the schema of the type that writes the file, and real summaries validate against it.
#![allow(clippy::disallowed_methods)]

mod common;

use common::{bin, examples};
use std::path::Path;

fn checked_in() -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/summary.schema.json");
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

#[test]
fn the_checked_in_schema_is_the_generated_one() {
    let out = bin().args(["config", "schema", "summary"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let generated: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        generated,
        checked_in(),
        "docs/summary.schema.json is stale: run `orchestra config schema summary > docs/summary.schema.json`"
    );
}

fn run_summary(dir: &Path, args: &[&str]) -> serde_json::Value {
    let out = bin().current_dir(dir).args(args).arg("--json").output().unwrap();
    assert!(out.status.code().is_some_and(|c| c <= 1), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn real_summaries_validate_and_a_wrong_one_does_not() {
    let schema = checked_in();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let flaky = examples().join("flaky.yaml");
    let hello = examples().join("hello.yaml");
    let goal = examples().join("goal.yaml");
    let answers = format!("scripted:{}", examples().join("goal-answers").display());
    for summary in [
        run_summary(tmp.path(), &["run", hello.to_str().unwrap()]),
        run_summary(tmp.path(), &["run", flaky.to_str().unwrap()]),
        run_summary(tmp.path(), &["run", goal.to_str().unwrap(), "--llm", &answers]),
    ] {
        let errors: Vec<String> = validator.iter_errors(&summary).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{errors:#?}\n{summary:#}");
    }
    let mut wrong = run_summary(tmp.path(), &["run", hello.to_str().unwrap()]);
    wrong["totals"]["succeeded"] = "five".into();
    wrong["surprise"] = true.into();
    let errors: Vec<String> = validator.iter_errors(&wrong).map(|e| e.to_string()).collect();
    assert_eq!(errors.len(), 2, "{errors:#?}");
}
