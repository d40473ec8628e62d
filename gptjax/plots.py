"""Figures a person looks at: attention heatmaps (loss curves live with the ablation report)."""

from __future__ import annotations

import pathlib

import numpy as np


def attention_heatmaps(weights, labels, outdir, *, prefix="attention",
                       layers=None) -> list[pathlib.Path]:
    """One PNG per layer, a grid of its heads' [seq, seq] weights with tokens on the axes.

    weights: [layers, heads, seq, seq] (one sequence); labels: the seq tokens as text; layers:
    the model's numbers of those layers, for titles and file names (default 0, 1, ...).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    weights = np.asarray(weights)
    count, heads, seq, _ = weights.shape
    layers = list(range(count)) if layers is None else list(layers)
    outdir = pathlib.Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    cols = min(heads, 4)
    rows = -(-heads // cols)
    size = max(3.0, 0.22 * seq)
    paths = []
    for i, layer in enumerate(layers):
        fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows), squeeze=False)
        for h, ax in enumerate(axes.flat):
            if h >= heads:
                ax.axis("off")
                continue
            ax.imshow(weights[i, h], cmap="viridis", vmin=0.0, vmax=1.0)
            ax.set_title(f"layer {layer} head {h}", fontsize=9)
            if seq <= 48:
                ax.set_xticks(range(seq), labels, rotation=90, fontsize=6)
                ax.set_yticks(range(seq), labels, fontsize=6)
            ax.set_xlabel("key")
            ax.set_ylabel("query")
        fig.tight_layout()
        path = outdir / f"{prefix}_layer{layer:02d}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths
