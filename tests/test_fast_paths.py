"""The fast paths (`model.channels_last`, `model.compile`, `trainer.precision`) compute the same
model as the plain path, and leave checkpoints interchangeable."""

import copy
import logging
import math
import time

import pytest
import torch
from lightning.pytorch.callbacks import Timer
from lightning.pytorch.trainer.states import RunningStage
from lightning.pytorch.utilities.model_summary import ModelSummary
from torch.utils.flop_counter import FlopCounterMode

from ddpm_lightning.config import compose, compose_config
from ddpm_lightning.errors import ConfigError
from ddpm_lightning.models import UNet
from ddpm_lightning.models.blocks import MultiheadAttention
from ddpm_lightning.train import train
from ddpm_lightning.training import compiling
from ddpm_lightning.training.checkpoints import load_module
from ddpm_lightning.training.compiling import CompileLongRuns
from ddpm_lightning.training.module import DiffusionModule
from ddpm_lightning.training.safety import check_resume_checkpoint
from tests.conftest import tiny_config

TINY_UNET = {
    "in_channels": 1,
    "model_channels": 8,
    "channel_multipliers": [1, 2],
    "block_groups": 4,
    "num_attention_heads": 2,
    "num_timesteps": 20,
}
SCHEDULE = {"_target_": "ddpm_lightning.diffusion.schedules.NoiseSchedule", "num_timesteps": 20}
# float32 convolutions in NHWC vs NCHW (and fused vs eager kernels) add up products in another
# order. Measured on the tiny UNet: outputs (|out| <= 2.1) differ by <= 1.6e-6, each parameter's
# gradient by <= 4e-5 of its largest entry. A layout bug gives errors of order 1.
OUTPUT_TOLERANCE = {"atol": 1e-5, "rtol": 1e-4}
GRADIENT_TOLERANCE = 1e-3  # of each parameter's largest gradient entry


def tiny_unet() -> UNet:
    torch.manual_seed(0)
    return UNet(**TINY_UNET)


