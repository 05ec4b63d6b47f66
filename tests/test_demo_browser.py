"""The demo page in headless Chromium (Debian's chromium and chromium-driver, driven by
selenium): on the exported ONNX models its sampler gives the Python sampler's images for the
same noise, the console shows no error, and the controls change the pictures. The page's
screenshot goes to logs/test-artifacts/demo_page.png (docs/images/demo_page.png is a copy)."""

from __future__ import annotations

import importlib.util
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm_lightning.config import compose_config
from ddpm_lightning.demo import demo
from ddpm_lightning.diffusion import DDIMSampler, DDPMSampler
from ddpm_lightning.sharing import load_pretrained, npm
from ddpm_lightning.sharing.site import site_server
from tests.conftest import REPO_ROOT, fed_step_noise, tiny_model_folder

MISSING = [
    what
    for what, found in [
        ("chromium (apt-get install chromium)", shutil.which("chromium")),
        ("chromedriver (apt-get install chromium-driver)", shutil.which("chromedriver")),
        ("selenium (pip install -e '.[browser]')", importlib.util.find_spec("selenium")),
        ("onnxruntime (pip install -e '.[onnx]')", importlib.util.find_spec("onnxruntime")),
        ("onnxscript (pip install -e '.[onnx]')", importlib.util.find_spec("onnxscript")),
        (
            "npm, for onnxruntime-web",
            shutil.which("npm") or (npm.cache_folder() / npm.ORT_WEB_FILES[0]).is_file(),
        ),
    ]
    if not found
]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(bool(MISSING), reason=f"not installed: {', '.join(MISSING)}"),
]
# Without these, headless Chromium on a machine without internet keeps trying to reach its
# update, sync and metrics services.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1000,860",
)
ARTIFACTS = REPO_ROOT / "logs" / "test-artifacts"
TIMEOUT_S = 120


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """(URL, folder) of the demo built with the shipped MNIST model and two tiny random-init
    UNets (T=20): `tiny_v` (v objective) and `tiny_cond` (x0 objective, Fashion-MNIST's 10
    classes), served on a free port."""
    root = tmp_path_factory.mktemp("demo")
    tiny_model_folder(root / "tiny_v", "v")
    tiny_model_folder(root / "tiny_cond", "x0", num_classes=10, dataset="fashion_mnist")
    models = f"models=[mnist,{root / 'tiny_v'},{root / 'tiny_cond'}]"
    folder = root / "site"
    demo(
        compose_config(
            "demo", [f"paths.output_dir={root}", f"out_dir={folder}", "serve=false", models]
        )
    )
    server = site_server(folder, 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", folder
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.binary_location = shutil.which("chromium")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    driver.set_script_timeout(TIMEOUT_S)
    yield driver
    driver.quit()


def wait_for(driver, script: str) -> None:
    """Poll the page until `script` returns true (or fail after TIMEOUT_S)."""
    deadline = time.monotonic() + TIMEOUT_S
    while not driver.execute_script(script):
        assert time.monotonic() < deadline, f"the page never got to: {script}"
        time.sleep(0.1)


@pytest.fixture
def page(site, browser):
    """The freshly loaded page, its test hook ready and the console log emptied."""
    url, _ = site
    browser.get(url)
    wait_for(browser, "return window.ddpmTest !== undefined")
    browser.get_log("browser")
    return browser


def console_errors(driver) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def write_floats(path: Path, values: torch.Tensor) -> str:
    """`values` as little-endian float32 at `path`; its name, the URL the page fetches."""
    path.write_bytes(values.numpy().astype("<f4").tobytes())
    return path.name


# (model, sampler options of the page's test hook, largest |page − Python| on [-1, 1]). The
# tiny models agree to float precision. The shipped model predicts ε, and at its first step
# (t = 999 of the cosine schedule, √ᾱ ≈ 5e-5) x̂₀ = (x − √(1−ᾱ) ε̂)/√ᾱ multiplies the ~1e-6
# differences between two runtimes' kernels by 2·10⁴ before clipping: there onnxruntime on the
# CPU differs from torch by 9e-4 at the end, the page by 2e-3 to 4e-3 on the noises tried.
CASES = {
    "tiny v, DDIM-5, eta 0": ("tiny_v", dict(sampler="ddim", steps=5, eta=0.0), 1e-4),
    "tiny x0 conditional, DDIM-5 trailing, eta 1, guidance 2": (
        "tiny_cond",
        dict(
            sampler="ddim", steps=5, eta=1.0, spacing="trailing", gamma=2.0, interval=None, label=3
        ),
        1e-4,
    ),
    "tiny v, DDPM (all 20 steps)": ("tiny_v", dict(sampler="ddpm", variance="fixed_small"), 1e-4),
    "shipped mnist, DDIM-5, eta 0": ("mnist", dict(sampler="ddim", steps=5, eta=0.0), 1e-2),
}


def python_samples(folder: Path | str, options: dict, noise, draws) -> torch.Tensor:
    """Our Python sampler's images from `noise` with the per-step noise `draws` (N, …)."""
    module = load_pretrained(folder)
    common = dict(
        progress=False,
        guidance_scale=options.get("gamma"),
        guidance_interval=options.get("interval"),
    )
    if options["sampler"] == "ddim":
        spacing = options.get("spacing", "uniform")
        sampler = module.make_sampler(
            DDIMSampler, num_steps=options["steps"], eta=options["eta"], spacing=spacing, **common
        )
    else:
        sampler = module.make_sampler(DDPMSampler, variance=options["variance"], **common)
    labels = None if "label" not in options else torch.full((len(noise),), options["label"])
    with fed_step_noise(draws):
        return module.generate(sampler, len(noise), seed=0, labels=labels, noise=noise)


@pytest.mark.parametrize(("model", "options", "tolerance"), CASES.values(), ids=CASES.keys())
def test_the_page_samples_what_python_samples(site, page, model, options, tolerance):
    _, folder = site
    generator = torch.Generator().manual_seed(1)
    noise = torch.randn(8, 1, 32, 32, generator=generator)
    draws = torch.randn(20, 8, 1, 32, 32, generator=generator)
    hook = {
        "model": model,
        "noise": write_floats(folder / f"noise-{model}.bin", noise),
        "stepNoise": write_floats(folder / f"step-noise-{model}.bin", draws),
        **options,
    }
    images = page.execute_script("return window.ddpmTest.generate(arguments[0])", hook)
    images = torch.tensor(images).reshape(noise.shape)
    source = model if model == "mnist" else folder.parent / model
    expected = python_samples(source, options, noise, draws)
    assert (images - expected).abs().max() <= tolerance
    assert images.std() > 0.1
    assert console_errors(page) == []


def canvas(driver, name: str) -> np.ndarray:
    """The pixels (H, W, 4) of the canvas with id `name`."""
    return np.array(
        driver.execute_script(
            "const c = document.getElementById(arguments[0]);"
            "return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data);",
            name,
        ),
        dtype=np.uint8,
    ).reshape(
        *driver.execute_script(
            f"const c = document.getElementById('{name}'); return [c.height, c.width, 4];"
        )
    )


def generate(driver) -> np.ndarray:
    """Press Generate, wait for the samples; the grid canvas's pixels."""
    driver.execute_script("document.body.dataset.state = 'pressed'")
    driver.find_element("id", "generate").click()
    wait_for(driver, "return document.body.dataset.state === 'done'")
    return canvas(driver, "grid")


def set_number(driver, name: str, value: int) -> None:
    field = driver.find_element("id", name)
    field.clear()
    field.send_keys(str(value))


def test_the_controls_change_the_pictures(page, tmp_path):
    from selenium.webdriver.support.select import Select

    Select(page.find_element("id", "model")).select_by_value("tiny_cond")
    wait_for(page, "return !document.getElementById('class-row').hidden")
    classes = [option.text for option in Select(page.find_element("id", "label")).options]
    assert classes[:3] == ["one of each", "0: T-shirt/top", "1: Trouser"]
    assert len(classes) == 11
    set_number(page, "steps", 3)
    Select(page.find_element("id", "label")).select_by_value("1")
    trousers = generate(page)
    Select(page.find_element("id", "label")).select_by_value("7")
    sneakers = generate(page)
    set_number(page, "steps", 6)
    more_steps = generate(page)
    assert (trousers != sneakers).any() and (sneakers != more_steps).any()

    Select(page.find_element("id", "model")).select_by_value("mnist")
    wait_for(page, "return document.getElementById('class-row').hidden")
    assert page.find_element("id", "steps").get_attribute("value") == "50"
    digits = generate(page)
    assert digits[..., 0].std() > 40
    assert console_errors(page) == []
    page.save_screenshot(str(tmp_path / "demo_page.png"))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(tmp_path / "demo_page.png", ARTIFACTS / "demo_page.png")
    screenshot = np.asarray(Image.open(tmp_path / "demo_page.png").convert("L"), dtype=float)
    assert screenshot.std() > 20
