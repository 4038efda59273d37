"""Speed and memory of SGMN against GRA only: one training step and one query clip's inference.

`sgmn bench` builds each variant from a shipped config at a given
batch and frame count, feeds it a synthetic batch of the real shapes (random pixels; timing does
not depend on the values), and writes one JSON per scale to `results/bench/`:

- train step: the median wall time of forward + backward + optimiser step over `--steps` steps
  after one warm-up step (the trainer's own optimiser, clip and loss), and the peak memory: CUDA's
  max_memory_allocated, or on CPU the peak resident set size of a fresh process per case
  (ru_maxrss, which includes the interpreter and libraries: `rss_before_mb` is that baseline);
- inference: milliseconds to encode one query clip (batch 1, L frames, Eq. 23's GRA with the
  text term where the variant has one) and one shop image, median over repeats;
- parameters: all, trainable, and those used at inference (GCI and SMF only shape training).

Every case is labelled with its frames and its precision:
- frames `all_real`: every clip has all L frames; `padded`: half the clips end 2 frames early
  (the padded frames are skipped by our encoder, so a padded step encodes fewer images and is
  not a like-for-like comparison with code that encodes the padding);
- precision `fp32`, `bf16`, or `auto` resolved by sgmn.models.device.resolve_precision.

Utilisation: the machine's own matmul peak is measured in the same run (a 2048^3 torch.mm in
fp32 and bf16 at the case's threads, median of repeats), and each case's FLOPs are counted
from the model's shapes by torch.utils.flop_counter.FlopCounterMode on one step: every matmul,
linear, convolution and attention product, forward and backward (2 FLOPs per multiply-add;
elementwise ops, norms, softmax and the optimiser are not counted, so the fraction is a lower
bound on the work done). `fraction_of_peak` is the counted FLOPs per second over the peak of
the case's precision. The CPU's capabilities (AVX-512, AVX-512 BF16, AMX) and the GPU name are
recorded with them.

Each case runs in its own spawned process, so one case's allocations do not inflate another's.
This is a measurement, not a test: nothing here asserts a time.

    sgmn bench --scale tiny --scale vitb32 --out results/bench
    sgmn bench --scale vitb32 --frames all_real --frames padded --precision fp32 --precision auto
"""
from __future__ import annotations

import multiprocessing as mp
import platform
import resource
import statistics
import time

from sgmn.config import VARIANTS_PATH, load_layered, resolve_variant
from sgmn.io import provenance

# scale -> (config applied on top of default.yaml, batch, frames): the two shapes
SCALES: dict[str, tuple[str | None, int | None, int | None]] = {
    "tiny": (None, None, None),            # the CPU default as trained: lpr-tiny-clip, 64 px
    "vitb32": ("lpr4m", 8, 10),            # the paper's encoder at batch 8, 10 frames, 224 px
}
VARIANTS = ("gra_only", "sgmn")
TEXT_DIM = {"lpr-tiny-clip": 128}          # the CLIP text tower's width; ChineseCLIP's is 512
GALLERY = 600                              # shop images per query: LPR4M's ~603 per live (all images)


def bench_config(scale: str, variant: str, device: str) -> dict:
    """The resolved config of `variant` at `scale`: what the DAG would train, at the bench shapes."""
    extra, batch, frames = SCALES[scale]
    overrides = {"train": {"processes": 1, "device": device, "num_workers": 0}}
    if batch:
        overrides["train"]["batch_size"] = batch
    if frames:
        overrides["model"] = {"num_frames": frames}
    config = load_layered(*([extra] if extra else []), overrides=overrides)
    return resolve_variant(config, variant, variants_path=VARIANTS_PATH)


FRAMES = ("all_real", "padded")


