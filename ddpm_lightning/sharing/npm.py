"""onnxruntime-web's wasm build for the demo page, from the npm registry at a pinned version:
`npm pack` fetches it once into a cache folder outside the project, each site copies it."""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from ddpm_lightning.errors import DataError

ORT_WEB = "onnxruntime-web"
ORT_WEB_VERSION = "1.30.0"
# The ES module with its Emscripten glue bundled in, and the WebAssembly binary it loads.
ORT_WEB_FILES = ("ort.wasm.bundle.min.mjs", "ort-wasm-simd-threaded.wasm")
NPM_TIMEOUT_S = 600


def cache_folder() -> Path:
    """`$XDG_CACHE_HOME/ddpm_lightning/npm/onnxruntime-web-<version>` (~/.cache by default)."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "ddpm_lightning" / "npm" / f"{ORT_WEB}-{ORT_WEB_VERSION}"


def where_to_get_them(cache: Path) -> str:
    return (
        f"install Node.js's npm (e.g. apt-get install npm) with access to the npm registry, or "
        f"put {' and '.join(ORT_WEB_FILES)} of {ORT_WEB}@{ORT_WEB_VERSION} (its dist/ folder) "
        f"into {cache}"
    )


def npm_pack(destination: Path, cache: Path) -> Path:
    """The package's tarball, downloaded by `npm pack` into `destination`."""
    npm = shutil.which("npm")
    spec = f"{ORT_WEB}@{ORT_WEB_VERSION}"
    if npm is None:
        raise DataError(
            f"the demo needs {spec} but npm is not installed: {where_to_get_them(cache)}"
        )
    try:
        result = subprocess.run(
            [npm, "pack", spec, "--pack-destination", str(destination), "--silent"],
            cwd=destination,
            capture_output=True,
            text=True,
            timeout=NPM_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        raise DataError(
            f"npm pack {spec} took over {NPM_TIMEOUT_S} s: {where_to_get_them(cache)}"
        ) from None
    tarballs = sorted(destination.glob("*.tgz"))
    if result.returncode != 0 or not tarballs:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        reason = lines[0].strip() if lines else f"exit code {result.returncode}"
        raise DataError(f"npm pack {spec} failed ({reason}): {where_to_get_them(cache)}")
    return tarballs[0]


def unpack(tarball: Path, cache: Path) -> None:
    """Copy ORT_WEB_FILES out of the package's dist/ into `cache`, each file whole or not at all."""
    cache.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tarball) as archive:
        for name in ORT_WEB_FILES:
            member = archive.extractfile(f"package/dist/{name}")
            if member is None:
                raise DataError(f"{tarball} has no package/dist/{name}")
            partial = cache / f"{name}.partial"
            with member, partial.open("wb") as out:
                shutil.copyfileobj(member, out)
            partial.replace(cache / name)


def is_cached(cache: Path | None = None) -> bool:
    """Whether the cache folder holds all of ORT_WEB_FILES, so that nothing is fetched."""
    cache = cache or cache_folder()
    return all((cache / name).is_file() for name in ORT_WEB_FILES)


def runtime_files(cache: Path | None = None) -> dict[str, Path]:
    """ORT_WEB_FILES by name, in the cache folder; fetched with `npm pack` when missing there."""
    cache = cache or cache_folder()
    files = {name: cache / name for name in ORT_WEB_FILES}
    if not is_cached(cache):
        with tempfile.TemporaryDirectory() as folder:
            unpack(npm_pack(Path(folder), cache), cache)
    return files
