"""The run configuration: one typed, strict model, read from a TOML or JSON file and the command line.

Unknown keys are errors (``extra="forbid"``) so that a typo in an overnight run's config
fails at once, not eight hours later.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from pydantic import Field, ValidationError, field_validator

from common.errors import HeuristError
from common.files import open_regular
from common.safe_text import without_url_passwords
from common.settings import Settings
from envs.limits import MAX_MIB, MAX_SECONDS
from memory.store import MemoryConfig


class ConfigError(HeuristError):
    """A run config that is missing, malformed, or has unknown keys or wrong types."""


class Price(Settings):
    """US dollars per million tokens."""

    input: float = Field(..., ge=0)
    output: float = Field(..., ge=0)
    cached_input: float | None = Field(None, ge=0, description="Prompt tokens the server read from its cache "
                                                               "(default: the input price).")


# OpenAI's list prices, USD per million tokens (standard tier, short context), as its pricing page gave
# them in June 2026; override any of them, or add a model, with [llm.prices."model-name"] in the config.
# A dated snapshot ("gpt-5-mini-2025-08-07") takes its model's price. A model in neither is reported in
# tokens, never at $0, and a run with a USD budget refuses to start on it.
PRICES_CHECKED = "2026-06"
DEFAULT_PRICES: dict[str, Price] = {
    "gpt-5.5": Price(input=5.0, cached_input=0.5, output=30.0),
    "gpt-5.5-pro": Price(input=30.0, output=180.0),
    "gpt-5.4": Price(input=2.5, cached_input=0.25, output=15.0),
    "gpt-5.4-mini": Price(input=0.75, cached_input=0.075, output=4.5),
    "gpt-5.4-nano": Price(input=0.2, cached_input=0.02, output=1.25),
    "gpt-5.4-pro": Price(input=30.0, output=180.0),
    "gpt-5.1": Price(input=1.25, cached_input=0.125, output=10.0),
    "gpt-5": Price(input=1.25, cached_input=0.125, output=10.0),
    "gpt-5-mini": Price(input=0.25, cached_input=0.025, output=2.0),
    "gpt-5-nano": Price(input=0.05, cached_input=0.005, output=0.4),
    "o3": Price(input=2.0, cached_input=0.5, output=8.0),
    "o4-mini": Price(input=1.1, cached_input=0.275, output=4.4),
    "gpt-4.1": Price(input=2.0, cached_input=0.5, output=8.0),
    "gpt-4.1-mini": Price(input=0.4, cached_input=0.1, output=1.6),
    "gpt-4.1-nano": Price(input=0.1, cached_input=0.025, output=0.4),
    "gpt-4o": Price(input=2.5, cached_input=1.25, output=10.0),
    "gpt-4o-mini": Price(input=0.15, cached_input=0.075, output=0.6),
}
_SNAPSHOT = re.compile(r"-\d{4}-\d{2}-\d{2}$")

ReasoningEffort = Literal["none", "minimal", "low", "medium", "high", "xhigh"]


def http_url(url: str | None) -> str | None:
    """``url`` if it is an http(s) URL with a host, else ValueError in words (a run's and doctor's --base-url, and
    every base_url of a config). Caught when the config is read, not at the first model call an hour into the run."""
    if url is not None:
        try:
            parsed = urlparse(url)
            host = parsed.hostname
        except ValueError:  # "http://[::1": no URL at all
            parsed, host = None, None
        if parsed is None or parsed.scheme not in ("http", "https") or not host:
            raise ValueError(f"{without_url_passwords(url)!r} is not an http(s) URL; give the server's API root, "
                             f"e.g. http://127.0.0.1:8000/v1")
    return url


class RoleLLM(Settings):
    """Per-role overrides of the LLM settings: put a small local model where it is good enough."""

    model: str | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    max_tokens: int | None = Field(None, ge=1)
    reasoning: bool | None = Field(None, description="This role's model is a reasoning model (see llm.reasoning).")
    reasoning_effort: ReasoningEffort | None = None
    base_url: str | None = Field(None, description="This role's own OpenAI-compatible server.")
    api_key_env: str | None = Field(None, description="The variable holding the key for this role's own server "
                                                      "(the run's key goes only to the run's server).")
    timeout_s: float | None = Field(None, gt=0, description="This role's silence allowed, seconds.")
    offline: bool = Field(False, description="This role runs its offline backend even when the others use a model.")

    @field_validator("base_url")
    @classmethod
    def _an_http_url(cls, url: str | None) -> str | None:
        return http_url(url)


class LLMConfig(Settings):
    model: str = "gpt-4.1-mini"
    base_url: str | None = Field(None, description="An OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1.")
    api_key_env: str = "OPENAI_API_KEY"

    def key_variables(self) -> list[str]:
        """Every variable that holds a key for a model: the run's, and each role's own server's."""
        return [self.api_key_env, *(r.api_key_env for r in self.roles.values() if r.api_key_env)]
    temperature: float = Field(0.2, ge=0, le=2, description="Not sent to reasoning models, which refuse it.")
    max_tokens: int | None = Field(None, ge=1, description="Tokens a reply may take (default 4096; 16384 for a "
                                                           "reasoning model, whose limit counts its reasoning too).")
    reasoning: bool | None = Field(None, description="The model is a reasoning model: sent max_completion_tokens, "
                                                     "no temperature, and reasoning_effort where set (default: from "
                                                     "its name: gpt-5*, o1/o3/o4*, except *-chat*).")
    reasoning_effort: ReasoningEffort | None = Field(None, description="Sent to reasoning models only (default: "
                                                                       "the model's own).")
    timeout_s: float | None = Field(None, gt=0, description="Seconds of silence from the server before a call is "
                                                              "abandoned (keep-alive bytes are silence too: after "
                                                              "twice this); a streamed reply that keeps coming is "
                                                              "never cut off (default 120; 600 for a reasoning model, "
                                                              "which streams nothing while it thinks).")
    structured_mode: Literal["auto", "json_schema", "json_object_schema", "json_object", "text"] = Field(
        "auto", description="How replies are held to their schema: auto starts at json_schema and steps down when "
                            "the server refuses it (json_object_schema is llama.cpp's); a fixed mode never changes.")
    images: bool | None = Field(None, description="Send clip images to the video analyst (default: while the "
                                                  "server takes them).")
    stream: bool | None = Field(None, description="Stream replies (default: while the server streams).")
    max_retries: int = Field(4, ge=0, description="Retries on 429, 5xx, timeouts and refused connections.")
    retry_base_s: float = Field(1.0, ge=0, description="First backoff; doubles each retry (a Retry-After header wins).")
    validation_retries: int = Field(2, ge=0, description="Re-asks when a reply is not valid JSON for its schema.")
    max_consecutive_failures: int = Field(5, ge=1, description="LLM failures in a row before the run pauses.")
    roles: dict[str, RoleLLM] = Field(default_factory=dict)
    prices: dict[str, Price] = Field(default_factory=dict)

    @field_validator("base_url")
    @classmethod
    def _an_http_url(cls, url: str | None) -> str | None:
        return http_url(url)

    def price(self, model: str) -> Price | None:
        """The model's price: the config's, else the table's; a dated snapshot takes its model's."""
        for name in (model, _SNAPSHOT.sub("", model)):
            found = self.prices.get(name) or DEFAULT_PRICES.get(name)
            if found is not None:
                return found
        return None

    def unpriced(self) -> list[str]:
        """The models this config calls that have no price (a USD budget cannot be kept on them)."""
        models = {self.model} | {r.model for r in self.roles.values() if r.model and not r.offline}
        return sorted(m for m in models if self.price(m) is None)


