"""Q-guided decoding: steer generation toward a goal state with a step-wise beam search.

Following the paper's decoding (the official `decoding/` code: a step is one
line; each beam samples a few one-step continuations; candidates are scored
with the reward model's representation against the goal state; the best
`beam_size` survive), probekit ranks candidates by a step score toward the
chosen goal prototype, through the one scorer. With `beams=1` this is
best-of-k per step. The step score (`--step-score`):

* last: the Q-value of the candidate's last token in context, i.e. the cosine
  of φ(state) to the goal;
* mean: the cosine of the mean φ of the step's tokens to the goal. The
  official code scores a step this way (the mean of the reward model's hidden
  states over the step, cosine to the mean goal state), but it encodes the
  step's text alone; probekit reads the step's tokens in their beam's context,
  the states its probes are trained on;
* gain: the last-token Q minus the beam's Q before the step (the prompt's last
  token before the first step).

On a frozen 135M model the plain search fails in a known way
(benchmarks/README.md, generation study B and D): the goal is the mean final
state of preferred completions, so candidates that end, and blank-line steps,
look like it whether or not an answer came before. Two guards, both off by
default:

* `--empty-steps last|resample`: a step that adds only whitespace and does not
  end the completion ranks below every other candidate, or is drawn again from
  its beam (the official code drops whitespace-only lines and samples again; it
  also never makes a step of a blank line, since it splits on runs of newlines);
* `--require-before-end REGEX`: a candidate that ends (EOS, the stop string or
  the token limit) without its text matching ranks below every continuing
  candidate (the official code has no such rule: it ranks an ended beam by its
  language-model score and stops when the top beams have all ended).

`--step-score official` is the official code's score and selection
(`probekit.generate.official_score`, where they are transcribed and cited):
the path's geometric mean over its steps of c^w · (p^(1/len))^(1-w), p the
step's probability under the sampling distribution, c the model's own
confidence in the step (`--self-eval`, `probekit.generate.self_eval`), plus
`--q-weight` times the mean-φ cosine above; `--unique-candidates` and the
stochastic selection (`--bs-temperature` and its decay, `--reject-sample`,
`--unbiased`) choose the beams as the official `Beam.advance` does.

Every candidate token is decoded with the KV cache of its beam (beams are
expanded and selected by indexing the cache). A step drawn again is rewound in
place: its cache entries are masked out and its positions reused, so the new
draw continues exactly from its beam; before a row is fed again after a
rewind or after waiting for the others to end their step, its masked columns
are moved in front of its tokens (`kv_rows.close_gaps`), since a sliding
window counts columns. Every decoded token counts in
`tokens_generated`, those of redrawn steps included, so steering can be
compared with plain sampling and best-of-n at the same token budget.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from probekit.data.answers import get_parser, grade
from probekit.data.schema import Trajectory, write_trajectories
from probekit.errors import Interrupted
from probekit.extract.forward import STORE_DTYPES, cache_argument, capture_layers, checked_states, require_kv_attention
from probekit.extract.render import COMPLETION_IDS, prompt_ids, resolve_template
from probekit.generate import official_score
from probekit.generate.config import STEER_IGNORES, DecodeSettings, SteerConfig
from probekit.generate.kv_rows import close_gaps
from probekit.generate.sampling import sample_next, sequence_generator, token_logprob
from probekit.generate.self_eval import choice_ids, confidence, fill, read_prompt
from probekit.generate.stopping import check_context, eos_ids, hit_stop
from probekit.io import atomic_path, write_json
from probekit.models import dtype_name, load_model
from probekit.outputs import checkpoint_inputs, claim_output
from probekit.probe.checkpoint import check_model
from probekit.probe.scoring import Scorer
from probekit.progress import or_null


@dataclass
class Beam:
    tokens: list[int] = field(default_factory=list)
    q: float = float("-inf")  # Q of the last token (of the prompt, before any step)
    score: float = float("-inf")  # step score of the last step (--step-score), what it is ranked by
    done: bool = False  # ended with EOS, the stop string or max_new_tokens
    steps: int = 0
    empty: bool = False  # the last step was whitespace only and did not end the completion
    unmatched_end: bool = False  # ended without matching --require-before-end
    # --step-score official: the path's sums over its steps (of log p, tokens, log c, log step score)
    log_p: float = 0.0
    n_tokens: int = 0
    log_c: float = 0.0
    log_cp: float = 0.0

    def path_score(self) -> float:
        """The official score without its Q term: the geometric mean of the path's step scores."""
        return official_score.path_score(self.log_cp, self.steps)

    def rank(self) -> tuple:
        """Sort key, best first: endings without the required match last, then empty steps, then by score."""
        return (self.unmatched_end, self.empty, -self.score)


