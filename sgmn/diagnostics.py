"""Why does a module help or not? What each SGMN loss does to the shared encoder.

GCI and SMF exist only in training: they can change retrieval only through the gradients their
losses send into the shared visual tower (and the text filter), which GRA then uses at inference
(Eq. 23). TMC changes the inference embedding directly, as a residual on the frame embeddings.
For a trained run this measures, on one seeded training batch (the batch of step 0, no frame
masking, dropout off):

- `grad_norm[loss][part]`: the norm of d loss / d parameters of each part (visual tower, text
  filter, TMC), at the run's initialisation (its CLIP + the modules' seeded init, exactly what
  the trainer built) and at its final weights; `grad_share` is each loss's visual-tower norm over
  the similarity loss's, and `visual_cos_similarity_loss` the cosine of the two visual-tower
  gradients (near 1: the loss only rescales the GRA triplet's push; near 0: it adds a direction);
- `tmc`: ||TMC(x) - x|| / ||x|| over the real frames (how far TMC moves the frame embeddings),
  and the mean cosine of each clip's pooled GRA embedding with and without TMC (what retrieval
  sees of that move);
- `losses`: each loss's first and last logged value (train_log.jsonl).

    sgmn diagnose --run results/lpr_synth/runs/sgmn/seed0 --data results/lpr_synth/data \
        --text-features results/lpr_synth/text --out results/lpr_synth/diagnostics.json
"""
from __future__ import annotations

import json
import logging
from pathlib import Path


log = logging.getLogger(__name__)
PARTS = {"visual": "visual.", "text_filter": "filters.", "tmc": "tmc."}


def _batch(config: dict, seed: int, data_dir, store):
    from sgmn.data.datasets import ClipPairDataset, collate, index_of, read_split
    from sgmn.train.loop import StepBatchSampler
    from sgmn.train.retrieval import add_text_features
    clips = read_split(data_dir, config["dataset"]["format"], "train", config["dataset"]["on_bad_line"],
                       index=index_of(config["dataset"]))
    dataset = ClipPairDataset(clips, config["model"]["num_frames"], config["model"]["image_size"],
                              config["dataset"]["on_bad_frame"])
    t = config["train"]
    indices = StepBatchSampler(len(dataset), t["batch_size"], seed, 0, 1).batch_for(0)
    return add_text_features(collate([dataset[i] for i in indices]), store, "cpu")


def _norm(grads) -> float:
    """Global L2 norm of a list of gradients (None: the loss does not reach that parameter)."""
    import torch
    grads = [g.float() for g in grads if g is not None]
    return float(torch.sqrt(sum((g ** 2).sum() for g in grads))) if grads else 0.0


def gradient_norms(model, batch: dict) -> dict[str, dict[str, float]]:
    """loss -> part -> ||d loss / d params of the part||, one backward pass per loss."""
    import torch
    model.eval()
    torch.manual_seed(0)  # distance-weighted sampling draws negatives
    out = model(batch)
    parts = {name: [p for n, p in model.named_parameters() if n.startswith(prefix) and p.requires_grad]
             for name, prefix in PARTS.items()}
    parts = {name: ps for name, ps in parts.items() if ps}
    norms, visual = {}, {}
    every = [p for ps in parts.values() for p in ps]
    for key in sorted(k for k in out if k.endswith("_loss")):
        grads = torch.autograd.grad(out[key], every, retain_graph=True, allow_unused=True)
        by_param = {id(p): g for p, g in zip(every, grads)}
        norms[key] = {name: _norm([by_param[id(p)] for p in ps]) for name, ps in parts.items()}
        norms[key]["value"] = float(out[key].detach())
        visual[key] = torch.cat([(by_param[id(p)] if by_param[id(p)] is not None else torch.zeros_like(p))
                                 .flatten().double() for p in parts["visual"]])
    # does a loss push the encoder somewhere the GRA triplet does not? cos 1: only a rescaling
    ref = visual.get("similarity_loss")
    for key, g in visual.items():
        cos = torch.nn.functional.cosine_similarity(g, ref, dim=0) if ref is not None and g.any() else None
        norms[key]["visual_cos_similarity_loss"] = None if cos is None else float(cos)
    return norms


def tmc_effect(model, batch: dict) -> dict | None:
    """How far TMC moves the frame embeddings (``residual`` = ||TMC(x) - x|| / ||x|| over real
    frames) and what is left of that after GRA's normalise-and-pool (``pooled_cos``: mean cosine
    of each clip's pooled embedding with and without TMC; 1 = retrieval sees no change).
    None without TMC."""
    import torch

    from sgmn.models.tmc import compact_frames
    if model.tmc is None:
        return None
    model.eval()
    with torch.no_grad():
        mask, frames = compact_frames(batch["frame_mask"], batch["frames"])
        x = model.encode_frames(frames, mask)[0]
        y = model.tmc(x, mask)
        return {"residual": float((y - x)[mask].norm() / x[mask].norm()),
                "pooled_cos": float((model.pool_frames(x, mask)[1] * model.pool_frames(y, mask)[1]).sum(-1).mean())}


def logged_losses(run_dir: Path) -> dict[str, dict[str, float]]:
    path = run_dir / "train_log.jsonl"
    if not path.exists():
        return {}
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    keys = sorted({k for r in records for k in r if k.endswith("_loss")})
    return {k: {"first": next(r[k] for r in records if k in r), "last": next(r[k] for r in reversed(records) if k in r),
                "first_step": next(r["step"] for r in records if k in r), "last_step": records[-1]["step"]}
            for k in keys}


def _shares(norms: dict) -> dict[str, float]:
    base = norms.get("similarity_loss", {}).get("visual") or float("nan")
    return {k: v["visual"] / base for k, v in norms.items() if "visual" in v}


def diagnose_run(run_dir, data_dir, text_features=None, clip_weights=None) -> dict:
    import torch

    from sgmn.text.features import TextFeatures
    from sgmn.config import uses_text
    from sgmn.models.factory import build_model, load_model
    run_dir = Path(run_dir)
    final, state = load_model(run_dir / "final.pt")
    config, seed = state["config"], state["seed"]
    params = json.loads((run_dir / "params.json").read_text()) if (run_dir / "params.json").exists() else {}
    clip_weights = clip_weights or params.get("clip_weights", "none")
    store = TextFeatures.load(text_features) if uses_text(config) else None
    torch.manual_seed(seed)  # as train_run: the modules' init is drawn after this seed
    init = build_model(config, clip_weights, store.dim if store else None)
    batch = _batch(config, seed, data_dir, store)
    result = {"run": str(run_dir), "variant": config.get("variant"), "seed": seed,
              "losses": logged_losses(run_dir)}
    t = config["train"]
    for name, model, step in (("init", init, 0), ("final", final, t["steps"] - 1)):
        model.hardest_negatives = step >= t["triplet_warmup_steps"]   # the loss of that step
        norms = gradient_norms(model, batch)
        result[name] = {"grad_norm": norms, "grad_share": _shares(norms), "tmc": tmc_effect(model, batch)}
    return result
