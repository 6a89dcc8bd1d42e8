//! Prompt templates: files in `coordinator/prompts/`, built into the binary, each overridable
//! by a file of the same name in a directory named in the config. Pure apart from
//! [`Prompts::with_overrides`], which reads that directory.

use orchestra_proto::{GoalRequest, PlanProblem};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Names of the template files, as found in `coordinator/prompts/` and in an override dir.
pub const FILES: [&str; 4] = ["system.md.j2", "examples.md", "goal.md.j2", "repair.md.j2"];

const BUILTIN: [&str; 4] = [
    include_str!("../../prompts/system.md.j2"),
    include_str!("../../prompts/examples.md"),
    include_str!("../../prompts/goal.md.j2"),
    include_str!("../../prompts/repair.md.j2"),
];

#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    #[error("cannot read prompt template `{}`", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("prompt template `{name}` is invalid: {message}")]
    Template { name: String, message: String },
}

/// The four templates, rendered with minijinja.
#[derive(Debug, Clone)]
pub struct Prompts {
    texts: [String; 4],
    /// Which came from an override directory, for logs.
    overridden: Vec<String>,
}

impl Default for Prompts {
    fn default() -> Self {
        Self { texts: BUILTIN.map(str::to_owned), overridden: Vec::new() }
    }
}

/// The rendered messages of a first call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub system: String,
    pub user: String,
}

impl Prompts {
    /// The built-in templates, with any of [`FILES`] found in `dir` used instead. Every
    /// template is test-rendered so a broken override fails at start, not mid-run.
    pub fn with_overrides(dir: &Path) -> Result<Self, PromptError> {
        let mut prompts = Self::default();
        for (i, name) in FILES.iter().enumerate() {
            let path = dir.join(name);
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    prompts.texts[i] = text;
                    prompts.overridden.push((*name).to_owned());
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(PromptError::Read { path, source }),
            }
        }
        prompts.check()?;
        Ok(prompts)
    }

    pub fn overridden(&self) -> &[String] {
        &self.overridden
    }

    /// A digest of the template texts: part of the plan cache key, and recorded per run.
    pub fn version(&self) -> String {
        let mut h = Sha256::new();
        for t in &self.texts {
            h.update((t.len() as u64).to_le_bytes());
            h.update(t.as_bytes());
        }
        hex::encode(&h.finalize()[..6])
    }

    /// System prompt and first user message for a goal.
    pub fn goal(
        &self,
        goal: &GoalRequest,
        schema: &serde_json::Value,
    ) -> Result<Rendered, PromptError> {
        let rules = rules(goal);
        let schema = serde_json::to_string_pretty(schema).unwrap_or_default();
        let system = self
            .render(0, minijinja::context! { rules, schema, examples => self.texts[1].as_str() })?;
        let user = self.render(
            2,
            minijinja::context! {
                goal => goal.goal.as_str(),
                name => goal.name.as_str(),
                context => goal.context.iter().map(|f| minijinja::context! {
                    path => f.path.as_str(), text => f.text.as_str(), truncated => f.truncated,
                }).collect::<Vec<_>>(),
                tools => &goal.tools.tools,
                programs => &goal.tools.programs,
                policy => goal.policy_summary.as_str(),
                timeout_seconds => goal.defaults.timeout_ms.div_ceil(1000),
                retries => goal.defaults.retry.max_retries,
            },
        )?;
        Ok(Rendered { system, user })
    }

    /// The message that sends an answer's problems back to the model.
    pub fn repair(
        &self,
        problems: &[PlanProblem],
        extract_error: Option<&str>,
    ) -> Result<String, PromptError> {
        #[derive(Serialize)]
        struct P<'a> {
            path: &'a str,
            message: &'a str,
            hint: Option<&'a str>,
        }
        let problems: Vec<P<'_>> = problems
            .iter()
            .map(|p| P { path: &p.path, message: &p.message, hint: p.hint.as_deref() })
            .collect();
        self.render(3, minijinja::context! { problems, extract_error })
    }

    fn check(&self) -> Result<(), PromptError> {
        let goal = GoalRequest {
            name: "check".into(),
            goal: "check the templates".into(),
            context: Vec::new(),
            tools: orchestra_proto::ToolRules { tools: vec!["exec".into()], programs: vec![] },
            defaults: orchestra_proto::TaskDefaults { timeout_ms: 1000, retry: Default::default() },
            policy_summary: String::new(),
            no_cache: false,
        };
        self.goal(&goal, &serde_json::json!({}))?;
        self.repair(&[], None)?;
        Ok(())
    }

    fn render(&self, i: usize, ctx: minijinja::Value) -> Result<String, PromptError> {
        let mut env = minijinja::Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        env.set_keep_trailing_newline(true);
        let err = |e: minijinja::Error| PromptError::Template {
            name: FILES[i].to_owned(),
            message: e.to_string(),
        };
        let tmpl = env.template_from_str(&self.texts[i]).map_err(err)?;
        tmpl.render(ctx).map_err(err)
    }
}

