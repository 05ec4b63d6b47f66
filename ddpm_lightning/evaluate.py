"""`python -m ddpm_lightning.evaluate ckpt_path=PATH | pretrained=NAME | samples=PATH.npz`: FLD.

Scores generated images against the test set with the shipped LeNet-5, or the one
`classifier=FOLDER` names for any other labelled dataset (no real data needed):
FLD with its bootstrap interval, KID with its standard error, precision, recall, density and
coverage, the LeNet's predicted-label histogram (against uniform) and mean confidence, and the
mean minimum distance to the class-mean images, each FLD printed beside its number of samples
(and a shipped model's beside the FLD its folder records, each score beside its real-data floor
when one is shipped). Writes metrics.json, label_histogram.png, report.md and report.png (and
for a conditional model off_class.png, its samples the LeNet puts in another class), as one
set that replaces that of an earlier run in `out_dir` whole. Images are drawn on the devices of
`trainer` (one by default) and the files written once.

`metrics.num_seeds=k` draws k sample sets (seeds seed … seed + k − 1) and adds the spread of
their FLDs; every other score is of the first. `metric=memorisation` adds the memorisation
check (the nearest training image of each sample, memorisation.png; reads the real training and
test sets); `metric=bpd` scores no samples but the model's likelihood bound, in bits/dim, on
`num_images` real test images, given their labels for conditional models (metrics.json only).
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import replace
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig
from PIL import Image, ImageDraw
from rich.console import Console
from rich.table import Table
from torch import Tensor

from ddpm_lightning.config import hydra_command
from ddpm_lightning.data.registry import DATASETS
from ddpm_lightning.diffusion.noise import shard
from ddpm_lightning.errors import ConfigError, DataError
from ddpm_lightning.evaluation.confidence import confidence_scores
from ddpm_lightning.evaluation.fld import FLD, load_lenet, load_record, to_model_input
from ddpm_lightning.evaluation.floors import floor_for, labelled_images, real_images
from ddpm_lightning.evaluation.intervals import across_seeds
from ddpm_lightning.evaluation.likelihood import bits_per_dim
from ddpm_lightning.evaluation.memorisation import memorisation
from ddpm_lightning.evaluation.off_class import confusion, off_class
from ddpm_lightning.evaluation.report import OFF_CLASS_PICTURE, write_report
from ddpm_lightning.evaluation.scores import class_view, feature_scores
from ddpm_lightning.evaluation.settings import metric_settings
from ddpm_lightning.settings.overrides import command_overrides
from ddpm_lightning.sharing.folder import read_config
from ddpm_lightning.sharing.pretrained import SHIPPED_DIR, load_drawn, load_model, shipped
from ddpm_lightning.sharing.recommended import with_recommended_sampler
from ddpm_lightning.training.drawing import (
    Drawing,
    default_device,
    draw_checked_samples,
    samples_metadata,
    with_check,
)
from ddpm_lightning.training.outputs import claimed, replacing
from ddpm_lightning.training.preflight import check_sampling_request

EVALUATE_FILES = (
    "metrics.json",
    "label_histogram.png",
    "report.md",
    "report.png",
    "memorisation.png",
    OFF_CLASS_PICTURE,
)
# The number of samples of the FLDs the docs and the shipped models report.
COMPARABLE_SAMPLES = 10_000
# How many images each reference FLD of a LeNet's record scores (`classifier.reference_rows`).
REFERENCE_SAMPLES = {
    "test_half_vs_test_half": 5_000,
    "train_10k_vs_test": 10_000,
    "gaussian_noise_vs_test": 10_000,
}


def read_npz(path: Path) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """The `images`, `labels` (or None) and `metadata` (or {}) arrays of a samples.npz."""
    if not zipfile.is_zipfile(path):
        raise DataError(
            f"samples={path} is not an .npz archive; pass a samples.npz from the sample command"
        )
    try:
        with np.load(path, allow_pickle=False) as archive:
            images = archive["images"]
            labels = archive.get("labels")
            metadata = json.loads(str(archive["metadata"])) if "metadata" in archive else {}
    except KeyError:
        raise DataError(
            f"samples={path} has no 'images' array; pass a samples.npz from the sample command"
        ) from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(
            f"samples={path} is not a samples.npz from the sample command ({reason})"
        ) from None
    if not isinstance(metadata, dict):
        raise DataError(
            f"samples={path}: its metadata is {type(metadata).__name__} {str(metadata)[:40]}, "
            "not the mapping the sample command writes"
        )
    return images, labels, metadata


def provenance(metadata: dict, path: Path) -> dict:
    """What a samples.npz may say of itself: the dataset, the model (`ckpt_path` or
    `pretrained`, and a `guide`), the seed and the sampler. Scores and counts are always
    computed, never read; a dataset that is not a name is refused."""
    kept = {key: metadata[key] for key in PROVENANCE if key in metadata}
    dataset = kept.get("dataset")
    if dataset is not None and not isinstance(dataset, str):
        raise DataError(f"samples={path}: its metadata's dataset {dataset!r} is not a name")
    return kept


def check_labels(labels: np.ndarray, count: int, path: Path) -> None:
    """One integer label per image."""
    if not np.issubdtype(labels.dtype, np.integer) or labels.shape != (count,):
        raise DataError(
            f"samples={path}: labels are a {labels.dtype} array of shape {labels.shape}; need "
            f"{count} integer class indices, one per image"
        )


def check_classes(labels: Tensor, dataset: str, source: str, classes: int) -> None:
    """Every label one of the `classes` classes of `dataset`."""
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= classes):
        raise DataError(
            f"{source}: labels lie in [{int(labels.min())}, {int(labels.max())}]; {dataset} "
            f"has the classes 0 to {classes - 1}"
        )


# The keys of a samples.npz's metadata that describe where it came from.
PROVENANCE = (
    "dataset",
    "ckpt_path",
    "pretrained",
    "guide",
    "seed",
    "sampler",
    "network_evaluations",
    "self_check",
)


def check_images(images: np.ndarray, path: Path) -> None:
    """Refuse anything but uint8 images (N ≥ 2, C, H, W), C = 1 or 3, naming what the file
    holds."""
    what = f"{images.dtype} array of shape {images.shape}"
    if images.size and np.issubdtype(images.dtype, np.number):
        if np.issubdtype(images.dtype, np.floating) and np.isnan(images).any():
            raise DataError(f"samples={path}: images contain NaN ({what})")
        what += f" with values in [{images.min():.4g}, {images.max():.4g}]"
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise DataError(
            f"samples={path}: images are a {what}; need uint8 images in [0, 255] of shape "
            "(N, C, H, W), C = 1 or 3, as the sample command writes"
        )
    if images.shape[0] < 2:
        raise DataError(
            f"samples={path}: {images.shape[0]} image(s); a covariance needs at least 2 "
            "(10,000 for figures that compare)"
        )


def load_samples(path: str | Path) -> tuple[Tensor, Tensor | None, dict]:
    """Images (N, C, H, W) in [-1, 1], the requested labels (N,) of conditional models (or
    None) and the metadata the sample command stored (dataset, model, seed, sampler; {} for
    files without it) from a `samples.npz`; one-line errors for anything else."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"samples={path} does not exist; pass a samples.npz from the sample command"
        )
    images, labels, metadata = read_npz(path)
    check_images(images, path)
    if labels is not None:
        check_labels(labels, len(images), path)
    labels_tensor = None if labels is None else torch.from_numpy(labels.astype(np.int64))
    return to_model_input(images), labels_tensor, provenance(metadata, path)


