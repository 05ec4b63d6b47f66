"""Model folders (ddpm_lightning.sharing and the export command): export → load round trip,
model cards, `pretrained=` forms (shipped name, folder, Hub repo id), refused folders, the Hub
upload (mocked: no test reaches the network) and the shipped models."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file, save_file

from ddpm_lightning import load_pretrained
from ddpm_lightning.components import build
from ddpm_lightning.config import compose_config
from ddpm_lightning.diffusion import DDIMSampler
from ddpm_lightning.errors import ConfigError, DataError
from ddpm_lightning.evaluate import evaluate
from ddpm_lightning.evaluation.fld import sha256
from ddpm_lightning.export import export
from ddpm_lightning.sample import sample
from ddpm_lightning.sharing import hub
from ddpm_lightning.sharing.card import (
    checkpoint_teacher,
    evaluate_overrides,
    load_section,
    model_card,
    sampler_text,
)
from ddpm_lightning.sharing.pretrained import SHIPPED_DIR, load_model, shipped
from ddpm_lightning.train import train
from ddpm_lightning.training.checkpoints import load_module, read_checkpoint
from ddpm_lightning.training.module import MODULE_KEYS
from tests.conftest import (
    PYTHON,
    REPO_ROOT,
    cli_env,
    tiny_config,
    tiny_model_folder,
    write_fake_dataset,
    writing_config,
)

SHIPPED_LIMIT = 5 * 2**20
SHIPPED = [
    "fashion_mnist",
    "fashion_mnist_fast",
    "mnist",
    "mnist_cond",
    "mnist_cond_fast",
    "mnist_fast",
]
METRICS = {
    "fld": 12.345678,
    "mean_confidence": 0.9,
    "label_counts": [1] * 10,
    "num_samples": 1000,
    "seed": 0,
    "sampler": {"_target_": "ddpm_lightning.diffusion.samplers.DDIMSampler", "num_steps": 7},
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """last.ckpt of a 3-step run of the tiny UNet with EMA, in a folder with Hydra overrides."""
    root = tmp_path_factory.mktemp("run")
    write_fake_dataset(root / "data", "MNIST")
    run = root / "run"
    train(
        tiny_config(
            root / "data",
            run,
            "trainer.max_epochs=1",
            "+trainer.limit_train_batches=3",
            "+trainer.limit_val_batches=1",
        )
    )
    (run / ".hydra").mkdir()
    (run / ".hydra" / "overrides.yaml").write_text("- data=mnist\n- trainer.max_epochs=1\n")
    return run / "checkpoints" / "last.ckpt"


def export_config(out_dir: Path, *overrides: str):
    return compose_config(
        "export",
        [f"out_dir={out_dir}", f"paths.output_dir={out_dir}", "sampler.num_steps=2", *overrides],
    )


@pytest.fixture(scope="module")
def folder(checkpoint, tmp_path_factory) -> Path:
    """The tiny model exported with a metrics.json and a record, 16 samples in samples.png."""
    root = tmp_path_factory.mktemp("export")
    (root / "metrics.json").write_text(json.dumps(METRICS))
    (root / "record.json").write_text(
        json.dumps({"training_time": "3 s", "device": "CPU, 1 thread", "global_step": 99})
    )
    export(
        export_config(
            root / "tiny",
            f"ckpt_path={checkpoint}",
            f"metrics={root / 'metrics.json'}",
            f"record={root / 'record.json'}",
            "num_samples=16",
            "name=me/tiny",
        )
    )
    return root / "tiny"


@pytest.fixture
def copy(folder, tmp_path) -> Path:
    """A copy of the exported folder to damage."""
    return Path(shutil.copytree(folder, tmp_path / "copy"))


def test_export_round_trip_keeps_the_ema_weights_and_the_samples(checkpoint, folder):
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
        "samples.png",
    ]
    original = read_checkpoint(checkpoint)
    loaded = load_pretrained(folder)
    assert not loaded.training and loaded.hparams["dataset"] == "mnist"
    assert loaded.state_dict().keys() == original["state_dict"].keys()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, original["state_dict"][key]), key
    raw = original["current_model_state"]
    assert any(not torch.equal(raw[k], v) for k, v in original["state_dict"].items())
    from_checkpoint = load_module(checkpoint)
    images = [
        module.generate(module.make_sampler(DDIMSampler, num_steps=3, progress=False), 4, seed=0)
        for module in (from_checkpoint, loaded)
    ]
    assert torch.equal(*images)
    with Image.open(folder / "samples.png") as picture:
        assert picture.mode == "L" and picture.size == (8 * 34 + 2, 2 * 34 + 2)


def test_config_records_the_run_and_the_recommended_sampler(folder):
    config = json.loads((folder / "config.json").read_text())
    assert config["ema"] is True and config["global_step"] == 99  # the record wins
    assert config["training"] == {
        "overrides": ["data=mnist", "trainer.max_epochs=1"],
        "time": "3 s",
        "device": "CPU, 1 thread",
    }
    assert config["evaluation"]["fld"] == METRICS["fld"]
    assert config["sampler"]["name"] == "ddim" and "_target_" not in json.dumps(config)
    assert config["sampler"]["num_steps"] == 2
    assert config["data_shape"] == [1, 32, 32] and config["ddpm_lightning_version"] == "0.2.0"
    assert config["sha256"] == sha256(folder / "model.safetensors")


def test_model_card_front_matter_parses_and_reports_the_fld(folder):
    text = (folder / "README.md").read_text()
    _, front, body = text.split("---\n", 2)
    meta = yaml.safe_load(front)
    assert meta["library_name"] == "ddpm_lightning" and meta["license"] == "mit"
    assert set(meta["tags"]) == {"diffusion", "ddpm", "mnist", "image-generation"}
    assert meta["datasets"] == ["ylecun/mnist"]
    (result,) = meta["model-index"][0]["results"]
    (metric,) = result["metrics"]
    assert metric["type"] == "fld" and metric["value"] == METRICS["fld"]
    assert metric["args"]["num_steps"] == 7 and metric["args"]["sampler"] == "DDIMSampler"
    for section in (
        "## Training recipe",
        "## Training time and device",
        "## Evaluation",
        "## Intended use and limits",
        "## How to load",
    ):
        assert section in body, section
    assert "python -m ddpm_lightning.train data=mnist trainer.max_epochs=1" in body
    assert "- Device: CPU, 1 thread.\n- Training time: 3 s.\n- Optimizer steps: 99.\n" in body
    assert "| 12.35 |" in body
    assert "ddpm_lightning.sample pretrained=me/tiny sampler=ddim sampler.num_steps=2" in body
    assert "guidance" not in body.split("## How to load")[1], "unconditional: never guided"


def test_a_conditional_model_card_reports_the_share_classified_as_requested(tmp_path, monkeypatch):
    source = tiny_model_folder(tmp_path / "source", num_classes=10)
    metrics = {**METRICS, "requested_label_accuracy": 0.995}
    metrics["sampler"] = {**METRICS["sampler"], "guidance_scale": 1.25}
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text("- sampler.guidance_interval=[0.3,4]\n")
    files = export(
        export_config(
            tmp_path / "cond",
            f"pretrained={source}",
            f"metrics={tmp_path / 'metrics.json'}",
            "samples=false",
            "sampler.guidance_scale=1.25",
        )
    )
    text = files["README.md"].read_text()
    meta = yaml.safe_load(text.split("---\n", 2)[1])
    assert "class-conditional" in meta["tags"] and "pipeline_tag" not in meta
    scores = {
        metric["type"]: metric["value"]
        for result in meta["model-index"][0]["results"]
        for metric in result["metrics"]
    }
    assert scores == {"fld": METRICS["fld"], "accuracy": 0.995}
    assert "# Class-conditional DDPM on MNIST (ddpm_lightning)" in text
    assert "| 12.35 | 99.50% | 0.900 | 1000 | 0 |" in text
    assert "guidance_scale=1.25" in text
    assert "sampler.guidance_scale=1.25 'sampler.guidance_interval=[0.3,4]'\n" in text
    evaluate = "ddpm_lightning.evaluate pretrained=cond 'sampler.guidance_interval=[0.3,4]'\n"
    assert evaluate in text, "run on this folder, shell-quoted"
    code = text.split("```python\n")[1].split("```")[0]
    assert "    guidance_interval=[0.3, 4],\n" in code
    assert max(len(line) for line in code.splitlines() if "load_pretrained(" not in line) <= 100
    namespace: dict = {}
    monkeypatch.chdir(tmp_path)  # the card loads the folder by its name, relative to here
    exec(code, namespace)  # the card's own loading example, labels included
    assert namespace["threes"].shape == (16, 1, 32, 32)


def run_with_local_paths(checkpoint: Path, root: Path) -> tuple[Path, list[str]]:
    """A copy of `checkpoint` in a run folder under `root`, with what runs on this machine
    record: train and evaluate overrides naming absolute paths, metrics.json and a record;
    (the copy, the export's metrics= and record= overrides)."""
    run, evaluation = root / "run", root / "evaluate"
    (run / "checkpoints").mkdir(parents=True)
    ckpt = Path(shutil.copy(checkpoint, run / "checkpoints" / "last.ckpt"))
    for folder, overrides in (
        (run, [f"data.root={root}/data", f"paths.output_dir={run}", "trainer.max_epochs=1"]),
        (evaluation, [f"ckpt_path={ckpt}", f"paths.output_dir={evaluation}", "num_samples=1000"]),
    ):
        (folder / ".hydra").mkdir(parents=True)
        (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (evaluation / "metrics.json").write_text(json.dumps(METRICS))
    record = {"training_time": "3 s", "device": "CPU, 1 thread", "global_step": 99}
    (root / "record.json").write_text(json.dumps(record))
    return ckpt, [f"metrics={evaluation / 'metrics.json'}", f"record={root / 'record.json'}"]


def machine_paths_in(folder: Path, root: Path) -> list[str]:
    """'file: path' for each path of this machine (`root`, the checkout, the home folder, /tmp)
    that a text file of the exported `folder` names."""
    paths = {str(root), str(REPO_ROOT), str(Path.home()), "/tmp"}
    return [
        f"{file.relative_to(folder)}: {path}"
        for file in sorted(folder.rglob("*"))
        if file.suffix in (".md", ".json")
        for path in paths
        if path in file.read_text()
    ]


def card_settings(card: str) -> dict:
    """The card's YAML block of settings, parsed."""
    return yaml.safe_load(card.split("```yaml\n")[1].split("```")[0])


def test_a_cards_sample_command_keeps_a_guidance_interval_of_every_step():
    sampler = {"name": "ddim", "num_steps": 4, "eta": 0, "guidance_scale": 1.3}
    config = {"model": {"num_classes": 10}, "sampler": {**sampler, "guidance_interval": None}}
    text = load_section(config, "mnist_cond_fast")
    assert " sampler.guidance_scale=1.3 sampler.guidance_interval=null\n" in text
    assert "    guidance_interval=None,\n" in text
    default = load_section({"model": {"num_classes": 10}, "sampler": {"name": "ddim"}}, "c")
    assert "guidance_scale" not in default.split("Recommended sampler")[0], "None: the default"


def test_a_null_guidance_setting_is_written_as_what_it_means():
    sampler = {"name": "ddim", "guidance_scale": None, "guidance_interval": None}
    text = sampler_text(sampler, conditional=True)
    assert "guidance_scale=1.25" in text and "guidance_interval=every step" in text
    assert "None" not in text
    assert "guidance" not in sampler_text(sampler, conditional=False)


@pytest.mark.parametrize("name", SHIPPED)
def test_a_shipped_card_is_the_card_its_config_writes(name):
    """Cards are rendered from config.json, never edited: a shipped card that drifted from what
    `export` writes today fails here."""
    folder = SHIPPED_DIR / name
    config = json.loads((folder / "config.json").read_text())
    num_samples = 64 if (folder / "samples.png").exists() else 0
    guide_path = folder / "guide" / "config.json"
    guide = json.loads(guide_path.read_text()) if guide_path.exists() else None
    assert (folder / "README.md").read_text() == model_card(config, name, num_samples, guide)


@pytest.mark.parametrize(
    ("overrides", "teacher"),
    [
        (["distill.teacher=round_1/last.ckpt"], "round_1/last.ckpt"),
        (["+distill.teacher=last.ckpt", "seed=1"], "last.ckpt"),
        (["distill.teacher=mnist"], None),
        (["distill.teacher_steps=8"], None),
    ],
)
def test_a_chained_rounds_checkpoint_teacher_is_named(overrides, teacher):
    assert checkpoint_teacher(overrides) == teacher


@pytest.mark.parametrize(
    ("name", "command"),
    [
        ("mnist", ["pretrained=mnist", "num_samples=10000"]),
        (None, ["ckpt_path=last", "train_task_name=mnist2h", "num_samples=10000", "task_name=e"]),
    ],
)
def test_the_card_evaluates_the_folder_not_the_run_it_came_from(name, command):
    """`evaluate ckpt_path=last train_task_name=mnist2h` found the run's checkpoint and logged
    under task_name=e; the card's command loads the folder by its name instead, so no such key
    stays."""
    recorded = ["ckpt_path=last", "train_task_name=mnist2h", "num_samples=10000", "task_name=e"]
    assert evaluate_overrides(recorded, name) == command


def test_a_card_names_no_path_of_this_machine(checkpoint, tmp_path):
    """Exported from a run under tmp_path, without name=: the card loads the folder by its own
    name, the evaluate command runs on it, overrides keep the recipe and lose the places."""
    ckpt, records = run_with_local_paths(checkpoint, tmp_path)
    files = export(
        export_config(tmp_path / "out" / "tiny", f"ckpt_path={ckpt}", *records, "samples=false")
    )
    assert machine_paths_in(tmp_path / "out" / "tiny", tmp_path) == []
    config = json.loads(files["config.json"].read_text())
    assert config["training"]["overrides"] == ["trainer.max_epochs=1"]
    assert config["evaluation"]["overrides"] == ["ckpt_path=last.ckpt", "num_samples=1000"]
    card = files["README.md"].read_text()
    assert card_settings(card) == {key: config[key] for key in MODULE_KEYS if key in config}
    assert "{'" not in card and "None" not in card, "no Python reprs"
    assert "pip install -e .\n" in card
    assert "python -m ddpm_lightning.evaluate pretrained=tiny num_samples=1000\n" in card
    assert "ddpm_lightning.sample pretrained=tiny " in card and 'load_pretrained("tiny")' in card
    assert "- Device: CPU, 1 thread.\n- Training time: 3 s.\n- Optimizer steps: 99.\n" in card


def test_a_name_that_is_a_path_of_this_machine_is_refused(checkpoint, tmp_path):
    with pytest.raises(ConfigError, match=f"name={tmp_path} is a path of this machine"):
        export(export_config(tmp_path / "out", f"ckpt_path={checkpoint}", f"name={tmp_path}"))
    assert not (tmp_path / "out").exists()


def test_a_card_without_metrics_has_no_model_index(checkpoint, tmp_path, monkeypatch):
    files = export(export_config(tmp_path / "plain", f"ckpt_path={checkpoint}", "samples=false"))
    assert "samples.png" not in files and not (tmp_path / "plain" / "samples.png").exists()
    meta = yaml.safe_load(files["README.md"].read_text().split("---\n", 2)[1])
    assert "model-index" not in meta and "Not evaluated" in files["README.md"].read_text()
    code = files["README.md"].read_text().split("```python\n")[1].split("```")[0]
    namespace: dict = {}
    monkeypatch.chdir(tmp_path)
    exec(code, namespace)  # the card's own loading example
    assert namespace["images"].shape == (16, 1, 32, 32)


def test_exporting_a_folder_again_keeps_weights_and_record(folder, tmp_path):
    files = export(export_config(tmp_path / "again", f"pretrained={folder}", "samples=false"))
    assert sha256(files["model.safetensors"]) == sha256(folder / "model.safetensors")
    again = json.loads(files["config.json"].read_text())
    first = json.loads((folder / "config.json").read_text())
    for key in ("model", "schedule", "ema", "global_step", "training", "evaluation"):
        assert again[key] == first[key], key


def rewrite_weights(folder: Path, change) -> None:
    """Apply `change` to the folder's tensors and record the new file's SHA-256."""
    tensors = load_file(folder / "model.safetensors")
    change(tensors)
    save_file(tensors, folder / "model.safetensors")
    config = json.loads((folder / "config.json").read_text())
    config["sha256"] = sha256(folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.pop(sorted(t)[0]), r"1 missing \(model\."),
        (lambda t: t.update(extra=torch.zeros(1)), r"1 unexpected \(extra\)"),
        (
            lambda t: t.update({k: torch.zeros(3, 3) for k in sorted(t)[:1]}),
            r"1 of the wrong shape \(model\.\S+ \(3, 3\) instead of",
        ),
    ],
    ids=["missing key", "unexpected key", "wrong shape"],
)
def test_weights_that_do_not_match_the_config_are_refused(copy, change, message):
    rewrite_weights(copy, change)
    with pytest.raises(DataError, match=f"model.safetensors does not match config.json: {message}"):
        load_pretrained(copy)


