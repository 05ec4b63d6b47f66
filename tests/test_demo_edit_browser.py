"""The demo page's drawing pad in headless Chromium: strokes drawn with the mouse (and a finger)
land on the pad, and Complete, Clean up and Refill, fed the same noise as Python, give
`ddpm_lightning.editing.inpaint`'s and `sdedit`'s images for the drawing, with the console free
of errors; the pad and its buttons fit a phone's width."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from unittest.mock import patch

import numpy as np
import pytest
import torch

from ddpm_lightning.config import compose_config
from ddpm_lightning.demo import demo
from ddpm_lightning.diffusion import DDIMSampler
from ddpm_lightning.diffusion.noise import SampleNoise
from ddpm_lightning.editing import inpaint, known_mask, sdedit
from ddpm_lightning.sharing import load_pretrained
from ddpm_lightning.sharing.site import site_server
from tests.conftest import fed_step_noise, tiny_model_folder
from tests.test_demo_browser import (
    browser,  # noqa: F401 (the fixture)
    console_errors,
    drawn,
    pytestmark,  # noqa: F401 (slow, and skipped without Chromium)
    set_number,
    wait_for,
    write_floats,
)

# Images of one edit (the page makes 8 versions of the drawing), DDIM steps and η of the runs.
NUM_IMAGES = 8
STEPS = 5
ETA = 1.0
# The tiny models agree with Python to float precision (tests/test_demo_browser.py).
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """(URL, folder) of the demo of one tiny random-init UNet (v objective, T=20, 1×32×32),
    served on a free port."""
    root = tmp_path_factory.mktemp("demo-edit")
    tiny_model_folder(root / "tiny_v", "v")
    folder = root / "site"
    overrides = [f"paths.output_dir={root}", f"out_dir={folder}", "serve=false"]
    demo(compose_config("demo", [*overrides, f"models=[{root / 'tiny_v'}]"]))
    server = site_server(folder, 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", folder
    server.shutdown()
    server.server_close()


@pytest.fixture
def page(site, browser):  # noqa: F811 (the imported fixture)
    """The freshly loaded page at desktop width, its first look done, DDIM with STEPS steps and
    η = ETA set, the console log emptied."""
    url, _ = site
    browser.set_window_size(1000, 860)
    browser.get(url)
    wait_for(
        browser,
        "return window.ddpmTest !== undefined && document.body.dataset.state === 'done'",
    )
    set_number(browser, "steps", STEPS)
    set_number(browser, "eta", ETA)
    browser.get_log("browser")
    return browser


def stroke(driver, points: list[tuple[int, int]], tool: str = "pen") -> None:
    """Drag the mouse through `points` (CSS px from the pad's centre) with the brush `tool`."""
    from selenium.webdriver.common.action_chains import ActionChains

    driver.find_element("css selector", f'input[name="tool"][value="{tool}"]').click()
    pad = driver.find_element("id", "drawing")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", pad)
    (x, y), *rest = points
    actions = ActionChains(driver).move_to_element_with_offset(pad, x, y).click_and_hold()
    for nx, ny in rest:
        actions.move_by_offset(nx - x, ny - y)
        x, y = nx, ny
    actions.release().perform()


def feed_and_press(driver, folder: Path, button: str, noise, draws) -> dict:
    """Feed the page `noise` (x_T) and `draws`, press `button`; the edit's drawing (H·W),
    known mask (H·W or None) and images (N·C·H·W) as the page saw and made them."""
    driver.execute_script(
        "return window.ddpmTest.feed(arguments[0])",
        {
            "noise": write_floats(folder / f"edit-noise-{button}.bin", noise),
            "stepNoise": write_floats(folder / f"edit-draws-{button}.bin", draws),
        },
    )
    driver.find_element("id", button).click()
    wait_for(driver, "return window.ddpmTest.lastEdit !== null")
    return driver.execute_script("return window.ddpmTest.lastEdit")


def python_sampler(folder: Path):
    """The tiny model and the DDIM sampler the page runs: STEPS steps, η = ETA, the record's
    spacing."""
    record = json.loads((folder / "models" / "tiny_v" / "model.json").read_text())
    module = load_pretrained(folder.parent / "tiny_v")
    spacing = record["sampler"].get("spacing", "uniform")
    sampler = module.make_sampler(
        DDIMSampler, num_steps=STEPS, eta=ETA, spacing=spacing, progress=False
    )
    return module, sampler


def fed(noise: torch.Tensor, draws: torch.Tensor):
    """Python's editing methods take x_T = noise and draw i = draws[i]."""
    initial = patch.object(SampleNoise, "initial", lambda self: noise)
    return initial, fed_step_noise(draws)


def noises(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x_T (N, 1, 32, 32) and 40 draws after it (40, N, 1, 32, 32)."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(NUM_IMAGES, 1, 32, 32, generator=generator)
    return noise, torch.randn(40, NUM_IMAGES, 1, 32, 32, generator=generator)


# A "7" (a bar, then a diagonal down to the left) in CSS px from the 192-px pad's centre.
SEVEN = [(-50, -60), (50, -60), (-10, 70)]


def test_complete_and_clean_up_give_pythons_edits_of_the_drawing(site, page):
    _, folder = site
    stroke(page, SEVEN)
    pixels = drawn(page, "drawing")
    assert pixels.shape == (32, 32, 4)
    white = pixels[..., 0] == 255
    # The bar runs along row (96 − 60) / 6 = 6 from column 7 to 24 (6 CSS px per pixel).
    assert white[6, 8:24].all() and 60 < white.sum() < 250
    assert set(np.unique(pixels[..., 0])) == {0, 255}

    page.find_element("css selector", '#fill option[value="bottom"]').click()
    set_number(page, "jumps", 2)
    noise, draws = noises(0)
    edit = feed_and_press(page, folder, "complete", noise, draws)
    drawing = torch.tensor(edit["drawing"], dtype=torch.float32).reshape(1, 1, 32, 32)
    assert (drawing[0, 0].numpy() == np.where(white, 1.0, -1.0)).all()
    known = torch.tensor(edit["known"], dtype=torch.float32).reshape(32, 32)
    assert (known == known_mask("bottom", 32, 32)).all()
    images = torch.tensor(edit["images"], dtype=torch.float32).reshape(noise.shape)
    module, sampler = python_sampler(folder)
    image = drawing.expand(NUM_IMAGES, -1, -1, -1)
    initial, steps = fed(noise, draws)
    with initial, steps:
        expected = inpaint(module, image, known, sampler=sampler, resample_jumps=2)
    assert (images - expected).abs().max() <= TOLERANCE
    assert (images[..., :16, :] == image[..., :16, :]).all()
    assert images[..., 16:, :].std() > 0.1
    assert page.find_element("id", "samples-caption").text == f"{NUM_IMAGES} completions"

    page.execute_script(
        "const s = document.getElementById('strength'); s.value = '0.6';"
        "s.dispatchEvent(new Event('input'));"
    )
    assert page.find_element("id", "strength-value").text == "0.60"
    noise, draws = noises(1)
    edit = feed_and_press(page, folder, "cleanup", noise, draws)
    images = torch.tensor(edit["images"], dtype=torch.float32).reshape(noise.shape)
    initial, steps = fed(noise, draws)
    with initial, steps:
        expected = sdedit(module, image, sampler=sampler, strength=0.6)
    assert (images - expected).abs().max() <= TOLERANCE
    assert (images - image).abs().max() > 0.1
    assert console_errors(page) == []


def test_refill_redraws_only_the_marked_region(site, page):
    _, folder = site
    stroke(page, SEVEN)
    stroke(page, [(-40, 40), (40, 40)], tool="region")
    noise, draws = noises(2)
    edit = feed_and_press(page, folder, "refill", noise, draws)
    known = torch.tensor(edit["known"], dtype=torch.float32).reshape(32, 32)
    # The region brush (radius 3 px) along row (96 + 40) / 6 ≈ 22.7 from column 9 to 23.
    assert (known[22, 10:23] == 0).all() and (known[:17] == 1).all()
    assert 60 < (known == 0).sum() < 200
    drawing = torch.tensor(edit["drawing"], dtype=torch.float32).reshape(1, 1, 32, 32)
    image = drawing.expand(NUM_IMAGES, -1, -1, -1)
    images = torch.tensor(edit["images"], dtype=torch.float32).reshape(noise.shape)
    module, sampler = python_sampler(folder)
    initial, steps = fed(noise, draws)
    with initial, steps:
        expected = inpaint(module, image, known, sampler=sampler)
    assert (images - expected).abs().max() <= TOLERANCE
    assert ((images - image).abs() * known).max() == 0
    assert page.find_element("id", "samples-caption").text == f"{NUM_IMAGES} refills"
    assert console_errors(page) == []


# The page's scrolling width, the window's, and the right edge of the pad and its controls.
PHONE_WIDTHS = """
const ids = ['drawing', 'complete', 'refill', 'cleanup', 'clear', 'strength', 'fill', 'jumps'];
const right = (id) => document.getElementById(id).getBoundingClientRect().right;
return [document.documentElement.scrollWidth, window.innerWidth, Math.max(...ids.map(right))];
"""


def test_the_pad_takes_a_finger_and_fits_a_phone(site, page):
    from selenium.webdriver.common.actions import interaction
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.actions.pointer_input import PointerInput

    page.set_window_size(390, 844)
    scroll_width, inner_width, rightmost = page.execute_script(PHONE_WIDTHS)
    assert scroll_width <= inner_width and rightmost <= inner_width
    pad = page.find_element("id", "drawing")
    page.execute_script("arguments[0].scrollIntoView({block: 'center'})", pad)
    box = page.execute_script("return arguments[0].getBoundingClientRect().toJSON()", pad)
    left, top = box["left"] + box["width"] / 2, box["top"] + box["height"] / 2
    finger = ActionBuilder(page, mouse=PointerInput(interaction.POINTER_TOUCH, "finger"))
    finger.pointer_action.move_to_location(int(left - 40), int(top))
    finger.pointer_action.pointer_down()
    finger.pointer_action.move_to_location(int(left + 40), int(top))
    finger.pointer_action.pointer_up()
    finger.perform()
    white = drawn(page, "drawing")[..., 0] == 255
    assert white[15:18, 10:22].any(axis=0).all()
    page.find_element("id", "clear").click()
    assert (drawn(page, "drawing")[..., 0] == 0).all()
    assert console_errors(page) == []