class Budget(Settings):
    """Each is a hard stop; None means no limit of that kind."""

    iterations: int | None = Field(20, ge=1)
    hours: float | None = Field(None, gt=0)
    env_steps: int | None = Field(None, ge=1)
    tokens: int | None = Field(None, ge=1)
    usd: float | None = Field(None, gt=0)
    patience: int | None = Field(8, ge=1, description="Stop after this many iterations without an accepted edit.")
    stop_when: Literal["max", "target", "never"] = Field(
        "max", description="max: stop when the dev mean reaches the task's maximum return (CartPole 500, Breakout "
                           "864); target: already at the task's target; never: only budgets stop the run.")


class WandbConfig(Settings):
    """Weights & Biases logging (optional: needs ``wandb`` installed); TensorBoard files are always written."""

    enabled: bool = Field(False, description="Log the run's scalars to W&B (`heurist run --wandb`).")
    project: str = Field("heurist", min_length=1, max_length=128)
    entity: str | None = Field(None, description="W&B team or user (default: the key's).")
    group: str | None = Field(None, description="W&B group (a campaign sets its name).")
    mode: Literal["online", "offline"] | None = Field(
        None, description="Default: wandb's own (WANDB_MODE, else online); offline writes RUN_DIR/wandb to sync "
                          "later with `wandb sync`.")

    @field_validator("project")
    @classmethod
    def _a_wandb_project(cls, project: str) -> str:
        # W&B refuses these in a project's name; refused here, before the run starts, rather than at every iteration.
        bad = sorted({c for c in project if c in '/\\#?%:' or not c.isprintable()})
        if bad:
            raise ValueError(f"{project!r} holds {''.join(bad)!r}, which W&B refuses in a project's name; choose "
                             f"another wandb.project")
        return project


