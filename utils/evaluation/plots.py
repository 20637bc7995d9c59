"""Figures the notebooks show. Each function draws on a new matplotlib figure and returns it."""

from __future__ import annotations

import numpy as np


def _landmarks(ax, points, size: int, **style) -> None:
    """Landmarks over a ``size``-pixel face, the axes kept to the face (points off it are cut, not drawn around)."""
    ax.scatter(*np.asarray(points).T, linewidths=0, **style)
    ax.set_xlim(-0.5, size - 0.5)
    ax.set_ylim(size - 0.5, -0.5)


def _plt():
    import matplotlib.pyplot as plt

    return plt


def face_grid(
    prepared, per_class: int = 4, seed: int = 0, split: str | None = None, show=("landmarks", "heatmap", "centre")
):
    """Faces per class (rows), each with its landmarks and, beside it, its heatmap channels.

    Args:
        prepared: a :class:`~utils.data.faces.PreparedFaces`.
        per_class: faces shown per class.
        show: what to draw per face besides the image: ``landmarks`` (points on the face), ``heatmap``
            (the landmark heatmap), ``centre`` (the seed's centred heatmap, the same for every face).
    """
    plt = _plt()
    rng = np.random.default_rng(seed)
    rows = np.arange(len(prepared)) if split is None else prepared.split_indices(split)
    panels = 1 + ("heatmap" in show) + ("centre" in show)
    classes = [k for k in range(prepared.num_classes) if (prepared.labels[rows] == k).any()]
    fig, axes = plt.subplots(
        len(classes), per_class * panels, figsize=(1.1 * per_class * panels, 1.25 * len(classes)), squeeze=False
    )
    centre = prepared.heatmap("centre")[0]
    for r, k in enumerate(classes):
        candidates = rows[prepared.labels[rows] == k]
        chosen = rng.choice(candidates, size=min(per_class, len(candidates)), replace=False)
        for c in range(per_class):
            for j in range(panels):
                axes[r, c * panels + j].axis("off")
            if c >= len(chosen):
                continue
            i = chosen[c]
            ax = axes[r, c * panels]
            ax.imshow(prepared.images[i], cmap="gray", vmin=0, vmax=255)
            if "landmarks" in show and np.isfinite(prepared.landmarks[i]).all():
                color = "lime" if prepared.face_found[i] else "orange"
                _landmarks(ax, prepared.landmarks[i], len(prepared.images[i]), s=1.5, c=color)
            if c == 0:
                ax.set_title(prepared.classes[k], fontsize=8, loc="left")
            j = 1
            if "heatmap" in show:
                axes[r, c * panels + j].imshow(prepared.heatmaps[i], cmap="magma", vmin=0, vmax=255)
                j += 1
            if "centre" in show:
                axes[r, c * panels + j].imshow(centre, cmap="magma", vmin=0, vmax=255)
    fig.suptitle(
        "face | landmark heatmap | centred heatmap (identical for every face)\n"
        "landmarks: green = face detected, orange = not detected (predicted in the default box)",
        fontsize=8,
    )
    fig.tight_layout()
    return fig


def mean_heatmaps(prepared, split: str | None = "train"):
    """Per class: the mean landmark heatmap (top) and its difference from the all-class mean (bottom).

    The differences show where expressions move landmarks on average: an open mouth for surprise and
    fear, raised mouth corners for happiness, lowered brows for anger.
    """
    plt = _plt()
    rows = np.arange(len(prepared)) if split is None else prepared.split_indices(split)
    heat = prepared.heatmaps[rows].astype(np.float32) / 255
    labels = prepared.labels[rows]
    classes = [k for k in range(prepared.num_classes) if (labels == k).any()]
    overall = heat.mean(axis=0)
    means = [heat[labels == k].mean(axis=0) for k in classes]
    limit = max(float(np.abs(m - overall).max()) for m in means) or 1.0
    fig, axes = plt.subplots(2, len(classes), figsize=(1.4 * len(classes), 3.1), squeeze=False)
    for j, (k, m) in enumerate(zip(classes, means)):
        axes[0, j].imshow(m, cmap="magma", vmin=0, vmax=1)
        axes[0, j].set_title(f"{prepared.classes[k]}\n({int((labels == k).sum())})", fontsize=8)
        axes[1, j].imshow(m - overall, cmap="coolwarm", vmin=-limit, vmax=limit)
        axes[0, j].axis("off")
        axes[1, j].axis("off")
    axes[0, 0].text(-4, prepared.images.shape[1] / 2, "mean", rotation=90, va="center", ha="right", fontsize=8)
    axes[1, 0].text(-4, prepared.images.shape[1] / 2, "minus all", rotation=90, va="center", ha="right", fontsize=8)
    fig.suptitle("landmark heatmaps per expression: mean, and difference from the mean of all (red = more)", fontsize=9)
    fig.tight_layout()
    return fig


