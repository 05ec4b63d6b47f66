"""The model card (README.md) of a model folder: Hub YAML front matter (library, tags,
datasets, license, the FLD as a model-index entry) and what a reader needs to trust and use
the model: recipe, training time, evaluation, intended use and how to load it."""

from __future__ import annotations

import shlex
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ddpm_lightning import diffusion
from ddpm_lightning.components import REGISTRY, component_settings
from ddpm_lightning.data.registry import DATASETS

SAMPLER_KEYS = (
    "scheduler",
    "num_steps",
    "eta",
    "spacing",
    "variance",
    "clip_x0",
    "guidance_scale",
    "guidance_interval",
)
# ruff's line length in pyproject.toml: the card's Python example is formatted to it.
LINE_LENGTH = 100


def sampler_summary(sampler: dict[str, Any] | None, conditional: bool) -> dict[str, Any]:
    """{'sampler': class name, and its step settings} of a sampler config; the guidance keys
    only for conditional models (unconditional ones are never guided)."""
    if not sampler:
        return {}
    sampler = component_settings("sampler", sampler)
    name = REGISTRY["sampler"][sampler["name"]].__name__
    keys = [key for key in SAMPLER_KEYS if conditional or not key.startswith("guidance")]
    return {"sampler": name, **{key: sampler[key] for key in keys if key in sampler}}


def sampler_text(sampler: dict[str, Any] | None, conditional: bool) -> str:
    """`DDIMSampler (num_steps=20, eta=0.0, …)`."""
    summary = sampler_summary(sampler, conditional)
    if not summary:
        return "not recorded"
    settings = ", ".join(f"{k}={v}" for k, v in summary.items() if k != "sampler")
    return f"{summary['sampler']} ({settings})"


def dataset_title(config: dict[str, Any], otherwise: str) -> str:
    """The title of the folder's dataset, or `otherwise` for one that is not registered."""
    record = DATASETS.get(str(config.get("dataset")))
    return record.title if record else otherwise


def is_conditional(config: dict[str, Any]) -> bool:
    """Whether the folder's network takes class labels."""
    return (config.get("model") or {}).get("num_classes") is not None


def card_data(config: dict[str, Any], title: str) -> ModelCardData:
    """The front matter: Hub metadata and, when evaluated, the FLD as an EvalResult."""
    dataset = DATASETS.get(str(config.get("dataset")))
    evaluation = config.get("evaluation") or {}
    conditional = is_conditional(config)
    task = "class-conditional-image-generation" if conditional else "unconditional-image-generation"
    results = None
    if dataset and "fld" in evaluation:
        args = {
            **sampler_summary(evaluation.get("sampler"), conditional),
            "num_samples": evaluation.get("num_samples"),
            "seed": evaluation.get("seed"),
        }
        scores = [("fld", "FLD (Fréchet LeNet Distance, lower is better)", evaluation["fld"])]
        if "requested_label_accuracy" in evaluation:
            scores.append(
                (
                    "accuracy",
                    "Share the shipped LeNet classifies as the requested class",
                    evaluation["requested_label_accuracy"],
                )
            )
        results = [
            EvalResult(
                task_type=task,
                dataset_type=dataset.hub or dataset.name,
                dataset_name=dataset.title,
                dataset_split="test",
                metric_type=kind,
                metric_name=name,
                metric_value=float(value),
                metric_args={key: value for key, value in args.items() if value is not None},
            )
            for kind, name, value in scores
        ]
    tags = ["diffusion", "ddpm", "image-generation"] + (
        ["class-conditional"] if conditional else []
    )
    return ModelCardData(
        library_name="ddpm_lightning",
        license="mit",
        tags=tags + ([dataset.tag] if dataset and dataset.tag else []),
        datasets=[dataset.hub] if dataset and dataset.hub else None,
        pipeline_tag=None if conditional else "unconditional-image-generation",
        metrics=[result.metric_type for result in results] if results else None,
        model_name=title,
        eval_results=results,
    )


def recipe_section(config: dict[str, Any]) -> str:
    training = config.get("training") or {}
    overrides = training.get("overrides")
    command = (
        f"```bash\npython -m ddpm_lightning.train {shlex.join(overrides)}\n```"
        if overrides
        else "The run's command-line overrides were not recorded."
    )
    model = {k: v for k, v in config["model"].items() if k != "name"}
    schedule = config["schedule"]
    return (
        f"## Training recipe\n\n{command}\n\n"
        f"- network: `{config['model']['name']}` {model}, "
        f"{config.get('num_parameters', 0):,} parameters\n"
        f"- noise schedule: {schedule}\n"
        f"- diffusion: {config.get('diffusion')}\n"
        f"- optimizer: {config.get('optimizer')}, learning-rate schedule "
        f"{config.get('lr_schedule')}\n"
        f"- weights: {'the EMA weights' if config.get('ema') else 'the raw weights (no EMA)'} "
        f"after {config.get('global_step')} optimizer steps\n"
    )


def time_section(config: dict[str, Any]) -> str:
    training = config.get("training") or {}
    time, steps = training.get("time"), config.get("global_step")
    text = "Not recorded."
    if time:
        text = f"{time} on {training.get('device') or 'an unrecorded device'}"
        text += f", {steps:,} optimizer steps." if isinstance(steps, int) else "."
    return f"## Training time and device\n\n{text}\n"


