"""`python -m ddpm_lightning.demo [out_dir=site] [serve=false] [port=8000] [models=[mnist]]`:
build the in-browser demo, a static site (the page, the models as ONNX, onnxruntime-web), and
serve it on http://127.0.0.1:PORT with Python's http.server."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ddpm_lightning.config import hydra_command
from ddpm_lightning.errors import ConfigError
from ddpm_lightning.settings.overrides import command_overrides
from ddpm_lightning.sharing.npm import (
    ORT_WEB,
    ORT_WEB_VERSION,
    cache_folder,
    is_cached,
    runtime_files,
)
from ddpm_lightning.sharing.onnx import require_onnx_extra
from ddpm_lightning.sharing.pretrained import shipped
from ddpm_lightning.sharing.site import announce, build_site, site_server
from ddpm_lightning.training.outputs import claimed


def serve(site: Path, port: int) -> None:
    """Serve the folder `site` on 127.0.0.1:`port` until Ctrl-C."""
    server = site_server(site, port)
    print(f"serving {site} on http://127.0.0.1:{server.server_address[1]}/ (Ctrl-C stops)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped")
    finally:
        server.server_close()


def fetch_runtime() -> dict[str, Path]:
    """onnxruntime-web's files, saying first whether they come from the cache or from npm."""
    cache = cache_folder()
    spec = f"{ORT_WEB}@{ORT_WEB_VERSION}"
    if is_cached(cache):
        announce(f"{spec} from the cache {cache}")
    else:
        announce(f"fetching {spec} with npm pack into {cache}")
    return runtime_files(cache)


def page_order(names: list[str]) -> list[str]:
    """Every shipped model, MNIST's first: the page opens (and draws its first samples) on
    digits, the pictures a newcomer expects."""
    return sorted(names, key=lambda name: (not name.startswith("mnist"), name))


def demo(cfg: DictConfig) -> Path:
    """Build the site into `cfg.out_dir` from `cfg.models` (null: every shipped model), in
    place of the old one at once, then serve it unless serve=false; return the site's folder.
    A second command into `cfg.out_dir` is refused while this one builds."""
    models = page_order(shipped()) if cfg.models is None else [str(name) for name in cfg.models]
    if not models:
        raise ConfigError("models=[] leaves the page empty; name at least one, e.g. models=[mnist]")
    print(f"out_dir: {Path(cfg.out_dir).resolve()}", flush=True)
    require_onnx_extra("the demo")
    with claimed(cfg.out_dir, "demo") as site:
        runtime = fetch_runtime()
        sampler = OmegaConf.to_container(cfg.sampler, resolve=True)
        entries = build_site(site, models, sampler, runtime, command_overrides())  # type: ignore[arg-type]
    print(f"built the demo of {', '.join(entry['id'] for entry in entries)} into {site}")
    if cfg.serve:
        serve(site, int(cfg.port))
    return site


main = hydra_command("demo", demo)

if __name__ == "__main__":
    main()
