"""The model card (README.md) of a model folder or a diffusers pipeline folder: Hub YAML front
matter (library, tags, datasets, license, the FLD as a model-index entry) and what a reader
needs to trust and use the model: recipe and settings, training time, evaluation, intended use,
how to install ddpm_lightning and load it. Cards travel: they name the model by a relative
folder, a shipped name or a Hub repo id, never by a path of the exporting machine."""

from __future__ import annotations

import shlex
from typing import Any

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ddpm_lightning import diffusion
from ddpm_lightning.components import REGISTRY, component_settings
from ddpm_lightning.components.defaults import class_defaults
from ddpm_lightning.data.registry import known_record
from ddpm_lightning.diffusion.guidance import AUTOGUIDANCE_SCALE, DEFAULT_GUIDANCE_SCALE
from ddpm_lightning.settings.overrides import override_key
from ddpm_lightning.training.module import MODULE_KEYS

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
# What a null guidance setting of a conditional model's sampler means (`diffusion.Denoiser`).
GUIDANCE_NULL = {
    "guidance_scale": str(DEFAULT_GUIDANCE_SCALE),
    "guidance_interval": "every step",
}
# ruff's line length in pyproject.toml: the card's Python example is formatted to it.
LINE_LENGTH = 100


def is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


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
    """`DDIMSampler (num_steps=20, eta=0.0, …)`, a null guidance setting written as what it
    means."""
    summary = sampler_summary(sampler, conditional)
    if not summary:
        return "not recorded"
    settings = ", ".join(
        f"{k}={GUIDANCE_NULL[k] if v is None and k in GUIDANCE_NULL else v}"
        for k, v in summary.items()
        if k != "sampler"
    )
    return f"{summary['sampler']} ({settings})"


def dataset_title(config: dict[str, Any], otherwise: str) -> str:
    """The title of the folder's dataset, or `otherwise` for one that is not registered."""
    record = known_record(config.get("dataset"), config.get("dataset_record"))
    return record.title if record else otherwise


def is_conditional(config: dict[str, Any]) -> bool:
    """Whether the folder's network takes class labels."""
    return (config.get("model") or {}).get("num_classes") is not None


def card_data(config: dict[str, Any], title: str, library: str = "ddpm_lightning") -> ModelCardData:
    """The front matter: Hub metadata and, when evaluated, the FLD as an EvalResult; `library`
    is the Hub's library_name (diffusers for pipeline folders, tagged ddpm_lightning)."""
    dataset = known_record(config.get("dataset"), config.get("dataset_record"))
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
    if library != "ddpm_lightning":
        tags.append("ddpm_lightning")
    return ModelCardData(
        library_name=library,
        license="mit",
        tags=tags + ([dataset.tag] if dataset and dataset.tag else []),
        datasets=[dataset.hub] if dataset and dataset.hub else None,
        pipeline_tag=None if conditional else "unconditional-image-generation",
        metrics=[result.metric_type for result in results] if results else None,
        model_name=title,
        eval_results=results,
    )


class SettingsDumper(yaml.SafeDumper):
    """Block style, with lists of plain values on one line: `channel_multipliers: [1, 2, 3]`."""

    def represent_list(self, data: list[Any]) -> yaml.Node:
        flat = not any(isinstance(item, dict | list) for item in data)
        return self.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flat)


SettingsDumper.add_representer(list, SettingsDumper.represent_list)


def settings_yaml(config: dict[str, Any]) -> str:
    """The DiffusionModule's settings of `config` (MODULE_KEYS: network, schedule, objective,
    optimizer, learning-rate schedule, data) as a YAML block's text."""
    settings = {key: config[key] for key in MODULE_KEYS if key in config}
    return yaml.dump(
        settings, Dumper=SettingsDumper, sort_keys=False, default_flow_style=False, width=100
    )


def weights_text(config: dict[str, Any]) -> str:
    """'the EMA weights after 49,548 optimizer steps', or what of it is recorded."""
    steps = config.get("global_step")
    kind = "the EMA weights" if config.get("ema") else "the raw weights (no EMA)"
    return f"{kind} after {steps:,} optimizer steps" if is_count(steps) else kind


def checkpoint_teacher(overrides: list[str]) -> str | None:
    """The `.ckpt` file a distillation round's `distill.teacher=` names (an earlier round's
    checkpoint, which the folder does not hold); None for a shipped or folder teacher."""
    for item in overrides:
        if override_key(item) == "distill.teacher" and item.endswith(".ckpt"):
            return item.split("=", 1)[1]
    return None


def recipe_section(config: dict[str, Any]) -> str:
    training = config.get("training") or {}
    overrides = training.get("overrides")
    command = (
        f"```bash\npython -m ddpm_lightning.train {shlex.join(overrides)}\n```"
        if overrides
        else "The run's command-line overrides were not recorded."
    )
    teacher = checkpoint_teacher(overrides or [])
    if teacher is not None:
        command = (
            f"The last distillation round; its teacher, `{teacher}`, is the checkpoint of the "
            "round before (the whole distillation: Training time and device).\n\n" + command
        )
    return (
        f"## Training recipe\n\n{command}\n\n"
        f"A `{config['model']['name']}` network of {config.get('num_parameters', 0):,} "
        f"parameters; the weights are {weights_text(config)}. Its settings (network, noise "
        "schedule, objective, optimizer, learning-rate schedule and data):\n\n"
        f"```yaml\n{settings_yaml(config)}```\n"
    )


def full_stop(text: str) -> str:
    """`text` ending in a full stop (unless it ends in one already, or in ? or !)."""
    text = text.strip()
    return text if text.endswith((".", "!", "?")) else f"{text}."


def time_section(config: dict[str, Any]) -> str:
    training = config.get("training") or {}
    steps = config.get("global_step")
    facts = [
        ("Distillation", training.get("distillation")),
        ("Device", training.get("device")),
        ("Training time", training.get("time")),
        ("Optimizer steps", f"{steps:,}" if is_count(steps) else None),
    ]
    lines = [f"- {label}: {full_stop(str(value))}" for label, value in facts if value]
    return "## Training time and device\n\n" + ("\n".join(lines) or "Not recorded.") + "\n"


def evaluate_overrides(overrides: list[str], name: str | None, guided: bool = False) -> list[str]:
    """The evaluate command's overrides, its model (`ckpt_path=` with the `train_task_name=`
    that finds it, or `pretrained=`) as `pretrained=name` when `name` loads this folder with
    `pretrained=`, which brings the guide of a `guided` folder (no `guide=`); the `task_name=`
    that named the evaluation's log folder goes too."""
    if name is None:
        return overrides
    model_keys = ("ckpt_path=", "train_task_name=", "pretrained=", "task_name=") + (
        ("guide=",) if guided else ()
    )
    kept = [override for override in overrides if not override.startswith(model_keys)]
    return [f"pretrained={name}", *kept]


def evaluation_section(config: dict[str, Any], name: str | None, guided: bool = False) -> str:
    """The FLD table and the evaluate command, run on `name` (what `pretrained=` takes) when
    the folder loads that way, else with the recorded checkpoint's file name; the guidance
    settings shown for conditional or `guided` folders."""
    evaluation = config.get("evaluation") or {}
    if "fld" not in evaluation:
        return "## Evaluation\n\nNot evaluated when exported.\n"
    overrides = evaluation.get("overrides")
    command = (
        "\n\n```bash\npython -m ddpm_lightning.evaluate "
        f"{shlex.join(evaluate_overrides(overrides, name, guided))}\n```"
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
        f"{sampler_text(evaluation.get('sampler'), is_conditional(config) or guided)} |"
        f"{command}\n\n"
        "FLD is the Fréchet distance between LeNet-5 features of generated images and of the "
        f"test set, with {scoring_lenet(evaluation)} (lower is better). It compares only "
        "with FLDs from the same LeNet and number of samples; fewer samples give higher values.\n"
    )


