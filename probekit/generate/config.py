"""`GenerateConfig` (how `generate` and `steer` sample and what they keep) and `SteerConfig` (the search), validated in one place.

It sits below the generation driver and the scheduler (as TRL keeps a
trainer's config beside it), and imports no torch, so the CLI can derive its
options from it without loading a model stack.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from probekit.config import Config, check_choice, option
from probekit.errors import ProbekitError
from probekit.generate.official_score import conf_weight
from probekit.store import STATE_DTYPES


def check_sampling(temperature: float, top_p: float) -> None:
    """Refuse a temperature or top-p that sampling cannot use (`probekit.generate.sampling`)."""
    if not (temperature >= 0 and temperature < float("inf")):
        raise ProbekitError(f"--temperature {temperature}: must be a finite number >= 0 (0 = greedy)")
    if not 0 < top_p <= 1:
        raise ProbekitError(f"--top-p {top_p}: must be in (0, 1]")


@dataclass(frozen=True)
class GenerateConfig(Config):
    """How completions are sampled and what is kept of them."""

    model: str = option("smollm2-135m", "Frozen model: smollm2-135m (bundled), gemma3-270m, a local folder, a .gguf file or a hub id (needs network).")
    samples: int = option(4, "Completions sampled per prompt (one majority-voting group).")
    max_new_tokens: int = option(128, "Most tokens generated per completion (a completion cut there is counted in generation.json).")
    temperature: float = option(0.7, "Sampling temperature; 0 = greedy.")
    top_p: float = option(0.95, "Nucleus sampling: sample from the smallest set of tokens whose probability reaches top_p.")
    seed: int = option(0, "Seed; each (prompt, sample) has its own generator, so outputs do not depend on batching.")
    template: str = option("auto", "Prompt rendering: chat (the model's chat template), raw, or auto (chat when the tokenizer has one).")
    layers: str | None = option(None, "Layers whose states are stored (HF numbering), e.g. 15 or 10,15. Default: the middle layer (plus the probe's layer with --filter).")
    dtype: str = option("float16", "Storage dtype of the states: float16 or float32.")
    answer: str = option("synth", "Answer parser: synth (A: n), gsm8k (#### n / A: n / last number), last-number, or regex:PATTERN.")
    stop: str | None = option(None, "Stop a completion once its text contains this string (e.g. a blank line after a few-shot answer); it is kept.")
    batch_size: int = option(32, "Samples decoded together; a sample that ends gives its row to the next at once. Memory is bounded by a few times this, whatever the number of prompts.")
    shard_size: int = option(512, "Trajectories per store shard.")
    device: str = option("auto", "auto (CUDA when available), cpu or cuda.")
    model_dtype: str = option("auto", "Dtype the model runs in: auto (as for extract: bfloat16 on CUDA, and on CPUs where it measures faster), float32, float16, bfloat16.")

    def validate(self) -> None:
        check_sampling(self.temperature, self.top_p)
        for flag, value in (("--samples", self.samples), ("--max-new-tokens", self.max_new_tokens), ("--batch-size", self.batch_size),
                            ("--shard-size", self.shard_size)):
            if value < 1:  # one option named: `steer` has only some of them
                raise ProbekitError(f"{flag} {value}: must be at least 1")
        if self.dtype not in STATE_DTYPES:
            raise ProbekitError(f"--dtype must be float16 or float32, got '{self.dtype}'")

    def decoding(self) -> DecodeSettings:
        """The fields the decoders read."""
        return DecodeSettings(self.samples, self.batch_size, self.max_new_tokens, self.temperature, self.top_p, self.seed, self.stop, self.dtype)


@dataclass(frozen=True)
class DecodeSettings:
    """What the decoders read of a `GenerateConfig` (`GenerateConfig.decoding()`): the scheduler and the steering search get
    only these, so what can change a sample is visible in one place (as SAELens narrows its runner's config for the trainer)."""

    samples: int
    batch_size: int
    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int
    stop: str | None
    dtype: str  # storage dtype: decoders round captured states to it before scoring, as the store will hold them


# The `GenerateConfig` fields `steer` never reads (its beams and candidates take the place of samples; it stores no states),
# so it has no option for them and its steering.json does not record them.
STEER_IGNORES = ("samples", "layers", "batch_size", "shard_size")

STEP_SCORES = ("last", "mean", "gain", "official")
EMPTY_STEPS = ("allow", "last", "resample")


@dataclass(frozen=True)
class SteerConfig(Config):
    """The search; sampling, model and template come from a `GenerateConfig`."""

    beams: int = option(4, "Beams kept per prompt after each step (1 = best-of-k per step).")
    candidates: int = option(4, "Continuations sampled from each beam at each step.")
    step_tokens: int = option(0, "Step length in tokens; 0 = a step ends at a newline (the official code's line steps).")
    max_step_tokens: int = option(32, "A newline step is cut after this many tokens.")
    goal: str = option("mean", "Goal prototype the Q-value points at: mean, kmeans, or a name added with `probekit goal`.")
    step_score: str = option("last", "What ranks a candidate step: last (the Q of its last token), mean (the cosine of its tokens' mean φ "
                                     "to the goal), gain (its last-token Q minus its beam's before the step) or official (the official code's: "
                                     "the path's geometric mean of c^w·p^(1/len)^(1-w) over its steps, plus --q-weight × the mean-φ cosine).")
    q_weight: float = option(1.0, "With --step-score official: weight of the step's mean-φ cosine to the goal added to the path score (official: 1).")
    self_eval: bool = option(False, "With --step-score official: the model judges each step in a few-shot (A) correct / (B) incorrect prompt; "
                                    "its confidence c = softmax over the two choice tokens. Off: c is not used (official --not_use_conf).")
    self_eval_prompt: str | None = option(None, "With --self-eval: a text file holding the judging prompt, with the placeholders {prompt} and "
                                                "{steps}, ending just before the choice letter. Default: a math version of the official prompt.")
    conf_ratio: float = option(0.0, "With --self-eval: the official --conf_ratio, a log2-odds: the confidence's weight w = 2^r/(2^r+1) "
                                    "(0: c and p weigh the same).")
    unique_candidates: bool = option(False, "Drop a candidate whose text repeats another's (same beam, same step) before selection, as the official code does.")
    bs_temperature: float = option(0.0, "With --step-score official: select beams by sampling with weights score^(1/T) instead of top-k "
                                        "(official --bs_temperature; below 0.005 selection is top-k).")
    bs_temperature_decay: float = option(-1.0, "The selection temperature at step s is bs_temperature × decay^s (official "
                                               "--bs_temperature_decay; below 0: no decay).")
    reject_sample: bool = option(False, "With --bs-temperature: keep a drawn candidate with probability its path's confidence and "
                                        "length-normalised probability combined, and only above min(--bs-min-score, the k-th best score) "
                                        "(official --reject_sample; at most 100 draws).")
    unbiased: bool = option(False, "With --bs-temperature: divide each selection weight by the candidate's length-normalised LM probability "
                                   "(official --unbiased, an importance correction for candidates drawn from the LM).")
    bs_min_score: float = option(0.6, "With --reject-sample: the score floor (official --bs_min_score).")
    empty_steps: str = option("allow", "A step of only whitespace (e.g. a blank line) that does not end the completion: allow it, rank it "
                                       "last (below every other candidate), or resample it from its beam (up to --max-resamples times, then last).")
    max_resamples: int = option(3, "With --empty-steps resample: how many times an empty step is drawn again before it is kept (and "
                                   "ranked last); the tokens of every draw count in tokens_generated.")
    require_before_end: str | None = option(None, "Regex (Python re.search) a completion's text must match when it ends (EOS, --stop "
                                                  "or --max-new-tokens), e.g. 'A: \\d+' or '####'; one that ends without a match ranks "
                                                  "below every continuing candidate.")

    def validate(self) -> None:
        if self.beams < 1 or self.candidates < 1 or self.max_step_tokens < 1 or self.step_tokens < 0:
            raise ProbekitError("--beams, --candidates and --max-step-tokens must be at least 1, --step-tokens at least 0")
        check_choice("--step-score", self.step_score, STEP_SCORES)
        check_choice("--empty-steps", self.empty_steps, EMPTY_STEPS)
        self.check_official()
        if self.max_resamples < 1:
            raise ProbekitError(f"--max-resamples {self.max_resamples}: must be at least 1")
        self.end_pattern()

    def check_official(self) -> None:
        """The official score's options: finite numbers, and only where they are read."""
        for flag, value in (("--q-weight", self.q_weight), ("--conf-ratio", self.conf_ratio), ("--bs-temperature", self.bs_temperature),
                            ("--bs-temperature-decay", self.bs_temperature_decay), ("--bs-min-score", self.bs_min_score)):
            if not math.isfinite(value):
                raise ProbekitError(f"{flag} {value}: must be a finite number")
        if self.bs_temperature < 0:
            raise ProbekitError(f"--bs-temperature {self.bs_temperature}: must be >= 0 (0 = top-k)")
        official_only = {"--self-eval": self.self_eval, "--bs-temperature": self.bs_temperature > 0, "--q-weight": self.q_weight != 1.0}
        for flag, used in official_only.items():
            if used and self.step_score != "official":
                raise ProbekitError(f"{flag} is read only with --step-score official (got --step-score {self.step_score})")
        for flag, used in {"--self-eval-prompt": self.self_eval_prompt is not None, "--conf-ratio": self.conf_ratio != 0.0}.items():
            if used and not self.self_eval:
                raise ProbekitError(f"{flag} is read only with --self-eval")
        for flag, used in {"--reject-sample": self.reject_sample, "--unbiased": self.unbiased,
                           "--bs-temperature-decay": self.bs_temperature_decay >= 0}.items():
            if used and self.bs_temperature == 0:
                raise ProbekitError(f"{flag} is read only with --bs-temperature above 0")

    def confidence_weight(self) -> float:
        """w of c^w·p^(1-w): from --conf-ratio with --self-eval, else 0 (the official --not_use_conf)."""
        return conf_weight(self.conf_ratio) if self.self_eval else 0.0

    def end_pattern(self) -> re.Pattern | None:
        """`require_before_end` compiled (None when unset); a bad pattern is a one-line error."""
        if self.require_before_end is None:
            return None
        try:
            return re.compile(self.require_before_end)
        except re.error as exc:
            raise ProbekitError(f"--require-before-end '{self.require_before_end}': not a regular expression ({exc})") from None