def class_distribution(counts: dict, title: str = "images per class and split"):
    """Bar chart of ``{split: {class: count}}`` (what :meth:`FaceDataset.counts` returns)."""
    plt = _plt()
    splits = list(counts)
    classes = list(next(iter(counts.values())))
    fig, ax = plt.subplots(figsize=(7, 3))
    width = 0.8 / len(splits)
    x = np.arange(len(classes))
    for s, split in enumerate(splits):
        values = [counts[split][c] for c in classes]
        total = max(1, sum(values))
        bars = ax.bar(x + s * width, values, width, label=f"{split} ({total})")
        for bar, v in zip(bars, values):
            ax.annotate(
                f"{100 * v / total:.0f}%", (bar.get_x() + bar.get_width() / 2, v), ha="center", va="bottom", fontsize=6
            )
    ax.set_xticks(x + width * (len(splits) - 1) / 2, classes)
    ax.set_ylabel("images")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def training_curves(history: list[dict], title: str = ""):
    """Loss and validation score per epoch from a run's history (``log.csv`` rows)."""
    plt = _plt()
    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3))
    for key in [k for k in history[0] if k.endswith("loss")]:
        axes[0].plot(epochs, [h.get(key, np.nan) for h in history], label=key)
    axes[0].set_xlabel("epoch")
    axes[0].set_title("loss")
    axes[0].legend(fontsize=8)
    for key in [k for k in history[0] if k.startswith(("val_", "train_acc")) and not k.endswith("loss")]:
        if key == "val_score":
            continue
        axes[1].plot(epochs, [h.get(key, np.nan) for h in history], label=key)
    axes[1].set_xlabel("epoch")
    axes[1].set_title("accuracy")
    axes[1].legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def confusion_matrix(metrics: dict, title: str = "", normalised: bool = True, ax=None):
    """Heatmap of a confusion matrix from :func:`~utils.evaluation.metrics.classification_metrics`."""
    import seaborn as sns

    plt = _plt()
    matrix = np.array(metrics["confusion_normalised" if normalised else "confusion"])
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(4.2, 3.6))
    sns.heatmap(
        matrix,
        annot=True,
        fmt=".2f" if normalised else "d",
        cmap="Blues",
        xticklabels=metrics["classes"],
        yticklabels=metrics["classes"],
        cbar=False,
        ax=ax,
        annot_kws={"fontsize": 7},
        vmin=0,
        vmax=1 if normalised else None,
    )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or f"accuracy {metrics['accuracy']:.3f}, macro-F1 {metrics['macro_f1']:.3f}", fontsize=9)
    if fig is not None:
        fig.tight_layout()
    return fig or ax.figure