def generate(
    cfg: DictConfig, seed: int | None = None
) -> tuple[Tensor, Tensor | None, dict, L.Trainer]:
    """`cfg.num_samples` images from `cfg.ckpt_path` or `cfg.pretrained` with `cfg.sampler` on
    the devices of `cfg.trainer` and `seed` (default `cfg.seed`), their labels (an equal share
    of each class for conditional models, else None), what made them (`samples_metadata`: the
    model's dataset, the model, seed and sampler) and the trainer that drew them."""
    drawing, module = load_drawn(Drawing.from_config(cfg))
    drawing = with_recommended_sampler(
        drawing, command_overrides(), module.diffusion.objective.value
    )
    if seed is not None:
        drawing = replace(drawing, seed=seed)
    make_sampler = drawing.make_sampler()
    num_samples = int(cfg.num_samples)
    if len(module.data_shape) != 3:
        name = " ".join(f"{key}={value}" for key, value in drawing.source.items())
        raise ConfigError(
            f"{name} models data of shape {tuple(module.data_shape)}, not images (C, H, W): "
            "FLD scores images; use the sample command for it"
        )
    sampler = module.make_sampler(make_sampler)
    check_sampling_request(module, sampler, num_samples, bool(cfg.force))
    labels = module.sample_labels(num_samples)
    images, trainer, checked = draw_checked_samples(drawing, module, make_sampler, labels, cfg)
    metadata = samples_metadata(module, drawing.provenance, drawing.seed, drawing.sampler, sampler)
    return images, labels, {**metadata, **with_check(checked)}, trainer


