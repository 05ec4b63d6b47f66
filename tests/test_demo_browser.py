"""The demo page in headless Chromium (Debian's chromium and chromium-driver, driven by
selenium): on the exported ONNX models its sampler gives the Python sampler's images for the
same noise, the console shows no error, it shows samples on load, labels them by class, keeps
its controls on one row, the controls change the pictures, and colour (3-channel) and 64×64
models are drawn pixel for pixel, zoomed by whole numbers. The page's screenshot goes to
logs/test-artifacts/demo_page.png (docs/images/demo_page.png is a copy)."""

from __future__ import annotations

import importlib.util
import json
import re
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
from ddpm_lightning.data.registry import DATASETS
from ddpm_lightning.demo import demo
from ddpm_lightning.diffusion import DDIMSampler, DDPMSampler
from ddpm_lightning.diffusion.consistency_sampler import ConsistencySampler
from ddpm_lightning.diffusion.flow_samplers import FlowEulerSampler, FlowHeunSampler
from ddpm_lightning.sharing import load_pretrained, npm
from ddpm_lightning.sharing.folder import GUIDE_DIR, shipped_guide
from ddpm_lightning.sharing.pretrained import load_folder_guide, model_folder
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
    """(URL, folder) of the demo built with the shipped MNIST model (and its guide) and six
    tiny random-init UNets (T=20): `tiny_v` (v objective) and `tiny_cond` (x0 objective,
    Fashion-MNIST's 10 classes) on 1×32×32 images, `tiny_rgb` on 3×32×32 (Shapes), `tiny_64` on
    1×64×64 (v objective), `tiny_guided` (v, 10 classes) with a conditional eps guide and
    `tiny_flow` (the flow objective), served on a free port."""
    root = tmp_path_factory.mktemp("demo")
    tiny_model_folder(root / "tiny_v", "v")
    tiny_model_folder(root / "tiny_cond", "x0", num_classes=10, dataset="fashion_mnist")
    tiny_model_folder(root / "tiny_rgb", "v", dataset="shapes", shape=(3, 32, 32))
    tiny_model_folder(root / "tiny_64", "v", shape=(1, 64, 64))
    tiny_model_folder(root / "tiny_guided", "v", num_classes=10)
    tiny_model_folder(root / "tiny_guided" / GUIDE_DIR, "eps", num_classes=10, seed=1)
    tiny_model_folder(root / "tiny_flow", "flow")
    names = ["tiny_v", "tiny_cond", "tiny_rgb", "tiny_64", "tiny_guided", "tiny_flow"]
    models = f"models=[mnist,{','.join(str(root / name) for name in names)}]"
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
    """The freshly loaded page, its first look generated, its test hook ready and the console
    log emptied; nothing clicked."""
    url, _ = site
    browser.get(url)
    wait_for(
        browser,
        "return window.ddpmTest !== undefined && document.body.dataset.state === 'done'",
    )
    browser.get_log("browser")
    return browser


def console_errors(driver) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def write_floats(path: Path, values: torch.Tensor) -> str:
    """`values` as little-endian float32 at `path`; its name, the URL the page fetches."""
    path.write_bytes(values.numpy().astype("<f4").tobytes())
    return path.name


# (model, sampler options of the page's test hook, largest |page − Python| on [-1, 1]). The
# tiny models agree to float precision; the shipped (trained) model is given 1e-2 for the
# differences between onnxruntime-web's kernels and torch's.
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
    "shipped mnist autoguided by its guide, DDIM-5, eta 0": (
        "mnist",
        dict(sampler="ddim", steps=5, eta=0.0, interval=None),
        1e-2,
    ),
    "tiny colour 3x32x32, DDIM-5": ("tiny_rgb", dict(sampler="ddim", steps=5, eta=1.0), 1e-4),
    "tiny grey 1x64x64, DDIM-4": ("tiny_64", dict(sampler="ddim", steps=4, eta=0.0), 1e-4),
    "tiny v, consistency 3 steps trailing": (
        "tiny_v",
        dict(sampler="consistency", steps=3, spacing="trailing"),
        1e-4,
    ),
    "tiny v conditional autoguided by its eps guide, DDIM-5, eta 1": (
        "tiny_guided",
        dict(sampler="ddim", steps=5, eta=1.0, gamma=2.0, interval=None, label=7),
        1e-4,
    ),
    "tiny flow, Heun-5": ("tiny_flow", dict(sampler="flow_heun", steps=5), 1e-4),
    "tiny flow, Euler-6": ("tiny_flow", dict(sampler="flow_euler", steps=6), 1e-4),
}