def synthetic_batch(config: dict, text_dim: int, device, generator, frames: str = "all_real"):
    """A training batch of the config's shapes; `padded`: half the clips end 2 frames early."""
    import torch
    b, l, s = config["train"]["batch_size"], config["model"]["num_frames"], config["model"]["image_size"]
    mask = torch.ones(b, l, dtype=torch.bool)
    if frames == "padded":
        mask[1::2, max(1, l - 2):] = False
    elif frames != "all_real":
        raise ValueError(f"bench frames {frames!r}: all_real or padded")
    return {
        "frames": torch.randn(b, l, 3, s, s, generator=generator).to(device),
        "frame_mask": mask.to(device),
        "image": torch.randn(b, 3, s, s, generator=generator).to(device),
        "product": torch.arange(b, device=device),
        "asr_feat": torch.randn(b, text_dim, generator=generator).to(device),
        "title_feat": torch.randn(b, text_dim, generator=generator).to(device),
        "asr_present": torch.ones(b, dtype=torch.bool, device=device),
        "title_present": torch.ones(b, dtype=torch.bool, device=device),
        # the intended product's box, as RICE_box's emulated detector gives it
        "target_box": torch.tensor([0.2, 0.15, 0.8, 0.9], device=device).expand(b, l, 4).clone(),
        "target_present": mask.clone().to(device),
    }


def _sync(device) -> None:
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_ms(fn, repeats: int, device) -> float:
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