class ReviewConfig(Settings):
    alpha: float = Field(0.05, gt=0, lt=1, description="One-sided p-value a candidate must beat (paired, dev seeds).")
    min_improvement: float = Field(0.0, ge=0, description="Smallest dev-mean gain worth a commit.")
    pareto_seeds: int = Field(2, ge=0, description="Accept without significance an edit that is better on at least "
                                                   "this many paired dev seeds and worse on none (0: never).")


class SearchConfig(Settings):
    """The offline coder's scalar search over the policy's tunables (CMA-ES)."""

    population: int = Field(8, ge=2)
    generations: int = Field(2, ge=1, description="CMA-ES generations per iteration.")
    episodes: int = Field(5, ge=1, description="Dev seeds each search candidate is scored on.")
    sigma: float = Field(0.25, gt=0, le=1, description="Initial step, as a fraction of each tunable's range.")
    seed: int | None = Field(None, description="Seeds CMA-ES with this and the iteration (default: the run id), "
                                               "for a run that proposes the same candidates every time.")


class CodeConfig(Settings):
    """The model coder: a tool-using agent that reads, scores, traces and tests before it submits an edit
    (default), or one structured call. Each loop limit is a hard stop that ends the loop with the best
    candidate it scored above the incumbent, or none; the run's budgets hold as well."""

    mode: Literal["agent", "single"] = Field("agent", description="agent: a tool loop per iteration; single: "
                                                                  "one structured call (the offline coder is "
                                                                  "CMA-ES either way).")
    max_tool_calls: int = Field(30, ge=1, description="Tool calls per loop.")
    max_env_steps: int | None = Field(None, ge=1, description="Env steps the loop's score, trace and frames "
                                                             "calls may spend (default: only the run's budget).")
    max_tokens: int | None = Field(200_000, ge=1, description="Model tokens per loop.")
    max_wall_s: float | None = Field(1800.0, gt=0, description="Seconds per loop (model turns and tools).")
    max_idle_turns: int = Field(3, ge=1, description="Turns in a row that call no tool before the loop ends.")
    parallel: int = Field(1, ge=1, le=8, description="Agents run side by side, each on a different failure or "
                                                     "hypothesis; every candidate is checked and scored, then tested "
                                                     "and gated best first until one is accepted.")