def image_shape(folder: Path, model: str) -> tuple[int, ...]:
    """The (C, H, W) of `model`'s images, as its model.json in the site says."""
    record = json.loads((folder / "models" / model / "model.json").read_text())
    return tuple(record["data_shape"])


def python_samples(folder: Path | str, options: dict, noise, draws) -> torch.Tensor:
    """Our Python sampler's images from `noise` with the per-step noise `draws` (N, …),
    autoguided by the guide the folder ships, as `sample` draws them."""
    module = load_pretrained(folder)
    if shipped_guide(model_folder(str(folder))) is not None:
        module.guide = load_folder_guide(folder)
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
    elif options["sampler"] == "consistency":
        sampler = module.make_sampler(
            ConsistencySampler, num_steps=options["steps"], spacing=options["spacing"], **common
        )
    elif options["sampler"].startswith("flow"):
        flow_sampler = FlowHeunSampler if options["sampler"] == "flow_heun" else FlowEulerSampler
        sampler = module.make_sampler(flow_sampler, num_steps=options["steps"], **common)
    else:
        sampler = module.make_sampler(DDPMSampler, variance=options["variance"], **common)
    labels = None if "label" not in options else torch.full((len(noise),), options["label"])
    with fed_step_noise(draws):
        return module.generate(sampler, len(noise), seed=0, labels=labels, noise=noise)


@pytest.mark.parametrize(("model", "options", "tolerance"), CASES.values(), ids=CASES.keys())
def test_the_page_samples_what_python_samples(site, page, model, options, tolerance):
    _, folder = site
    generator = torch.Generator().manual_seed(1)
    shape = image_shape(folder, model)
    noise = torch.randn(8, *shape, generator=generator)
    draws = torch.randn(20, 8, *shape, generator=generator)
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


def tiles(driver) -> np.ndarray:
    """The pixels (N, H, W, 4) of the samples' tiles."""
    pixels, shape = driver.execute_script(
        "const canvases = [...document.querySelectorAll('#grid .tile canvas')];"
        "const data = canvases.flatMap((c) =>"
        "  Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data));"
        "return [data, [canvases.length, canvases[0].height, canvases[0].width, 4]];"
    )
    return np.array(pixels, dtype=np.uint8).reshape(shape)


def drawn(driver, canvas_id: str) -> np.ndarray:
    """The pixels (H, W, 4) of the canvas `canvas_id`."""
    pixels, shape = driver.execute_script(
        "const c = document.getElementById(arguments[0]);"
        "return [Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data),"
        "        [c.height, c.width, 4]];",
        canvas_id,
    )
    return np.array(pixels, dtype=np.uint8).reshape(shape)


def rgba(images: np.ndarray) -> np.ndarray:
    """Images (N, C, H, W) in [-1, 1] as the page's RGBA bytes (N, H, W, 4): round((v + 1) ·
    127.5) per channel, one channel as grey, alpha 255."""
    rgb = np.floor((np.clip(images.astype(np.float64), -1, 1) + 1) * 127.5 + 0.5)
    rgb = np.broadcast_to(rgb, (len(images), 3, *images.shape[2:])).transpose(0, 2, 3, 1)
    alpha = np.full((*rgb.shape[:3], 1), 255.0)
    return np.concatenate([rgb, alpha], axis=3).astype(np.uint8)


def assert_channels(pixels: np.ndarray, channels: int) -> None:
    """Colour images (3 channels) differ between red, green and blue at most pixels; grey ones
    (1 channel) nowhere."""
    red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    if channels == 3:
        assert (red != green).mean() > 0.5 and (green != blue).mean() > 0.5
    else:
        assert (red == green).all() and (green == blue).all()


# CSS size of the first tile's canvas and of x_t's, and the canvases' image-rendering.
VIEW_SIZES = """
const size = (c) => [c.clientWidth, c.clientHeight];
const tile = document.querySelector('#grid .tile canvas');
return [size(tile), size(document.getElementById('xt')), getComputedStyle(tile).imageRendering];
"""


@pytest.mark.parametrize("model", ["tiny_rgb", "tiny_64"])
def test_colour_and_larger_images_are_drawn_pixel_for_pixel(site, page, model):
    _, folder = site
    channels, height, width = image_shape(folder, model)
    noise = torch.randn(8, channels, height, width, generator=torch.Generator().manual_seed(2))
    hook = {
        "model": model,
        "noise": write_floats(folder / f"noise-drawn-{model}.bin", noise),
        "sampler": "ddim",
        "steps": 3,
    }
    images = page.execute_script("return window.ddpmTest.generate(arguments[0])", hook)
    expected = rgba(np.array(images, dtype=np.float32).reshape(noise.shape))
    shown = tiles(page)
    assert shown.shape == (8, height, width, 4)
    assert (shown == expected).all()
    assert (drawn(page, "xt") == expected[0]).all()
    assert drawn(page, "x0").shape == (height, width, 4)
    assert_channels(shown, channels)
    (tile_width, tile_height), process, rendering = page.execute_script(VIEW_SIZES)
    assert process == [192, 192] and rendering == "pixelated"
    assert tile_width >= width and abs(tile_height - tile_width * height / width) <= 1

    from selenium.webdriver.support.select import Select

    Select(page.find_element("id", "model")).select_by_value(model)
    set_number(page, "steps", 2)
    pressed = generate(page)
    assert pressed.shape == (8, height, width, 4)
    assert (pressed != shown).any()
    assert_channels(pressed, channels)
    assert console_errors(page) == []


def captions(driver) -> list[str]:
    """The tiles' class labels, in the grid's order (none for an unconditional model)."""
    return driver.execute_script(
        "return [...document.querySelectorAll('#grid .tile figcaption')]"
        ".map((caption) => caption.textContent);"
    )


def generate(driver) -> np.ndarray:
    """Press Generate, wait for the samples; the tiles' pixels."""
    driver.execute_script("document.body.dataset.state = 'pressed'")
    driver.find_element("id", "generate").click()
    wait_for(driver, "return document.body.dataset.state === 'done'")
    return tiles(driver)


def set_number(driver, name: str, value: int) -> None:
    field = driver.find_element("id", name)
    field.clear()
    field.send_keys(str(value))


def test_the_page_shows_samples_on_load_before_any_click(page):
    digits = tiles(page)
    assert digits.shape == (8, 32, 32, 4)
    assert all(tile[..., 0].std() > 40 for tile in digits)
    assert captions(page) == []
    assert page.execute_script("return document.getElementById('progress').max") == 10
    status = page.find_element("id", "status").text
    assert status.endswith("a first look with DDIM-10, press Generate for the settings above")
    assert page.find_element("id", "steps").get_attribute("value") == "50"
    assert page.find_element("id", "generate").is_enabled()