def calls_section(config: dict[str, Any]) -> str:
    """The FLD at each recorded number of network calls per sample (`export calls=`)."""
    points = config.get("evaluation_by_calls")
    if not points:
        return ""
    distilled = (config.get("training") or {}).get("distillation")
    which = " (the distillation line above says which weights each row used)" if distilled else ""
    rows = "".join(
        f"| {int(point['network_evaluations'])} | {float(point['fld']):.2f} | "
        f"{int(point['num_samples']):,} |\n"
        for point in points
    )
    return (
        "## FLD by network calls\n\n"
        "| network calls per sample | FLD | samples |\n|---|---|---|\n"
        f"{rows}\nEach row is an evaluate run with that many network calls per sample, scored "
        f"as in the table above{which}.\n"
    )


def scoring_lenet(evaluation: dict[str, Any]) -> str:
    """Which LeNet scored the FLD: the shipped one, or one the classifier command trained
    (`evaluate classifier=`), named by its SHA-256's first characters."""
    lenet = str(evaluation.get("lenet") or "")
    if not lenet or lenet.endswith("(shipped)"):
        return "the LeNet shipped in ddpm_lightning"
    return f"a LeNet trained by `python -m ddpm_lightning.classifier` (SHA-256 {lenet.split()[0]}…)"


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
    """` sampler.key=value`, shell-quoted as the card's commands are; a list without spaces,
    None as YAML's `null`."""
    text = f"[{','.join(str(v) for v in value)}]" if isinstance(value, list | tuple) else value
    text = "null" if value is None else text
    return f" {shlex.quote(f'sampler.{key}={text}')}"


def make_sampler_call(cls: str, settings: dict[str, Any]) -> str:
    """`sampler = module.make_sampler(cls, key=value, …)` on one line, or one argument per line
    when that is longer than the project's 100 characters (as ruff formats it)."""
    arguments = [cls, *(f"{key}={python_literal(value)}" for key, value in settings.items())]
    line = f"sampler = module.make_sampler({', '.join(arguments)})"
    if len(line) <= LINE_LENGTH:
        return line
    return "sampler = module.make_sampler(\n" + "".join(f"    {a},\n" for a in arguments) + ")"


def install_text(extra: str | None) -> str:
    """How ddpm_lightning is installed: with pip, from a checkout of its source."""
    target = f'".[{extra}]"' if extra else "."
    return (
        "ddpm_lightning is installed with pip from a checkout of its source, in the checkout's "
        f"folder:\n\n```bash\npip install -e {target}\n```\n\n"
    )


def load_section(config: dict[str, Any], name: str, guided: bool = False) -> str:
    """How to sample the folder from the command line and from Python; a `guided` folder's
    guide goes on the module, guiding at every step as the commands do."""
    conditional = is_conditional(config)
    summary = sampler_summary(config.get("sampler"), conditional) or {"sampler": "DDIMSampler"}
    cls = summary.pop("sampler")
    option = getattr(diffusion, cls, diffusion.DDIMSampler).name
    defaults = class_defaults("sampler", option)
    settings = {
        key: value
        for key, value in summary.items()
        if value is not None or defaults.get(key) is not None
    }
    if guided:
        settings["guidance_interval"] = None
    guide = (
        f'module.guide = load_folder_guide("{name}")  # the weaker model it ships, guide/\n'
        if guided
        else ""
    )
    loads = "load_folder_guide, load_pretrained" if guided else "load_pretrained"
    overrides = "".join(override(key, value) for key, value in settings.items())
    imports = "import torch\n" if conditional else ""
    labels = (
        "\n# the labels to draw, e.g. 16 of class 3:\n"
        "threes = module.generate(sampler, num_samples=16, seed=0, labels=torch.full((16,), 3))\n"
        if conditional
        else ""
    )
    return (
        f"## How to load\n\n{install_text(None)}"
        "```bash\n"
        f"python -m ddpm_lightning.sample pretrained={name} sampler={option}{overrides}\n```\n\n"
        f"```python\n{imports}from ddpm_lightning import {loads}\n"
        f"from ddpm_lightning.diffusion import {cls}\n\n"
        f'module = load_pretrained("{name}")  # a DiffusionModule in eval mode, on the CPU\n'
        f"{guide}"
        f"{make_sampler_call(cls, settings)}\n"
        "images = module.generate(sampler, num_samples=16, seed=0)  # (16, C, H, W) in [-1, 1]\n"
        f"{labels}```\n\n"
        f"Recommended sampler: {sampler_text(config.get('sampler'), conditional)}. "
        "`pretrained=` also takes a local copy of this folder.\n"
    )


