"""The demo command (`python -m ddpm_lightning.demo`) without a browser: the page's sampler
(ddpm.js, run in Node) gives the Python samplers' timesteps and samples for the same noise, the
site lists every shipped model, onnxruntime-web comes from `npm pack` into a cache, and what
goes wrong is one line."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from unittest.mock import patch

import numpy as np
import pytest
import torch

from ddpm_lightning.config import compose_config
from ddpm_lightning.data.image_folder import ImageFolderDataModule
from ddpm_lightning.demo import demo
from ddpm_lightning.diffusion import DDIMSampler, DDPMSampler
from ddpm_lightning.diffusion.consistency_sampler import ConsistencySampler
from ddpm_lightning.diffusion.denoiser import Denoiser
from ddpm_lightning.diffusion.flow_samplers import FlowEulerSampler, FlowHeunSampler
from ddpm_lightning.diffusion.noise import SampleNoise
from ddpm_lightning.diffusion.samplers import SPACINGS, timestep_sequence
from ddpm_lightning.diffusion.schedules import NoiseSchedule
from ddpm_lightning.editing import inpaint, known_mask, sdedit
from ddpm_lightning.editing.inpaint import repaint_plan, updates_in
from ddpm_lightning.editing.sdedit import start_index
from ddpm_lightning.errors import ConfigError, DataError
from ddpm_lightning.sharing import load_folder, npm, pretrained, site
from ddpm_lightning.sharing.folder import GUIDE_DIR
from ddpm_lightning.sharing.onnx import onnx_record
from ddpm_lightning.sharing.site import PAGE_DIR, site_server
from tests.conftest import fed_step_noise, tiny_model_folder

NODE = shutil.which("node")
needs_node = pytest.mark.skipif(
    NODE is None, reason="node is not installed (apt-get install nodejs)"
)
PAGE_SCRIPT = (PAGE_DIR / "ddpm.js").as_uri()
# The closed-form denoiser of the Node runs: 0.8 x + 0.001 t (+ 0.01 y with labels, + 0.02 γ
# for a network that takes γ, 1 where not given, as the page feeds it), and for a record with a
# guide, the guide's: 0.5 x + 0.002 t (+ 0.03 y); it prints the images and each call's [batch
# size, γ or null], a guide's as ["guide", batch size].
NODE_SAMPLE = """
import { readFileSync } from 'node:fs';
import { sample, takesGuidance } from '__PAGE__';
const job = JSON.parse(readFileSync(0, 'utf8'));
const size = job.record.data_shape.reduce((a, b) => a * b, 1);
const calls = [];
const denoise = async (x, t, y, batch, g) => {
  calls.push([batch, g ? g[0] : null]);
  const gammas = g ?? (takesGuidance(job.record) ? new Array(batch).fill(1) : null);
  return x.map((v, k) => {
    const s = Math.floor(k / size);
    return 0.8 * v + 0.001 * t[s] + (y ? 0.01 * y[s] : 0) + (gammas ? 0.02 * gammas[s] : 0);
  });
};
const guide = !job.record.guide ? null : async (x, t, y, batch) => {
  calls.push(['guide', batch]);
  return x.map((v, k) => {
    const s = Math.floor(k / size);
    return 0.5 * v + 0.002 * t[s] + (y ? 0.03 * y[s] : 0);
  });
};
let used = 0;
const normal = (n) => Float32Array.from(job.stepNoise.slice(used, (used += n)));
const noise = Float32Array.from(job.noise);
const images = await sample({ ...job, noise, denoise, guide, normal });
console.log(JSON.stringify({ images: Array.from(images), calls }));
""".replace("__PAGE__", PAGE_SCRIPT)
# The page's pixels: (shape, RGBA bytes) of each job's image, or the error it throws.
NODE_PIXELS = """
import { readFileSync } from 'node:fs';
import { imageShape, rgba } from '__PAGE__';
const jobs = JSON.parse(readFileSync(0, 'utf8'));
console.log(JSON.stringify(jobs.map(({ record, images, index }) => {
  try {
    const shape = imageShape(record);
    return [shape, Array.from(rgba(Float32Array.from(images), shape, index))];
  } catch (error) {
    return error.message;
  }
})));
""".replace("__PAGE__", PAGE_SCRIPT)
NODE_ZOOMS = """
import { readFileSync } from 'node:fs';
import { zoomedWidth } from '__PAGE__';
console.log(JSON.stringify(JSON.parse(readFileSync(0, 'utf8')).map(([w, t]) => zoomedWidth(w, t))));
""".replace("__PAGE__", PAGE_SCRIPT)
NODE_TIMESTEPS = """
import { readFileSync } from 'node:fs';
import { timestepSequence } from '__PAGE__';
const cases = JSON.parse(readFileSync(0, 'utf8'));
console.log(JSON.stringify(cases.map(([a, n, spacing]) => timestepSequence(a, n, spacing))));
""".replace("__PAGE__", PAGE_SCRIPT)
NODE_VISITED = """
import { readFileSync } from 'node:fs';
import { visitedTimesteps } from '__PAGE__';
const cases = JSON.parse(readFileSync(0, 'utf8'));
console.log(JSON.stringify(cases.map(([record, settings]) => visitedTimesteps(record, settings))));
""".replace("__PAGE__", PAGE_SCRIPT)

# An edit of the page (inpaint or sdedit) with the closed-form denoiser and fed draws.
NODE_EDIT = """
import { readFileSync } from 'node:fs';
import { editDraws, inpaint, sdedit } from '__PAGE__';
const job = JSON.parse(readFileSync(0, 'utf8'));
const denoise = async (x, t) => x.map((v) => 0.8 * v + 0.001 * t[0]);
let used = 0;
const normal = (n) => Float32Array.from(job.stepNoise.slice(used, (used += n)));
const steps = [];
const images = await (job.method === 'sdedit' ? sdedit : inpaint)({
  ...job,
  denoise,
  image: Float32Array.from(job.image),
  known: Float32Array.from(job.known),
  initial: Float32Array.from(job.initial),
  draws: editDraws(normal, job.initial.length),
  onStep: (i, total, t) => steps.push([i, total, t]),
});
console.log(JSON.stringify([Array.from(images), steps]));
""".replace("__PAGE__", PAGE_SCRIPT)
# The page's edits of a model (its record's objective) with a sampler: each one's refusal.
NODE_EDIT_REFUSALS = """
import { readFileSync } from 'node:fs';
import { inpaint, sdedit } from '__PAGE__';
const { record, settings } = JSON.parse(readFileSync(0, 'utf8'));
const refusals = [];
for (const edit of [inpaint, sdedit]) {
  try {
    await edit({ record, settings });
    refusals.push(null);
  } catch (error) {
    refusals.push(error.message);
  }
}
console.log(JSON.stringify(refusals));
""".replace("__PAGE__", PAGE_SCRIPT)
# The page's masks, compositing, brush, RePaint plan and SDEdit start for the Python side.
NODE_EDIT_HELPERS = """
import { readFileSync } from 'node:fs';
import { brushStroke, composite, knownMask, repaintPlan, startIndex } from '__PAGE__';
const job = JSON.parse(readFileSync(0, 'utf8'));
const masks = job.masks.map(([name, h, w]) => Array.from(knownMask(name, h, w)));
const mixed = Array.from(composite(Float32Array.from(job.known), Float32Array.from(job.kept),
                                   Float32Array.from(job.filled)));
const strokes = job.strokes.map(([h, w, from, to, radius]) => {
  const pixels = new Float32Array(h * w).fill(-1);
  brushStroke(pixels, h, w, from, to, radius, 1);
  return Array.from(pixels);
});
const plans = job.plans.map(([n, jumps, length]) => repaintPlan(n, jumps, length));
const starts = job.starts.map(([steps, T, strength]) => startIndex(steps, T, strength));
let refused = null;
try { knownMask('middle', 4, 4); } catch (error) { refused = error.message; }
console.log(JSON.stringify({ masks, mixed, strokes, plans, starts, refused }));
""".replace("__PAGE__", PAGE_SCRIPT)


STEP_COUNTS = (1, 2, 3, 4, 5, 7, 10, 19, 20, 50, 333, 999, 1000)
# The step counts of consistency sampling to check: its students take one to a few steps.
CONSISTENCY_STEPS = (1, 2, 4)
# The page's fill regions (masks.py's names but random:P) and SDEdit strengths to check.
FILL_NAMES = ("bottom", "top", "left", "right", "center")
STRENGTHS = (0.0, 0.9, 0.7, 0.5, 0.1, 1.0)


def run_node(script: str, job) -> list:
    result = subprocess.run(
        [NODE, "--input-type=module", "-e", script],
        input=json.dumps(job),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


class ClosedForm:
    """The Node runs' denoiser in torch: 0.8 x + 0.001 t (+ 0.01 y for labels, + 0.02 γ for a
    student of distilled guidance, γ = 1 where not given); as a `guide`, 0.5 x + 0.002 t
    (+ 0.03 y)."""

    def __init__(self, num_classes: int | None, takes_guidance: bool = False, guide=False):
        self.num_classes = num_classes
        self.takes_guidance = takes_guidance
        self.gains = (0.5, 0.002, 0.03) if guide else (0.8, 0.001, 0.01)

    def __call__(self, x, t, y=None, guidance=None):
        gain, per_t, per_y = self.gains
        output = gain * x + per_t * t.float().view(-1, 1, 1, 1)
        if y is not None:
            output = output + per_y * y.float().view(-1, 1, 1, 1)
        if self.takes_guidance:
            scales = torch.ones(len(x)) if guidance is None else guidance
            output = output + 0.02 * scales.view(-1, 1, 1, 1)
        return output


@needs_node
def test_the_page_visits_pythons_timesteps():
    cases, expected = [], []
    for name in ("cosine", "linear"):
        for T in (20, 1000):
            schedule = NoiseSchedule(name, T)
            for n in [n for n in STEP_COUNTS if n <= T]:
                for spacing in SPACINGS:
                    cases.append((schedule.alphas_cumprod.tolist(), n, spacing))
                    expected.append(timestep_sequence(schedule, n, spacing))
    assert len(cases) == 2 * (9 + 13) * len(SPACINGS)
    assert run_node(NODE_TIMESTEPS, cases) == expected


@needs_node
def test_the_page_visits_pythons_consistency_timesteps():
    """The page's consistency sampling visits ConsistencySampler's timesteps: num_steps of the
    spacing (trailing when the settings name none), or the explicit list while num_steps is its
    length; another num_steps takes the spacing's again."""
    cases, expected = [], []
    for name in ("cosine", "linear"):
        for T in (20, 1000):
            schedule = NoiseSchedule(name, T)
            record = {
                "num_timesteps": T,
                "schedule": {"alphas_cumprod": schedule.alphas_cumprod.tolist()},
            }
            for n in CONSISTENCY_STEPS:
                for spacing in ("trailing", None, "uniform"):
                    settings = {"name": "consistency", "num_steps": n}
                    settings |= {} if spacing is None else {"spacing": spacing}
                    cases.append((record, settings))
                    sampler = ConsistencySampler(schedule, n, spacing or "trailing", progress=False)
                    expected.append(sampler.steps())
            listed = [T - 1, T // 2, T // 5, 1]
            for n in (4, 2):
                settings = {"name": "consistency", "num_steps": n, "spacing": "trailing"}
                cases.append((record, {**settings, "timesteps": listed}))
                if n == len(listed):
                    expected.append(
                        ConsistencySampler(schedule, timesteps=listed, progress=False).steps()
                    )
                else:
                    expected.append(timestep_sequence(schedule, n, "trailing"))
    assert expected[:11] == [[19]] * 3 + [[19, 9], [19, 9], [19, 0]] + [
        [19, 14, 9, 4],
        [19, 14, 9, 4],
        [19, 13, 6, 0],
        [19, 10, 4, 1],
        [19, 9],
    ]
    assert run_node(NODE_VISITED, cases) == expected


SAMPLE_CASES = {
    "ddim eps uniform eta 0": dict(objective="eps", name="ddim", steps=6, spacing="uniform"),
    "ddim v trailing eta 1": dict(objective="v", name="ddim", steps=6, eta=1.0, spacing="trailing"),
    "ddim x0 karras eta 0.5 unclipped": dict(
        objective="x0", name="ddim", steps=5, eta=0.5, spacing="karras", clip=False
    ),
    "ddim eps logsnr guided": dict(
        objective="eps", name="ddim", steps=4, spacing="logsnr", gamma=2.5, classes=10
    ),
    "ddim v uniform guided on an interval": dict(
        objective="v",
        name="ddim",
        steps=6,
        spacing="uniform",
        gamma=3.0,
        classes=10,
        interval=[0.5, 3.0],
    ),
    "ddim v quadratic unguided labels": dict(
        objective="v", name="ddim", steps=4, spacing="quadratic", gamma=1.0, classes=10
    ),
    "ddim v trailing guided student on an interval": dict(
        objective="v",
        name="ddim",
        steps=6,
        spacing="trailing",
        gamma=2.0,
        classes=10,
        interval=[0.5, 3.0],
        student=True,
    ),
    "ddpm eps fixed_small": dict(objective="eps", name="ddpm"),
    "ddpm x0 fixed_large guided": dict(
        objective="x0", name="ddpm", variance="fixed_large", gamma=0.5, classes=10
    ),
    "consistency v trailing 1 step": dict(objective="v", name="consistency", steps=1),
    "consistency eps trailing 2 steps": dict(objective="eps", name="consistency", steps=2),
    "consistency x0 trailing 4 steps guided": dict(
        objective="x0", name="consistency", steps=4, gamma=2.0, classes=10
    ),
    "consistency v explicit timesteps unclipped": dict(
        objective="v", name="consistency", timesteps=[19, 12, 6, 2], clip=False
    ),
    "ddim v eta 1 autoguided by an eps guide": dict(
        objective="v",
        name="ddim",
        steps=6,
        eta=1.0,
        spacing="trailing",
        gamma=1.5,
        guide=dict(objective="eps"),
    ),
    "ddim eps conditional autoguided by a conditional x0 guide on an interval": dict(
        objective="eps",
        name="ddim",
        steps=6,
        spacing="uniform",
        gamma=2.0,
        classes=10,
        interval=[0.5, 3.0],
        guide=dict(objective="x0", classes=10),
    ),
    "ddpm x0 unclipped autoguided by a v guide": dict(
        objective="x0", name="ddpm", gamma=1.5, clip=False, guide=dict(objective="v")
    ),
    "flow_euler flow 6 steps": dict(objective="flow", name="flow_euler", steps=6),
    "flow_heun flow 5 steps unclipped": dict(
        objective="flow", name="flow_heun", steps=5, clip=False
    ),
    "flow_heun flow guided on an interval": dict(
        objective="flow", name="flow_heun", steps=5, gamma=2.0, classes=10, interval=[0.3, 2.0]
    ),
    "flow_euler flow autoguided by a flow guide": dict(
        objective="flow", name="flow_euler", steps=4, gamma=1.5, guide=dict(objective="flow")
    ),
}


@needs_node
@pytest.mark.parametrize("case", SAMPLE_CASES.values(), ids=SAMPLE_CASES.keys())
def test_the_page_samples_what_python_samples_from_the_same_noise(case, tmp_path):
    student = case.get("student", False)
    folder = tiny_model_folder(
        tmp_path / "model", case["objective"], case.get("classes"), guidance_embedding=student
    )
    module = load_folder(folder)
    schedule = module.diffusion.schedule
    denoising = dict(
        clip_x0=case.get("clip", True),
        guidance_scale=case.get("gamma"),
        guidance_interval=case.get("interval"),
    )
    network = ClosedForm(case.get("classes"), student)
    guide = None
    if "guide" in case:
        weak = case["guide"]
        module.guide = load_folder(
            tiny_model_folder(tmp_path / "guide", weak["objective"], weak.get("classes"), seed=1)
        )
        weak_network = ClosedForm(weak.get("classes"), guide=True)
        guide = Denoiser(weak_network, schedule, weak["objective"], False, 1.0)
    denoiser = Denoiser(network, schedule, case["objective"], **denoising, guide=guide)
    if case["name"] == "ddim":
        eta, spacing = case.get("eta", 0.0), case["spacing"]
        settings = dict(name="ddim", num_steps=case["steps"], eta=eta, spacing=spacing)
        sampler = DDIMSampler(schedule, case["steps"], eta, spacing, progress=False)
    elif case["name"] == "consistency":
        chosen = (
            {"timesteps": case["timesteps"]}
            if "timesteps" in case
            else {"num_steps": case["steps"], "spacing": "trailing"}
        )
        sampler = ConsistencySampler(schedule, **chosen, progress=False)
        settings = onnx_record(module, {"name": "consistency", **chosen})["sampler"]
        assert settings["timesteps"] == sampler.steps()
    elif case["name"] == "ddpm":
        settings = dict(name="ddpm", variance=case.get("variance", "fixed_small"))
        sampler = DDPMSampler(schedule, settings["variance"], progress=False)
    else:
        flow_sampler = FlowHeunSampler if case["name"] == "flow_heun" else FlowEulerSampler
        sampler = flow_sampler(schedule, case["steps"], progress=False)
        chosen = {"name": case["name"], "num_steps": case["steps"]}
        settings = onnx_record(module, chosen)["sampler"]
        assert {k: settings[k] for k in chosen} == chosen
    settings |= denoising
    if "interval" in case:
        scales = {denoiser.guidance_scale_at(t) for t in sampler.steps()}
        assert scales == {None, case["gamma"]}
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(3, 1, 32, 32, generator=generator)
    draws = torch.randn(len(sampler.steps()), 3, 1, 32, 32, generator=generator)
    labels = None if "classes" not in case else torch.tensor([0, 4, 9])
    with fed_step_noise(draws):
        expected = sampler.sample(denoiser, tuple(noise.shape), y=labels, noise=noise)
    record = onnx_record(
        module,
        {"name": "flow_euler", "num_steps": 4}
        if case["objective"] == "flow"
        else {
            "_target_": "ddpm_lightning.diffusion.samplers.DDIMSampler",
            "_partial_": True,
            "num_steps": 4,
        },
    )
    result = run_node(
        NODE_SAMPLE,
        {
            "record": record,
            "settings": settings,
            "noise": noise.flatten().tolist(),
            "labels": None if labels is None else labels.tolist(),
            "stepNoise": draws.flatten().tolist(),
        },
    )
    images = torch.tensor(result["images"]).reshape(expected.shape)
    assert (images - expected).abs().max() <= 1e-4
    assert expected.std() > 0.05
    if case["name"] in ("consistency", "flow_heun") and guide is None:
        batch = 6 if case.get("gamma", 1.0) != 1.0 else 3
        guided = [denoiser.guidance_scale_at(t) is not None for t in sampler.steps()]
        calls = [[batch if g else 3, None] for g in guided]
        if case["name"] == "flow_heun":
            later = [[batch if g else 3, None] for g in guided[1:]]
            calls = [
                call for pair in zip(calls, [*later, None], strict=True) for call in pair if call
            ]
            assert len(calls) == sampler.network_evaluations()
        assert result["calls"] == calls
    if student:
        assert record["inputs"] == ["x", "t", "y", "guidance"]
        scales = [denoiser.guidance_scale_at(t) for t in sampler.steps()]
        assert result["calls"] == [[3, scale] for scale in scales]
    if guide is not None:
        assert record["guide"]["objective"] == case["guide"]["objective"]
        guided = [denoiser.guidance_scale_at(t) not in (None, 1.0) for t in sampler.steps()]
        expected_calls = [[[3, None], ["guide", 3]] if g else [[3, None]] for g in guided]
        assert result["calls"] == [call for step in expected_calls for call in step]
        assert 0 < sum(guided) <= len(guided) and (sum(guided) < len(guided)) == (
            "interval" in case
        )


def brushed(height: int, width: int, start, end, radius: float) -> np.ndarray:
    """(H·W,) of -1 with 1 at the pixels whose centres lie within `radius` of the segment."""
    centres = np.stack(np.meshgrid(np.arange(height), np.arange(width), indexing="ij"), -1)
    points = centres[..., ::-1] + 0.5
    a, b = np.array(start, dtype=float), np.array(end, dtype=float)
    span = b - a
    along = np.zeros((height, width)) if not span.any() else ((points - a) @ span) / (span @ span)
    nearest = a + np.clip(along, 0, 1)[..., None] * span
    inside = ((points - nearest) ** 2).sum(-1) <= radius**2
    return np.where(inside, 1.0, -1.0).flatten()


@needs_node
def test_the_pages_masks_compositing_and_brush_are_pythons():
    masks = [(name, h, w) for name in FILL_NAMES for h, w in ((32, 32), (28, 28), (5, 3))]
    rng = np.random.default_rng(0)
    known = (rng.uniform(size=(4, 3)) < 0.5).astype(np.float32)
    kept, filled = rng.normal(size=(2, 2, 3, 4, 3)).astype(np.float32)
    strokes = [(32, 32, [3.2, 4.7], [20.1, 9.4], 1.5), (8, 12, [5.0, 5.0], [5.0, 5.0], 2.0)]
    plans = [(50, 1, 10), (50, 3, 10), (7, 2, 3), (20, 10, 10)]
    starts = [(timestep_sequence(NoiseSchedule("cosine", 20), 5), 20, s) for s in STRENGTHS]
    job = {
        "masks": masks,
        "known": known.flatten().tolist(),
        "kept": kept.flatten().tolist(),
        "filled": filled.flatten().tolist(),
        "strokes": strokes,
        "plans": plans,
        "starts": starts,
    }
    result = run_node(NODE_EDIT_HELPERS, job)
    for (name, h, w), mask in zip(masks, result["masks"], strict=True):
        assert mask == known_mask(name, h, w).flatten().tolist(), (name, h, w)
    assert sum(result["masks"][0]) == 32 * 16
    expected = known[None, None] * kept + (1 - known[None, None]) * filled
    np.testing.assert_allclose(np.array(result["mixed"]), expected.flatten(), atol=1e-6)
    for (h, w, start, end, radius), pixels in zip(strokes, result["strokes"], strict=True):
        assert pixels == brushed(h, w, start, end, radius).tolist()
    assert (np.array(result["strokes"][1]) == 1).sum() == 12
    for (n, jumps, length), plan in zip(plans, result["plans"], strict=True):
        assert [tuple(move) for move in plan] == repaint_plan(n, jumps, length)
    assert result["starts"] == [start_index(*case) for case in starts]
    assert result["starts"] == [None, 0, 1, 2, 4, 0]
    assert result["refused"] == "no fill region middle: choose one of " + ", ".join(FILL_NAMES)


EDIT_CASES = {
    "inpaint ddim eta 1 bottom": dict(method="inpaint", name="ddim", steps=6, eta=1.0),
    "inpaint ddim eta 0 repaint": dict(
        method="inpaint", name="ddim", steps=7, eta=0.0, jumps=3, length=3, mask="center"
    ),
    "inpaint ddpm": dict(method="inpaint", name="ddpm", mask="left"),
    "sdedit ddim strength 0.6": dict(method="sdedit", name="ddim", steps=6, eta=1.0, strength=0.6),
    "sdedit ddim strength 1": dict(method="sdedit", name="ddim", steps=5, eta=0.5, strength=1.0),
    "sdedit ddpm strength 0.3": dict(method="sdedit", name="ddpm", strength=0.3),
}


@needs_node
@pytest.mark.parametrize("case", EDIT_CASES.values(), ids=EDIT_CASES.keys())
def test_the_pages_edits_are_pythons_for_the_same_noise(case, tmp_path):
    module = load_folder(tiny_model_folder(tmp_path / "model", "v"))
    schedule = module.diffusion.schedule
    denoiser = Denoiser(ClosedForm(None), schedule, "v", clip_x0=True)
    if case["name"] == "ddim":
        settings = dict(name="ddim", num_steps=case["steps"], eta=case["eta"], spacing="uniform")
        sampler = DDIMSampler(schedule, case["steps"], case["eta"], "uniform", progress=False)
    else:
        settings = dict(name="ddpm", variance="fixed_small")
        sampler = DDPMSampler(schedule, "fixed_small", progress=False)
    settings |= dict(clip_x0=True, guidance_scale=None, guidance_interval=None)
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(3, 1, 32, 32, generator=generator) * 2 - 1
    noise = torch.randn(3, 1, 32, 32, generator=generator)
    draws = torch.randn(200, 3, 1, 32, 32, generator=generator)
    known = known_mask(case.get("mask", "bottom"), 32, 32)
    jumps, length = case.get("jumps", 1), case.get("length", 10)
    with fed_step_noise(draws), patch.object(SampleNoise, "initial", lambda self: noise):
        if case["method"] == "inpaint":
            expected = inpaint(
                denoiser, image, known, sampler, resample_jumps=jumps, jump_length=length
            )
        else:
            expected = sdedit(denoiser, image, sampler, strength=case["strength"])
    record = onnx_record(
        module,
        {
            "_target_": "ddpm_lightning.diffusion.samplers.DDIMSampler",
            "_partial_": True,
            "num_steps": 4,
        },
    )
    images, steps = run_node(
        NODE_EDIT,
        {
            "method": case["method"],
            "record": record,
            "settings": settings,
            "labels": None,
            "image": image.flatten().tolist(),
            "known": known.flatten().tolist(),
            "initial": noise.flatten().tolist(),
            "stepNoise": draws.flatten().tolist(),
            "strength": case.get("strength"),
            "resampleJumps": jumps,
            "jumpLength": length,
        },
    )
    images = torch.tensor(images).reshape(expected.shape)
    assert (images - expected).abs().max() <= 1e-4
    assert expected.std() > 0.05
    visited = list(sampler.steps())
    if case["method"] == "inpaint":
        assert (images * known == image * known).all()
        updates = updates_in(repaint_plan(len(visited), jumps, length))
        assert [i for i, _, _ in steps] == list(range(updates))
        assert {total for _, total, _ in steps} == {updates}
    else:
        first = start_index(visited, 20, case["strength"])
        assert [t for _, _, t in steps] == visited[first:]


@needs_node
def test_the_pages_edits_refuse_consistency_sampling_and_flow_models_as_pythons_do(tmp_path):
    module = load_folder(tiny_model_folder(tmp_path / "model", "v"))
    sampler = module.make_sampler(ConsistencySampler, num_steps=2, progress=False)
    image = torch.zeros(1, 1, 32, 32)
    with pytest.raises(ConfigError, match=r"^edit=inpaint works with sampler=ddpm or sampler=ddim"):
        inpaint(module, image, known_mask("bottom", 32, 32), sampler)
    with pytest.raises(ConfigError, match=r"^edit=sdedit works with sampler=ddpm or sampler=ddim"):
        sdedit(module, image, sampler, strength=0.5)
    refusal = "edits work with DDIM or DDPM, not consistency sampling: choose one under Sampler"
    job = {"record": {"objective": "v"}, "settings": {"name": "consistency", "num_steps": 2}}
    assert run_node(NODE_EDIT_REFUSALS, job) == [refusal, refusal]
    flow = "edits follow the ᾱ path, but this model predicts the flow path: sample it, or edit "
    job = {"record": {"objective": "flow"}, "settings": {"name": "ddim", "num_steps": 2}}
    assert run_node(NODE_EDIT_REFUSALS, job) == [flow + "another model"] * 2


def expected_rgba(images: np.ndarray, index: int) -> list[int]:
    """Image `index` of `images` (N, C, H, W) in [-1, 1] as RGBA bytes: round((v + 1) · 127.5)
    per channel, grey (C = 1) in all three, alpha 255."""
    image = np.clip(images[index].astype(np.float64), -1, 1).transpose(1, 2, 0)
    rgb = np.floor((image + 1) * 127.5 + 0.5).astype(np.uint8)
    rgb = np.repeat(rgb, 3, axis=2) if rgb.shape[2] == 1 else rgb
    alpha = np.full((*rgb.shape[:2], 1), 255, dtype=np.uint8)
    return np.concatenate([rgb, alpha], axis=2).flatten().tolist()


@needs_node
def test_the_page_draws_grey_and_colour_images_of_any_size():
    generator = np.random.default_rng(0)
    colour = generator.uniform(-1.5, 1.5, (2, 3, 2, 5)).astype(np.float32)
    colour[1, :, 0, :3] = [[-1, 0, 1], [0, 1, -1], [1, -1, 0]]
    grey = generator.uniform(-1, 1, (1, 1, 64, 48)).astype(np.float32)
    old = generator.uniform(-1, 1, (1, 1, 32, 32)).astype(np.float32)
    jobs = [
        {"record": {"data_shape": [3, 2, 5]}, "images": colour.flatten().tolist(), "index": 1},
        {"record": {"data_shape": [1, 64, 48]}, "images": grey.flatten().tolist(), "index": 0},
        {"record": {}, "images": old.flatten().tolist(), "index": 0},
        {"record": {"data_shape": [2, 8, 8]}, "images": [0.0] * 128, "index": 0},
    ]
    pixels = run_node(NODE_PIXELS, jobs)
    assert pixels[0] == [[3, 2, 5], expected_rgba(colour, 1)]
    assert pixels[0][1][:12] == [0, 128, 255, 255, 128, 255, 0, 255, 255, 0, 128, 255]
    assert pixels[1] == [[1, 64, 48], expected_rgba(grey, 0)]
    assert pixels[2] == [[1, 32, 32], expected_rgba(old, 0)]
    assert pixels[3] == "the page draws images of 1 (grey) or 3 (RGB) channels, not of shape 2×8×8"
    zooms = [(32, 192), (64, 192), (28, 96), (64, 96), (48, 192), (300, 96)]
    assert run_node(NODE_ZOOMS, zooms) == [192, 192, 84, 128, 192, 300]


@pytest.fixture
def runtime_cache(tmp_path, monkeypatch) -> Path:
    """XDG_CACHE_HOME in tmp_path, with stand-ins for onnxruntime-web's files in its cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cache = npm.cache_folder()
    cache.mkdir(parents=True)
    for name in npm.ORT_WEB_FILES:
        (cache / name).write_text(f"stand-in for {name}")
    return cache


def test_the_site_offers_every_shipped_model_mnist_first(tmp_path, monkeypatch, runtime_cache):
    pytest.importorskip(
        "onnxscript", reason="the onnx extra is not installed (pip install -e '.[onnx]')"
    )
    shipped = tmp_path / "shipped"
    tiny_model_folder(shipped / "fashion_mnist")
    tiny_model_folder(shipped / "mnist")
    monkeypatch.setattr(pretrained, "SHIPPED_DIR", shipped)
    exported = []

    def write_onnx(out_dir, module, sampler, option):
        exported.append(out_dir.name)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "model.json").write_text(json.dumps(onnx_record(module, sampler)))

    monkeypatch.setattr(site, "write_onnx", write_onnx)
    cfg = compose_config(
        "demo", [f"paths.output_dir={tmp_path}", f"out_dir={tmp_path / 'site'}", "serve=false"]
    )
    demo(cfg)
    tiny_model_folder(shipped / "mnist_cond", num_classes=10)
    demo(cfg)
    assert exported == ["mnist", "fashion_mnist", "mnist", "mnist_cond", "fashion_mnist"]
    entries = json.loads((tmp_path / "site" / "models.json").read_text())
    assert [entry["id"] for entry in entries] == ["mnist", "mnist_cond", "fashion_mnist"]
    assert entries[:2] == [
        {"id": "mnist", "title": "MNIST", "path": "models/mnist"},
        {"id": "mnist_cond", "title": "MNIST, class-conditional", "path": "models/mnist_cond"},
    ]
    for name in ("index.html", "ddpm.js", "style.css"):
        assert (tmp_path / "site" / name).read_bytes() == (PAGE_DIR / name).read_bytes()
    for name in npm.ORT_WEB_FILES:
        assert (tmp_path / "site" / "ort" / name).read_text() == f"stand-in for {name}"


def test_the_build_says_each_stage_as_it_starts(tmp_path, monkeypatch, runtime_cache, capsys):
    pytest.importorskip(
        "onnxscript", reason="the onnx extra is not installed (pip install -e '.[onnx]')"
    )
    shipped = tmp_path / "shipped"
    tiny_model_folder(shipped / "mnist")
    tiny_model_folder(shipped / "mnist_cond", num_classes=10)
    monkeypatch.setattr(pretrained, "SHIPPED_DIR", shipped)
    printed = []

    def write_onnx(out_dir, module, sampler, option):
        printed.extend(capsys.readouterr().out.splitlines())
        printed.append(f"(export of {out_dir.name})")
        out_dir.mkdir(parents=True, exist_ok=True)

    monkeypatch.setattr(site, "write_onnx", write_onnx)
    folder = tmp_path / "site"
    cfg = compose_config(
        "demo", [f"paths.output_dir={tmp_path}", f"out_dir={folder}", "serve=false"]
    )
    demo(cfg)
    printed.extend(capsys.readouterr().out.splitlines())
    assert printed == [
        f"out_dir: {folder}",
        f"onnxruntime-web@1.30.0 from the cache {runtime_cache}",
        "[1/2] exporting mnist to ONNX",
        "(export of mnist)",
        "[2/2] exporting mnist_cond to ONNX",
        "(export of mnist_cond)",
        "copying onnxruntime-web into ort/",
        "writing the page: index.html, ddpm.js, style.css, models.json",
        f"built the demo of mnist, mnist_cond into {folder}",
    ]


def test_the_build_says_it_fetches_onnxruntime_web_and_fails_before_exporting(
    tmp_path, monkeypatch, capsys
):
    pytest.importorskip(
        "onnxscript", reason="the onnx extra is not installed (pip install -e '.[onnx]')"
    )
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(fake_npm(tmp_path / "bin", exit_code=1)))
    folder = tmp_path / "site"
    overrides = [f"paths.output_dir={tmp_path}", f"out_dir={folder}", "serve=false"]
    with pytest.raises(DataError, match=r"^npm pack onnxruntime-web@1.30.0 failed"):
        demo(compose_config("demo", [*overrides, "models=[mnist]"]))
    assert capsys.readouterr().out.splitlines() == [
        f"out_dir: {folder}",
        f"fetching onnxruntime-web@1.30.0 with npm pack into {npm.cache_folder()}",
    ]


def test_a_folder_models_title_and_class_names_come_from_its_saved_record(tmp_path):
    """A model of a folder of images the registry does not know: the menu names the folder
    and model.json holds its class folders, both from the record saved with the model."""
    pytest.importorskip(
        "onnxscript", reason="the onnx extra is not installed (pip install -e '.[onnx]')"
    )
    for label in ("ants", "bees"):
        (tmp_path / "pics" / label).mkdir(parents=True)
        (tmp_path / "pics" / label / "0.bmp").write_bytes(b"BM" + bytes(60))
    record = ImageFolderDataModule(root=str(tmp_path / "pics"), labels="folders").record
    folder = tiny_model_folder(tmp_path / "model", num_classes=2, dataset=None)
    config = json.loads((folder / "config.json").read_text())
    config["dataset_record"] = record.as_dict()
    (folder / "config.json").write_text(json.dumps(config))
    ddim = {"_target_": "ddpm_lightning.diffusion.samplers.DDIMSampler", "_partial_": True}
    entry = site.add_model(tmp_path / "site", str(folder), {**ddim, "num_steps": 4})
    assert entry["title"] == "pics, class-conditional (model)"
    written = json.loads((tmp_path / "site" / "models" / "model" / "model.json").read_text())
    assert (written["num_classes"], written["class_names"]) == (2, ["ants", "bees"])
    assert site.model_title(None, 2, "model") == "unknown data, class-conditional (model)"


def test_a_model_list_the_page_cannot_show_is_one_line(tmp_path, runtime_cache):
    pytest.importorskip(
        "onnxscript", reason="the onnx extra is not installed (pip install -e '.[onnx]')"
    )
    folder = tiny_model_folder(tmp_path / "tiny")
    overrides = [f"paths.output_dir={tmp_path}", f"out_dir={tmp_path / 'site'}", "serve=false"]
    with pytest.raises(ConfigError, match=r"^models=\[\] leaves the page empty"):
        demo(compose_config("demo", [*overrides, "models=[]"]))
    with pytest.raises(ConfigError, match=r"names tiny twice; list each model once$"):
        demo(compose_config("demo", [*overrides, f"models=[{folder},{folder}]"]))


def fake_npm(folder: Path, exit_code: int = 0) -> Path:
    """An `npm` that writes a tarball of stand-in dist/ files (or fails with ENOTFOUND) and
    counts its calls in calls.txt."""
    folder.mkdir()
    script = folder / "npm"
    script.write_text(
        f"#!{sys.executable}\n"
        "import io, pathlib, sys, tarfile\n"
        "calls = pathlib.Path(__file__).with_name('calls.txt')\n"
        "calls.write_text(calls.read_text() + ' '.join(sys.argv[1:]) + '\\n' "
        "if calls.exists() else ' '.join(sys.argv[1:]) + '\\n')\n"
        f"if {exit_code}:\n"
        "    print('npm error code ENOTFOUND', file=sys.stderr)\n"
        "    print('npm error network request failed', file=sys.stderr)\n"
        f"    sys.exit({exit_code})\n"
        "destination = pathlib.Path(sys.argv[sys.argv.index('--pack-destination') + 1])\n"
        "with tarfile.open(destination / 'onnxruntime-web-1.30.0.tgz', 'w:gz') as tar:\n"
        f"    for name in {npm.ORT_WEB_FILES!r} + ('ort.min.js',):\n"
        "        data = f'packed {name}'.encode()\n"
        "        info = tarfile.TarInfo('package/dist/' + name)\n"
        "        info.size = len(data)\n"
        "        tar.addfile(info, io.BytesIO(data))\n"
    )
    script.chmod(0o755)
    return folder


def test_npm_pack_fills_the_cache_once(tmp_path, monkeypatch):
    bin_dir = fake_npm(tmp_path / "bin")
    monkeypatch.setenv("PATH", str(bin_dir))
    cache = tmp_path / "cache"
    files = npm.runtime_files(cache)
    assert files == {name: cache / name for name in npm.ORT_WEB_FILES}
    assert sorted(p.name for p in cache.iterdir()) == sorted(npm.ORT_WEB_FILES)
    assert files["ort.wasm.bundle.min.mjs"].read_text() == "packed ort.wasm.bundle.min.mjs"
    npm.runtime_files(cache)
    calls = (bin_dir / "calls.txt").read_text().splitlines()
    assert len(calls) == 1
    assert calls[0].startswith("pack onnxruntime-web@1.30.0 --pack-destination ")


def test_without_npm_or_the_registry_it_is_one_line(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(DataError) as info:
        npm.runtime_files(cache)
    assert str(info.value) == (
        "the demo needs onnxruntime-web@1.30.0 but npm is not installed: install Node.js's npm "
        "(e.g. apt-get install npm) with access to the npm registry, or put "
        "ort.wasm.bundle.min.mjs and ort-wasm-simd-threaded.wasm of onnxruntime-web@1.30.0 "
        f"(its dist/ folder) into {cache}"
    )
    monkeypatch.setenv("PATH", str(fake_npm(tmp_path / "bin", exit_code=1)))
    with pytest.raises(DataError) as info:
        npm.runtime_files(cache)
    assert str(info.value).startswith(
        "npm pack onnxruntime-web@1.30.0 failed (npm error code ENOTFOUND): install Node.js's npm"
    )
    assert not cache.exists()


def test_the_server_gives_browsers_the_types_they_need(tmp_path):
    files = {
        "ddpm.js": "text/javascript",
        "ort.mjs": "text/javascript",
        "ort.wasm": "application/wasm",
    }
    for name in files:
        (tmp_path / name).write_text(name)
    server = site_server(tmp_path, 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        for name, content_type in files.items():
            url = f"http://127.0.0.1:{server.server_address[1]}/{name}"
            with urllib.request.urlopen(url, timeout=10) as response:
                assert response.headers["Content-Type"] == content_type
                assert response.read() == name.encode()
    finally:
        server.shutdown()
        server.server_close()


def test_a_busy_port_is_one_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=rf"^port={port} cannot be used on 127.0.0.1 \("):
            site_server(tmp_path, port)


def test_each_model_starts_with_its_own_recommended_sampler(tmp_path):
    """Unless the command line chooses a sampler, a folder that recommends DDIM-3 (a distilled
    student) opens with DDIM-3; a folder that recommends none keeps the command's."""
    pytest.importorskip(
        "onnxscript", reason="the onnx extra is not installed (pip install -e '.[onnx]')"
    )
    student = tiny_model_folder(tmp_path / "student")
    config = json.loads((student / "config.json").read_text())
    recommended = {"name": "ddim", "num_steps": 3, "eta": 0.0, "spacing": "trailing"}
    (student / "config.json").write_text(json.dumps({**config, "sampler": recommended}))
    plain = tiny_model_folder(tmp_path / "plain")
    ddim = {"_target_": "ddpm_lightning.diffusion.samplers.DDIMSampler", "_partial_": True}
    chosen = {**ddim, "num_steps": 7, "eta": 1.0, "clip_x0": False}
    cases = [
        (student, [], 3, 0.0),
        (student, ["sampler.num_steps=7"], 7, 1.0),
        (student, ["sampler.eta=1.0"], 7, 1.0),
        (student, ["sampler.clip_x0=false"], 3, 0.0),
        (student, None, 7, 1.0),
        (plain, [], 7, 1.0),
    ]
    for folder, overrides, steps, eta in cases:
        site.add_model(tmp_path / "site", str(folder), chosen, overrides)
        path = tmp_path / "site" / "models" / folder.name / "model.json"
        written = json.loads(path.read_text())["sampler"]
        assert (written["num_steps"], written["eta"]) == (steps, eta), overrides
        assert written["clip_x0"] is (overrides == [] and folder == student), overrides


def test_a_consistency_student_starts_with_consistency_sampling(tmp_path):
    """A folder that recommends 2-step consistency sampling opens with it: model.json's record
    names the sampler, its spacing and the timesteps it visits."""
    pytest.importorskip(
        "onnxscript", reason="the onnx extra is not installed (pip install -e '.[onnx]')"
    )
    student = tiny_model_folder(tmp_path / "student")
    config = json.loads((student / "config.json").read_text())
    recommended = {"name": "consistency", "num_steps": 2}
    (student / "config.json").write_text(json.dumps({**config, "sampler": recommended}))
    ddim = {"_target_": "ddpm_lightning.diffusion.samplers.DDIMSampler", "_partial_": True}
    site.add_model(tmp_path / "site", str(student), {**ddim, "num_steps": 7}, [])
    written = json.loads((tmp_path / "site" / "models" / "student" / "model.json").read_text())
    assert written["sampler"] == {
        "name": "consistency",
        "num_steps": 2,
        "spacing": "trailing",
        "timesteps": [19, 9],
        "clip_x0": True,
        "guidance_scale": None,
        "guidance_interval": None,
    }


def test_a_folder_with_a_guide_is_autoguided_on_the_page(tmp_path):
    """A folder that ships a guide (guide/, here of another objective) gets guide.onnx beside
    model.onnx, the guide network's torch output on the same inputs, and a model.json that
    names it and starts at autoguidance's γ = 1.5 at every step, as `sample` draws it (also
    outside a command, overrides None); the command line's γ and interval win; a folder
    without one writes no guide."""
    onnxruntime = pytest.importorskip(
        "onnxruntime", reason="the onnx extra is not installed (pip install -e '.[onnx]')"
    )
    pytest.importorskip("onnxscript", reason="the onnx extra is not installed")
    folder = tiny_model_folder(tmp_path / "guided", "v")
    tiny_model_folder(folder / GUIDE_DIR, "eps", seed=1)
    plain = tiny_model_folder(tmp_path / "plain", "v")
    ddim = {"_target_": "ddpm_lightning.diffusion.samplers.DDIMSampler", "_partial_": True}
    chosen = {**ddim, "num_steps": 7, "guidance_scale": 2.5, "guidance_interval": [0.5, 3.0]}
    cases = [
        ([], 1.5, None),
        (["sampler.guidance_scale=2.5"], 2.5, None),
        (["sampler.guidance_interval=[0.5,3.0]"], 1.5, [0.5, 3.0]),
        (None, 1.5, None),
    ]
    for overrides, gamma, interval in cases:
        site.add_model(tmp_path / "site", str(folder), chosen, overrides)
        written = tmp_path / "site" / "models" / "guided"
        record = json.loads((written / "model.json").read_text())
        assert record["guide"] == {
            "file": "guide.onnx",
            "inputs": ["x", "t"],
            "objective": "eps",
            "num_classes": None,
        }
        sampler = record["sampler"]
        assert (sampler["guidance_scale"], sampler["guidance_interval"]) == (gamma, interval)
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([19, 3])
    session = onnxruntime.InferenceSession(str(written / "guide.onnx"))
    output = session.run(None, {"x": x.numpy(), "t": t.numpy()})[0]
    with torch.no_grad():
        expected = load_folder(folder / GUIDE_DIR).model(x, t)
    assert np.abs(output - expected.numpy()).max() < 1e-4
    site.add_model(tmp_path / "site", str(plain), {**ddim, "num_steps": 7}, [])
    assert not (tmp_path / "site" / "models" / "plain" / "guide.onnx").exists()
    assert "guide" not in json.loads((tmp_path / "site/models/plain/model.json").read_text())


def test_a_flow_model_on_a_site_gets_a_flow_sampler(tmp_path):
    """One sampler option serves a site's models of either path: a flow model given an ᾱ-path
    sampler (outside a command, or chosen on the command line) starts at flow_heun with that
    sampler's clipping, a v model given a flow sampler at DDIM; a sampler of the model's path
    stays."""
    pytest.importorskip("onnxscript", reason="the onnx extra is not installed")
    plain = tiny_model_folder(tmp_path / "plain", "v")
    site.add_model(tmp_path / "site", str(plain), {"name": "flow_euler", "clip_x0": False}, None)
    record = json.loads((tmp_path / "site" / "models" / "plain" / "model.json").read_text())
    assert {k: record["sampler"][k] for k in ("name", "num_steps", "clip_x0")} == {
        "name": "ddim",
        "num_steps": 20,
        "clip_x0": False,
    }
    folder = tiny_model_folder(tmp_path / "flow", "flow")
    ddim = {"name": "ddim", "num_steps": 7, "clip_x0": False}
    cases = [
        (ddim, None, {"name": "flow_heun", "num_steps": 20, "clip_x0": False}),
        (ddim, ["sampler=ddim"], {"name": "flow_heun", "num_steps": 20, "clip_x0": False}),
        (
            {"name": "flow_euler", "num_steps": 7},
            ["sampler=flow_euler"],
            {"name": "flow_euler", "num_steps": 7, "clip_x0": True},
        ),
    ]
    for sampler, overrides, expected in cases:
        site.add_model(tmp_path / "site", str(folder), sampler, overrides)
        record = json.loads((tmp_path / "site" / "models" / "flow" / "model.json").read_text())
        assert {key: record["sampler"][key] for key in expected} == expected


@needs_node
def test_more_steps_than_T_visit_each_timestep_once_as_in_python():
    schedule = NoiseSchedule("cosine", 20)
    record = {"num_timesteps": 20, "schedule": {"alphas_cumprod": schedule.alphas_cumprod.tolist()}}
    samplers = {
        "ddim": DDIMSampler(schedule, 25, spacing="trailing", progress=False),
        "flow_euler": FlowEulerSampler(schedule, 25, progress=False),
        "consistency": ConsistencySampler(schedule, 25, "trailing", progress=False),
    }
    cases = [(record, {"name": name, "num_steps": 25, "spacing": "trailing"}) for name in samplers]
    expected = [sampler.steps() for sampler in samplers.values()]
    assert expected[0] == list(range(19, -1, -1))
    assert run_node(NODE_VISITED, cases) == expected