def test_one_of_each_shows_every_class_once_labelled(page):
    from selenium.webdriver.support.select import Select

    Select(page.find_element("id", "model")).select_by_value("tiny_cond")
    wait_for(page, "return !document.getElementById('class-row').hidden")
    set_number(page, "steps", 2)
    assert Select(page.find_element("id", "label")).first_selected_option.text == "one of each"
    images = generate(page)
    names = list(DATASETS["fashion_mnist"].class_names)
    assert images.shape[0] == 10 and captions(page) == names
    assert (images[..., 0].reshape(10, -1).std(axis=1) > 0).all()
    tops = page.execute_script(
        "return [...document.querySelectorAll('#grid .tile')]"
        ".map((tile) => tile.getBoundingClientRect().top);"
    )
    assert len(set(tops)) == 1
    assert re.fullmatch(
        r"10 samples in \d+\.\d\d s \(\d+ ms per image\)", page.find_element("id", "status").text
    )
    Select(page.find_element("id", "label")).select_by_value("7")
    assert generate(page).shape[0] == 8 and captions(page) == [names[7]] * 8
    assert console_errors(page) == []


def test_a_flow_model_offers_the_flow_samplers_and_refuses_edits(page):
    """Choosing a flow model leaves only the flow samplers in the menu (flow_heun, the default),
    Generate samples with them, and an edit says in the status line that edits follow the ᾱ
    path; choosing an ᾱ-path model again offers its samplers."""
    from selenium.webdriver.support.select import Select

    offered = (
        "return [...document.getElementById('sampler').options]"
        ".filter((option) => !option.hidden && !option.disabled).map((option) => option.value)"
    )
    Select(page.find_element("id", "model")).select_by_value("tiny_flow")
    wait_for(page, "return document.getElementById('sampler').value === 'flow_heun'")
    assert page.execute_script(offered) == ["flow_euler", "flow_heun"]
    set_number(page, "steps", 3)
    assert generate(page).shape[0] == 8
    page.find_element("id", "cleanup").click()
    wait_for(page, "return document.getElementById('status').textContent.startsWith('error')")
    assert page.find_element("id", "status").text == (
        "error: edits follow the ᾱ path, but this model predicts the flow path: sample it, or "
        "edit another model"
    )
    Select(page.find_element("id", "model")).select_by_value("tiny_v")
    wait_for(page, "return document.getElementById('sampler').value !== 'flow_heun'")
    assert page.execute_script(offered) == ["ddim", "ddpm", "consistency"]
    assert console_errors(page) == []


# The bottoms of the controls that show, and the number of lines Generate's text takes.
CONTROLS_LAYOUT = """
const shown = [...document.getElementById('controls').children].filter((c) => !c.hidden);
const text = document.createRange();
text.selectNodeContents(document.getElementById('generate'));
return [shown.map((c) => Math.round(c.getBoundingClientRect().bottom)),
        text.getClientRects().length];
"""


# (model, whether it shows the class menu, whether it shows γ): conditional models guide
# classifier-free, a folder with a guide (the shipped mnist) autoguides.
CONTROL_CASES = [("tiny_v", False, False), ("mnist", False, True), ("tiny_cond", True, True)]


@pytest.mark.parametrize(("model", "conditional", "guided"), CONTROL_CASES)
def test_the_controls_and_generate_stay_on_one_row(page, model, conditional, guided):
    from selenium.webdriver.support.select import Select

    Select(page.find_element("id", "model")).select_by_value(model)
    wait_for(
        page,
        f"return document.getElementById('class-row').hidden === {str(not conditional).lower()}"
        f" && document.getElementById('gamma-row').hidden === {str(not guided).lower()}",
    )
    bottoms, lines = page.execute_script(CONTROLS_LAYOUT)
    assert len(bottoms) == 6 + conditional + guided
    assert max(bottoms) - min(bottoms) <= 1
    assert lines == 1


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
    assert all(tile[..., 0].std() > 40 for tile in digits)
    assert console_errors(page) == []
    page.save_screenshot(str(tmp_path / "demo_page.png"))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(tmp_path / "demo_page.png", ARTIFACTS / "demo_page.png")
    screenshot = np.asarray(Image.open(tmp_path / "demo_page.png").convert("L"), dtype=float)
    assert screenshot.std() > 20