def embedding_tsne(features, labels, classes, title: str = "", seed: int = 0, max_points: int = 3000):
    """A 2-D t-SNE of ``features`` (first reduced to 50 dimensions by PCA), coloured by expression."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    plt = _plt()
    features = np.asarray(features, dtype=np.float32)
    labels = np.asarray(labels)
    if len(features) > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(len(features), max_points, replace=False))
        features, labels = features[keep], labels[keep]
    features = (features - features.mean(0)) / (features.std(0) + 1e-6)
    if features.shape[1] > 50:
        features = PCA(50, random_state=seed).fit_transform(features)
    perplexity = min(30.0, max(5.0, (len(features) - 1) / 3))
    points = TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(features)
    fig, ax = plt.subplots(figsize=(5.2, 4.4))
    palette = plt.get_cmap("tab10")
    for k, name in enumerate(classes):
        mask = labels == k
        if mask.any():
            ax.scatter(*points[mask].T, s=4, color=palette(k), label=f"{name} ({int(mask.sum())})", alpha=0.7)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=7, markerscale=3, loc="best")
    ax.set_title(title or "t-SNE of the embeddings", fontsize=9)
    fig.tight_layout()
    return fig


def neighbour_grid(images, labels, neighbours, queries, classes, heatmaps=None, title: str = ""):
    """Each row: a query face, then its nearest neighbours (titles: expression; green = same as the query).

    Args:
        images: ``(N, S, S)`` faces; ``labels`` their classes; ``neighbours`` ``(N, k)`` indices into them.
        queries: which rows to show.
        heatmaps: when given, the query's heatmap is shown after the face.
    """
    plt = _plt()
    k = neighbours.shape[1]
    extra = 1 if heatmaps is not None else 0
    fig, axes = plt.subplots(
        len(queries), 1 + extra + k, figsize=(1.15 * (1 + extra + k), 1.3 * len(queries)), squeeze=False
    )
    for r, q in enumerate(queries):
        axes[r, 0].imshow(images[q], cmap="gray", vmin=0, vmax=255)
        axes[r, 0].set_title(f"query: {classes[labels[q]]}", fontsize=7, color="black")
        if heatmaps is not None:
            axes[r, 1].imshow(heatmaps[q], cmap="magma", vmin=0, vmax=255)
            axes[r, 1].set_title("its heatmap", fontsize=7)
        for j, n in enumerate(neighbours[q]):
            ax = axes[r, 1 + extra + j]
            ax.imshow(images[n], cmap="gray", vmin=0, vmax=255)
            same = labels[n] == labels[q]
            ax.set_title(classes[labels[n]], fontsize=7, color="green" if same else "red")
        for ax in axes[r]:
            ax.axis("off")
    fig.suptitle(title or "queries and their nearest neighbours (green: same expression)", fontsize=9)
    fig.tight_layout()
    return fig


FLOOR_METHODS = ("random-init", "raw-pixels")


def budget_curve(table, protocol: str = "linear", title: str = ""):
    """Probe accuracy against pretraining time, from :func:`~utils.evaluation.tables.probe_table`.

    One series per method and variant: every run as a dot (seeds side by side), a line through the mean
    of the runs that differ only in their seed (one point per budget). The floors (random weights, raw pixels) are horizontal lines.
    """
    plt = _plt()
    column = f"{protocol}_accuracy"
    if column not in table.columns:
        raise ValueError(f"no {protocol!r} evaluations in the table (columns: {list(table.columns)})")
    table = table.dropna(subset=[column])
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    floors = table[table["method"].isin(FLOOR_METHODS)]
    runs = table[~table["method"].isin(FLOOR_METHODS)]
    for i, ((method, variant), group) in enumerate(runs.groupby(["method", "variant"], sort=True)):
        color = f"C{i}"
        label = f"{method} ({variant})" if variant else method
        ax.scatter(group["pretrain_minutes"], group[column], color=color, s=18, alpha=0.6)
        # one point per setting: the mean of the runs that differ only in their seed
        means = group.groupby("setting")[[column, "pretrain_minutes"]].mean().sort_values("pretrain_minutes")
        ax.plot(means["pretrain_minutes"], means[column], "-o", color=color, markersize=4, label=label)
    for j, (method, group) in enumerate(floors.groupby("method", sort=True)):
        value = group[column].mean()
        ax.axhline(value, color="0.35", linestyle=("--", ":")[j % 2], linewidth=1, label=f"floor: {method}")
    ax.set_xlabel("pretraining time (minutes)")
    name = {"knn": "kNN"}.get(protocol, protocol)
    ax.set_ylabel(f"{name} accuracy")
    ax.set_xlim(0, 1.08 * max(1.0, float(runs["pretrain_minutes"].max()) if len(runs) else 1.0))
    ax.yaxis.set_major_formatter(plt.matplotlib.ticker.PercentFormatter(1.0, decimals=1))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    ax.set_title(title or f"{name} probe accuracy against pretraining time (dots: single runs)", fontsize=9)
    fig.tight_layout()
    return fig


def region_overlays(images, heatmaps, landmarks=None, column_titles=None, title: str = "", vmax: float = 4.0):
    """Each row a face: the face (with its landmarks), then every region query's heatmap over it.

    The colour is a heatmap's density relative to a uniform map over the face, on one scale for every panel
    (0 to ``vmax``; a uniform map is 1 everywhere), so a flat heatmap looks flat and a region detector
    shows as a bright spot.

    Args:
        images: ``(N, S, S)`` grey faces.
        heatmaps: ``(N, Q, h, w)`` each query's heatmap (non-negative), resized to the face.
        landmarks: ``(N, 68, 2)`` drawn on the first column when given.
        column_titles: one title per query (e.g. the landmark group it concentrates on).
    """
    import torch
    import torch.nn.functional as F

    plt = _plt()
    n, q = heatmaps.shape[:2]
    size = images.shape[1]
    heat = F.interpolate(torch.as_tensor(heatmaps, dtype=torch.float32), size=(size, size), mode="bilinear")
    heat = heat.clamp_min(0)
    density = (heat / heat.sum(dim=(2, 3), keepdim=True).clamp_min(1e-12) * size * size).numpy()  # uniform: 1
    fig, axes = plt.subplots(n, q + 1, figsize=(1.05 * (q + 1), 1.1 * n + 0.6), squeeze=False)
    shown = None
    for r in range(n):
        axes[r, 0].imshow(images[r], cmap="gray", vmin=0, vmax=255)
        if landmarks is not None and np.isfinite(landmarks[r]).all():
            _landmarks(axes[r, 0], landmarks[r], size, s=1, c="lime")
        for j in range(q):
            ax = axes[r, j + 1]
            ax.imshow(images[r], cmap="gray", vmin=0, vmax=255)
            shown = ax.imshow(density[r, j], cmap="inferno", alpha=0.6, vmin=0, vmax=vmax)
            if r == 0:
                ax.set_title(column_titles[j] if column_titles else f"query {j}", fontsize=6)
        for ax in axes[r]:
            ax.axis("off")
    axes[0, 0].set_title("face", fontsize=6)
    fig.suptitle(title or "each region query's heatmap", fontsize=8)
    fig.tight_layout()
    if shown is not None:
        bar = fig.colorbar(shown, ax=axes, shrink=0.5, pad=0.01)
        bar.set_label("density / uniform", fontsize=6)
        bar.ax.tick_params(labelsize=6)
    return fig


def region_partition(images, partition, landmarks=None, legend=None, title: str = ""):
    """Faces with the region each position belongs to (the query that wins it), one colour per query.

    Args:
        images: ``(N, S, S)`` grey faces.
        partition: ``(N, h, w)`` int, the winning query per position (resized to the face, nearest).
        legend: one label per query.
    """
    import torch
    import torch.nn.functional as F

    plt = _plt()
    n = len(images)
    size = images.shape[1]
    queries = int(partition.max()) + 1 if legend is None else len(legend)
    up = F.interpolate(torch.as_tensor(partition)[:, None].float(), size=(size, size), mode="nearest")[:, 0].numpy()
    cmap = plt.get_cmap("tab10", max(queries, 2))
    fig, axes = plt.subplots(2, n, figsize=(1.3 * n, 3.0), squeeze=False)
    for i in range(n):
        axes[0, i].imshow(images[i], cmap="gray", vmin=0, vmax=255)
        if landmarks is not None and np.isfinite(landmarks[i]).all():
            _landmarks(axes[0, i], landmarks[i], size, s=1, c="lime")
        axes[1, i].imshow(images[i], cmap="gray", vmin=0, vmax=255)
        axes[1, i].imshow(up[i], cmap=cmap, vmin=-0.5, vmax=queries - 0.5, alpha=0.5, interpolation="nearest")
        for ax in axes[:, i]:
            ax.axis("off")
    handles = [
        plt.Line2D([], [], marker="s", ls="", color=cmap(q), label=legend[q] if legend else f"query {q}")
        for q in range(queries)
    ]
    fig.legend(handles=handles, loc="lower center", ncol=min(queries, 4), fontsize=6, frameon=False)
    fig.suptitle(title or "the region (query) that wins each position", fontsize=8)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    return fig


def crop_boxes(images, boxes, names, weights=None, title: str = ""):
    """Faces with the crop boxes a region method reads drawn on them (relative ``(x0, y0, x1, y1)`` boxes), and,
    when ``weights`` ``(N, 1 + n)`` are given (the full face first), each box's weight written in it and its
    edge coloured by it.

    Args:
        images: ``(N, S, S)`` grey faces, one per row.
        boxes: ``(n, 4)`` relative boxes, the same for every face.
        names: ``1 + n`` region names, the full face first.
    """
    from matplotlib import patches

    plt = _plt()
    n = len(images)
    k = len(boxes)
    size = images.shape[1]
    fig, axes = plt.subplots(n, k + 1, figsize=(1.2 * (k + 1), 1.3 * n + 0.5), squeeze=False)
    cmap = plt.get_cmap("viridis")
    top = float(np.max(weights)) if weights is not None else 1.0
    for r in range(n):
        for j in range(k + 1):
            ax = axes[r, j]
            ax.imshow(images[r], cmap="gray", vmin=0, vmax=255)
            x0, y0, x1, y1 = (0.0, 0.0, 1.0, 1.0) if j == 0 else boxes[j - 1]
            color = "yellow" if weights is None else cmap(float(weights[r, j]) / top)
            ax.add_patch(
                patches.Rectangle(
                    (x0 * size - 0.5, y0 * size - 0.5), (x1 - x0) * size, (y1 - y0) * size, fill=False, lw=2, ec=color
                )
            )
            if weights is not None:
                ax.text(x0 * size + 1, y0 * size + 5, f"{weights[r, j]:.2f}", color="white", fontsize=6,
                        bbox={"facecolor": "black", "alpha": 0.5, "pad": 1, "lw": 0})  # fmt: skip
            if r == 0:
                ax.set_title(names[j], fontsize=6)
            ax.axis("off")
    fig.suptitle(title or "the regions a face is read through", fontsize=8)
    fig.tight_layout()
    return fig


def label_efficiency(table, title: str = ""):
    """Accuracy against the share of training labels (log scale), from
    :func:`utils.evaluation.label_efficiency.label_efficiency_table`: one panel per protocol (fine-tune, linear, kNN),
    one line per initialisation through the mean over seeds, each seed's run as a dot."""
    plt = _plt()
    if table.empty:
        raise ValueError("no label-efficiency rows: fine-tune or probe with labelled_subset first")
    protocols = [p for p in ("fine-tune", "linear", "knn") if p in set(table["protocol"])]
    fig, axes = plt.subplots(1, len(protocols), figsize=(3.6 * len(protocols) + 1.2, 3.4), squeeze=False)
    series = table.groupby(["init", "variant", "setting"], sort=True).ngroup()
    several = table.groupby(["init", "variant"])["setting"].transform("nunique") > 1
    for ax, protocol in zip(axes[0], protocols):
        rows = table[table["protocol"] == protocol]
        for (init, variant, setting), group in rows.groupby(["init", "variant", "setting"], sort=True):
            color = f"C{int(series[group.index[0]]) % 10}"
            label = f"{init} ({variant})" if variant else str(init)
            if several[group.index[0]]:
                label += f" [{setting}]"
            ax.scatter(group["fraction"], group["accuracy"], color=color, s=14, alpha=0.5)
            means = group.groupby("fraction")["accuracy"].mean()
            ax.plot(means.index, means.values, "-o", color=color, markersize=4, label=label)
        ax.set_xscale("log")
        fractions = sorted(set(table["fraction"]))
        ax.set_xticks(fractions, [f"{100 * f:g} %" for f in fractions])
        ax.minorticks_off()
        ax.set_xlabel("training labels used")
        ax.set_title({"knn": "kNN", "linear": "linear probe"}.get(protocol, protocol), fontsize=9)
        ax.yaxis.set_major_formatter(plt.matplotlib.ticker.PercentFormatter(1.0, decimals=1))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy (val)")
    handles, labels = {}, []
    for ax in axes[0]:
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    labels = list(handles)
    fig.legend([handles[label] for label in labels], labels, fontsize=7, loc="center right")
    fig.suptitle(title or "accuracy against the share of training labels (dots: single runs)", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1 - 1.6 / fig.get_size_inches()[0], 1))
    return fig