def test_a_changed_weights_file_fails_the_sha256_check(copy):
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"x")
    with pytest.raises(DataError, match="SHA-256 .* does not match config.json's"):
        load_pretrained(copy)


def test_a_folder_without_config_is_refused(tmp_path):
    with pytest.raises(DataError, match="is not a model folder: it has no config.json"):
        load_pretrained(tmp_path)


def test_bad_export_and_pretrained_settings_name_the_key(checkpoint, folder, tmp_path):
    with pytest.raises(
        ConfigError, match=r"format=png is not supported; .*\['folder', 'diffusers', 'onnx'\]"
    ):
        export(export_config(tmp_path, f"ckpt_path={checkpoint}", "format=png"))
    with pytest.raises(ConfigError, match="exactly one of ckpt_path"):
        export(export_config(tmp_path, f"ckpt_path={checkpoint}", f"pretrained={folder}"))
    with pytest.raises(ConfigError, match="not both"):
        load_model(checkpoint, folder)
    with pytest.raises(ConfigError, match=rf"is not a shipped model \({', '.join(SHIPPED)}\)"):
        load_pretrained("no such model")


def test_a_hub_repo_id_is_downloaded_into_the_cache(folder, monkeypatch):
    calls = []

    def snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(folder)

    monkeypatch.setattr(hub, "snapshot_download", snapshot_download)
    assert load_pretrained("me/tiny").hparams["dataset"] == "mnist"
    files = ["config.json", "model.safetensors", "guide/config.json", "guide/model.safetensors"]
    assert calls == [("me/tiny", {"allow_patterns": files})]