/// The rules the model is told, derived from what the request allows.
fn rules(goal: &GoalRequest) -> Vec<String> {
    let mut rules = vec![format!("use only these tools: {}", goal.tools.tools.join(", "))];
    if !goal.tools.programs.is_empty() {
        rules.push(format!(
            "`exec` tasks may run only these programs: {}",
            goal.tools.programs.join(", ")
        ));
    }
    rules.push("every `depends_on` entry is the id of another task in the plan; no cycles".into());
    rules.push("task ids are unique".into());
    if !goal.policy_summary.is_empty() {
        rules.push(format!("stay inside the policy: {}", goal.policy_summary));
    }
    rules
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_override_replaces_one_template_and_changes_the_version() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("goal.md.j2"),
            "GOAL={{ goal }} TOOLS={{ tools | join(\",\") }}",
        )
        .unwrap();
        let custom = Prompts::with_overrides(dir.path()).unwrap();
        assert_eq!(custom.overridden(), ["goal.md.j2"]);
        assert_ne!(custom.version(), Prompts::default().version());
        let goal = GoalRequest {
            name: "n".into(),
            goal: "ship it".into(),
            context: vec![],
            tools: orchestra_proto::ToolRules {
                tools: vec!["exec".into(), "claude".into()],
                programs: vec![],
            },
            defaults: orchestra_proto::TaskDefaults { timeout_ms: 1000, retry: Default::default() },
            policy_summary: String::new(),
            no_cache: false,
        };
        let r = custom.goal(&goal, &serde_json::json!({"type": "object"})).unwrap();
        assert_eq!(r.user, "GOAL=ship it TOOLS=exec,claude");
        // The other templates are still the built-in ones.
        assert!(r.system.contains("You are the planner of orchestra"), "{}", r.system);
    }

    #[test]
    fn a_broken_override_fails_at_load_with_its_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("repair.md.j2"), "{% for p in problems %}").unwrap();
        let err = Prompts::with_overrides(dir.path()).unwrap_err().to_string();
        assert!(err.contains("repair.md.j2"), "{err}");
        std::fs::write(dir.path().join("repair.md.j2"), "{{ no_such_variable }}").unwrap();
        let err = Prompts::with_overrides(dir.path()).unwrap_err().to_string();
        assert!(err.contains("repair.md.j2") && err.contains("undefined"), "{err}");
    }

    #[test]
    fn the_builtin_prompt_carries_goal_context_rules_and_schema() {
        let goal = GoalRequest {
            name: "build".into(),
            goal: "compile and test".into(),
            context: vec![orchestra_proto::ContextFile {
                path: "Makefile".into(),
                sha256: "00".into(),
                text: "all:\n\tcc main.c".into(),
                truncated: true,
            }],
            tools: orchestra_proto::ToolRules {
                tools: vec!["exec".into()],
                programs: vec!["make".into(), "cc".into()],
            },
            defaults: orchestra_proto::TaskDefaults {
                timeout_ms: 90_500,
                retry: Default::default(),
            },
            policy_summary: "no network".into(),
            no_cache: false,
        };
        let r =
            Prompts::default().goal(&goal, &serde_json::json!({"title": "SCHEMA-MARK"})).unwrap();
        for want in [
            "Goal: compile and test",
            "--- Makefile (cut at the context limit) ---",
            "cc main.c",
            "Programs an `exec` task may run: make, cc.",
            "Policy: no network",
            "timeout 91 s",
        ] {
            assert!(r.user.contains(want), "missing {want:?} in:\n{}", r.user);
        }
        for want in [
            "SCHEMA-MARK",
            "`exec` tasks may run only these programs: make, cc",
            "stay inside the policy: no network",
            "Example.",
        ] {
            assert!(r.system.contains(want), "missing {want:?} in:\n{}", r.system);
        }
    }
}