def fra_regions(fra, prepared, aware: dict, count: int = 6, seed: int = 0):
    """FRA's regions on ``count`` validation faces: the partition its relation loss trains (the query that wins
    each position), and each query's soft heatmap, titled with the landmark group it favours most and its lift
    (``aware``: :func:`utils.evaluation.regions.region_awareness`). Returns the two figures."""
    import torch

    rows, landmarks, soft = aware["rows"], aware["landmarks"], aware["heatmaps"]
    shown = np.random.default_rng(seed).choice(len(rows), min(count, len(rows)), replace=False)
    images = prepared.images[rows[shown]]
    device = next(fra.parameters()).device
    partition = fra.region_partition(torch.from_numpy(images[:, None]).float().to(device) / 255).cpu()

    def labels(table):
        return [
            f"q{q}: {g} x{lift:.1f}" for q, (g, lift) in enumerate(zip(table["top group"][:-1], table["lift"][:-1]))
        ]

    hard = region_partition(images, partition, landmarks[shown], labels(aware["hard"]),
                            "FRA: the query that wins each position (hard partition)")  # fmt: skip
    heat = region_overlays(images, soft[shown], landmarks[shown], labels(aware["soft"]),
                           "FRA: each query's soft heatmap (what pools its region)")  # fmt: skip
    return hard, heat


