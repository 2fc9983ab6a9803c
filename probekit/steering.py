"""Q-guided decoding: steer generation toward a goal state with a step-wise beam search.

Following the paper's decoding (the official `decoding/` code: a step is one
line; each beam samples a few one-step continuations; candidates are scored
with the reward model's representation against the goal state; the best
`beam_size` survive), probekit scores a candidate by the Q-value of its last
token in context, i.e. the cosine of φ(state) to the chosen goal prototype,
through the one scorer. With `beams=1` this is best-of-k per step.

Every candidate token is decoded with the KV cache of its beam (beams are
expanded and selected by indexing the cache), and every decoded token counts
in `tokens_generated`, so steering can be compared with plain sampling and
best-of-n at the same token budget.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from probekit.config import option
from probekit.errors import ProbekitError


@dataclass(frozen=True)
class SteerConfig:
    """The search; sampling, model and template come from a `GenerateConfig`."""

    beams: int = option(4, "Beams kept per prompt after each step (1 = best-of-k per step).")
    candidates: int = option(4, "Continuations sampled from each beam at each step.")
    step_tokens: int = option(0, "Step length in tokens; 0 = a step ends at a newline (the official code's line steps).")
    max_step_tokens: int = option(32, "A newline step is cut after this many tokens.")
    goal: str = option("mean", "Goal prototype the Q-value points at: mean, kmeans, or a name added with `probekit goal`.")

    def validate(self) -> None:
        if self.beams < 1 or self.candidates < 1 or self.max_step_tokens < 1 or self.step_tokens < 0:
            raise ProbekitError("--beams, --candidates and --max-step-tokens must be at least 1, --step-tokens at least 0")


@dataclass
class Beam:
    tokens: list[int] = field(default_factory=list)
    q: float = float("-inf")  # Q of the last token of the last step
    done: bool = False  # ended with EOS or reached max_new_tokens
    steps: int = 0


def _newline_ids(tokenizer) -> set[int]:
    """Tokens whose text contains a newline (a step boundary)."""
    return {i for i in range(len(tokenizer)) if "\n" in tokenizer.decode([i])}


@torch.inference_mode()
def steer_prompt(loaded, prompt_ids: list[int], scorer, goal: str, layer: int, gen, cfg: SteerConfig, seed_of, newline: set[int]) -> tuple[list[Beam], int]:
    """Beam search for one prompt; returns (final beams best first, tokens decoded).

    `seed_of(step, row)` gives the generator of a candidate row, so a run is
    reproducible; `gen` is the GenerateConfig (temperature, top_p, max_new_tokens, dtype).
    """
    from transformers import DynamicCache

    from probekit.extract.forward import capture_layers
    from probekit.extract.run import checked_states
    from probekit.generation import STORE_DTYPES, _cache_argument, _eos_ids, hit_stop
    from probekit.sampling import sample_next

    model, device = loaded.model, loaded.device
    torch_dtype = STORE_DTYPES[gen.dtype][0]
    eos = set(_eos_ids(loaded))
    pad = loaded.tokenizer.pad_token_id if loaded.tokenizer.pad_token_id is not None else 0
    fed = 0
    with capture_layers(model, [layer]) as captured:
        cache = DynamicCache()
        kv = {_cache_argument(model): cache}
        ids = torch.tensor([prompt_ids], device=device)
        mask = torch.ones_like(ids)
        out = model(input_ids=ids, attention_mask=mask, position_ids=torch.arange(len(prompt_ids), device=device)[None], use_cache=True, **kv)
        logits, next_pos = out.logits[:, -1], torch.tensor([len(prompt_ids)], device=device)
        live: list[Beam] = [Beam()]  # beams whose rows are in the cache, in row order
        finished: list[Beam] = []
        step = 0
        while live:
            rows = torch.arange(len(live), device=device).repeat_interleave(cfg.candidates)
            cache.batch_select_indices(rows)
            mask, next_pos, logits = mask[rows], next_pos[rows], logits[rows]
            parents = [live[i // cfg.candidates] for i in range(len(rows))]
            cands = [Beam(list(b.tokens), q=b.q, steps=b.steps + 1) for b in parents]
            gens = [seed_of(step, r) for r in range(len(rows))]
            active = np.ones(len(rows), bool)  # still inside this step
            step_len = cfg.step_tokens or cfg.max_step_tokens
            for t in range(step_len):
                if step == 0 and t == 0 and eos:  # at least one token: an empty completion is not a trajectory
                    logits = logits.index_fill(1, torch.tensor(sorted(eos), device=device), float("-inf"))
                tok = sample_next(logits, gens, gen.temperature, gen.top_p)
                for r in np.flatnonzero(active):
                    if int(tok[r]) in eos:
                        cands[r].done, active[r] = True, False
                feeding = torch.from_numpy(active).to(device)
                tok = torch.where(feeding, tok, torch.full_like(tok, pad))
                mask = torch.cat([mask, feeding.long()[:, None]], dim=1)
                out = model(input_ids=tok[:, None], attention_mask=mask, position_ids=next_pos[:, None], use_cache=True, **kv)
                next_pos = next_pos + feeding.long()
                fed += int(active.sum())
                states = checked_states(captured[layer][:, -1], torch_dtype, "a steered sample", layer, gen.dtype)
                q = scorer.q_values(states)[goal]
                for r in np.flatnonzero(active):
                    cands[r].tokens.append(int(tok[r]))
                    cands[r].q = float(q[r])
                    if len(cands[r].tokens) >= gen.max_new_tokens or hit_stop(loaded.tokenizer, cands[r].tokens, gen.stop):
                        cands[r].done, active[r] = True, False
                    elif (cfg.step_tokens == 0 and int(tok[r]) in newline) or t == step_len - 1:
                        active[r] = False
                # rows that ended keep their logits from the forward that produced their last token
                logits = torch.where(feeding[:, None], out.logits[:, -1], logits)
                if not active.any():
                    break
            step += 1
            pool = [(c, r) for r, c in enumerate(cands)] + [(b, -1) for b in finished]
            pool.sort(key=lambda cr: -cr[0].q)  # stable: earlier rows win ties
            chosen = pool[:cfg.beams]
            finished = [c for c, _ in chosen if c.done]
            keep = [r for c, r in chosen if not c.done]
            live = [cands[r] for r in keep]
            if keep:
                sel = torch.tensor(keep, device=device)
                cache.batch_select_indices(sel)
                mask, next_pos, logits = mask[sel], next_pos[sel], logits[sel]
    return sorted(finished, key=lambda b: -b.q), fed


@dataclass
class SteerResult:
    out: object
    stats: dict
    trajectories: list


def steer(prompts, out, gen, cfg: SteerConfig, ckpt, goals: dict | None = None, *, loaded=None, overwrite: bool = False,
          inputs: tuple = (), progress=None) -> SteerResult:
    """Steer every prompt; write trajectories.jsonl (each prompt's final beams, best first) and steering.json.

    `goals` adds prototypes beside the checkpoint's (e.g. from `probekit goal --from`), by name.
    """
    from probekit.data.answers import get_parser, grade
    from probekit.data.schema import Trajectory, write_trajectories
    from probekit.extract.render import COMPLETION_IDS, prompt_ids, resolve_template
    from probekit.io import write_json
    from probekit.models import load_model
    from probekit.outputs import claim_output
    from probekit.progress import or_null
    from probekit.sampling import sequence_generator
    from probekit.scoring import Scorer

    gen.validate()
    cfg.validate()
    all_goals = {**ckpt.goals, **(goals or {})}
    scorer = Scorer(ckpt.model, all_goals, kinds=[cfg.goal], where=ckpt.path)
    parse = get_parser(gen.answer)
    out_dir = claim_output(out, "steer", ("trajectories.jsonl", "steering.json"), overwrite=overwrite, inputs=inputs)
    loaded = loaded or load_model(gen.model, device=gen.device, dtype=gen.model_dtype)
    template = resolve_template(gen.template, loaded.tokenizer)
    newline = _newline_ids(loaded.tokenizer) if cfg.step_tokens == 0 else set()
    trajectories, fed_total = [], 0
    task = or_null(progress).task("steer", len(prompts), unit="prompts")
    try:
        for pi, p in enumerate(prompts):
            def seed_of(step: int, row: int, pi: int = pi) -> torch.Generator:
                return sequence_generator(gen.seed, pi, step * 100_000 + row)

            beams, fed = steer_prompt(loaded, prompt_ids(loaded.tokenizer, p.prompt, template), scorer, cfg.goal, ckpt.single_layer("steer"), gen, cfg,
                                      seed_of, newline)
            fed_total += fed
            for rank, b in enumerate(beams):
                text = loaded.tokenizer.decode(b.tokens, skip_special_tokens=True)
                answer = parse(text)
                trajectories.append(Trajectory(id=f"{p.id}-{rank}", group=p.id, prompt=p.prompt, completion=text,
                                               label=None if p.gold is None else grade(answer, p.gold), answer=answer,
                                               meta={"rank": rank, "q": b.q, "steps": b.steps, COMPLETION_IDS: b.tokens}))
            task.advance(1)
    finally:
        task.close()
    write_trajectories(out_dir.file("trajectories.jsonl"), trajectories)
    best = [t for t in trajectories if t.meta["rank"] == 0]
    labels = [t.label for t in best if t.label is not None]
    stats = {"n_prompts": len(prompts), "tokens_generated": int(fed_total), "goal": cfg.goal, "layer": ckpt.layer,
             "accuracy_best_beam": float(np.mean(labels)) if labels else None, "mean_q_best_beam": float(np.mean([t.meta["q"] for t in best])),
             "config": {**{k: getattr(cfg, k) for k in cfg.__dataclass_fields__}, **{k: getattr(gen, k) for k in gen.__dataclass_fields__}},
             "checkpoint": str(ckpt.path)}
    write_json(out_dir.file("steering.json"), stats)
    return SteerResult(out_dir.path, stats, trajectories)