class EvalConfig(Settings):
    episodes: int | None = Field(None, ge=1, description="Dev seeds per evaluation (default: the whole dev split).")
    workers: int | None = Field(None, ge=1)
    lockstep: int | None = Field(None, ge=1, le=64,
                                 description="Episodes each worker runs at once, stepped together (1: one at a "
                                             "time; default: 4 for Atari, 32 otherwise).")
    episode_timeout_s: float = Field(120.0, gt=0, le=MAX_SECONDS, allow_inf_nan=False,
                                     description="Wall-clock and CPU seconds per episode, at least.")
    step_s: float = Field(0.005, ge=0, le=MAX_SECONDS, allow_inf_nan=False, description=(
        "Seconds a policy may spend per env step: each episode's limit is at least this times the most steps an "
        "episode of the task can take (a planner spending a CPU-second a step needs about 1.5; 0: "
        "episode_timeout_s alone)."))
    memory_mb: int = Field(4096, ge=256, le=MAX_MIB)
    backend: Literal["local", "ray"] = Field("local", description=(
        "Where episodes run: worker pairs on this machine, or Ray tasks over a cluster's nodes (one CPU each, "
        "under the same sandbox on each node; `workers` is then the pairs at once, default the cluster's CPUs). "
        "For expensive policies such as model-predictive control."))
    ray_address: str | None = Field(None, description="The Ray cluster for backend = \"ray\" (default: "
                                                      "RAY_ADDRESS, which a campaign sets to its own cluster; "
                                                      "else Ray started on this machine).")
    video: bool = Field(True, description="Record failure clips for the video analyst.")
    holdout: bool = Field(True, description="Evaluate the best policy once on the holdout split at the end.")
    holdout_control: int = Field(50, ge=0, le=1000, description=(
        "Episodes on seeds no model has seen, drawn from the run's secret, run beside the holdout: the holdout's "
        "seeds are public, so a policy could tell them apart and play otherwise there; the summary says when the "
        "holdout's returns differ from these beyond chance (0: no control)."))
    allow_unconfined: bool = Field(False, description="Run model-written code even where bubblewrap cannot confine "
                                                      "the file system (`heurist doctor` says why); it then sees "
                                                      "whatever its user can.")


class StageRoles(Settings):
    """Which roles run in each stage, by name (`heurist roles`) or module:Class.

    Analyse roles run side by side and every review role must accept; the code and test stages
    have one role each."""

    analyse: list[str] = Field(default_factory=lambda: ["video_analyst", "log_parser"])
    code: str = "coder"
    test: str = "test_writer"
    review: list[str] = Field(default_factory=lambda: ["reviewer"])
    simplify: str = "simplifier"
    lesson: str = "lesson_writer"


class ScenarioConfig(Settings):
    """Failure scenarios (envs.scenarios): the simulator's state saved before the incumbent's failures, which
    regression tests replay instead of whole episodes."""

    before: int | None = Field(None, ge=0, le=5000, description="Steps before a failure the state is saved at (default: "
                                                                "300 for Atari, 50 otherwise; 0: no scenarios).")
    warmup: int = Field(8, ge=0, le=64, description="Observations before that, replayed to a stateful policy first.")
    tests_per_edit: int = Field(1, ge=0, le=20, description="Scenario tests heurist adds for an edit: the seeds it "
                                                             "improved most whose failure could be saved (0: none).")
    recalled_per_edit: int = Field(2, ge=0, le=20, description="Scenario tests heurist adds for an edit from earlier "
                                                                "runs' failures, recalled from memory with their saved "
                                                                "moments (0: none); kept only if the incumbent fails "
                                                                "them and the candidate does not.")

    def steps_before(self, family: str) -> int:
        return self.before if self.before is not None else (300 if family == "atari" else 50)