def ddim_steps(config: dict[str, Any]) -> int:
    """The DDIM steps the pipeline card shows: the recommended sampler's (50 when it has
    none), at most T (DDIMScheduler takes no more)."""
    steps = (config.get("sampler") or {}).get("num_steps") or 50
    return min(int(steps), int(config["schedule"].get("num_timesteps", steps)))


def ours_load_section(config: dict[str, Any], name: str) -> str:
    """How to load a pipeline folder whose network is our UNet (`DDPMLightningUNet`)."""
    conditional = is_conditional(config)
    labels = (
        "threes = pipeline(batch_size=16, class_labels=3, generator=generator).images  "
        "# guided, γ=1.25\n"
        if conditional
        else ""
    )
    unconditional = (
        "DDPMPipeline passes no class labels: it draws a conditional model's unconditional "
        "samples (the null label's). "
        if conditional
        else ""
    )
    return (
        "## How to load\n\n"
        "This folder is a diffusers pipeline: `model_index.json` names diffusers' `DDPMPipeline`, "
        "`unet/` holds ddpm_lightning's UNet as `DDPMLightningUNet` (its config.json and "
        "safetensors weights; the folder holds no code) and `scheduler/` a `DDPMScheduler` that "
        "follows the model's noise schedule and objective. The UNet's class comes with "
        f"ddpm_lightning and its `hf` extra (diffusers). {install_text('hf')}"
        "```python\nimport torch\n\n"
        "from ddpm_lightning.sharing.diffusers_model import DDPMLightningPipeline\n\n"
        f'pipeline = DDPMLightningPipeline.from_pretrained("{name}")\n'
        "generator = torch.Generator().manual_seed(0)\n"
        "images = pipeline(batch_size=16, generator=generator).images  # PIL images, all T steps\n"
        f"{labels}```\n\n"
        "diffusers' own classes load it once that module is imported (diffusers takes a class "
        "from outside its libraries only from a module the program imported):\n\n"
        "```python\nimport ddpm_lightning.sharing.diffusers_model  # noqa: F401\n"
        "from diffusers import DDIMScheduler, DiffusionPipeline\n\n"
        f'pipeline = DiffusionPipeline.from_pretrained("{name}")  # a DDPMPipeline\n'
        "pipeline.scheduler = DDIMScheduler.from_config(pipeline.scheduler.config)\n"
        f"images = pipeline(batch_size=16, num_inference_steps={ddim_steps(config)}).images\n"
        f"```\n\n{unconditional}"
        "ddpm_lightning's recommended sampler for this model is "
        f"{sampler_text(config.get('sampler'), conditional)}.\n"
    )


def unet2d_load_section(config: dict[str, Any], name: str) -> str:
    """How to load a pipeline folder whose network is diffusers' UNet2DModel (diffusers only)."""
    steps = config["schedule"].get("num_timesteps")
    conditional = (
        ' DDPMPipeline passes no class labels; `UNet2DModel.from_pretrained("'
        f'{name}", subfolder="unet")` takes `class_labels` (index {config["model"]["num_classes"]} '
        "is the null label)."
        if is_conditional(config)
        else ""
    )
    return (
        "## How to load\n\n"
        "A diffusers `DDPMPipeline` (`UNet2DModel` and `DDPMScheduler`): diffusers alone loads "
        'it.\n\n```bash\npip install "diffusers>=0.42"\n```\n\n'
        "```python\nimport torch\nfrom diffusers import DDPMPipeline\n\n"
        f'pipeline = DDPMPipeline.from_pretrained("{name}")\n'
        "generator = torch.Generator().manual_seed(0)\n"
        f"images = pipeline(batch_size=16, generator=generator, num_inference_steps={steps})"
        ".images\n"
        f"```\n\n`num_inference_steps` is the model's T.{conditional}\n"
    )


