"""The mechanism probes' figures (rule probe_table, `snakemake probes`: each SGMN component on
and off along the phenomenon it targets, with a negative control) gathered into one figure for
the report; a probe whose figure does not exist yet is a "not run" panel."""
from __future__ import annotations

from pathlib import Path

from sgmn.figures.common import Written, not_run, pyplot, save


def plot_montage(figures: dict[str, Path], out_base: str | Path, title: str) -> Written:
    """One row per named PNG, in the given order (module docstring)."""
    plt = pyplot()
    n = max(1, len(figures))
    fig, axes = plt.subplots(n, 1, figsize=(11, 4.0 * n), squeeze=False, constrained_layout=True)
    missing = []
    for ax, (name, path) in zip(axes[:, 0], figures.items()):
        if Path(path).is_file():
            ax.imshow(plt.imread(path))
            ax.set_axis_off()
            ax.set_title(f"probe {name} ({path})", fontsize=9)
        else:
            not_run(ax, f"probe {name}", f"{path} does not exist: snakemake probes --cores all")
            missing.append(name)
    if not figures:
        not_run(axes[0, 0], title, "no probe configured")
        missing.append("all")
    fig.suptitle(title, fontsize=11)
    return Written(save(fig, out_base, dpi=120), not_run=missing)
