"""A distilled student from training to the browser: two halving rounds (4 → 2 → 1 steps) of a
tiny teacher on synthetic MNIST, exported as a model folder that recommends its one-step DDIM,
sampled and evaluated with that sampler, and run by the demo page in headless Chromium."""

from __future__ import annotations

import json
import re
import threading

import numpy as np
import pytest

from ddpm_lightning import demo as demo_command
from ddpm_lightning import evaluate as evaluate_command
from ddpm_lightning import sample as sample_command
from ddpm_lightning.export import export
from ddpm_lightning.sharing.site import site_server
from ddpm_lightning.tools.distill_rounds import distill_rounds
from tests.conftest import run_command, writing_config
from tests.test_demo_browser import MISSING, generate, tiles, wait_for
from tests.test_demo_browser import browser as browser  # noqa: F401 (the Chromium fixture)
from tests.test_distill_rounds import tiny_chain, train_in_process

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(bool(MISSING), reason=f"not installed: {', '.join(MISSING)}"),
]
ONE_STEP = ["sampler.num_steps=1", "sampler.eta=0", "sampler.spacing=trailing"]


@pytest.mark.usefixtures("one_thread")
def test_a_distilled_student_samples_evaluates_and_runs_in_the_page(
    tmp_path, data_root, monkeypatch, capsys, browser
):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    last = distill_rounds(tiny_chain(tmp_path, data_root), runner=train_in_process)
    student = tmp_path / "student"
    export(writing_config("export", student, f"ckpt_path={last}", "num_samples=8", *ONE_STEP))
    assert json.loads((student / "config.json").read_text())["sampler"]["num_steps"] == 1

    drawn = tmp_path / "sample"
    argv = [f"pretrained={student}", "num_samples=4", "gif_images=2", "gif_frames=2"]
    code, _, stderr = run_command(
        sample_command.main, [*argv, f"hydra.run.dir={drawn}"], monkeypatch, capsys
    )
    assert code == 0, stderr[-2000:]
    metadata = json.loads(str(np.load(drawn / "samples.npz")["metadata"]))
    assert metadata["network_evaluations"] == 1

    scored = tmp_path / "evaluate"
    argv = [f"pretrained={student}", "num_samples=16", f"hydra.run.dir={scored}"]
    code, _, stderr = run_command(evaluate_command.main, argv, monkeypatch, capsys)
    assert code == 0, stderr[-2000:]
    metrics = json.loads((scored / "metrics.json").read_text())
    assert metrics["network_evaluations"] == 1 and np.isfinite(metrics["fld"])

    site = tmp_path / "site"
    argv = [f"models=[{student}]", f"out_dir={site}", "serve=false", f"hydra.run.dir={site}_run"]
    code, _, stderr = run_command(demo_command.main, argv, monkeypatch, capsys)
    assert code == 0, stderr[-2000:]
    server = site_server(site, 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        browser.get(f"http://127.0.0.1:{server.server_address[1]}/")
        wait_for(
            browser,
            "return window.ddpmTest !== undefined && document.body.dataset.state === 'done'",
        )
        assert browser.find_element("id", "steps").get_attribute("value") == "1"
        assert browser.execute_script("return document.getElementById('progress').max") == 1
        images = generate(browser)
        assert images.shape == (8, 32, 32, 4) and images[..., 0].std() > 0
        assert re.fullmatch(
            r"8 samples in \d+\.\d\d s \(\d+ ms per image\)",
            browser.find_element("id", "status").text,
        )
        assert tiles(browser).shape[0] == 8
    finally:
        server.shutdown()
        server.server_close()
