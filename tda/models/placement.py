"""Models larger than one device: accelerate's big-model placement, and where each layer's weights are.

``load_model(spec, device_map="auto", max_memory={0: "20GiB", "cpu": "60GiB"})`` spreads the
decoder layers over the GPUs and offloads what does not fit to CPU RAM, then to disk
(Hugging Face ``from_pretrained(device_map=...)``; models built in memory — tiny, random,
random-weights controls — go through ``accelerate.infer_auto_device_map`` + ``dispatch_model``).
accelerate's hooks move activations between devices, and an offloaded module's weights are
``meta`` tensors that its hook loads (from ``weights_map``) just before each forward.

Everything that reads weights directly (FFN adapter, masks, slicing, fast linears) goes through
:func:`layer_weight`, which returns the *real* tensor on the module's :func:`execution_device`;
inputs go to :func:`main_device` (the input embedding's device).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tda.common.errors import BadInput

DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")


# ----- arguments (no torch needed) -------------------------------------------------------------------
def check_device_map(value: Any) -> str | dict | None:
    """``None``, a strategy (auto, balanced, balanced_low_0, sequential), a dict, or a JSON file of one."""
    if value is None or isinstance(value, dict):
        return value
    text = str(value).strip()
    if text in ("", "none"):
        return None
    if text in DEVICE_MAP_STRATEGIES:
        return text
    p = Path(text).expanduser()
    if p.suffix == ".json" or p.exists():
        try:
            data = json.loads(p.read_text())
        except (OSError, ValueError):
            raise BadInput(f"device map file {p} is not a readable JSON object") from None
        if not isinstance(data, dict) or not data:
            raise BadInput(f"device map file {p} must hold a JSON object {{module: device}}")
        return data
    raise BadInput(f"unknown device map '{text}'; use {', '.join(DEVICE_MAP_STRATEGIES)} or a .json file")


def parse_max_memory(value: Any) -> dict | None:
    """``"0=20GiB,1=20GiB,cpu=60GiB"`` → ``{0: "20GiB", 1: "20GiB", "cpu": "60GiB"}`` (validated)."""
    if value is None or value == "":
        return None
    if isinstance(value, dict):
        items = list(value.items())
    else:
        items = []
        for part in str(value).replace(" ", "").split(","):
            if not part:
                continue
            key, sep, size = part.partition("=")
            if not sep or not key or not size:
                raise BadInput(f"max memory must look like 0=20GiB,cpu=60GiB, got '{value}'")
            items.append((key, size))
    from accelerate.utils import convert_file_size_to_int

    out: dict = {}
    for key, size in items:
        k = int(key) if str(key).isdigit() else str(key)
        if not isinstance(k, int) and k not in ("cpu", "mps", "xpu", "npu"):
            raise BadInput(f"max memory: unknown device '{key}'; use GPU indices and cpu")
        try:
            if convert_file_size_to_int(size) <= 0:
                raise ValueError
        except (ValueError, TypeError):
            raise BadInput(f"max memory: '{size}' is not a size (e.g. 20GiB, 512MB or bytes)") from None
        out[k] = int(size) if str(size).isdigit() else size
    if not out:
        raise BadInput("max memory is empty")
    return out


# ----- where things are --------------------------------------------------------------------------
def _hooks(module) -> list:
    hook = getattr(module, "_hf_hook", None)
    if hook is None:
        return []
    return list(getattr(hook, "hooks", None) or [hook])


def _as_device(d):
    import torch

    return torch.device(f"cuda:{d}") if isinstance(d, int) else torch.device(d)


def execution_device(module):
    """The device ``module`` computes on: its accelerate hook's, else its first real parameter's."""
    import torch

    for h in _hooks(module):
        dev = getattr(h, "execution_device", None)
        if dev is not None:
            return _as_device(dev)
    for t in (*module.parameters(), *module.buffers()):
        if t.device.type != "meta":
            return t.device
    return torch.device("cpu")


def is_offloaded(module) -> bool:
    """True when ``module``'s own weights live off its execution device (meta + a hook's weights map)."""
    w = getattr(module, "weight", None)
    return w is not None and w.device.type == "meta" and any(
        getattr(h, "weights_map", None) is not None for h in _hooks(module))


def layer_weight(module, name: str = "weight"):
    """The real ``module.<name>`` tensor (None if absent) on the module's execution device.

    For a module whose weights accelerate offloaded (``meta`` + hook), the tensor comes from the
    hook's ``weights_map`` (CPU RAM or the disk folder) and is copied to the execution device.
    """
    t = getattr(module, name, None)
    if t is None:
        return None
    if t.device.type == "meta":
        for h in _hooks(module):
            wm = getattr(h, "weights_map", None)
            if wm is not None:
                try:
                    t = wm[name]
                    break
                except KeyError:
                    continue
        else:
            raise RuntimeError(f"the weights of {type(module).__name__} are offloaded and no hook can load them")
    dev = execution_device(module)
    return t if t.device == dev else t.to(dev)


def is_dispatched(model) -> bool:
    """True when accelerate placed ``model`` with a device map (layers may be on several devices)."""
    return bool(getattr(model, "hf_device_map", None))


def has_offload(model) -> bool:
    """True when some weights of ``model`` are offloaded to CPU RAM or disk."""
    return is_dispatched(model) and any(is_offloaded(m) for m in model.modules())


def main_device(model):
    """Where inputs go: the input embedding's execution device (the first parameter's otherwise)."""
    if is_dispatched(model):
        emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        if emb is not None:
            return execution_device(emb)
        return execution_device(model)
    return next(model.parameters()).device


def describe(model) -> str:
    """``"cuda:0 ×12, cpu ×4, disk ×2"``: modules of the device map per device."""
    dm = getattr(model, "hf_device_map", None) or {}
    counts: dict[str, int] = {}
    for d in dm.values():
        key = f"cuda:{d}" if isinstance(d, int) else str(d)
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{k} ×{v}" for k, v in counts.items())


# ----- placing a model ---------------------------------------------------------------------------
def offload_folder() -> str:
    """A fresh folder for disk-offloaded weights, removed when the process exits."""
    import atexit
    import shutil
    import tempfile

    from tda.common import stale
    from tda.common.paths import cache_dir

    root = cache_dir() / "offload"
    root.mkdir(parents=True, exist_ok=True)
    stale.sweep(root, "p*-*", r"^p(\d+)-", "left by a run that was killed")  # atexit never ran for them
    path = tempfile.mkdtemp(prefix=f"p{os.getpid()}-", dir=root)
    atexit.register(shutil.rmtree, path, True)
    return path


def rank_max_memory(max_memory: dict | None) -> dict | None:
    """Under several processes per node, default each process to its own equal share of the GPUs."""
    from tda.common import distributed

    if max_memory is not None or not distributed.is_distributed():
        return max_memory
    import torch

    if not torch.cuda.is_available():
        return None
    from accelerate.utils import get_max_memory

    n, lw, lr = torch.cuda.device_count(), distributed.local_world_size(), distributed.local_rank()
    per = n // lw
    if per < 1:
        raise BadInput(f"{lw} processes on this node but only {n} GPU(s): give each process a GPU, "
                       f"or name the devices with --max-memory")
    mine = set(range(lr * per, (lr + 1) * per))
    return {k: v for k, v in get_max_memory().items() if not isinstance(k, int) or k in mine}


def pretrained_kwargs(device_map, max_memory) -> dict:
    """Extra ``from_pretrained`` arguments for a device map (empty without one)."""
    if device_map is None:
        return {}
    quiet_accelerate()
    return {"device_map": device_map, "max_memory": rank_max_memory(max_memory),
            "offload_folder": offload_folder()}


def quiet_accelerate() -> None:
    """accelerate warns that offloaded parameters are on the meta device: that is the point."""
    import logging

    logging.getLogger("accelerate.big_modeling").setLevel(logging.ERROR)


def dispatch(model, device_map, max_memory=None, dtype=None):
    """Place an in-memory model (built from a config) by ``device_map`` with accelerate."""
    from accelerate import dispatch_model, infer_auto_device_map
    from accelerate.utils import get_balanced_memory

    quiet_accelerate()

    if dtype is not None:
        model = model.to(dtype=dtype)
    max_memory = rank_max_memory(max_memory)
    no_split = list(getattr(model, "_no_split_modules", None) or [])
    if isinstance(device_map, str):
        if device_map in ("balanced", "balanced_low_0"):
            max_memory = get_balanced_memory(model, max_memory=max_memory, no_split_module_classes=no_split,
                                             dtype=dtype, low_zero=device_map == "balanced_low_0")
        device_map = infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=no_split,
                                           dtype=dtype)
    if set(device_map.values()) <= {"disk"}:
        raise BadInput("the memory given leaves no room for any layer: every weight would go to disk; "
                       "raise --max-memory")
    devices = set(device_map.values())
    if devices <= {"cpu"} or (len(devices) == 1 and "disk" not in devices):
        model = model.to(_as_device(next(iter(devices))))  # one device: no hooks needed
    else:
        model = dispatch_model(model, device_map=dict(device_map), offload_dir=offload_folder()
                               if "disk" in devices else None)
    model.hf_device_map = dict(device_map)
    return model
