"""``tda train-predictor``: train (or fetch from the cache) the ``predictor`` method's neuron predictors."""

from __future__ import annotations

from pathlib import Path

import typer

from tda.cli.app import DeviceOpt, DtypeOpt, ModelOpt, app, echo_err, load, progress_printer


@app.command("train-predictor")
def train_predictor_cmd(
    model: str = ModelOpt,
    rank: int = typer.Option(None, "--rank", help="predictor rank r per layer (default: 4% of d_ff, at least 8)"),
    epochs: int = typer.Option(10, "--epochs", help="passes over the training tokens"),
    label_density: float = typer.Option(0.5, "--label-density",
                                        help="trained to find each token's top label-density·d_ff neurons by |a|"),
    lr: float = typer.Option(3e-3, "--lr", help="AdamW learning rate"),
    batch: int = typer.Option(256, "--batch", help="tokens per optimisation step"),
    seed: int = typer.Option(0, "--seed", help="initialisation and shuffling seed"),
    heldout: int = typer.Option(8, "--heldout", help="calibration texts held out for the recall report"),
    data: Path = typer.Option(None, "--data", help="calibration texts (.json/.jsonl with a 'text' field); default: the shipped corpus"),
    limit: int = typer.Option(None, "--limit", help="use only the first N texts (default: up to 128)"),
    retrain: bool = typer.Option(False, "--retrain", help="train again even when a cached predictor exists"),
    dtype: str = DtypeOpt,
    device: str = DeviceOpt,
) -> None:
    """Train one rank-r neuron predictor per layer on the calibration corpus (cached per model, data and
    settings; the `predictor` method uses the newest one); progress and held-out top-k recall on stderr."""
    from tda.common.data import load_texts
    from tda.common.errors import BadInput
    from tda.masks.predictor_train import PredictorSettings, cache_path, load_or_train

    if limit is not None and limit < 1:
        raise BadInput(f"limit must be at least 1, got {limit}")
    settings = PredictorSettings(rank=rank, epochs=epochs, label_density=label_density, lr=lr, batch=batch,
                                 seed=seed, heldout=heldout).check()
    texts = [t for t in load_texts(data, limit=limit) if t.strip()]
    lm = load(model, dtype, device)
    if retrain:
        from tda.masks.calibrate import data_hash
        from tda.masks.linear_inputs import clean_texts
        from tda.masks.predictor_train import MAX_TEXTS

        cache_path(lm.model_id, data_hash(clean_texts(texts, MAX_TEXTS)), settings).unlink(missing_ok=True)
    pred, cached = load_or_train(lm, texts, settings, progress=progress_printer)
    path = cache_path(lm.model_id, pred.data_hash, settings)
    path.touch()  # the newest predictor is the one the method picks up
    recall = [r for r in pred.recall if r == r]
    mean = sum(recall) / len(recall) if recall else float("nan")
    ffn = lm.ffn
    share = pred.n_params() / (len(ffn.in_modules(0)) + 1) / ffn.d_ff / ffn.d_model / ffn.n_layers
    echo_err(f"[tda] predictor for {pred.model_id}: rank {pred.rank}, {pred.n_train} training and "
             f"{pred.n_heldout} held-out tokens, data {pred.data_hash}" + (" (from cache)" if cached else ""))
    echo_err(f"[tda] held-out recall of the true top-{label_density:g}·d_ff neurons: mean {mean:.3f}, "
             f"per layer {' '.join(f'{r:.2f}' for r in pred.recall)}")
    echo_err(f"[tda] predictor weights: {pred.n_params():,} ({share:.1%} of the FFN weights; read every step)")
    print(path)