@dataclass
class SearchCounts:
    """What one prompt's search decoded."""

    tokens: int = 0  # every token fed to the model, redrawn steps' included
    resampled_steps: int = 0  # empty steps drawn again (--empty-steps resample)
    resampled_tokens: int = 0  # the tokens of those discarded draws


def _newline_ids(tokenizer) -> set[int]:
    """Tokens whose text contains a newline (a step boundary)."""
    return {i for i in range(len(tokenizer)) if "\n" in tokenizer.decode([i])}


@torch.inference_mode()
def steer_prompt(loaded, prompt_ids: list[int], scorer, goal: str, layer: int, gen: DecodeSettings, cfg: SteerConfig, seed_of,
                 newline: set[int], judge=None) -> tuple[list[Beam], SearchCounts]:
    """Beam search for one prompt; returns (final beams best first, what was decoded).

    `seed_of(step, row)` gives the generator of a candidate row, so a run is
    reproducible; `gen` holds the sampling settings (temperature, top_p, max_new_tokens, stop, dtype);
    `judge(texts)` gives the self-evaluation confidence of completions so far (--self-eval).
    """
    from transformers import DynamicCache

    model, device, tokenizer = loaded.model, loaded.device, loaded.tokenizer
    torch_dtype = STORE_DTYPES[gen.dtype][0]
    eos = set(eos_ids(loaded))
    eos_tensor = torch.tensor(sorted(eos), device=device, dtype=torch.long)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    pattern = cfg.end_pattern()
    step_len = cfg.step_tokens or cfg.max_step_tokens
    counts = SearchCounts()
    official = cfg.step_score == "official"
    with capture_layers(model, [layer]) as captured:

        def phi_now() -> np.ndarray:
            """φ of each row's latest state (rounded to the storage dtype, as a stored state would be)."""
            return scorer.phi(checked_states(captured[layer][:, -1], torch_dtype, "a steered sample", layer, gen.dtype))

        cache = DynamicCache()
        kv = {cache_argument(model): cache}
        ids = torch.tensor([prompt_ids], device=device)
        mask = torch.ones_like(ids)
        out = model(input_ids=ids, attention_mask=mask, position_ids=torch.arange(len(prompt_ids), device=device)[None], use_cache=True, **kv)
        logits, next_pos = out.logits[:, -1], torch.tensor([len(prompt_ids)], device=device)
        live: list[Beam] = [Beam(q=float(scorer.q_of(phi_now())[goal][0]))]  # beams whose rows are in the cache, in row order
        finished: list[Beam] = []
        step = 0
        while live:
            rows = torch.arange(len(live), device=device).repeat_interleave(cfg.candidates)
            cache.batch_select_indices(rows)
            mask, next_pos, logits = mask[rows], next_pos[rows], logits[rows]
            parents = [live[i // cfg.candidates] for i in range(len(rows))]
            cands = [Beam(list(b.tokens), q=b.q, score=b.score, steps=b.steps + 1, log_p=b.log_p, n_tokens=b.n_tokens, log_c=b.log_c,
                          log_cp=b.log_cp) for b in parents]
            gens = [seed_of(step, r) for r in range(len(rows))]
            start_pos, start_logits = next_pos.clone(), logits.clone()  # where a redrawn step restarts
            in_step = np.zeros(len(rows), np.int64)  # tokens of the current draw of each row's step
            tries = np.zeros(len(rows), np.int64)
            phi_sum = np.zeros((len(rows), scorer.model.rep_size), np.float64)
            step_logp = np.zeros(len(rows), np.float64)  # log p of the current draw of each row's step (--step-score official)
            active = np.ones(len(rows), bool)  # still inside this step
            while active.any():
                if step == 0 and eos:  # at least one token: an empty completion is not a trajectory
                    fresh = torch.from_numpy(in_step == 0).to(device)[:, None]
                    logits = torch.where(fresh, logits.index_fill(1, eos_tensor, float("-inf")), logits)
                tok = sample_next(logits, gens, gen.temperature, gen.top_p)
                for r in np.flatnonzero(active):
                    if int(tok[r]) in eos:
                        cands[r].done, active[r] = True, False
                if official:  # the step's text counts, not its EOS (the official code cuts the text at the stop token)
                    step_logp += np.where(active, token_logprob(logits, tok, gen.temperature, gen.top_p).cpu().numpy(), 0.0)
                feeding = torch.from_numpy(active.copy()).to(device)  # a copy: `active` changes below, these rows were fed
                tok = torch.where(feeding, tok, torch.full_like(tok, pad))
                mask = close_gaps(cache, mask, feeding)  # a row fed after waiting or a rewind: its tokens in contiguous columns
                mask = torch.cat([mask, feeding.long()[:, None]], dim=1)
                out = model(input_ids=tok[:, None], attention_mask=mask, position_ids=next_pos[:, None], use_cache=True, **kv)
                next_pos = next_pos + feeding.long()
                counts.tokens += int(active.sum())
                z = phi_now()
                q = scorer.q_of(z)[goal]
                redraw = []
                for r in np.flatnonzero(active):
                    c = cands[r]
                    c.tokens.append(int(tok[r]))
                    c.q = float(q[r])
                    in_step[r] += 1
                    phi_sum[r] += z[r]
                    if len(c.tokens) >= gen.max_new_tokens or hit_stop(tokenizer, c.tokens, gen.stop):
                        c.done, active[r] = True, False
                    elif (cfg.step_tokens == 0 and int(tok[r]) in newline) or in_step[r] == step_len:
                        active[r] = False
                        c.empty = cfg.empty_steps != "allow" and not tokenizer.decode(c.tokens[-in_step[r]:], skip_special_tokens=True).strip()
                        if c.empty and cfg.empty_steps == "resample" and tries[r] < cfg.max_resamples:
                            redraw.append(r)
                # rows that ended keep their logits from the forward that produced their last token
                logits = torch.where(feeding[:, None], out.logits[:, -1], logits)
                for r in redraw:  # rewind the row to its beam: the draw's cache entries are masked out, its positions reused
                    mask[r, mask.shape[1] - in_step[r]:] = 0  # fed at every iteration of its draw: the draw is its last columns
                    next_pos[r], logits[r] = start_pos[r], start_logits[r]
                    counts.resampled_steps += 1
                    counts.resampled_tokens += int(in_step[r])
                    del cands[r].tokens[-in_step[r]:]
                    cands[r].q, cands[r].empty = parents[r].q, False
                    in_step[r], phi_sum[r], step_logp[r] = 0, 0.0, 0.0
                    tries[r] += 1
                    active[r] = True
            span_q = scorer.q_of(phi_sum.astype(np.float32))[goal] if cfg.step_score in ("mean", "official") else None
            texts = [tokenizer.decode(c.tokens, skip_special_tokens=True) for c in cands]
            if official:
                _official_scores(cands, parents, in_step, step_logp, span_q, cfg, judge, texts)
            for r, c in enumerate(cands):
                if not official:
                    c.score = _step_score(cfg.step_score, c, parents[r], int(in_step[r]), span_q[r] if span_q is not None else None)
                if c.done and pattern is not None:
                    c.unmatched_end = pattern.search(texts[r]) is None
            pool = [(c, r) for r, c in enumerate(cands)] + [(b, -1) for b in finished]
            pool.sort(key=lambda cr: cr[0].rank())  # stable: earlier rows win ties
            pool_texts = [texts[r] if r >= 0 else tokenizer.decode(c.tokens, skip_special_tokens=True) for c, r in pool]
            chosen = [pool[i] for i in _select(pool, pool_texts, cfg, np.random.default_rng(seed_of(step, SELECTION_ROW).initial_seed()), step)]
            step += 1
            finished = [c for c, _ in chosen if c.done]
            if official:  # an ended beam is ranked in later steps without the Q term of its last step (official)
                for b in finished:
                    b.score = b.path_score()
            keep = [r for c, r in chosen if not c.done]
            live = [cands[r] for r in keep]
            if keep:
                sel = torch.tensor(keep, device=device)
                cache.batch_select_indices(sel)
                mask, next_pos, logits = mask[sel], next_pos[sel], logits[sel]
    return sorted(finished, key=Beam.rank), counts


SELECTION_ROW = 99_999  # the generator of a step's beam selection (--bs-temperature): a row no candidate uses


def _official_scores(cands: list[Beam], parents: list[Beam], in_step, step_logp, span_q, cfg: SteerConfig, judge, texts: list[str]) -> None:
    """Each candidate's path sums and score under --step-score official (see `probekit.generate.official_score`).

    A candidate that ended with no token (EOS first) adds no step: it keeps its beam's path score, without Q.
    """
    weight = cfg.confidence_weight()
    stepped = [r for r in range(len(cands)) if in_step[r] > 0]
    conf = np.ones(len(cands))
    if cfg.self_eval and stepped:
        conf[stepped] = judge([texts[r] for r in stepped])
    for r, c in enumerate(cands):
        if in_step[r] == 0:
            c.steps = parents[r].steps
            c.score = c.path_score()
            continue
        s = official_score.step_score(float(conf[r]), float(step_logp[r]), int(in_step[r]), weight)
        c.log_p += float(step_logp[r])
        c.n_tokens += int(in_step[r])
        c.log_c += math.log(max(float(conf[r]), 1e-300))
        c.log_cp += math.log(max(s, 1e-300))
        c.score = c.path_score() + cfg.q_weight * float(span_q[r])


def _select(pool: list[tuple[Beam, int]], texts: list[str], cfg: SteerConfig, rng: np.random.Generator, step: int) -> list[int]:
    """Indices into `pool` (sorted by `Beam.rank`, best first) of the beams kept: its first `beams`, or, with
    --unique-candidates, of its distinct texts, or with --bs-temperature drawn as the official code draws.

    With --bs-temperature the guards' penalised candidates (--empty-steps last, --require-before-end) are drawn only
    once no other is left: their weight is the floor.
    """
    groups = np.unique(texts, return_inverse=True)[1] if cfg.unique_candidates else None
    temperature = official_score.temperature_at(cfg.bs_temperature, cfg.bs_temperature_decay, step)
    if temperature < official_score.GREEDY_BELOW:
        return official_score.select(-np.arange(len(pool), dtype=np.float64), cfg.beams, groups=groups)  # the rank order
    beams = [b for b, _ in pool]
    weight = cfg.confidence_weight()
    lm = np.array([math.exp(b.log_p / max(1, b.n_tokens)) for b in beams])
    latest = np.array([math.exp(b.log_c) ** weight * p ** (1 - weight) for b, p in zip(beams, lm)])
    scores = np.array([-math.inf if (b.unmatched_end or b.empty) else b.score for b in beams])
    return official_score.select(scores, cfg.beams, groups=groups, temperature=temperature, latest=latest, lm_prob=lm,
                                 unbiased=cfg.unbiased, reject=cfg.reject_sample, min_score=cfg.bs_min_score, rng=rng)


def _step_score(kind: str, c: Beam, parent: Beam, n_tokens: int, span_q: float | None) -> float:
    """The score a candidate is ranked by (see the module docstring); a step with no token (EOS first) keeps its beam's."""
    if n_tokens == 0:
        return 0.0 if kind == "gain" else parent.score
    if kind == "last":
        return c.q
    if kind == "gain":
        return c.q - parent.q
    return float(span_q)


@dataclass
class SteerResult:
    out: object
    stats: dict
    trajectories: list


OUTPUTS = ("trajectories.jsonl", "steering.json")
JOURNAL = "prompts.partial.jsonl"  # in the staging area: one line per finished prompt, in order


def steer(prompts, out, gen, cfg: SteerConfig, ckpt, goals: dict | None = None, *, loaded=None, overwrite: bool = False,
          inputs: tuple = (), progress=None) -> SteerResult:
    """Steer every prompt; write trajectories.jsonl (each prompt's final beams, best first) and steering.json, as one set.

    `goals` adds prototypes beside the checkpoint's (e.g. from `probekit goal --from`), by name.
    Each finished prompt is written to the staging area as it finishes; an
    interrupted run's finished prompts are kept there, and a re-run with the
    same settings resumes after them (a prompt's search does not depend on the
    others, so the output is the one an uninterrupted run writes).
    """
    gen.validate()
    cfg.validate()
    all_goals = {**ckpt.goals, **(goals or {})}
    scorer = Scorer(ckpt.model, all_goals, kinds=[cfg.goal], where=ckpt.path)
    parse = get_parser(gen.answer)
    judge_prompt = read_prompt(cfg.self_eval_prompt) if cfg.self_eval else None
    with claim_output(out, "steer", OUTPUTS, overwrite=overwrite, inputs=(*inputs, *checkpoint_inputs(ckpt), cfg.self_eval_prompt),
                      resume=True) as out_dir:
        loaded = loaded or load_model(gen.model, device=gen.device, dtype=gen.model_dtype)
        require_kv_attention(loaded.model, "steer")
        template = resolve_template(gen.template, loaded.tokenizer)
        check_model(ckpt, loaded)
        if judge_prompt is not None:
            choice_ids(loaded.tokenizer)  # before any search: the choice letters must be single tokens
        contexts = [prompt_ids(loaded.tokenizer, p.prompt, template) for p in prompts]
        check_context(prompts, contexts, loaded, gen.max_new_tokens)
        layer = ckpt.single_layer("steer")
        key = _settings_key(prompts, gen, cfg, ckpt, all_goals[cfg.goal], loaded, template, judge_prompt)
        with out_dir.commit_set(last=("steering.json",), keep=True):
            done = _resume(out_dir.scratch(JOURNAL), prompts) if out_dir.resume_key(key) else []
            newline = _newline_ids(loaded.tokenizer) if cfg.step_tokens == 0 else set()
            task = or_null(progress).task("steer", len(prompts) - len(done), unit="prompts")
            try:
                with open(out_dir.scratch(JOURNAL), "a", encoding="utf-8") as journal:
                    for pi in range(len(done), len(prompts)):
                        done.append(_steer_one(pi, prompts[pi], contexts[pi], loaded, scorer, layer, gen, cfg, newline, parse, judge_prompt))
                        journal.write(json.dumps(done[-1], ensure_ascii=False) + "\n")
                        journal.flush()
                        task.advance(1)
            except KeyboardInterrupt as exc:
                raise Interrupted(f"{len(done)} of {len(prompts)} prompts were finished and are kept in {out_dir.staging}; re-running "
                                  f"the same command resumes after them ({out_dir.path} is unchanged until every prompt is done)") from exc
            finally:
                task.close()
            trajectories = [Trajectory(**rec) for entry in done for rec in entry["trajectories"]]
            write_trajectories(out_dir.file("trajectories.jsonl"), trajectories)
            best = [t for t in trajectories if t.meta["rank"] == 0]
            labels = [t.label for t in best if t.label is not None]
            stats = {"n_prompts": len(prompts), "tokens_generated": sum(e["tokens"] for e in done), "goal": cfg.goal, "layer": ckpt.layer,
                     "accuracy_best_beam": float(np.mean(labels)) if labels else None,
                     "mean_q_best_beam": float(np.mean([t.meta["q"] for t in best])),
                     "resampled_steps": sum(e["resampled_steps"] for e in done),
                     "tokens_in_resampled_steps": sum(e["resampled_tokens"] for e in done),
                     "n_best_ended_without_match": sum(e["unmatched"] for e in done) if cfg.require_before_end is not None else None,
                     "config": {**{k: getattr(cfg, k) for k in cfg.__dataclass_fields__}, **{k: getattr(gen, k) for k in gen.__dataclass_fields__ if k not in STEER_IGNORES}},
                     "checkpoint": str(ckpt.path)}
            write_json(out_dir.file("steering.json"), stats)
    return SteerResult(out_dir.path, stats, trajectories)


def _steer_one(pi: int, p, context: list[int], loaded, scorer, layer: int, gen, cfg: SteerConfig, newline: set[int], parse,
               judge_prompt: str | None) -> dict:
    """One prompt's search, as the journal line that records it (its trajectories and what it decoded)."""
    def seed_of(step: int, row: int) -> torch.Generator:
        return sequence_generator(gen.seed, pi, step * 100_000 + row)

    def judge(texts: list[str]) -> np.ndarray:
        return confidence(loaded, [fill(judge_prompt, p.prompt, t) for t in texts])

    beams, counts = steer_prompt(loaded, context, scorer, cfg.goal, layer, gen.decoding(), cfg,
                                 seed_of, newline, judge if judge_prompt is not None else None)
    records = []
    for rank, b in enumerate(beams):
        text = loaded.tokenizer.decode(b.tokens, skip_special_tokens=True)
        answer = parse(text)
        records.append(Trajectory(id=f"{p.id}-{rank}", group=p.id, prompt=p.prompt, completion=text,
                                  label=None if p.gold is None else grade(answer, p.gold), answer=answer,
                                  meta={"rank": rank, "q": b.q, "score": b.score, "steps": b.steps, COMPLETION_IDS: b.tokens,
                                        **({"path_score": b.path_score(), "lm_prob": math.exp(b.log_p / max(1, b.n_tokens)),
                                            "confidence": math.exp(b.log_c)} if cfg.step_score == "official" else {})}).to_record())
    return {"index": pi, "id": p.id, "tokens": counts.tokens, "resampled_steps": counts.resampled_steps,
            "resampled_tokens": counts.resampled_tokens, "unmatched": bool(beams and beams[0].unmatched_end), "trajectories": records}


def _resume(journal: Path, prompts) -> list[dict]:
    """The finished prompts an interrupted run recorded (in order, up to the first line cut short), the journal cut to them."""
    done: list[dict] = []
    try:
        with open(journal, encoding="utf-8") as fh:
            for line in fh:
                try:
                    entry = json.loads(line)
                except ValueError:
                    break
                k = len(done)
                if not isinstance(entry, dict) or entry.get("index") != k or k >= len(prompts) or entry.get("id") != prompts[k].id:
                    break
                done.append(entry)
    except FileNotFoundError:
        pass
    with atomic_path(journal) as tmp:
        tmp.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in done), encoding="utf-8")
    return done


def _settings_key(prompts, gen, cfg: SteerConfig, ckpt, goal: np.ndarray, loaded, template: str, judge_prompt: str | None) -> str:
    """What makes a steered output: the prompts, the settings read, the probe's weights and goal, the model; a re-run resumes only under the same."""
    h = hashlib.sha256()
    h.update(json.dumps({"prompts": [[p.id, p.prompt, p.gold] for p in prompts], "search": cfg.to_dict(),
                         "gen": {k: getattr(gen, k) for k in gen.__dataclass_fields__ if k not in STEER_IGNORES + ("device",)},
                         "model": [loaded.file_sha256 or str(loaded.source), dtype_name(loaded.dtype)], "template": template,
                        "self_eval_prompt": judge_prompt},
                        sort_keys=True, default=str).encode())
    for name, tensor in sorted(ckpt.model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    h.update(np.ascontiguousarray(goal, dtype=np.float32).tobytes())
    return h.hexdigest()