def evaluation_section(config: dict[str, Any]) -> str:
    evaluation = config.get("evaluation") or {}
    if "fld" not in evaluation:
        return "## Evaluation\n\nNot evaluated when exported.\n"
    overrides = evaluation.get("overrides")
    command = (
        f"\n\n```bash\npython -m ddpm_lightning.evaluate {shlex.join(overrides)}\n```"
        if overrides
        else ""
    )
    confidence = evaluation.get("mean_confidence")
    accuracy = evaluation.get("requested_label_accuracy")
    requested = (
        ("| classified as requested ", "|---", f"| {100 * float(accuracy):.2f}% ")
        if accuracy is not None
        else ("", "", "")
    )
    return (
        "## Evaluation\n\n"
        f"| FLD {requested[0]}| LeNet confidence | samples | seed | sampler |\n"
        f"|---{requested[1]}|---|---|---|---|\n"
        f"| {float(evaluation['fld']):.2f} {requested[2]}| "
        f"{'' if confidence is None else f'{float(confidence):.3f}'} | "
        f"{evaluation.get('num_samples', '')} | {evaluation.get('seed', '')} | "
        f"{sampler_text(evaluation.get('sampler'), is_conditional(config))} |{command}\n\n"
        "FLD is the Fréchet distance between LeNet-5 features of generated images and of the "
        "test set, with the LeNet shipped in ddpm_lightning (lower is better). It compares only "
        "with FLDs from the same LeNet and number of samples; fewer samples give higher values.\n"
    )


def use_section(config: dict[str, Any]) -> str:
    title = dataset_title(config, "its training data")
    return (
        "## Intended use and limits\n\n"
        f"Research and teaching: generating {title}-like images, comparing samplers and "
        "schedules, a baseline for diffusion experiments. It generates "
        f"{'x'.join(str(s) for s in config.get('data_shape', []))} images in [-1, 1] and "
        "nothing else: it is not a general image generator, its samples can be malformed, and "
        "its FLD says how close the samples' LeNet features are to the test set's, not how "
        "good each image looks.\n"
    )


def python_literal(value: Any) -> str:
    """`value` as Python source, strings in double quotes (as ruff formats them)."""
    return f'"{value}"' if isinstance(value, str) else repr(value)


def override(key: str, value: Any) -> str:
    """` sampler.key=value`, shell-quoted as the card's commands are; a list without spaces."""
    text = f"[{','.join(str(v) for v in value)}]" if isinstance(value, list | tuple) else value
    return f" {shlex.quote(f'sampler.{key}={text}')}"


def make_sampler_call(cls: str, settings: dict[str, Any]) -> str:
    """`sampler = module.make_sampler(cls, key=value, …)` on one line, or one argument per line
    when that is longer than the project's 100 characters (as ruff formats it)."""
    arguments = [cls, *(f"{key}={python_literal(value)}" for key, value in settings.items())]
    line = f"sampler = module.make_sampler({', '.join(arguments)})"
    if len(line) <= LINE_LENGTH:
        return line
    return "sampler = module.make_sampler(\n" + "".join(f"    {a},\n" for a in arguments) + ")"


def load_section(config: dict[str, Any], name: str) -> str:
    conditional = is_conditional(config)
    summary = sampler_summary(config.get("sampler"), conditional) or {"sampler": "DDIMSampler"}
    cls = summary.pop("sampler")
    settings = {key: value for key, value in summary.items() if value is not None}
    option = getattr(diffusion, cls, diffusion.DDIMSampler).name
    overrides = "".join(override(key, value) for key, value in settings.items())
    imports = "import torch\n" if conditional else ""
    labels = (
        "\n# the labels to draw, e.g. 16 of class 3:\n"
        "threes = module.generate(sampler, num_samples=16, seed=0, labels=torch.full((16,), 3))\n"
        if conditional
        else ""
    )
    return (
        "## How to load\n\nWith the ddpm_lightning package installed:\n\n"
        "```bash\n"
        f"python -m ddpm_lightning.sample pretrained={name} sampler={option}{overrides}\n```\n\n"
        f"```python\n{imports}from ddpm_lightning import load_pretrained\n"
        f"from ddpm_lightning.diffusion import {cls}\n\n"
        f'module = load_pretrained("{name}")  # a DiffusionModule in eval mode, on the CPU\n'
        f"{make_sampler_call(cls, settings)}\n"
        "images = module.generate(sampler, num_samples=16, seed=0)  # (16, C, H, W) in [-1, 1]\n"
        f"{labels}```\n\n"
        f"Recommended sampler: {sampler_text(config.get('sampler'), conditional)}. "
        "`pretrained=` also takes a local copy of this folder.\n"
    )


def model_card(config: dict[str, Any], name: str, num_samples: int) -> str:
    """README.md of a model folder from its config.json; `name` is what `pretrained=` takes
    (a shipped name or a repo id), `num_samples` how many images samples.png shows (0: none)."""
    dataset = dataset_title(config, "its data")
    kind = "Class-conditional DDPM" if is_conditional(config) else "DDPM"
    title = f"{kind} on {dataset} (ddpm_lightning)"
    picture = (
        f"![{num_samples} samples of the recommended sampler, seed 0](samples.png)\n\n"
        if num_samples
        else ""
    )
    body = (
        f"# {title}\n\nA denoising diffusion model trained on {dataset} with "
        f"ddpm_lightning {config.get('ddpm_lightning_version')}.\n\n"
        f"{picture}"
        + "\n".join(
            [
                recipe_section(config),
                time_section(config),
                evaluation_section(config),
                use_section(config),
                load_section(config, name),
            ]
        )
    )
    return str(ModelCard(f"---\n{card_data(config, title).to_yaml()}\n---\n\n{body}"))
