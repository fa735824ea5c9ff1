"""An lm-evaluation-harness model (registered as ``"tda"``) that runs any sparse variant.

``loglikelihood((context, continuation))``: the context is a dense prefill whose activations
build the mask (as in generation); the continuation is scored teacher-forced with the mask
fixed. ``loglikelihood_rolling``: the first half of the text builds the mask, the whole text
after the first token is scored. ``generate_until``: :func:`tda.engine.generate.generate`, cut at the
``until`` strings. Offline use: :func:`run_mc_task` runs the shipped multiple-choice task
(``data/lm_eval_tasks/tda_mc.yaml`` over ``data/mc_task.jsonl``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from tda.common.paths import DATA_DIR
from tda.engine.generate import SparseSession, generate
from tda.evaluate.scoring import continuation_logits, split_point

TASKS_DIR = DATA_DIR / "lm_eval_tasks"


@register_model("tda")
class TDALM(LM):
    """``TDALM(model="gemma-3-270m", method="griffin", density=0.5)`` or ``TDALM(lm=loaded, ...)``."""

    def __init__(self, model: str = "gemma-3-270m", method: str = "dense", density: float | None = None,
                 dtype: str = "fp32", device: str = "cpu", cett: float = 0.2, fast: bool = True, lm=None,
                 max_gen_toks: int = 64, **_ignored):
        super().__init__()
        if lm is None:
            from tda.models.load import load_model

            lm = load_model(model, dtype=dtype, device=device)
        self.lm = lm
        self.method = method
        self.density = None if density in (None, "", "None") else float(density)
        self.cett, self.fast, self.max_gen_toks = float(cett), bool(fast), int(max_gen_toks)
        SparseSession(lm, method, density=self.density, cett=self.cett, fast=self.fast)  # validate early

    def _session(self) -> SparseSession:
        return SparseSession(self.lm, self.method, density=self.density, cett=self.cett, fast=self.fast)

    def _ctx_ids(self, context: str) -> list[int]:
        tok = self.lm.tokenizer
        ids = tok(context, add_special_tokens=True).input_ids if context else []
        if not ids:
            start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
            ids = [start]
        return ids

    def _score(self, ids: list[int], n_prefix: int) -> tuple[float, bool]:
        logits = continuation_logits(self.lm, ids, n_prefix, self._session())
        target = torch.tensor(ids[n_prefix:], device=logits.device)
        lp = torch.log_softmax(logits, dim=-1)
        return float(lp.gather(1, target[:, None]).sum()), bool((lp.argmax(-1) == target).all())

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        out = []
        for req in requests:
            context, continuation = req.args
            ctx = self._ctx_ids(context)
            cont = self.lm.tokenizer(continuation, add_special_tokens=False).input_ids
            if not cont:
                out.append((0.0, True))
                continue
            out.append(self._score(ctx + cont, len(ctx)))
        return out

    def loglikelihood_rolling(self, requests) -> list[float]:
        out = []
        for req in requests:
            ids = self._ctx_ids(req.args[0])[: self.lm.n_ctx]
            if len(ids) < 2:
                out.append(0.0)
                continue
            k = split_point(len(ids))
            # mask from the first half; the first half itself is scored densely by one forward
            dense = SparseSession(self.lm, "dense", fast=self.fast)
            head = continuation_logits(self.lm, ids[:k + 1], 1, dense) if k > 1 else None
            lp = 0.0
            if head is not None:
                t = torch.tensor(ids[1:k], device=head.device)
                lp += float(torch.log_softmax(head[:-1], -1).gather(1, t[:, None]).sum())
            lp += self._score(ids, k)[0]
            out.append(lp)
        return out

    def generate_until(self, requests) -> list[str]:
        out = []
        for req in requests:
            context, kwargs = req.args
            until = kwargs.get("until", []) if isinstance(kwargs, dict) else []
            until = [until] if isinstance(until, str) else list(until)
            n = int(kwargs.get("max_gen_toks", self.max_gen_toks)) if isinstance(kwargs, dict) else self.max_gen_toks
            text = generate(self.lm, context, self.method, density=self.density, cett=self.cett,
                            max_new_tokens=n, fast=self.fast).text
            for u in until:
                if u and u in text:
                    text = text[: text.index(u)]
            out.append(text)
        return out


def mc_task_config(data_file: str | Path | None = None) -> dict:
    """The shipped task YAML as a dict, with ``data_files`` made absolute (cwd-independent)."""
    import yaml

    cfg = yaml.safe_load((TASKS_DIR / "tda_mc.yaml").read_text())
    root = TASKS_DIR.parent.parent
    path = Path(data_file) if data_file else root / cfg["dataset_kwargs"]["data_files"]["test"]
    cfg["dataset_kwargs"] = {"data_files": {"test": str(path.resolve())}}
    return cfg


def _simple_evaluate(lm, method: str, density: float | None, *, limit: int | None, cett: float, fast: bool,
                     log_samples: bool) -> dict:
    import logging
    import os

    import lm_eval
    from lm_eval.tasks import TaskManager

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    model = TDALM(lm=lm, method=method, density=density, cett=cett, fast=fast)
    return lm_eval.simple_evaluate(model=model, tasks=[mc_task_config()], limit=limit, bootstrap_iters=0,
                                   task_manager=TaskManager(include_defaults=False), log_samples=log_samples)


def run_mc_task(lm, method: str, density: float | None, *, limit: int | None = None, cett: float = 0.2,
                fast: bool = True) -> float:
    """Accuracy of a variant on the shipped multiple-choice task through ``lm_eval.simple_evaluate``."""
    res = _simple_evaluate(lm, method, density, limit=limit, cett=cett, fast=fast, log_samples=False)
    return float(res["results"]["tda_mc"]["acc,none"])


def run_mc_items(lm, method: str, density: float | None, *, limit: int | None = None, cett: float = 0.2,
                 fast: bool = True) -> list[float]:
    """Per-item correctness (1.0 / 0.0, in item order) of a variant on the shipped multiple-choice
    task, from lm-eval's logged samples; their mean is lm-eval's ``acc``."""
    res = _simple_evaluate(lm, method, density, limit=limit, cett=cett, fast=fast, log_samples=True)
    samples = sorted(res["samples"]["tda_mc"], key=lambda x: x["doc_id"])
    return [float(x["acc"]) for x in samples]