def card_text(config: dict[str, Any], title: str, data: ModelCardData, sections: list[str]) -> str:
    """The card: front matter, title, the trained-with line, samples.png and `sections`."""
    dataset = dataset_title(config, "its data")
    body = (
        f"# {title}\n\nA denoising diffusion model trained on {dataset} with "
        f"ddpm_lightning {config.get('ddpm_lightning_version')}.\n\n" + "\n".join(sections)
    )
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}"))


def picture_text(num_samples: int) -> str:
    return (
        f"![{num_samples} samples of the recommended sampler, seed 0](samples.png)\n"
        if num_samples
        else ""
    )


def card_title(config: dict[str, Any], suffix: str) -> str:
    kind = "Class-conditional DDPM" if is_conditional(config) else "DDPM"
    return f"{kind} on {dataset_title(config, 'its data')} ({suffix})"


def guide_section(guide: dict[str, Any] | None) -> str:
    """What the folder's guide (`guide/`, its config.json `guide`) is and how it is used."""
    if guide is None:
        return ""
    overrides = (guide.get("training") or {}).get("overrides")
    command = (
        f"\n\n```bash\npython -m ddpm_lightning.train {shlex.join(overrides)}\n```"
        if overrides
        else ""
    )
    return (
        "## Guide\n\n"
        "The folder ships a weaker model of the same data and noise schedule in `guide/`, which "
        "the sample and evaluate commands guide away from (autoguidance, Karras et al. 2024, "
        f'"Guiding a Diffusion Model with a Bad Version of Itself"): γ = {AUTOGUIDANCE_SCALE} '
        "at every step unless `sampler.guidance_scale=` or `sampler.guidance_interval=` says "
        "otherwise, and `guide=false` samples without it. Each guided step calls both networks. "
        f"The guide is a `{guide['model']['name']}` network of "
        f"{guide.get('num_parameters', 0):,} parameters; its weights are "
        f"{weights_text(guide)}.{command}\n"
    )


def model_card(
    config: dict[str, Any], name: str, num_samples: int, guide: dict[str, Any] | None = None
) -> str:
    """README.md of a model folder from its config.json; `name` is what `pretrained=` takes
    (a shipped name, a relative folder or a repo id), `num_samples` how many images
    samples.png shows (0: none), `guide` the config.json of the guide it ships, if any."""
    title = card_title(config, "ddpm_lightning")
    sections = [
        picture_text(num_samples),
        recipe_section(config),
        guide_section(guide),
        time_section(config),
        evaluation_section(config, name, guide is not None),
        calls_section(config),
        use_section(config),
        load_section(config, name, guide is not None),
    ]
    return card_text(config, title, card_data(config, title), [s for s in sections if s])


def pipeline_card(config: dict[str, Any], name: str, num_samples: int) -> str:
    """README.md of a diffusers pipeline folder (`export format=diffusers`) from the config a
    model folder would hold; `name` is what `from_pretrained` takes (a relative folder or a
    repo id), `num_samples` how many images samples.png shows (0: none)."""
    title = card_title(config, "ddpm_lightning, diffusers pipeline")
    ours = config["model"]["name"] != "diffusers_unet"
    load = ours_load_section if ours else unet2d_load_section
    sections = [
        picture_text(num_samples),
        recipe_section(config),
        time_section(config),
        evaluation_section(config, None),
        use_section(config),
        load(config, name),
    ]
    data = card_data(config, title, library="diffusers")
    return card_text(config, title, data, [s for s in sections if s])