def test_an_unreachable_hub_repo_is_one_line(tmp_path):
    """Offline (HF_HUB_OFFLINE=1, an empty HF_HOME): the sample command ends in one line."""
    env = {**cli_env(), "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    result = subprocess.run(
        [PYTHON, "-m", "ddpm_lightning.sample", "pretrained=nobody/no-such-model"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: pretrained=nobody/no-such-model:")
    assert "LocalEntryNotFoundError" in lines[0] and "pretrained=PATH/TO/FOLDER" in lines[0]


def test_push_to_hub_uploads_the_written_folder(checkpoint, tmp_path, monkeypatch):
    """huggingface_hub has no local fake Hub: HfApi's two calls are recorded instead."""
    calls = []

    class Commit:
        commit_url = "https://huggingface.co/me/tiny/commit/1"

    monkeypatch.setattr(hub, "get_token", lambda: "hf_test")
    monkeypatch.setattr(
        hub.HfApi, "create_repo", lambda self, *args, **kw: calls.append(("create", args, kw))
    )

    def upload_folder(self, **kwargs):
        calls.append(("upload", self.token, kwargs))
        return Commit()

    monkeypatch.setattr(hub.HfApi, "upload_folder", upload_folder)
    out = tmp_path / "pushed"
    export(export_config(out, f"ckpt_path={checkpoint}", "samples=false", "push_to_hub=me/tiny"))
    create, upload = calls
    assert create == ("create", ("me/tiny",), {"repo_type": "model", "exist_ok": True})
    assert upload[:2] == ("upload", "hf_test")
    assert upload[2]["repo_id"] == "me/tiny" and upload[2]["folder_path"] == out
    assert "pretrained=me/tiny" in (out / "README.md").read_text()


def test_push_without_a_token_fails_before_any_work(checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr(hub, "get_token", lambda: None)
    out = tmp_path / "never"
    with pytest.raises(ConfigError, match="push_to_hub=me/tiny needs a Hugging Face token"):
        export(export_config(out, f"ckpt_path={checkpoint}", "push_to_hub=me/tiny"))
    with pytest.raises(ConfigError, match="not a Hub repo id"):
        export(export_config(out, f"ckpt_path={checkpoint}", "push_to_hub=no-slash"))
    assert not out.exists()


@pytest.mark.parametrize(
    ("name", "dataset", "num_classes"),
    [
        ("mnist", "mnist", None),
        ("fashion_mnist", "fashion_mnist", None),
        ("mnist_cond", "mnist", 10),
        ("mnist_fast", "mnist", None),
        ("fashion_mnist_fast", "fashion_mnist", None),
        ("mnist_cond_fast", "mnist", 10),
    ],
)
def test_shipped_model_is_small_intact_and_samples(name, dataset, num_classes, tmp_path):
    assert shipped() == SHIPPED
    config = json.loads((SHIPPED_DIR / name / "config.json").read_text())
    assert (SHIPPED_DIR / name / "model.safetensors").stat().st_size < SHIPPED_LIMIT
    assert config["ema"] is True and config["evaluation"]["num_samples"] == 10_000
    card = (SHIPPED_DIR / name / "README.md").read_text()
    meta = yaml.safe_load(card.split("---\n", 2)[1])
    fld = meta["model-index"][0]["results"][0]["metrics"][0]["value"]
    assert fld == config["evaluation"]["fld"]
    module = load_pretrained(name)
    assert module.hparams["dataset"] == dataset and module.num_classes == num_classes
    files = sample(
        writing_config(
            "sample",
            tmp_path,
            f"pretrained={name}",
            "sampler.num_steps=2",
            "num_samples=4",
            "gif_images=4",
        )
    )
    assert np.load(files["samples.npz"])["images"].shape == (4, 1, 32, 32)


@pytest.mark.parametrize("name", ["mnist_fast", "fashion_mnist_fast", "mnist_cond_fast"])
def test_a_shipped_student_recommends_its_steps_and_records_its_distillation(name):
    """The 4-step students: the recommended sampler is the one their FLD was measured with, one
    network call per step, and the card names the method and the FLD per call count."""
    config = json.loads((SHIPPED_DIR / name / "config.json").read_text())
    student = {"name": "ddim", "num_steps": 4, "eta": 0.0, "spacing": "trailing"}
    assert {key: config["sampler"][key] for key in student} == student
    assert {key: config["evaluation"]["sampler"][key] for key in student} == student
    by_calls = {row["network_evaluations"]: row["fld"] for row in config["evaluation_by_calls"]}
    assert by_calls[4] == config["evaluation"]["fld"]
    assert "progressive distillation" in config["training"]["distillation"]
    card = (SHIPPED_DIR / name / "README.md").read_text()
    assert "## FLD by network calls" in card and "- Distillation: progressive" in card
    module = load_pretrained(name)
    sampler = module.make_sampler(build("sampler", config["sampler"]), progress=False)
    assert sampler.network_evaluations() == 4


def test_evaluate_a_shipped_model(tmp_path):
    metrics = evaluate(
        writing_config(
            "evaluate", tmp_path, "pretrained=mnist", "sampler.num_steps=2", "num_samples=100"
        )
    )
    assert sum(metrics["label_counts"]) == 100 and metrics["fld"] > 0
    assert metrics["pretrained"] == "mnist" and metrics["seed"] == 0


def test_the_card_reports_the_distillation_and_fld_by_network_calls(checkpoint, tmp_path):
    table = tmp_path / "summary.csv"
    table.write_text(
        "job,status,ckpt_path,fld,network_evaluations,num_samples\n"
        "0,ok,/here/a.ckpt,3.5,4.0,10000.0\n1,failed,/here/b.ckpt,,2.0,\n"
        "2,ok,/here/c.ckpt,9.25,1.0,10000.0\n"
    )
    (tmp_path / "record.json").write_text(
        json.dumps(
            {
                "distillation": "progressive, 64 → 4 steps in 4 rounds",
                "train_overrides": ["experiment=distill", "distill.teacher=last.ckpt"],
            }
        )
    )
    files = export(
        export_config(
            tmp_path / "fast",
            f"ckpt_path={checkpoint}",
            f"calls={table}",
            f"record={tmp_path / 'record.json'}",
            "samples=false",
        )
    )
    config = json.loads(files["config.json"].read_text())
    assert config["evaluation_by_calls"] == [
        {"network_evaluations": 1.0, "fld": 9.25, "num_samples": 10000.0},
        {"network_evaluations": 4.0, "fld": 3.5, "num_samples": 10000.0},
    ]
    card = files["README.md"].read_text()
    assert "- Distillation: progressive, 64 → 4 steps in 4 rounds.\n" in card
    assert "| 1 | 9.25 | 10,000 |\n| 4 | 3.50 | 10,000 |\n" in card and "/here" not in card
    assert "its teacher, `last.ckpt`, is the checkpoint of the round before" in card
    again = export(
        export_config(tmp_path / "again", f"pretrained={tmp_path / 'fast'}", "samples=false")
    )
    assert (
        json.loads(again["config.json"].read_text())["evaluation_by_calls"]
        == config["evaluation_by_calls"]
    )
    table.write_text("job,status,fld\n0,ok,3.5\n")
    with pytest.raises(DataError, match=r"^calls=.* has no network_evaluations column: pass"):
        export(export_config(tmp_path / "bad", f"ckpt_path={checkpoint}", f"calls={table}"))
