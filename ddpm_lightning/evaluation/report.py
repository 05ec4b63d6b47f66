"""The evaluate command's report: `report.md`, the scores with their intervals and real-data
floors, the class view and precision/recall, and `report.png`, a sample grid beside the class
histogram and the precision, recall, density and coverage bars."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw
from torch import Tensor

from ddpm_lightning.evaluation.off_class import off_class_picture
from ddpm_lightning.evaluation.pictures import grid, to_pil

# Images in the report's sample grid.
GRID_IMAGES = 64
PANEL = (320, 260)
BLUE, GREY = (60, 110, 200), (170, 170, 170)
PRDC = ("precision", "recall", "density", "coverage")
OFF_CLASS_PICTURE = "off_class.png"
# Pairs of classes named in report.md's off-class section.
COMMON_PAIRS = 5


def bars(
    title: str,
    groups: Sequence[Sequence[float]],
    names: Sequence[str],
    ceiling: float = 0.0,
    values: bool = False,
) -> Image.Image:
    """A PANEL-sized bar chart: one group of bars per name, blue then grey, on one scale up to
    the tallest bar or `ceiling`; `values`: each bar's value written above it."""
    width, height = PANEL
    image = Image.new("RGB", PANEL, "white")
    draw = ImageDraw.Draw(image)
    draw.text((10, 6), title, fill="black")
    top, bottom, left = 28, height - 22, 10
    tallest = max([ceiling, *(v for group in groups for v in group)]) or 1.0
    slot = (width - 2 * left) / len(names)
    for i, name in enumerate(names):
        x = left + i * slot
        for j, group in enumerate(groups):
            bar = (slot - 4) / len(groups)
            y = bottom - (bottom - top) * group[i] / tallest
            draw.rectangle(
                (x + 2 + j * bar, y, x + 2 + (j + 1) * bar - 1, bottom), fill=(BLUE, GREY)[j]
            )
            if values:
                draw.text((x + 2 + (j + 0.5) * bar - 12, y - 12), f"{group[i]:.2f}", fill="black")
        draw.text((x + slot / 2 - 3 * len(name), bottom + 4), name, fill="black")
    return image


def shares(counts: Sequence[int]) -> list[float]:
    total = max(sum(counts), 1)
    return [c / total for c in counts]


