//! From settings to models: the planner L2 uses for a goal (backend chosen by config or
//! `--llm`), and the `claude` tool settings the workers get.

use crate::settings::{ConfigFile, LlmBackend};
use anyhow::Context as _;
use orchestra_coordinator::planner::cache::PlanCache;
use orchestra_coordinator::planner::prompt::Prompts;
use orchestra_coordinator::planner::{Planner, PlannerConfig, Price};
use orchestra_llm::Backend;
use orchestra_llm::anthropic::{Anthropic, AnthropicConfig};
use orchestra_llm::claude_code::{ClaudeCode, ClaudeCodeConfig};
use orchestra_llm::openai::{OpenAi, OpenAiConfig};
use orchestra_llm::scripted::{Recorder, Scripted};
use orchestra_worker::ClaudeToolConfig;
use std::path::PathBuf;
use std::sync::Arc;

/// Model of the `anthropic` backend when `llm.model` is unset.
pub const DEFAULT_ANTHROPIC_MODEL: &str = "claude-sonnet-4-5";

/// What `--llm` selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LlmChoice {
    /// One of the configured backends.
    Backend(LlmBackend),
    /// `scripted:DIR`: replay the answers recorded in DIR.
    Scripted(PathBuf),
    /// `record:DIR`: ask the configured backend and save every answer in DIR as a fixture.
    Record(PathBuf),
}

/// Parses `--llm`: `claude-code`, `anthropic`, `openai`, `scripted[:DIR]` or `record:DIR`.
pub fn parse_choice(s: &str) -> Result<LlmChoice, String> {
    let (name, arg) = match s.split_once(':') {
        Some((n, a)) => (n, Some(a)),
        None => (s, None),
    };
    let dir = |a: Option<&str>| match a {
        Some(a) if !a.is_empty() => Ok(PathBuf::from(a)),
        _ => Err(format!("`{name}` needs a directory: `--llm {name}:DIR`")),
    };
    match (name, arg) {
        ("claude-code", None) => Ok(LlmChoice::Backend(LlmBackend::ClaudeCode)),
        ("anthropic", None) => Ok(LlmChoice::Backend(LlmBackend::Anthropic)),
        ("openai", None) => Ok(LlmChoice::Backend(LlmBackend::OpenAi)),
        ("scripted", None) => Ok(LlmChoice::Backend(LlmBackend::Scripted)),
        ("scripted", a) => dir(a).map(LlmChoice::Scripted),
        ("record", a) => dir(a).map(LlmChoice::Record),
        (n @ ("claude-code" | "anthropic" | "openai"), Some(_)) => {
            Err(format!("`{n}` takes no argument; set its options in the config's `llm.{n}`"))
        }
        _ => Err(format!(
            "unknown backend `{s}`; expected claude-code, anthropic, openai, scripted:DIR or record:DIR"
        )),
    }
}

/// The planner for a goal run: backend, prompt templates, plan cache and limits from the
/// config, with `--llm` and `--model` applied.
pub fn planner(
    cfg: &ConfigFile,
    choice: Option<&LlmChoice>,
    model: Option<&str>,
) -> anyhow::Result<Planner> {
    let model = model.map(str::to_owned).or_else(|| cfg.llm.model.clone());
    let backend: Arc<dyn Backend> = match choice {
        Some(LlmChoice::Scripted(dir)) => Arc::new(scripted(dir)?),
        Some(LlmChoice::Record(dir)) => {
            let inner = backend(cfg, cfg.llm.backend, model.as_deref())?;
            Arc::new(Recorder::new(inner, dir).map_err(|e| llm_usage(&e))?)
        }
        Some(LlmChoice::Backend(b)) => Arc::from(backend(cfg, *b, model.as_deref())?),
        None => Arc::from(backend(cfg, cfg.llm.backend, model.as_deref())?),
    };
    let prompts = match &cfg.llm.prompts_dir {
        Some(dir) => Prompts::with_overrides(dir)
            .with_context(|| format!("cannot use the prompt templates in `{}`", dir.display()))?,
        None => Prompts::default(),
    };
    let config = PlannerConfig {
        max_repair_rounds: cfg.llm.max_repair_rounds,
        call_timeout: cfg.llm.call_timeout.0,
        max_tokens: cfg.llm.max_tokens,
        prices: cfg
            .llm
            .prices
            .iter()
            .map(|(m, p)| {
                (
                    m.clone(),
                    Price { input_per_mtok: p.input_per_mtok, output_per_mtok: p.output_per_mtok },
                )
            })
            .collect(),
    };
    Ok(Planner::new(backend, prompts, Some(PlanCache::new(&cfg.llm.cache_dir)), config))
}

fn scripted(dir: &std::path::Path) -> anyhow::Result<Scripted> {
    Scripted::open(dir).map_err(|e| llm_usage(&e))
}

fn llm_usage(e: &orchestra_llm::LlmError) -> anyhow::Error {
    crate::commands::usage(e.message.clone(), None)
}

fn backend(
    cfg: &ConfigFile,
    which: LlmBackend,
    model: Option<&str>,
) -> anyhow::Result<Box<dyn Backend>> {
    let key = |var: &str| std::env::var(var).ok().filter(|v| !v.is_empty());
    Ok(match which {
        LlmBackend::ClaudeCode => {
            let c = &cfg.llm.claude_code;
            Box::new(ClaudeCode::new(ClaudeCodeConfig {
                program: PathBuf::from(&c.program),
                model: model.map(str::to_owned),
                max_turns: c.max_turns,
                max_retries: c.max_retries,
                api_timeout_ms: c.api_timeout.as_millis(),
                max_budget_usd: None,
                env: ClaudeCodeConfig::inherited_env(),
            }))
        }
        LlmBackend::Anthropic => {
            let a = &cfg.llm.anthropic;
            let Some(api_key) = key(&a.api_key_env) else {
                return Err(crate::commands::usage(
                    format!("the anthropic backend needs an API key in ${}", a.api_key_env),
                    Some(
                        "export it, or point `llm.anthropic.api_key_env` at the variable that holds it",
                    ),
                ));
            };
            let mut c = AnthropicConfig::new(api_key, model.unwrap_or(DEFAULT_ANTHROPIC_MODEL));
            c.base_url = a.base_url.clone();
            c.max_retries = a.max_retries;
            Box::new(Anthropic::new(c).map_err(|e| llm_usage(&e))?)
        }
        LlmBackend::OpenAi => {
            let o = &cfg.llm.openai;
            let Some(model) = model else {
                return Err(crate::commands::usage(
                    "the openai backend needs a model name",
                    Some("set `llm.model` in the config, or pass --model (e.g. `llama3.1`)"),
                ));
            };
            let mut c = OpenAiConfig::new(o.base_url.clone(), model);
            c.api_key = key(&o.api_key_env);
            c.max_retries = o.max_retries;
            Box::new(OpenAi::new(c).map_err(|e| llm_usage(&e))?)
        }
        LlmBackend::Scripted => {
            let Some(dir) = &cfg.llm.scripted.dir else {
                return Err(crate::commands::usage(
                    "the scripted backend needs a directory of recorded answers",
                    Some("pass --llm scripted:DIR, or set `llm.scripted.dir`"),
                ));
            };
            Box::new(scripted(dir)?)
        }
    })
}

/// The `claude` tool settings of the workers, with the configured variables passed from this
/// process's environment.
pub fn claude_tool(cfg: &ConfigFile) -> ClaudeToolConfig {
    let t = &cfg.claude_tool;
    ClaudeToolConfig {
        program: PathBuf::from(&t.program),
        env: t.env.iter().filter_map(|k| std::env::var(k).ok().map(|v| (k.clone(), v))).collect(),
        max_retries: t.max_retries,
        api_timeout_ms: t.api_timeout.as_millis(),
        allow_bypass_as_root: t.allow_bypass_as_root,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llm_flag() {
        let ok = |s: &str| parse_choice(s).unwrap();
        assert_eq!(ok("claude-code"), LlmChoice::Backend(LlmBackend::ClaudeCode));
        assert_eq!(ok("openai"), LlmChoice::Backend(LlmBackend::OpenAi));
        assert_eq!(ok("scripted"), LlmChoice::Backend(LlmBackend::Scripted));
        assert_eq!(ok("scripted:fx/a"), LlmChoice::Scripted("fx/a".into()));
        assert_eq!(ok("record:out"), LlmChoice::Record("out".into()));
        let err = |s: &str| parse_choice(s).unwrap_err();
        assert!(err("record").contains("needs a directory"), "{}", err("record"));
        assert!(err("scripted:").contains("needs a directory"));
        assert!(err("gpt").contains("unknown backend `gpt`"));
        assert!(err("anthropic:x").contains("takes no argument"));
    }
}