def confusion_matrices(trained: dict, split: str = "val", protocol: str = "supervised"):
    """The confusion matrix of every classifier run in ``trained`` (``{label: Run}``), side by side, for the
    evaluation ``protocol`` (``supervised``, or ``supervised+tencrop`` for the test-time-augmented one; a run
    without it shows its plain one)."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(trained), figsize=(4.3 * len(trained), 4.0), squeeze=False)
    for ax, (label, run) in zip(axes[0], trained.items()):
        evaluations = run.record["evaluations"]
        m = evaluations.get(protocol, evaluations["supervised"])[split]
        smoke = " (smoke test)" if run.record.get("steps_per_epoch_cap") else ""
        confusion_matrix(m, f"{label}{smoke}: accuracy {m['accuracy']:.3f}", ax=ax)
    fig.tight_layout()
    return fig


def ran_shares(run, prepared, rows, condition: str = "eyes"):
    """RAN's regions on the faces ``rows`` of ``prepared`` with each region's share of the pooled face written
    in its box, clean and under ``condition`` (an occlusion of :mod:`utils.evaluation.robustness`). Returns the
    two figures."""
    import torch

    from utils.evaluation import robustness

    net = run.method.net.eval()
    images = torch.from_numpy(np.array(prepared.images[rows])[:, None])  # a copy: the store's pages are read-only
    masks = robustness.occlusion_masks(prepared.landmarks[rows], prepared.images.shape[1], condition)
    figures = []
    for label, batch in (("clean", images), (f"{condition} hidden", robustness.occlude(images, masks))):
        shares = robustness.region_shares(net, batch).cpu().numpy()
        figures.append(
            crop_boxes(
                batch[:, 0].numpy(),
                net.boxes.cpu().numpy(),
                run.method.crop_names,
                shares,
                title=f"RAN: each region's share of the pooled face, {label}",
            )  # fmt: skip
        )
    return figures


def preparation_steps(steps: list[dict], title: str = ""):
    """Each face's way through the preprocessing, from :func:`utils.data.faces.preparation_steps`: top, the
    image as read with each detector's box, the 68 landmarks and the line through the eye centres; bottom,
    the face as kept (aligned: the eye line level at the template height, dotted), with its landmarks."""
    from utils.data.faces import EYE_MID, LEFT_EYE, RIGHT_EYE

    plt = _plt()
    colours = {"haar": "deepskyblue", "dlib": "lime"}
    fig, axes = plt.subplots(2, len(steps), figsize=(1.75 * len(steps), 4.8), squeeze=False)
    for j, step in enumerate(steps):
        top, bottom = axes[0, j], axes[1, j]
        top.imshow(step["image"], cmap="gray", vmin=0, vmax=255)
        height, width = step["image"].shape[:2]
        for k, (detector, box) in enumerate(step["boxes"].items()):
            if box is not None:
                x, y, w, h = box
                style = ("-", "--")[k % 2]
                top.add_patch(plt.Rectangle((x, y), w, h, fill=False, ec=colours.get(detector, f"C{k}"), ls=style))
        found = ", ".join(d for d, b in step["boxes"].items() if b is not None) or "no detector"
        top.set_title(f"{step['label']}\nfound by: {found}", fontsize=7)
        for ax, points in ((top, step["landmarks"]), (bottom, step["face_landmarks"])):
            if points is not None and np.isfinite(points).all():
                ax.scatter(*np.asarray(points).T, s=2, c="orange", linewidths=0)
                eyes = np.array([np.mean(points[RIGHT_EYE], axis=0), np.mean(points[LEFT_EYE], axis=0)])
                ax.plot(*eyes.T, "-", color="red", lw=1)
        top.set(xlim=(-0.5, width - 0.5), ylim=(height - 0.5, -0.5))  # the image, whatever sticks out of it
        bottom.imshow(step["face"], cmap="gray", vmin=0, vmax=255)
        size = step["face"].shape[0]
        bottom.axhline(EYE_MID[1] * size, color="white", ls=":", lw=0.8)
        bottom.set_title(f"kept ({size}x{size})", fontsize=7)
        bottom.set(xlim=(-0.5, size - 0.5), ylim=(size - 0.5, -0.5))
        top.axis("off")
        bottom.axis("off")
    fig.suptitle(
        title
        or "as read, with the boxes (blue: Haar, green: dlib), landmarks and eye line (red); below: the face kept,"
        "\naligned so that the eye line lies level at the template height (dotted)",
        fontsize=8,
    )
    fig.tight_layout()
    return fig


def best_runs(best, split: str = "val", titles: dict | None = None):
    """Accuracy and macro-F1 of the best run of each method and protocol, from
    :func:`utils.evaluation.tables.best_runs`: one panel per source (``titles``: ``{source: panel title}``)
    when the table has a ``source`` column, the weakest at the bottom."""
    plt = _plt()
    parts = list(best.groupby("source", sort=False)) if "source" in best.columns else [(None, best)]
    heights = [max(len(part), 1) for _, part in parts]
    fig, axes = plt.subplots(
        len(parts),
        1,
        figsize=(7.5, 0.32 * sum(heights) + 0.9 * len(parts)),
        gridspec_kw={"height_ratios": heights},
        squeeze=False,
    )
    for ax, (source, part) in zip(axes[:, 0], parts):
        labels = [f"{m} · {p}" for m, p in zip(part["method"], part["protocol"])]
        y = np.arange(len(part))
        ax.barh(y, part["accuracy"], color="tab:blue", label="accuracy")
        ax.barh(y, part["macro_f1"], color="tab:orange", height=0.4, label="macro-F1")
        for k, acc in enumerate(part["accuracy"]):
            ax.text(acc + 0.005, k, f"{acc:.3f}", va="center", fontsize=7)
        ax.set_yticks(y, labels, fontsize=8)
        ax.set_xlim(0, 1)
        ax.xaxis.set_major_formatter(plt.matplotlib.ticker.PercentFormatter(1.0, decimals=0))
        ax.grid(axis="x", alpha=0.3)
        ax.set_title((titles or {}).get(source, source or ""), fontsize=9, loc="left")
    axes[-1, 0].set_xlabel(f"{split} split")
    axes[0, 0].legend(fontsize=8, loc="lower right")
    smoke = best.attrs.get("smoke_tests")
    if smoke:
        fig.text(0.01, 0.005, f"left out: {smoke} evaluations of smoke tests (2 steps per epoch)", fontsize=7)
    fig.tight_layout()
    return fig


def _budget_panel(ax, table, protocol: str) -> None:
    """:func:`budget_curve` drawn on ``ax``."""
    plt = _plt()
    column = f"{protocol}_accuracy"
    table = table.dropna(subset=[column])
    floors = table[table["method"].isin(FLOOR_METHODS)]
    runs = table[~table["method"].isin(FLOOR_METHODS)]
    for i, ((method, variant), group) in enumerate(runs.groupby(["method", "variant"], sort=True)):
        color = f"C{i}"
        ax.scatter(group["pretrain_minutes"], group[column], color=color, s=18, alpha=0.6)
        means = group.groupby("setting")[[column, "pretrain_minutes"]].mean().sort_values("pretrain_minutes")
        label = f"{method} ({variant})" if variant else method
        ax.plot(means["pretrain_minutes"], means[column], "-o", color=color, markersize=4, label=label)
    for j, (method, group) in enumerate(floors.groupby("method", sort=True)):
        ax.axhline(group[column].mean(), color="0.35", ls=("--", ":")[j % 2], lw=1, label=f"floor: {method}")
    ax.set_xlabel("pretraining time (minutes)", fontsize=8)
    ax.set_ylabel(("kNN" if protocol == "knn" else protocol) + " accuracy", fontsize=8)
    ax.set_xlim(0, 1.08 * max(1.0, float(runs["pretrain_minutes"].max()) if len(runs) else 1.0))
    ax.yaxis.set_major_formatter(plt.matplotlib.ticker.PercentFormatter(1.0, decimals=1))
    ax.grid(alpha=0.3)


def budget_curves(table, titles: dict | None = None, protocols=("linear", "knn")):
    """:func:`budget_curve` for each protocol side by side, one row of panels per source (``titles``:
    ``{source: row title}``) when the table (:func:`utils.evaluation.tables.probe_table`) has a ``source``
    column; the legend of each row on its right."""
    plt = _plt()
    parts = list(table.groupby("source", sort=False)) if "source" in table.columns else [(None, table)]
    fig, axes = plt.subplots(len(parts), len(protocols), figsize=(10, 3.3 * len(parts)), squeeze=False)
    for row, (source, part) in zip(axes, parts):
        for ax, protocol in zip(row, protocols):
            _budget_panel(ax, part, protocol)
            name = {"knn": "kNN (k = 20)", "linear": "linear probe"}.get(protocol, protocol)
            ax.set_title(f"{(titles or {}).get(source, source or '')}\n{name}", fontsize=8, loc="left")
        row[-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.tight_layout()
    return fig


def label_efficiency_by_source(table, titles: dict | None = None) -> list:
    """:func:`label_efficiency` for each source of a table of
    :func:`utils.evaluation.tables.label_efficiency_by_source`, titled by ``titles`` (``{source: title}``)."""
    return [
        label_efficiency(part.drop(columns="source"), (titles or {}).get(source, source))
        for source, part in table.groupby("source", sort=False)
    ]


def photo_predictions(image, faces, classes, title: str = ""):
    """A photo with each face's number, box and top-3 expressions (:func:`utils.predict.annotate`), beside
    every class's probability for each face, bars in the faces' numbering order."""
    from utils.predict import annotate

    plt = _plt()
    height, width = image.shape[:2]
    fig, (ax_image, ax_bars) = plt.subplots(
        1, 2, figsize=(11, max(3.2, 6.5 * height / width)), gridspec_kw={"width_ratios": [2.2, 1]}
    )
    ax_image.imshow(annotate(image, faces)[..., ::-1])
    ax_image.axis("off")
    bar = 0.8 / max(len(faces), 1)
    y = np.arange(len(classes))
    for k, face in enumerate(faces):
        probabilities = [face.probabilities[c] for c in classes]
        ax_bars.barh(y - 0.4 + (k + 0.5) * bar, probabilities, height=bar, color=f"C{k % 10}", label=f"face {k}")
    ax_bars.set_yticks(y, classes, fontsize=8)
    ax_bars.invert_yaxis()  # the first class on top, as in the labels
    ax_bars.set_xlim(0, 1)
    ax_bars.set_xlabel("probability", fontsize=8)
    if faces:
        ax_bars.legend(fontsize=7, loc="lower right")
    else:
        ax_bars.text(0.5, 0.5, "no face found", ha="center", va="center", transform=ax_bars.transAxes)
    fig.suptitle(title or "every face found, aligned as in training, and what the run says of each", fontsize=9)
    fig.tight_layout()
    return fig