def report_picture(metrics: dict, images: Tensor, path: Path) -> Path:
    """report.png: the first GRID_IMAGES samples (N, C, H, W) in [-1, 1]; the share of each
    predicted label (blue) beside the test set's (grey); precision, recall, density, coverage."""
    samples = to_pil(grid(images[:GRID_IMAGES]), scale=max(1, PANEL[1] // (8 * images.shape[-1])))
    samples.thumbnail(PANEL)
    classes = [str(c) for c in range(len(metrics["label_counts"]))]
    panels = [
        samples,
        bars(
            "predicted labels (blue) / test set (grey)",
            [shares(metrics["label_counts"]), shares(metrics["test_label_counts"])],
            classes,
        ),
    ]
    if "precision" in metrics:
        panels.append(
            bars(
                f"precision, recall, density, coverage (k = {metrics['nearest_k']})",
                [[metrics[key] for key in PRDC]],
                ["P", "R", "D", "C"],
                ceiling=1.0,
                values=True,
            )
        )
    picture = Image.new("RGB", (PANEL[0] * len(panels), PANEL[1]), "white")
    for i, panel in enumerate(panels):
        picture.paste(panel, (i * PANEL[0], 0))
    picture.save(path)
    return path


def with_floor(floor: dict | None, metric: str) -> str:
    """`mean ± sd (n = …)` of a real-data floor, or '' without one."""
    if floor is None:
        return ""
    return f"{floor[f'{metric}_mean']:.4g} ± {floor[f'{metric}_sd']:.2g} (n = {floor['n']:,})"


def seed_rows(metrics: dict, level: str) -> list[tuple[str, str, str, str]]:
    """The row of FLD's mean over independent sample sets (`metrics.num_seeds` > 1) with its t
    interval at `level`; none for one set."""
    if "fld_seeds" not in metrics:
        return []
    flds = metrics["fld_seeds"]
    low, high = metrics["fld_seed_interval"]
    seeds = ", ".join(f"{value:.4f}" for value in flds)
    spread = f"{level} (t): [{low:.4f}, {high:.4f}] (sd {metrics['fld_seed_sd']:.3g}; {seeds})"
    return [(f"FLD, mean over {len(flds)} seeds", f"{metrics['fld_seed_mean']:.4f}", spread, "")]


def score_rows(metrics: dict, floor: dict | None) -> list[tuple[str, str, str, str]]:
    """(metric, value, interval or error, real-data floor) of each score in `metrics`."""
    level = f"{metrics.get('confidence', 0.95):.0%}"
    rows = [("FLD", f"{metrics['fld']:.4f}", "", with_floor(floor, "fld"))]
    if "fld_interval" in metrics:
        low, high = metrics["fld_interval"]
        spread = f"{level}: [{low:.4f}, {high:.4f}] (bootstrap sd {metrics['fld_sd']:.3g})"
        rows[0] = (rows[0][0], rows[0][1], spread, rows[0][3])
    rows += seed_rows(metrics, level)
    if "kid" in metrics:
        subsets = f"{metrics['kid_subsets']} subsets of {metrics['kid_subset_size']:,}"
        error = f"± {metrics['kid_se']:.3g} (standard error; {subsets})"
        rows.append(("KID", f"{metrics['kid']:.4g}", error, with_floor(floor, "kid")))
    for key in PRDC:
        if key in metrics:
            rows.append((f"{key} (k = {metrics['nearest_k']})", f"{metrics[key]:.4f}", "", ""))
    rows.append(("mean LeNet confidence", f"{metrics['mean_confidence']:.4f}", "", ""))
    if "confident_share" in metrics:
        name = f"share with LeNet confidence ≥ {metrics['confident_threshold']:g}"
        rows.append((name, f"{metrics['confident_share']:.4f}", "", ""))
    if "class_balance" in metrics:
        balance = metrics["class_balance"]
        rows.append(
            (
                "class histogram: total variation from uniform",
                f"{balance['tv_uniform']:.4f}",
                "",
                "",
            )
        )
        dof = len(metrics["label_counts"]) - 1
        chi2 = f"p = {balance['chi2_p_value']:.3g} ({dof} degrees of freedom)"
        rows.append(
            ("class histogram: χ² against uniform", f"{balance['chi2_uniform']:.1f}", chi2, "")
        )
    if "requested_label_accuracy" in metrics:
        rows.append(
            (
                "samples classified as requested",
                f"{metrics['requested_label_accuracy']:.4f}",
                "",
                "",
            )
        )
    return rows


def class_rows(metrics: dict) -> list[list[str]]:
    """One row per class: predicted count and share, test share, and for conditional models the
    requested-class accuracy and FLD."""
    predicted, test = shares(metrics["label_counts"]), shares(metrics["test_label_counts"])
    rows = []
    for c, count in enumerate(metrics["label_counts"]):
        row = [str(c), f"{count:,}", f"{predicted[c]:.3f}", f"{test[c]:.3f}"]
        if "per_class_accuracy" in metrics:
            accuracy, fld = metrics["per_class_accuracy"][c], metrics["fld_per_class"][c]
            row += [
                "–" if accuracy is None else f"{accuracy:.3f}",
                "–" if fld is None else f"{fld:.3f}",
            ]
        rows.append(row)
    return rows


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def report_markdown(metrics: dict, floor: dict | None, picture: str = "report.png") -> str:
    """report.md's text for `metrics` (the evaluate command's) and a real-data floor or None."""
    named = [
        f"{key}={metrics[key]}"
        for key in ("pretrained", "ckpt_path", "guide", "samples")
        if key in metrics
    ]
    source = " ".join(named) or "samples"
    sampler = metrics.get("sampler") or {}
    lines = [
        f"# Evaluation of {source} against the {metrics['dataset']} test set",
        "",
        f"{metrics['num_samples']:,} samples (seed {metrics.get('seed', '–')}, sampler "
        f"{sampler.get('name', '–')} {sampler.get('num_steps', '')}), scored on the features of "
        f"the LeNet-5 {metrics['lenet']}. FLD falls as the number of samples grows: compare it "
        "at one n, or with the real-data floor: what real training images score at about that n.",
        "",
        *markdown_table(
            ["metric", "value", "interval or error", "real-data floor"], score_rows(metrics, floor)
        ),
        "",
        "## Classes",
        "",
    ]
    header = ["class", "predicted", "share", "test share"]
    if "per_class_accuracy" in metrics:
        header += ["classified as requested", "FLD of the class"]
    lines += [
        *markdown_table(header, class_rows(metrics)),
        "",
        f"![samples, classes, precision and recall]({picture})",
        "",
    ]
    return "\n".join(lines)


def off_class_lines(metrics: dict, picture: Path | None) -> list[str]:
    """report.md's section on the samples put in another class than requested: how many, the
    most common requested->predicted pairs, and their picture; none for unconditional models."""
    if "confusion" not in metrics:
        return []
    counts = metrics["confusion"]
    pairs = sorted(
        ((n, wanted, got) for wanted, row in enumerate(counts) for got, n in enumerate(row)),
        reverse=True,
    )
    common = [f"{wanted}->{got}: {n:,}" for n, wanted, got in pairs if n and wanted != got]
    found = len(metrics["off_class"])
    lines = [
        "## Samples put in another class",
        "",
        f"The LeNet puts {found:,} of {metrics['num_samples']:,} samples in another class than "
        "the one they were drawn for (requested->predicted; metrics.json: `confusion`, "
        "`off_class` with each one's index)"
        + (f". Most common: {', '.join(common[:COMMON_PAIRS])}." if common else "."),
        "",
    ]
    if picture is not None:
        lines += [f"![samples put in another class]({picture.name})", ""]
    return lines


def write_report(folder: Path, metrics: dict, images: Tensor, floor: dict | None) -> list[Path]:
    """Write report.md and report.png into `folder`, and for a conditional model with samples
    put in another class, OFF_CLASS_PICTURE; their paths."""
    picture = report_picture(metrics, images, folder / "report.png")
    off = None
    if metrics.get("off_class"):
        off = off_class_picture(images, metrics["off_class"], folder / OFF_CLASS_PICTURE)
    text = "\n".join(
        [report_markdown(metrics, floor, picture.name), *off_class_lines(metrics, off)]
    )
    # The memorisation check (evaluation/memorisation.py) adds its section and pairs here.
    markdown = folder / "report.md"
    markdown.write_text(text)
    return [markdown, picture, *([off] if off else [])]