class SimplifyConfig(Settings):
    """The simplify stage: a shorter, clearer policy with the same behaviour, kept only if it loses nothing."""

    every: int = Field(5, ge=0, description="Run it after every N accepted edits (1: after each new best, since only "
                                            "a better policy is ever accepted; 0: never).")
    seed_tolerance: float = Field(0.0, ge=0, description="The most any dev seed's return may fall, in the task's "
                                                         "return units, while the mean does not fall (0: no seed "
                                                         "may be worse).")
    mean_tolerance: float = Field(0.0, ge=0, description="The most the dev mean may fall, shown to be within it by "
                                                         "a paired one-sided Wilcoxon test at alpha (0: none).")
    alpha: float = Field(0.05, gt=0, lt=1)
    screen_episodes: int = Field(10, ge=0, le=1000, description=(
        "Episodes on seeds no model has seen, drawn afresh for each simplify stage from a secret of the run's: the "
        "simplification must lose nothing there either, by the same rules, so one that reproduces only the dev "
        "seeds (which the simplifier's brief lists) is refused (0: the dev seeds alone)."))


class RunConfig(Settings):
    task: str
    policy: Path | None = Field(None, description="Starting policy file (default: the task's starter).")
    protocol: str | None = None
    budget: Budget = Field(default_factory=Budget)
    llm: LLMConfig = Field(default_factory=LLMConfig)
    offline: bool | None = Field(None, description="Offline roles; default: offline when no API key and no base_url.")
    memory: MemoryConfig = Field(default_factory=MemoryConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    review: ReviewConfig = Field(default_factory=ReviewConfig)
    simplify: SimplifyConfig = Field(default_factory=SimplifyConfig)
    scenarios: ScenarioConfig = Field(default_factory=ScenarioConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    code: CodeConfig = Field(default_factory=CodeConfig)
    stages: StageRoles = Field(default_factory=StageRoles)
    check_retries: int = Field(2, ge=0, description="Times the coder may fix an edit that fails the check.")
    report: bool = Field(True, description="Rewrite RUN_DIR/report/index.html at the end of every iteration.")
    wandb: WandbConfig = Field(default_factory=WandbConfig)


def check_priced(config: RunConfig) -> None:
    """A USD budget needs a price for every model the run calls: refused at the start, not at the first bill."""
    unpriced = config.llm.unpriced() if config.budget.usd else []
    if unpriced:
        raise ConfigError(f"budget.usd cannot be kept: {', '.join(unpriced)} has no price; add [llm.prices."
                          f"\"{unpriced[0]}\"] with input and output (USD per million tokens) to the config, or "
                          f"set budget.tokens instead")


def read_settings_file(path: Path) -> str:
    """A settings file's text, if it is a regular file: a folder or a FIFO given by mistake is OSError (EINVAL, "not a
    regular file"), not "does not exist" or a read that waits for a writer."""
    with open_regular(path) as fh:
        return fh.read().decode()


def load_config_file(path: Path) -> dict:
    """The raw mapping in a .toml or .json config file."""
    try:
        text = read_settings_file(path)
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist; give a .toml or .json file") from None
    except OSError as exc:
        raise ConfigError(f"cannot read the config file {path}: {exc.strerror}; give a .toml or .json file") from None
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path} does not parse: {exc}") from None
    except RecursionError:  # "a = [[[[..." past what Python's parsers nest
        raise ConfigError(f"{path} does not parse: it is nested too deeply") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a table of settings")
    return data


def build_config(data: dict, source: str = "config", flags: dict | None = None) -> RunConfig:
    """``data`` as a RunConfig, or one line naming the first problem and where it came from: ``source``, or the
    command line where the value at fault is one of ``flags`` (what the command's options set over ``source``)."""
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        if flags is not None and _holds(flags, first["loc"]):
            source = "command line"
        message = "unknown key" if first["type"] == "extra_forbidden" else first["msg"].removeprefix("Value error, ")
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ConfigError(f"{source}: {where}: {message}{more}; fix it (see docs/config.md)") from None


def _holds(table: dict, loc: tuple) -> bool:
    """Whether ``table`` sets the value at ``loc`` (a path of keys) itself: a table it only adds to (an error of the
    whole table, such as ``[budget]``'s, may be a key the file set there) is not its own."""
    for key in loc:
        if not isinstance(table, dict) or key not in table:
            return False
        table = table[key]
    return bool(loc) and not isinstance(table, dict)


def merge(base: dict, override: dict) -> dict:
    """Nested dict merge: override wins, tables merge."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged
