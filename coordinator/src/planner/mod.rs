//! Planning a goal with a language model: prompt → answer → extract → check → repair, bounded
//! by the run's call and cost budgets, with a plan cache in front.
//!
//! The pure steps live in [`draft`] (the model's JSON → a plan, every problem at once) and
//! [`prompt`]; this module is the thin loop that calls the backend.

pub mod cache;
pub mod draft;
pub mod prompt;

use crate::plan::{self, CheckedPlan, PlanLimits};
use cache::PlanCache;
use orchestra_llm::{Answer, Backend, ErrorKind, LlmError, Message, Request, extract};
use orchestra_proto::{
    CachedPlan, CallOutcome, GoalRequest, LlmCall, Plan, PlanProblem, PlanningReport, RunOptions,
    Timestamp,
};
use prompt::Prompts;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// Price of a model in USD per million tokens, for backends that do not report cost.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Price {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
}

#[derive(Debug, Clone)]
pub struct PlannerConfig {
    /// Calls after the first that send problems back to the model.
    pub max_repair_rounds: u32,
    /// Limit of one call (the backend's retries included).
    pub call_timeout: Duration,
    pub max_tokens: u32,
    /// By model name.
    pub prices: BTreeMap<String, Price>,
}

impl Default for PlannerConfig {
    fn default() -> Self {
        Self {
            max_repair_rounds: 2,
            call_timeout: Duration::from_secs(300),
            max_tokens: 8192,
            prices: BTreeMap::new(),
        }
    }
}

/// A plan the model made (or the cache had), checked.
#[derive(Debug)]
pub struct Planned {
    pub plan: Plan,
    pub checked: CheckedPlan,
    pub report: PlanningReport,
}

/// Why no plan: every problem, and the calls made (raw answers included).
#[derive(Debug)]
pub struct NotPlanned {
    pub problems: Vec<PlanProblem>,
    pub report: PlanningReport,
}

#[derive(Clone)]
pub struct Planner {
    backend: Arc<dyn Backend>,
    prompts: Prompts,
    cache: Option<PlanCache>,
    config: PlannerConfig,
}

impl std::fmt::Debug for Planner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Planner").field("backend", &self.backend.name()).finish_non_exhaustive()
    }
}

impl Planner {
    pub fn new(
        backend: Arc<dyn Backend>,
        prompts: Prompts,
        cache: Option<PlanCache>,
        config: PlannerConfig,
    ) -> Self {
        Self { backend, prompts, cache, config }
    }

    /// The longest planning may take, for callers that wait for it.
    pub fn max_duration(&self, options: &RunOptions) -> Duration {
        let calls = options.max_llm_calls.min(self.config.max_repair_rounds + 1).max(1);
        self.config.call_timeout.saturating_mul(calls) + Duration::from_secs(5)
    }

    pub async fn plan(
        &self,
        goal: &GoalRequest,
        options: &RunOptions,
        limits: &PlanLimits,
    ) -> Result<Planned, Box<NotPlanned>> {
        let version = self.prompts.version();
        let backend = self.backend.name();
        let model = self.backend.model().map(str::to_owned);
        let key = cache::key(goal, &version, backend, model.as_deref());
        let mut report = PlanningReport {
            backend: backend.to_owned(),
            model: model.clone(),
            prompt_version: version.clone(),
            cache_key: key.clone(),
            cached: false,
            calls: Vec::new(),
        };
        if let Some(cache) = self.cache.as_ref().filter(|_| !goal.no_cache)
            && let Some(entry) = cache.get(&key)
        {
            match check(&entry.plan, goal, limits) {
                Ok(checked) => {
                    info!(key = %key, "plan from the cache; no model call");
                    report.cached = true;
                    return Ok(Planned { plan: entry.plan, checked, report });
                }
                Err(problems) => {
                    warn!(key = %key, problems = problems.len(), "cached plan no longer valid; asking the model");
                }
            }
        }
        let not_planned = |problems, report| Err(Box::new(NotPlanned { problems, report }));
        let schema = draft::schema();
        let rendered = match self.prompts.goal(goal, &schema) {
            Ok(r) => r,
            Err(e) => return not_planned(vec![problem("prompt", e.to_string(), None)], report),
        };
        let mut messages = vec![Message::user(rendered.user)];
        let mut last_problems = Vec::new();
        let rounds = self.config.max_repair_rounds + 1;
        for round in 1..=rounds {
            if let Some(p) = budget_problem(&report, options) {
                let mut problems = vec![p];
                problems.extend(last_problems);
                return not_planned(problems, report);
            }
            let request = Request {
                system: rendered.system.clone(),
                messages: messages.clone(),
                schema: schema.clone(),
                schema_name: "submit_plan".into(),
                model: None,
                max_tokens: self.config.max_tokens,
                timeout: self.config.call_timeout,
            };
            let sent = messages.last().map(|m| m.content.clone()).unwrap_or_default();
            let started_at = Timestamp::now();
            let t0 = Instant::now();
            let guard = self.config.call_timeout + Duration::from_secs(5);
            let result = match tokio::time::timeout(guard, self.backend.complete(&request)).await {
                Ok(r) => r,
                Err(_) => Err(LlmError::new(
                    ErrorKind::Timeout,
                    format!("no answer within {} s", guard.as_secs()),
                )),
            };
            let latency_ms = t0.elapsed().as_millis() as u64;
            let mut call = LlmCall {
                round,
                started_at,
                latency_ms,
                input_tokens: 0,
                output_tokens: 0,
                cost_usd: 0.0,
                cost_reported: false,
                request: sent,
                answer: String::new(),
                outcome: CallOutcome::Accepted {},
            };
            let answer = match result {
                Ok(answer) => answer,
                Err(e) if e.kind == ErrorKind::NoStructuredOutput && !e.raw.is_empty() => {
                    // The model wrote prose instead of calling the tool: its text may still hold
                    // the plan (fenced or inline), which `extract` finds.
                    Answer {
                        structured: None,
                        text: e.raw.clone(),
                        usage: e.usage.clone(),
                        model: None,
                        latency: t0.elapsed(),
                    }
                }
                Err(e) => {
                    self.price(&mut call, &e.usage, model.as_deref());
                    call.answer = e.raw.clone();
                    call.outcome = CallOutcome::Error {
                        class: e.kind.as_str().into(),
                        message: e.message.clone(),
                    };
                    report.calls.push(call);
                    warn!(round, kind = %e.kind, error = %e.message, "planning call failed");
                    let hint = match e.kind {
                        ErrorKind::Usage => {
                            "check the llm backend settings (program, key, base URL)"
                        }
                        ErrorKind::Fixture => {
                            "record answers with `--llm record:DIR`, or add files to the scripted directory"
                        }
                        _ => "try again later, or use another backend with --llm",
                    };
                    let message = format!("the {backend} backend failed: {e}");
                    let mut problems = vec![problem("llm_error", message, Some(hint))];
                    problems.extend(last_problems);
                    return not_planned(problems, report);
                }
            };
            self.price(&mut call, &answer.usage, answer.model.as_deref().or(model.as_deref()));
            call.answer = answer.text.clone();
            let (problems, extract_error) = match extract::extract_json(&answer) {
                Err(e) => {
                    (vec![problem("no_plan_in_answer", e.to_string(), None)], Some(e.to_string()))
                }
                Ok(value) => match draft::to_plan(&value, goal)
                    .and_then(|plan| check(&plan, goal, limits).map(|checked| (plan, checked)))
                {
                    Ok((plan, checked)) => {
                        report.calls.push(call);
                        info!(round, tasks = plan.tasks.len(), "the model's plan is valid");
                        self.store(&report, goal, &plan);
                        return Ok(Planned { plan, checked, report });
                    }
                    Err(problems) => (problems, None),
                },
            };
            info!(
                round,
                problems = problems.len(),
                "the model's plan is invalid; its problems go back to it"
            );
            call.outcome = CallOutcome::Invalid { problems: problems.clone() };
            report.calls.push(call);
            if round < rounds {
                match self.prompts.repair(&problems, extract_error.as_deref()) {
                    Ok(text) => {
                        messages.push(Message::assistant(answer.text));
                        messages.push(Message::user(text));
                    }
                    Err(e) => {
                        return not_planned(vec![problem("prompt", e.to_string(), None)], report);
                    }
                }
            }
            last_problems = problems;
        }
        let calls = report.calls.len();
        let mut problems = vec![problem(
            "plan_invalid",
            format!(
                "the model's plan was still invalid after {calls} call{}; the last problems follow",
                if calls == 1 { "" } else { "s" }
            ),
            Some(
                "rephrase the goal, allow more repair rounds (llm.max_repair_rounds), or write the tasks yourself",
            ),
        )];
        problems.extend(last_problems);
        not_planned(problems, report)
    }

    fn price(&self, call: &mut LlmCall, usage: &orchestra_llm::Usage, model: Option<&str>) {
        call.input_tokens = usage.input_tokens;
        call.output_tokens = usage.output_tokens;
        if let Some(c) = usage.cost_usd {
            call.cost_usd = c;
            call.cost_reported = true;
        } else if let Some(p) = model.and_then(|m| self.config.prices.get(m)) {
            call.cost_usd = (usage.input_tokens as f64 * p.input_per_mtok
                + usage.output_tokens as f64 * p.output_per_mtok)
                / 1e6;
        }
    }

    fn store(&self, report: &PlanningReport, goal: &GoalRequest, plan: &Plan) {
        let Some(cache) = &self.cache else { return };
        let entry = CachedPlan {
            key: report.cache_key.clone(),
            created_at: Timestamp::now(),
            backend: report.backend.clone(),
            model: report.model.clone(),
            prompt_version: report.prompt_version.clone(),
            goal: goal.goal.clone(),
            plan: plan.clone(),
            calls: report.calls.len() as u32,
            cost_usd: report.cost_usd(),
        };
        if let Err(e) = cache.put(&entry) {
            warn!(error = %e, "plan not cached");
        }
    }
}

/// The DAG checks of any plan plus the tool rules of the goal request.
pub fn check(
    plan: &Plan,
    goal: &GoalRequest,
    limits: &PlanLimits,
) -> Result<CheckedPlan, Vec<PlanProblem>> {
    let tool_problems = draft::check_tools(plan, goal);
    match plan::validate(plan, limits) {
        Ok(checked) if tool_problems.is_empty() => Ok(checked),
        Ok(_) => Err(tool_problems),
        Err(mut problems) => {
            problems.extend(tool_problems);
            problems.sort();
            problems.dedup();
            Err(problems)
        }
    }
}

/// Whether the run's budget allows another call.
pub fn budget_problem(report: &PlanningReport, options: &RunOptions) -> Option<PlanProblem> {
    let calls = report.calls.len() as u32;
    if calls >= options.max_llm_calls {
        return Some(problem(
            "llm_budget",
            format!(
                "the run's limit of {} model call{} is reached",
                options.max_llm_calls,
                if options.max_llm_calls == 1 { "" } else { "s" }
            ),
            Some("raise limits.max_llm_calls in the config"),
        ));
    }
    if let Some(cap) = options.max_cost_usd {
        let spent = report.cost_usd();
        if spent >= cap {
            return Some(problem(
                "llm_budget",
                format!("the run's model budget of ${cap:.4} is spent (${spent:.4})"),
                Some("raise limits.max_cost_usd in the config"),
            ));
        }
    }
    None
}

fn problem(code: &str, message: impl Into<String>, hint: Option<&str>) -> PlanProblem {
    PlanProblem {
        code: code.into(),
        path: String::new(),
        message: message.into(),
        hint: hint.map(Into::into),
    }
}