def scored_dataset(cfg: DictConfig, recorded: str | None) -> str:
    """The test set to score against: `dataset=`, else the one the model or samples.npz
    records. A `dataset=` that differs from the recorded one is refused unless
    `allow_dataset_mismatch=true` (then a warning)."""
    source = f"samples={cfg.samples}" if cfg.get("samples") else "the model"
    requested = cfg.get("dataset")
    if requested and recorded and requested != recorded:
        if not cfg.get("allow_dataset_mismatch"):
            raise ConfigError(
                f"dataset={requested} but {source} is of {recorded}: drop dataset=, or pass "
                f"allow_dataset_mismatch=true to score against {requested} anyway"
            )
        print(f"warning: scoring {recorded} images against the {requested} test set")
    dataset = requested or recorded
    if not dataset:
        raise ConfigError(
            f"{source} records no dataset: pass dataset=NAME, one of {', '.join(DATASETS)}"
        )
    return str(dataset)


def min_class_mean_distance(images: Tensor, class_means: Tensor) -> float:
    """The score of Lior Sinai's MNIST post: mean over images of the Euclidean distance to
    the nearest class mean; classes without test images (NaN means) are left out."""
    means = class_means.flatten(1).double()
    distances = torch.cdist(images.flatten(1).double(), means[means.isfinite().all(1)])
    return distances.min(dim=1).values.mean().item()


def requested_label_accuracy(predicted: Tensor, labels: Tensor, num_classes: int) -> dict:
    """Share of samples the LeNet assigns to the label they were generated for, overall and
    per class (null for classes not requested); the requested × predicted counts and the
    samples put in another class (`off_class`)."""
    hits = (predicted == labels).double()
    per_class = [
        hits[labels == c].mean().item() if (labels == c).any() else None for c in range(num_classes)
    ]
    return {
        "requested_label_accuracy": hits.mean().item(),
        "per_class_accuracy": per_class,
        "confusion": confusion(predicted, labels, num_classes),
        "off_class": off_class(predicted, labels),
    }


def check_scored_shape(images: Tensor, fld: FLD) -> None:
    """The images are of the shape the LeNet takes; else one line saying how to get one."""
    shape = tuple(images.shape[1:])
    if shape != fld.input_shape:
        raise ConfigError(
            f"the images are {shape} but the {fld.dataset} LeNet ({fld.lenet}) takes "
            f"{fld.input_shape}: train one on their data (python -m ddpm_lightning.classifier "
            "data=...) and pass classifier=<its run folder>"
        )


def score(
    images: Tensor,
    fld: FLD,
    confident_threshold: float,
    labels: Tensor | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> dict:
    """Every metric for images (N, C, H, W) in [-1, 1] by `fld` (its LeNet and test
    statistics), with the share of samples whose top class probability is at least
    `confident_threshold`; labels (N,): the requested classes.

    Under DDP every process calls it with all the images: each adds its shard to the FLD, and
    torchmetrics adds up the processes' sums.
    """
    check_scored_shape(images, fld)
    device = fld.model.head.weight.device
    fld.update(images[shard(images.shape[0], rank, world_size)])
    fld_value = fld.compute()
    features = fld.features(images, progress=rank == 0)
    logits = fld.model.head(features.float().to(device)).cpu()
    probabilities = logits.softmax(dim=1)
    stats = fld.test_stats
    predicted = probabilities.argmax(1)
    metrics = {
        "dataset": fld.dataset,
        "num_samples": images.shape[0],
        "fld": fld_value,
        "lenet": fld.lenet,
        "label_counts": torch.bincount(predicted, minlength=fld.num_classes).tolist(),
        "test_label_counts": stats["label_counts"].tolist(),
        **confidence_scores(probabilities, confident_threshold),
        "mean_min_distance_to_class_means": min_class_mean_distance(images, stats["class_means"]),
    }
    if labels is not None:
        metrics.update(requested_label_accuracy(predicted, labels.cpu(), fld.num_classes))
    return metrics


def save_histograms(metrics: dict, path: Path, width: int = 640, height: int = 260) -> None:
    """Bar charts of the share of each label: predicted for the samples (left), true for the
    test set (right), on one scale."""
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    panels = [
        ("samples (LeNet labels)", metrics["label_counts"]),
        ("test set", metrics["test_label_counts"]),
    ]
    tallest = max(max(counts) / max(sum(counts), 1) for _, counts in panels) or 1.0
    for p, (title, counts) in enumerate(panels):
        left, panel_width = p * width // 2 + 20, width // 2 - 40
        total, top, bottom = max(sum(counts), 1), 30, height - 25
        draw.text((left, 8), title, fill="black")
        bar = panel_width / max(len(counts), 1)
        for c, count in enumerate(counts):
            x0 = left + c * bar
            y0 = bottom - (bottom - top) * (count / total) / tallest
            draw.rectangle((x0 + 2, y0, x0 + bar - 2, bottom), fill=(60, 110, 200))
            draw.text((x0 + bar / 2 - 3, bottom + 4), str(c), fill="black")
    image.save(path)


def shipped_evaluation(pretrained: str | None) -> dict | None:
    """The evaluation a shipped model's config.json records (its FLD, `num_samples`, sampler),
    for `pretrained=` one of the shipped names; else None."""
    if pretrained is None or str(pretrained) not in shipped():
        return None
    record = read_config(SHIPPED_DIR / str(pretrained)).get("evaluation") or {}
    return record if {"fld", "num_samples"} <= record.keys() else None


def shipped_label(name: str, record: dict) -> str:
    """The table's name for a shipped model's recorded FLD, with its sampler in short, e.g.
    `FLD of shipped mnist (ddim-50)`."""
    sampler = record.get("sampler") or {}
    if "name" not in sampler:
        return f"FLD of shipped {name}"
    steps = f"-{sampler['num_steps']}" if sampler.get("num_steps") else ""
    return f"FLD of shipped {name} ({sampler['name']}{steps})"


def floor_row(floor: dict | None, metric: str) -> list[tuple[str, ...]]:
    """The row under a score with the real-data floor of `metric` (fld or kid): `mean ± sd` of
    that many real training images; none without a floor."""
    if floor is None:
        return []
    value = f"{floor[f'{metric}_mean']:.3g}±{floor[f'{metric}_sd']:.2g}"
    return [("  floor: real training images", value, "", f"{floor['n']:,}")]


def feature_rows(metrics: dict, floor: dict | None) -> list[tuple[str, ...]]:
    """(metric, value, interval or error, samples) of KID (± its standard error) with its
    floor, and of precision, recall, density and coverage, those `metrics` holds."""
    rows: list[tuple[str, ...]] = []
    if "kid" in metrics:
        error = f"± {metrics['kid_se']:.3g} se"
        rows.append(
            (
                "KID (LeNet-5 features)",
                f"{metrics['kid']:.4g}",
                error,
                f"{metrics['num_samples']:,}",
            )
        )
        rows += floor_row(floor, "kid")
    for key in ("precision", "recall", "density", "coverage"):
        if key in metrics:
            rows.append((f"{key} (k={metrics['nearest_k']})", f"{metrics[key]:.4f}"))
    return rows


def fld_spread(metrics: dict) -> str:
    """FLD's interval as the table shows it, e.g. `[2.104, 2.612]`, or ''."""
    if "fld_interval" not in metrics:
        return ""
    low, high = metrics["fld_interval"]
    return f"[{low:.4g}, {high:.4g}]"


def print_table(
    metrics: dict,
    reference: dict,
    shipped_record: dict | None = None,
    floor: dict | None = None,
) -> None:
    """The metrics, each FLD beside its number of samples and its interval, each score beside
    its real-data `floor` (`floor_for`), with the LeNet's reference FLDs and, for a shipped
    model, the FLD its model folder records; a note when the FLD is of fewer samples than the
    docs' figures."""
    num_samples = metrics["num_samples"]
    table = Table(
        title=f"Evaluation against the {metrics['dataset']} test set (LeNet-5 {metrics['lenet']})"
    )
    table.add_column("metric", no_wrap=True)
    table.add_column("value", justify="right")
    level = f"{metrics.get('confidence', 0.95):.0%}"
    table.add_column(f"{level} interval", justify="right", no_wrap=True)
    table.add_column("samples", justify="right", no_wrap=True)
    table.add_row(
        f"FLD (LeNet-5 {metrics['lenet']})",
        f"{metrics['fld']:.4f}",
        fld_spread(metrics),
        f"{num_samples:,}",
    )
    for row in floor_row(floor, "fld"):
        table.add_row(*row)
    if "fld_seeds" in metrics:
        low, high = metrics["fld_seed_interval"]
        table.add_row(
            f"FLD across {len(metrics['fld_seeds'])} seeds: mean (sd {metrics['fld_seed_sd']:.3g})",
            f"{metrics['fld_seed_mean']:.4f}",
            f"[{low:.4g}, {high:.4g}]",
            f"{len(metrics['fld_seeds'])} × {num_samples:,}",
        )
    for row in feature_rows(metrics, floor):
        table.add_row(*row)
    table.add_row("mean LeNet confidence", f"{metrics['mean_confidence']:.4f}")
    if "confident_share" in metrics:
        table.add_row(
            f"share with LeNet confidence ≥ {metrics['confident_threshold']:g}",
            f"{metrics['confident_share']:.4f}",
        )
    table.add_row(
        "mean min distance to class means", f"{metrics['mean_min_distance_to_class_means']:.4f}"
    )
    last = len(metrics["label_counts"]) - 1
    table.add_row(f"predicted labels 0-{last}", " ".join(map(str, metrics["label_counts"])))
    if "class_balance" in metrics:
        balance = metrics["class_balance"]
        table.add_row(
            "predicted labels: TV from uniform",
            f"{balance['tv_uniform']:.4f}",
            f"χ² p = {balance['chi2_p_value']:.2g}",
        )
    if "requested_label_accuracy" in metrics:
        table.add_row(
            "samples classified as requested", f"{metrics['requested_label_accuracy']:.4f}"
        )
    if "self_check" in metrics:
        table.add_row(
            "drawn again by the self-check, per round",
            " + ".join(f"{count:,}" for count in metrics["self_check"]["redrawn"]),
        )
    if shipped_record is not None:
        table.add_row(
            shipped_label(metrics["pretrained"], shipped_record),
            f"{shipped_record['fld']:.4f}",
            "",
            f"{shipped_record['num_samples']:,}",
        )
    for name, value in reference.items():
        count = REFERENCE_SAMPLES.get(name)
        table.add_row(
            f"reference FLD: {name.replace('_', ' ')}",
            f"{value:.4f}",
            "",
            f"{count:,}" if count else "",
        )
    Console().print(table)
    if num_samples < COMPARABLE_SAMPLES:
        print(
            f"note: FLD falls as the number of samples grows, so this {num_samples:,}-sample FLD "
            f"does not compare with the docs' {COMPARABLE_SAMPLES:,}-sample figures"
        )


def evaluate(cfg: DictConfig) -> dict:
    """Score samples from `cfg.samples` or freshly generated from `cfg.ckpt_path` (or, with
    `metric=bpd`, the model's likelihood bound); a second command into `cfg.out_dir` is refused
    while this one runs."""
    if getattr(rank_zero_only, "rank", 0) == 0:
        print(f"out_dir: {Path(cfg.out_dir).resolve()}", flush=True)
    with claimed(cfg.out_dir, "evaluate") as out_dir:
        if cfg.metric == "bpd":
            return likelihood_into(cfg, out_dir)
        return evaluate_into(cfg, out_dir)


def bound_labels(labels: Tensor, num_classes: int | None, dataset: str) -> Tensor | None:
    """The test images' labels (N,) a conditional model's bound is conditioned on; None for an
    unconditional model (num_classes None)."""
    if num_classes is None:
        return None
    if labels.numel() and int(labels.max()) >= num_classes:
        raise ConfigError(
            f"metric=bpd: the {dataset} test labels reach {int(labels.max())} but the model has "
            f"{num_classes} classes: drop dataset= to score it on its own dataset"
        )
    return labels


def likelihood_into(cfg: DictConfig, out_dir: Path) -> dict:
    """`metric=bpd`: the bound of Ho et al. 2020, eq. 5, in bits/dim, of the model of
    `ckpt_path` or `pretrained` on the first `num_images` test images of its dataset, of
    p(x | y) at their true labels y for a conditional model (`"conditional": true`)."""
    if cfg.get("guide"):
        raise ConfigError(
            f"metric=bpd bounds the model's own likelihood, which guide={cfg.guide} does not "
            "change: drop guide="
        )
    if cfg.get("samples") or not (cfg.get("ckpt_path") or cfg.get("pretrained")):
        raise ConfigError(
            "metric=bpd scores a model on real test images: pass ckpt_path= or pretrained=, "
            "not samples="
        )
    drawing = Drawing.from_config(cfg)
    device = default_device()
    module = load_model(drawing.ckpt_path, drawing.pretrained).to(device).eval()
    dataset = scored_dataset(cfg, module.hparams.get("dataset"))
    count = int(cfg.num_images)
    images, test_labels = labelled_images(dataset, train=False)
    images, labels = images[:count], bound_labels(test_labels[:count], module.num_classes, dataset)
    schedule, objective = module.diffusion.schedule, module.diffusion.objective.value
    result = bits_per_dim(
        module,
        schedule,
        objective,
        images.to(device),
        None if labels is None else labels.to(device),
        seed=int(cfg.seed),
        **cfg.bpd,
    )
    metrics = {"dataset": dataset, **drawing.source, "conditional": labels is not None, **result}
    with replacing(out_dir, EVALUATE_FILES) as folder:
        (folder / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    kind = "exact sum" if result["exact"] else f"{result['timesteps_per_image']} timesteps/image"
    given = ", given their labels" if labels is not None else ""
    print(
        f"bits/dim {result['bpd']:.4f} ± {result['stderr']:.4f} (se) on {result['n']:,} "
        f"{dataset} test images{given} ({kind}); wrote {out_dir / 'metrics.json'}"
    )
    return metrics


def memorisation_scores(images: Tensor, dataset: str, folder: Path, settings: dict) -> dict:
    """`metric=memorisation`: the memorisation check of images (N, 1, 32, 32) against the real
    training set, thresholds from the test set; writes memorisation.png into `folder`."""
    found = memorisation(
        images.cpu(),
        real_images(dataset, train=True),
        real_images(dataset, train=False),
        load_lenet(dataset),
        picture=folder / "memorisation.png",
        **settings,
    )
    return {"memorisation": found}


def fld_across_seeds(
    cfg: DictConfig, fld: FLD, first: float, settings: dict, rank: int, world_size: int
) -> dict:
    """`across_seeds` of the FLD `first` of the samples of `cfg.seed` and those of
    `settings["num_seeds"]` − 1 more sample sets, drawn as `generate` draws with the seeds
    after it; {} for one seed. Every process takes part under DDP, as in `score`."""
    num_seeds, seed = settings["num_seeds"], int(cfg.seed)
    if num_seeds == 1:
        return {}
    flds = [first]
    for other in range(seed + 1, seed + num_seeds):
        images = generate(cfg, other)[0]
        fld.update(images[shard(images.shape[0], rank, world_size)])
        flds.append(fld.compute())
        if rank == 0:
            print(f"seed {other}: FLD {flds[-1]:.4f} of {images.shape[0]:,} samples", flush=True)
    return across_seeds(flds, settings["confidence"])


def check_source(cfg: DictConfig, settings: dict) -> None:
    """samples= or a model, not both; several seeds and a guide only with a model."""
    model = [f"{key}={cfg.get(key)}" for key in ("ckpt_path", "pretrained") if cfg.get(key)]
    if cfg.get("guide") and cfg.get("samples"):
        raise ConfigError(
            f"guide={cfg.guide} guides fresh samples of ckpt_path= or pretrained=, but "
            f"samples={cfg.samples} scores samples already drawn: drop one of them"
        )
    if cfg.get("samples") and model:
        raise ConfigError(
            f"pass samples= or {model[0].split('=')[0]}=, not both (got samples={cfg.samples} "
            f"and {model[0]}): scores are of the samples in the file or of fresh ones"
        )
    if cfg.get("samples") and settings["num_seeds"] > 1:
        raise ConfigError(
            f"metrics.num_seeds={settings['num_seeds']} draws fresh sample sets: pass "
            "ckpt_path= or pretrained= instead of samples=, or metrics.num_seeds=1"
        )


def evaluate_into(cfg: DictConfig, out_dir: Path) -> dict:
    """`evaluate` with `out_dir` checked and held."""
    rank, world_size, device = 0, 1, default_device()
    settings = metric_settings(**cfg.metrics)
    check_source(cfg, settings)
    if cfg.get("samples"):
        images, labels, made_by = load_samples(cfg.samples)
    elif cfg.get("ckpt_path") or cfg.get("pretrained"):
        images, labels, made_by, trainer = generate(cfg)
        rank, world_size = trainer.global_rank, trainer.world_size
        device = trainer.strategy.root_device
    else:
        raise ConfigError(
            "pass ckpt_path=PATH/last.ckpt, pretrained=mnist or samples=PATH/samples.npz"
        )
    recorded = made_by.pop("dataset", None)
    dataset = scored_dataset(cfg, recorded)
    classifier = cfg.get("classifier")
    fld = FLD(dataset, device, holds_test_set=rank == 0, classifier=classifier)
    if labels is not None and cfg.get("samples"):
        check_classes(labels, dataset, f"samples={cfg.samples}", fld.num_classes)
    if images.shape[0] <= 84 and rank == 0:
        print(
            f"warning: {images.shape[0]} samples give a rank-deficient 84×84 covariance; "
            "FLD needs more samples (10,000 by default) to be meaningful"
        )
    source = {"samples": str(cfg.samples)} if cfg.get("samples") else {}
    threshold = settings["confident_threshold"]
    metrics = {**made_by, **source, **score(images, fld, threshold, labels, rank, world_size)}
    metrics.update(fld_across_seeds(cfg, fld, metrics["fld"], settings, rank, world_size))
    if rank != 0:
        return metrics
    metrics.update(feature_scores(images, labels, dataset, settings, int(cfg.seed), classifier))
    metrics.update(class_view(metrics))
    floor = floor_for(dataset, metrics["num_samples"])
    with replacing(out_dir, EVALUATE_FILES) as folder:
        if cfg.metric == "memorisation":
            metrics.update(memorisation_scores(images, dataset, folder, dict(cfg.memorisation)))
        save_histograms(metrics, folder / "label_histogram.png")
        (folder / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        write_report(folder, metrics, images, floor)
    print_table(
        metrics,
        load_record(dataset, classifier).get("reference_fld", {}),
        shipped_evaluation(metrics.get("pretrained")),
        floor,
    )
    print(f"wrote {', '.join(str(out_dir / name) for name in EVALUATE_FILES)}")
    return metrics


main = hydra_command("evaluate", evaluate)


if __name__ == "__main__":
    main()