def tiny_inputs(batch_size: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """x: (B, 1, 32, 32) noise, t: (B,) spread over the schedule."""
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(batch_size, 1, 32, 32, generator=generator)
    return x, torch.linspace(0, 19, batch_size).long()


def output_and_grads(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor):
    """Output (B, 1, 32, 32) and {name: gradient} of a fixed scalar loss of it."""
    model.zero_grad(set_to_none=True)
    out = model(x, t)
    (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
    return out.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


def assert_same_model_math(fast: torch.nn.Module, plain: torch.nn.Module, x, t) -> None:
    """Same outputs and parameter gradients within OUTPUT_ and GRADIENT_TOLERANCE."""
    out_fast, grads_fast = output_and_grads(fast, x, t)
    out_plain, grads_plain = output_and_grads(plain, x, t)
    torch.testing.assert_close(out_fast, out_plain, **OUTPUT_TOLERANCE)
    assert grads_fast.keys() == grads_plain.keys()
    for name, grad in grads_plain.items():
        atol = GRADIENT_TOLERANCE * grad.abs().max().item()
        torch.testing.assert_close(grads_fast[name], grad, atol=atol, rtol=0, msg=name)


def test_channels_last_unet_matches_contiguous_output_and_gradients():
    plain = tiny_unet()
    fast = copy.deepcopy(plain).to(memory_format=torch.channels_last)
    assert fast.init.weight.is_contiguous(memory_format=torch.channels_last)
    x, t = tiny_inputs()
    assert_same_model_math(fast, plain, x.contiguous(memory_format=torch.channels_last), t)
    assert_same_model_math(fast, plain, x, t)


def explicit_attention(attention: MultiheadAttention, x: torch.Tensor) -> torch.Tensor:
    """x + to_out(softmax(Q Kᵀ / √d) V) per head (contiguous channel groups): (B, C, H, W)."""
    b, c, h, w = x.shape
    d = c // attention.num_heads
    q, k, v = (part.reshape(b, c, h * w) for part in attention.to_qkv(x).chunk(3, dim=1))
    heads = []
    for i in range(attention.num_heads):
        qi, ki, vi = (part[:, i * d : (i + 1) * d] for part in (q, k, v))
        weights = torch.softmax(torch.einsum("bdn,bdm->bnm", qi, ki) / math.sqrt(d), dim=-1)
        heads.append(torch.einsum("bnm,bdm->bdn", weights, vi))
    return x + attention.to_out(torch.cat(heads, dim=1).reshape(b, c, h, w))


def test_attention_sdpa_equals_the_explicit_formula():
    """In both layouts: on the CPU, SDPA runs its math path (bmm) for NCHW inputs but the
    flash-attention kernel for channels_last ones."""
    torch.manual_seed(0)
    attention = MultiheadAttention(16, num_heads=2)
    x = torch.randn(3, 16, 8, 8)
    with torch.no_grad():
        expected = explicit_attention(copy.deepcopy(attention).double(), x.double()).float()
        torch.testing.assert_close(attention(x), expected, atol=1e-5, rtol=1e-4)
        attention.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(attention(x), expected, atol=1e-5, rtol=1e-4)


def test_compiled_graph_has_no_breaks_and_matches_eager():
    """Dynamo + AOT autograd on the whole UNet (`fullgraph`: no graph break), without inductor's
    C++ code generation, so it stays quick; the inductor test below is marked slow."""
    plain = tiny_unet()
    fast = copy.deepcopy(plain)
    fast.compile(backend="aot_eager", fullgraph=True)
    assert_same_model_math(fast, plain, *tiny_inputs())


@pytest.mark.slow
def test_inductor_compiled_unet_matches_eager():
    """`model.compile=true` as training runs it (inductor, C++ on the CPU): minutes to compile."""
    plain = tiny_unet()
    fast = copy.deepcopy(plain)
    fast.compile()
    assert_same_model_math(fast, plain, *tiny_inputs())


def tiny_module(**fast_paths: bool) -> DiffusionModule:
    torch.manual_seed(0)
    model = {"_target_": "ddpm_lightning.models.UNet", **TINY_UNET, **fast_paths}
    return DiffusionModule(model=model, schedule=SCHEDULE)


def test_model_summary_counts_forward_flops_and_training_costs_three_forwards():
    module = tiny_module()
    flops = {name: sum(c.values()) for name, c in ModelSummary(module, 2).flop_counts.items()}
    with FlopCounterMode(display=False) as counter:
        module.model(*module.example_input())
    forward = counter.get_total_flops()
    assert flops["model"] == forward > 0
    # Backward = grad input + grad weight = 2 × forward, minus the grad input of the layers fed
    # by tensors that need none: the image's first conv and the time embedding's first linear.
    no_grad_input = flops["model.init"] + flops["model.time_embedding"]
    assert 3 * forward - no_grad_input <= module.training_flops_per_image() < 3 * forward
    assert tiny_module(compile=True).example_input_array is None, "no extra batch-1 graph"


def test_fast_path_modules_keep_state_dict_keys_and_checkpoints(tmp_path):
    plain = tiny_module()
    fast = tiny_module(channels_last=True, compile=True)
    assert fast.fast_paths == {"channels_last": True, "compile": True}
    assert plain.fast_paths == {"channels_last": False, "compile": False}
    assert list(fast.state_dict()) == list(plain.state_dict())
    assert dict(fast.hparams) == dict(plain.hparams), "runtime switches are not hyperparameters"
    path = tmp_path / "fast.ckpt"
    torch.save({"hyper_parameters": dict(fast.hparams), "state_dict": fast.state_dict()}, path)
    loaded = load_module(path)
    assert loaded.fast_paths == {"channels_last": False, "compile": False}
    for key, value in fast.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    fast.load_state_dict(plain.state_dict())
    assert fast.model.init.weight.is_contiguous(memory_format=torch.channels_last)
    check_resume_checkpoint(path, dict(plain.hparams))


def test_bad_fast_path_settings_name_the_key():
    with pytest.raises(ConfigError, match="model.compile='yes' must be true or false"):
        tiny_module(compile="yes")
    mlp = {"_target_": "ddpm_lightning.models.MLP", "num_timesteps": 20, "channels_last": True}
    with pytest.raises(ConfigError, match="model.channels_last=true needs images"):
        DiffusionModule(model=mlp, schedule=SCHEDULE, data_shape=(2,))
    mlp["channels_last"] = False
    assert DiffusionModule(model=mlp, schedule=SCHEDULE, data_shape=(2,)).fast_paths == {
        "channels_last": False,
        "compile": False,
    }


def test_bf16_mixed_precision_and_channels_last_train_on_cpu(data_root, tmp_path):
    cfg = tiny_config(
        data_root,
        tmp_path,
        "trainer.precision=bf16-mixed",
        "+model.channels_last=true",
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=2",
        "+trainer.limit_val_batches=1",
    )
    metrics = train(cfg)
    assert math.isfinite(metrics["train/loss"]) and math.isfinite(metrics["val/loss"])
    assert load_module(tmp_path / "checkpoints" / "last.ckpt").fast_paths["channels_last"] is False


@pytest.mark.slow
def test_compiled_training_run_saves_a_plain_checkpoint(data_root, tmp_path):
    """`model.compile=true` through `train()` (EMA, checkpoints, sample grids): minutes on CPU."""
    cfg = tiny_config(
        data_root,
        tmp_path,
        "+model.compile=true",
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=2",
        "+trainer.limit_val_batches=1",
    )
    assert math.isfinite(train(cfg)["val/loss"])
    checkpoint = tmp_path / "checkpoints" / "last.ckpt"
    assert list(load_module(checkpoint).state_dict()) == list(tiny_module().state_dict())


@pytest.mark.parametrize(
    ("cuda", "bf16", "cpu_bf16", "overrides", "expected"),
    [
        (False, False, False, [], "32-true"),
        (True, True, False, [], "bf16-mixed"),
        (True, False, False, [], "32-true"),
        (True, True, False, ["trainer.accelerator=cpu"], "32-true"),
        (True, True, False, ["trainer.precision=16-mixed"], "16-mixed"),
        (False, False, False, ["trainer=gpu"], "bf16-mixed"),
        (False, False, True, [], "bf16-mixed"),
        (False, False, True, ["trainer=cpu"], "bf16-mixed"),
        (True, False, True, [], "32-true"),
        (False, False, True, ["trainer.precision=32-true"], "32-true"),
    ],
)
def test_default_trainer_picks_bf16_where_the_hardware_has_it(
    monkeypatch, cuda, bf16, cpu_bf16, overrides, expected
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16)
    monkeypatch.setattr(compose, "cpu_has_native_bf16", lambda: cpu_bf16)
    cfg = compose_config("train", ["paths.output_dir=unused", *overrides])
    assert cfg.trainer.precision == expected


@pytest.mark.parametrize(
    ("flags", "native"),
    [
        ("fpu avx512f avx512_bf16 avx512_vnni", True),
        ("fpu amx_bf16 amx_tile", True),
        ("fpu avx512f avx512bw avx512vl", False),
    ],
)
def test_native_bf16_is_read_from_the_cpu_flags(tmp_path, flags, native):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    assert compose.cpu_has_native_bf16.__wrapped__(cpuinfo) is native
    assert compose.cpu_has_native_bf16.__wrapped__(tmp_path / "missing") is False


class Plan:
    """A stand-in trainer with a fit planned for `steps` optimizer steps and no time limit."""

    def __init__(self, steps: int):
        self.estimated_stepping_batches = steps
        self.callbacks: list = []


@pytest.mark.parametrize(("steps", "compiled"), [(4999, False), (5000, True)])
def test_long_runs_are_compiled_and_short_ones_stay_eager(monkeypatch, steps, compiled):
    monkeypatch.setattr(compiling, "cpp_compiler", lambda: "/usr/bin/g++")
    module = tiny_module()
    CompileLongRuns(min_steps=5000).on_fit_start(Plan(steps), module)
    assert module.fast_paths["compile"] is compiled
    assert (module.model._compiled_call_impl is not None) is compiled


def test_a_time_limit_decides_by_minutes(monkeypatch):
    monkeypatch.setattr(compiling, "cpp_compiler", lambda: "/usr/bin/g++")
    trainer = Plan(100)
    trainer.callbacks = [Timer(duration="00:00:30:00")]
    trainer.callbacks[0]._start_time[RunningStage.TRAINING] = time.monotonic()
    module = tiny_module()
    CompileLongRuns(min_minutes=31).on_fit_start(trainer, module)
    assert module.fast_paths["compile"] is False
    CompileLongRuns(min_minutes=29).on_fit_start(trainer, module)
    assert module.fast_paths["compile"] is True


def test_without_a_cpp_compiler_a_long_run_stays_eager_and_says_so(monkeypatch, caplog):
    monkeypatch.setattr(compiling.shutil, "which", lambda name: None)
    monkeypatch.delenv("CXX", raising=False)
    module = tiny_module()
    with caplog.at_level(logging.INFO):
        CompileLongRuns().on_fit_start(Plan(10**6), module)
    assert module.fast_paths["compile"] is False
    assert "no C++ compiler found" in caplog.text


def test_the_compile_settings_are_checked():
    with pytest.raises(ConfigError, match="callbacks.compile.min_steps"):
        CompileLongRuns(min_steps=-1)