def matmul_peak(dtype_name: str, device, n: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of an n^3 torch.mm in `dtype_name` (fp32 | bf16) on `device`: the machine's own
    peak for the matmuls that dominate a transformer step, at the current thread count."""
    import torch
    dtype = torch.float32 if dtype_name == "fp32" else torch.bfloat16
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=g).to(device, dtype) for _ in range(2))
    torch.mm(a, b)
    ms = _median_ms(lambda: torch.mm(a, b), repeats, device)
    return round(2 * n ** 3 / (ms / 1000) / 1e9, 1)


def count_flops(fn) -> int:
    """FLOPs of `fn()` counted from the shapes of its matmuls, convolutions and attention
    (torch.utils.flop_counter; forward and, if fn runs it, backward)."""
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def machine(device) -> dict:
    """What the case ran on: the CPU's name and bf16 capabilities, the GPU's name."""
    import torch

    from sgmn.models.device import cpu_capability
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            name = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), name)
    except OSError:
        pass
    return {"cpu": name, "cpu_capability": cpu_capability(), "cpu_count": mp.cpu_count(),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None}


def _param_counts(model) -> dict:
    """All, trainable, and used at inference (without the method's training-only submodules)."""
    def training_only(name: str) -> bool:
        return name.split(".")[0] in model.training_only
    return {"all": sum(p.numel() for p in model.parameters()),
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "inference": sum(p.numel() for n, p in model.named_parameters() if not training_only(n))}


def run_case(scale: str, variant: str, device_name: str, steps: int, repeats: int, threads: int,
             gallery: int = GALLERY, train: bool = True, frames: str = "all_real",
             precision: str | None = None) -> dict:
    """One (scale, variant, frames, precision): the train step (unless train=False), then
    inference, in this process. precision None: the config's own `train.precision`."""
    import torch

    from sgmn.models.device import autocast as precision_context, resolve_device, resolve_precision
    from sgmn.train.loop import optimise
    from sgmn.train.optim import build_optimizer
    from sgmn.models.factory import build_model

    torch.set_num_threads(threads)
    device = resolve_device(device_name)
    config = bench_config(scale, variant, device.type)
    t, m = config["train"], config["model"]
    requested = precision or t["precision"]
    text_dim = TEXT_DIM.get(m["clip"], 512)
    torch.manual_seed(0)
    model = build_model(config, "none", text_dim).to(device)
    model.hardest_negatives = t["triplet_warmup_steps"] == 0   # the loss the config trains with
    opt = build_optimizer(model, t["optimizer"], t["lr"], t["weight_decay"], t["clip_lr_scale"], t["freeze_stem"])
    params = [p for group in opt.param_groups for p in group["params"]]
    batch = synthetic_batch(config, text_dim, device, torch.Generator().manual_seed(0), frames)
    resolved, why = resolve_precision(requested, device, model)
    autocast = precision_context(resolved, device)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def train_step():
        with autocast:
            out = model(batch)
        optimise(out, opt, params, t["grad_clip"], step=0)
        return out

    def forward_backward():    # what the FLOP counter sees of a step (the optimiser is elementwise)
        with autocast:
            out = model(batch)
        sum(v for k, v in out.items() if k.endswith("_loss")).backward()
        opt.zero_grad(set_to_none=True)

    model.train()
    losses = sorted(k for k in train_step() if k.endswith("_loss")) if train else []  # warm-up step
    step_ms = _median_ms(train_step, steps, device) if train else None
    step_flops = count_flops(forward_backward) if train else None
    peak_mb = (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda"
               else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)

    model.eval()
    one = {k: v[:1] for k, v in batch.items()}
    with torch.no_grad(), autocast:
        query = lambda: model.encode_clip(one)    # noqa: E731
        image = lambda: model.encode_image(one)   # noqa: E731
        # Table 3's time per query: encode the clip, score it against a gallery encoded once
        images = torch.cat([image()] * gallery)
        per_query = lambda: model.score(query(), images)   # noqa: E731
        encoded = query()
        score = lambda: model.score(encoded, images)       # noqa: E731  (a pairwise network for AsymNet, SEAM)
        query(), image(), per_query(), score()                                     # warm-up
        query_flops = count_flops(query)
        query_ms, image_ms = _median_ms(query, repeats, device), _median_ms(image, repeats, device)
        per_query_ms, score_ms = _median_ms(per_query, repeats, device), _median_ms(score, repeats, device)
    from sgmn.models.device import cpu_capability
    has_bf16 = device.type == "cuda" or cpu_capability()["avx512_bf16"] or cpu_capability()["amx"]
    # without bf16 instructions a bf16 matmul is emulated: no peak to speak of
    peak = {"fp32": matmul_peak("fp32", device), "bf16": matmul_peak("bf16", device) if has_bf16 else None}
    rate = lambda flops, ms: None if not flops or not ms else round(flops / (ms / 1000) / 1e9, 1)  # noqa: E731
    share = lambda flops, ms: None if rate(flops, ms) is None or not peak[resolved] else round(  # noqa: E731
        rate(flops, ms) / peak[resolved], 3)
    return {
        "scale": scale, "variant": variant, "frames": frames, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine()),
        "threads": torch.get_num_threads(), "precision": resolved, "precision_requested": requested,
        "precision_reason": why,
        "real_frames": int(batch["frame_mask"].sum()),
        "matmul_peak_gflops": peak,
        "train_step_gflop": None if step_flops is None else round(step_flops / 1e9, 2),
        "train_gflops_per_s": rate(step_flops, step_ms),
        "train_fraction_of_peak": share(step_flops, step_ms),
        "query_clip_gflop": round(query_flops / 1e9, 3),
        "query_fraction_of_peak": share(query_flops, query_ms),
        "clip": m["clip"], "image_size": m["image_size"], "num_frames": m["num_frames"],
        "batch_size": t["batch_size"], "losses": losses, "steps_timed": steps,
        "train_step_ms": None if step_ms is None else round(step_ms, 2),
        "peak_memory_mb": round(peak_mb, 1), "peak_memory_kind": "cuda_max_allocated" if device.type == "cuda" else "cpu_max_rss",
        "rss_before_mb": round(rss_before, 1),
        "query_clip_ms": round(query_ms, 3), "shop_image_ms": round(image_ms, 3), "inference_repeats": repeats,
        "per_query_ms": round(per_query_ms, 3), "score_ms": round(score_ms, 3), "gallery": gallery,
        "parameters": _param_counts(model), "method": config["method"],
        "switches": config[config["method"]],
    }


def _case_in_child(queue, *args) -> None:
    try:
        queue.put(("ok", run_case(*args)))
    except BaseException as err:  # noqa: BLE001 - reported by the parent
        queue.put(("error", f"{type(err).__name__}: {err}"))


def run_isolated(*args) -> dict:
    """run_case in a fresh spawned process (its own peak RSS and allocator)."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_case_in_child, args=(queue, *args))
    proc.start()
    status, result = queue.get()
    proc.join()
    if status != "ok":
        raise RuntimeError(f"bench case {args[:3]} failed: {result}")
    return result


def method_variants(variants_path=VARIANTS_PATH, methods=None) -> list[str]:
    """One variant per registered method (Table 3's rows), or per method in `methods`: the
    variant named after the method, else the one reproducing a Table 1 row, else its first."""
    from sgmn.config import load_variants
    from sgmn.models.registry import method_names
    rows = load_variants(variants_path)
    unknown = set(methods or ()) - set(method_names())
    if unknown:
        raise ValueError(f"bench: unknown methods {sorted(unknown)}; registered: {', '.join(method_names())}")
    out = []
    for name in (m for m in method_names() if not methods or m in methods):
        mine = [v for v, r in rows.items() if (r.get("overrides") or {}).get("method", "sgmn") == name]
        table1 = [v for v in mine if any(int(p["table"]) == 1 for p in rows[v].get("paper") or [])]
        pick = name if name in mine else (table1 or mine or [None])[0]
        if pick is not None:
            out.append(pick)
    return out


def case_key(variant: str, frames: str, precision: str | None, settings: int) -> str:
    """A case's key in `cases`: the variant alone when one setting is benched."""
    return variant if settings == 1 else f"{variant}|{frames}|{precision or 'config'}"


def bench_scale(scale: str, device: str = "auto", steps: int = 5, repeats: int = 20, threads: int = 2,
                variants=VARIANTS, isolated: bool = True, gallery: int = GALLERY, train: bool = True,
                frames=("all_real",), precisions=(None,)) -> dict:
    """Every variant at every (frames, precision) setting; ratios within each setting, and the
    precision speed-ups (each precision's step and query time over fp32's) where fp32 is benched."""
    run = run_isolated if isolated else run_case
    settings = [(f, p) for f in frames for p in precisions]
    cases = {case_key(v, f, p, len(settings)): run(scale, v, device, steps, repeats, threads, gallery, train, f, p)
             for f, p in settings for v in variants}
    out = {"scale": scale, "cases": cases, "provenance": provenance(None, None)}
    first = next(iter(cases.values()))
    import torch
    out["machine"] = {**machine(torch.device(first["device"])), "matmul_peak_gflops": first["matmul_peak_gflops"]}
    ratios = {}
    for f, p in settings:
        key = lambda v: case_key(v, f, p, len(settings))  # noqa: E731
        if train and key("gra_only") in cases and key("sgmn") in cases:
            full, gra = cases[key("sgmn")], cases[key("gra_only")]
            ratios[f"{f}|{p or 'config'}"] = {
                "train_step": round(full["train_step_ms"] / gra["train_step_ms"], 3),
                "query_clip": round(full["query_clip_ms"] / gra["query_clip_ms"], 3),
                "peak_memory": round(full["peak_memory_mb"] / gra["peak_memory_mb"], 3),
            }
    if ratios:
        out["sgmn_over_gra"] = next(iter(ratios.values())) if len(ratios) == 1 else ratios
    if "fp32" in precisions and len(precisions) > 1:
        speedup = {}
        for v in variants:
            for f in frames:
                base = cases[case_key(v, f, "fp32", len(settings))]
                for p in precisions:
                    if p != "fp32":
                        c = cases[case_key(v, f, p, len(settings))]
                        speedup[f"{v}|{f}|{p}"] = {
                            "resolved": c["precision"],
                            "train_step": None if not train else round(base["train_step_ms"] / c["train_step_ms"], 3),
                            "query_clip": round(base["query_clip_ms"] / c["query_clip_ms"], 3)}
        out["speedup_over_fp32"] = speedup
    return out
