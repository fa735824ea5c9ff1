"""The quantized weight format (--dtype gguf): block repacks exact to gguf's de-quantiser, kernels
equal to F.linear on the de-quantised weights, the format through the engine, and the embedded
Gemma 3 270M on its own GGUF blocks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tda.engine import quant_kernels
from tda.models import quant

gguf = pytest.importorskip("gguf")


def _random_blocks(qtype: str, n_blocks: int, seed: int = 0) -> np.ndarray:
    """Valid random blocks: random bytes with sane fp16 super-scales (random bytes could be NaN)."""
    rng = np.random.default_rng(seed)
    per, size, _ = quant.BLOCKS[qtype]
    b = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)

    def f16():
        return np.float16(rng.uniform(-0.05, 0.05, n_blocks)).astype(np.float16).view(np.uint8).reshape(n_blocks, 2)

    if qtype in ("Q8_0", "Q5_0", "Q4_0"):
        b[:, 0:2] = f16()
    elif qtype == "Q4_K":
        b[:, 0:2], b[:, 2:4] = f16(), f16()
    elif qtype == "Q6_K":
        b[:, 208:210] = f16()
    return b


def _weight(qtype: str, d_out: int, n_blocks_per_row: int, seed: int = 0):
    per = quant.BLOCKS[qtype][0]
    d_in = per * n_blocks_per_row
    raw = _random_blocks(qtype, d_out * n_blocks_per_row, seed)
    ref = gguf.dequantize(raw.reshape(d_out, -1), gguf.GGMLQuantizationType[qtype]).reshape(d_out, d_in)
    return quant.unpack(raw, qtype, (d_out, d_in)), torch.from_numpy(np.ascontiguousarray(ref, dtype=np.float32))


@pytest.mark.parametrize("qtype", list(quant.BLOCKS))
def test_repack_is_bit_exact_to_gguf_dequantize(qtype):
    qw, ref = _weight(qtype, 37, 3)
    got = qw.dequantize()
    assert got.dtype == torch.float32 and got.shape == ref.shape
    assert torch.equal(got.view(torch.int32), ref.view(torch.int32))  # every bit, Q4_K's rounding too
    # rows gathered (the embedding) are the same values
    idx = torch.tensor([36, 0, 5, 5])
    assert torch.equal(qw.rows(idx), ref[idx])
    buf = torch.full((10, ref.shape[1]), float("nan"))  # tiles into one buffer: the same bits
    for r0 in range(0, 37, 10):
        tile = qw.dequantize(r0, min(r0 + 10, 37), out=buf)
        assert torch.equal(tile.view(torch.int32), ref[r0:r0 + 10].view(torch.int32))
    assert qw.nbytes == qw.q.numel() + 4 * qw.scale.numel() * (2 if qw.min is not None else 1)


@pytest.mark.parametrize("qtype", list(quant.BLOCKS))
@pytest.mark.parametrize("rows", [1, 2, 3, 5, 8, 9, 17])
def test_kernel_equals_linear_on_dequantised_weights(qtype, rows):
    qw, ref = _weight(qtype, 37, 3, seed=rows)
    x = torch.randn(rows, qw.shape[1], generator=torch.Generator().manual_seed(rows))
    bias = torch.randn(37)
    want = F.linear(x.double(), ref.double(), bias.double())
    for backend in ("auto", "torch"):
        got = quant_kernels.linear(x, qw, bias, backend=backend)
        assert got.dtype == torch.float32 and got.shape == (rows, 37)
        tol = 2e-6 * float((x.double().abs() @ ref.double().abs().T).max())  # fp32 summation rounding
        assert float((got.double() - want).abs().max()) <= tol, backend


@pytest.mark.skipif(quant_kernels.quant_ops() is None, reason="C++ kernels unavailable")
def test_kernel_takes_any_leading_shape_and_rejects_bad_arguments():
    qw, ref = _weight("Q8_0", 19, 2)
    ops = quant_kernels.quant_ops()
    x = torch.randn(2, 1, 64)
    y = ops.quant_linear(x, qw.q, qw.scale, None, None)
    assert y.shape == (2, 1, 19)
    assert torch.allclose(y, F.linear(x, ref), atol=1e-5)
    with pytest.raises((RuntimeError, ValueError), match="features"):
        ops.quant_linear(torch.randn(1, 63), qw.q, qw.scale, None, None)
    with pytest.raises((RuntimeError, TypeError), match="fp32"):
        ops.quant_linear(x.double(), qw.q, qw.scale, None, None)
    with pytest.raises((RuntimeError, ValueError), match="out of range"):
        ops.quant_dequant(qw.q, qw.scale, None, 0, 20)
    assert torch.equal(ops.quant_dequant(qw.q, qw.scale, None, 3, 7), ref[3:7])


@pytest.mark.parametrize("qtype", quant.QUANTIZABLE)
def test_quantize_makes_valid_blocks_close_to_the_weight(qtype):
    w = torch.randn(24, 512, generator=torch.Generator().manual_seed(1)) * 0.02
    qw = quant.quantize(w, qtype)
    assert qw.qtype == qtype and qw.shape == (24, 512)
    q = qw.q.int()
    lo, hi = {"Q8_0": (-127, 127), "Q4_0": (-8, 7), "Q4_K": (0, 15)}[qtype]
    assert int(q.min()) >= lo and int(q.max()) <= hi
    if qtype != "Q4_K":  # the scale is the block's fp16 d
        assert torch.equal(qw.scale, qw.scale.half().float())
    else:  # Q4_K: sub-block minimums are subtracted, never added
        assert (qw.min >= 0).all() and (qw.scale >= 0).all()
    err = (qw.dequantize() - w).abs().max() / w.abs().max()
    assert float(err) < {"Q8_0": 0.01, "Q4_0": 0.1, "Q4_K": 0.1}[qtype]
    with pytest.raises(ValueError, match="whole blocks"):
        quant.quantize(torch.randn(4, 48), qtype)


def test_unpack_rejects_wrong_sizes_and_unknown_types():
    raw = _random_blocks("Q8_0", 6)
    with pytest.raises(ValueError, match="blocks for"):
        quant.unpack(raw, "Q8_0", (4, 64))
    with pytest.raises(ValueError, match="no repack"):
        quant.unpack(raw, "Q2_K", (6, 32))


def test_quant_linear_module_forward_is_the_kernel():
    qw, ref = _weight("Q6_K", 9, 1)
    mod = quant.QuantLinear(qw, torch.randn(9))
    x = torch.randn(3, 256)
    want = F.linear(x, ref, mod.bias)
    assert torch.allclose(mod(x), want, atol=1e-4, rtol=1e-5)  # the torch fallback
    assert torch.allclose(quant_kernels.linear_fn(mod)(x), want, atol=1e-4, rtol=1e-5)
    assert torch.equal(mod.weight, ref)


def _dequantised_twin(lm_q, spec):
    """The fp32 model whose linears hold exactly the quantized model's de-quantised weights."""
    from tda.models.load import load_model

    lm = load_model(spec, dtype="fp32")
    qmods = dict(lm_q.model.named_modules())
    with torch.no_grad():
        for name, mod in lm.model.named_modules():
            q = qmods.get(name)
            if isinstance(q, quant.QuantLinear):
                mod.weight.copy_(q.weight)
    lm.model_id = lm_q.model_id  # the same weights: the same calibrations (not the fp32 model's cache)
    return lm


@pytest.mark.parametrize("spec", ["tiny-llama", "tiny-gemma3", "tiny-qwen3"])
def test_quantized_tiny_model_generates_the_dequantised_models_tokens(spec):
    from tda.engine.generate import generate
    from tda.models.load import load_model

    lm_q = load_model(spec, dtype="gguf:Q8_0")
    assert lm_q.weight_format == "gguf" and lm_q.info()["format"] == "gguf"
    assert quant.quant_modules(lm_q.model), "no linear was quantized"
    lm_f = _dequantised_twin(lm_q, spec)
    prompt = "the quick brown fox jumps over"
    a = generate(lm_q, prompt, max_new_tokens=12)
    b = generate(lm_f, prompt, max_new_tokens=12)
    assert a.token_ids == b.token_ids
    # logits agree to fp32 rounding
    ids = torch.tensor([[3, 17, 42, 8, 99]])
    with torch.inference_mode():
        la, lb = lm_q.model(input_ids=ids).logits, lm_f.model(input_ids=ids).logits
    assert torch.allclose(la, lb, atol=1e-4, rtol=1e-4)


def test_every_method_is_accepted_on_the_gguf_format():
    """No method of the registry is refused on quantized blocks (the guard lists them all)."""
    from tda.engine.methods.registry import method_names
    from tda.engine.session import QUANT_METHODS

    assert set(method_names()) <= set(QUANT_METHODS)


@pytest.mark.parametrize("method", ["tt", "cats", "chess", "scap", "rsparse", "predictor", "teal", "wina", "griffin",
                                    "tda", "static", "random", "tt+head0.5", "griffin+tt", "tda+tt"])
@pytest.mark.parametrize("spec", ["tiny-llama", "tiny-gemma3"])
def test_methods_on_quantized_blocks_equal_the_dequantised_model(spec, method, monkeypatch):
    """Token-wise rules over the input-sparse quantized kernels and prompt-fixed slices of the blocks:
    the same tokens, densities and read fractions as on the fp32 model holding the de-quantised weights.
    With threshold rules' decode rows on the dense tiles (``TDA_QUANT_DENSE_FROM=0``): the same tokens
    and densities, and every weight row counted as read."""
    from tda.common.data import load_texts
    from tda.engine import layouts
    from tda.engine.generate import generate
    from tda.models.load import load_model

    lm_q = load_model(spec, dtype="gguf:Q8_0")
    lm_f = _dequantised_twin(lm_q, spec)
    cal = load_texts(limit=4)
    monkeypatch.setenv("TDA_QUANT_DENSE_FROM", "2")  # never: the input-sparse kernels
    a = generate(lm_q, "the quick brown fox jumps", method, density=0.5, max_new_tokens=10, calibration_texts=cal)
    b = generate(lm_f, "the quick brown fox jumps", method, density=0.5, max_new_tokens=10, calibration_texts=cal)
    assert a.token_ids == b.token_ids
    assert a.density == pytest.approx(b.density) and a.density < 0.9
    assert a.params["read_fraction"] == pytest.approx(b.params["read_fraction"])
    assert layouts.quant_layout_bytes(lm_q.model) > 0  # the input-major copies are counted
    monkeypatch.setenv("TDA_QUANT_DENSE_FROM", "0")  # always, where the dense function reads tiles
    c = generate(lm_q, "the quick brown fox jumps", method, density=0.5, max_new_tokens=10, calibration_texts=cal)
    assert c.token_ids == b.token_ids and c.density == pytest.approx(b.density)
    tiles = quant_kernels.decode_kernel() == "vnni"
    for g, f in c.params["read_fraction"].items():
        assert f >= a.params["read_fraction"][g] - 1e-9
        if not tiles:
            assert f == pytest.approx(a.params["read_fraction"][g])
    if tiles and method in ("tt", "teal"):  # their threshold rows went to the tiles: more rows read
        assert c.params["read_fraction"]["ffn"] > a.params["read_fraction"]["ffn"] + 0.05


def test_bad_format_names_fail_in_one_line():
    from tda.common.errors import BadInput
    from tda.models.load import load_model

    with pytest.raises(BadInput, match="gguf:TYPE"):
        load_model("tiny-llama", dtype="gguf:Q2_K")


def test_cli_generate_in_the_quantized_format(tmp_path):
    import json
    import subprocess
    import sys

    out = tmp_path / "g.json"
    r = subprocess.run([sys.executable, "-m", "tda.cli.main", "generate", "--model", "tiny-llama", "--dtype",
                        "gguf:Q8_0", "--prompt", "hello world", "-n", "4", "--json", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert len(json.loads(out.read_text())["token_ids"]) == 4
    r = subprocess.run([sys.executable, "-m", "tda.cli.main", "generate", "--model", "tiny-llama", "--dtype",
                        "gguf:Q3", "--prompt", "x"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr


@pytest.mark.slow
def test_embedded_gemma_on_its_own_blocks_matches_the_fp32_model(gemma):
    """The embedded model in the gguf format: no fp32 copy of a quantized weight, the file's blocks
    (token_embd Q8_0 as lm_head and embedding, Q5_0/Q8_0/Q4_K/Q6_K in the layers), and the same
    greedy tokens and logits (to fp32 rounding) as the de-quantised fp32 model."""
    from tda.engine.generate import generate
    from tda.models.load import load_model

    lm_q = load_model("gemma-3-270m", dtype="gguf")
    types = {m.qtype for m in quant.quant_modules(lm_q.model)}
    assert types == {"Q8_0", "Q5_0", "Q4_K", "Q6_K"}
    assert isinstance(lm_q.model.get_input_embeddings(), quant.QuantEmbedding)
    assert not any(p.numel() > 1_000_000 for p in lm_q.model.parameters())  # only norms stay fp32
    lm_f = gemma  # the session's fp32 model (load_model("gemma-3-270m", dtype="fp32")): no second 1.1 GB copy
    assert lm_f.format_name == "fp32"
    ids = lm_f.tokenizer("The history of the city begins in the early middle ages", return_tensors="pt").input_ids
    with torch.inference_mode():
        la, lb = lm_q.model(input_ids=ids).logits, lm_f.model(input_ids=ids).logits
    assert float((la - lb).abs().max()) <= 1e-4 * float(lb.abs().max())
    for prompt in ("Almost one million people visited the city", "def fibonacci(n):"):
        a = generate(lm_q, prompt, max_new_tokens=16)
        b = generate(lm_f, prompt, max_new_tokens=16)
        assert a.token_ids == b.token_ids, prompt
    for method in ("tt", "teal"):  # a method on the blocks: the same tokens as on the fp32 model
        a = generate(lm_q, "Almost one million people visited the city", method, density=0.5, max_new_tokens=12)
        b = generate(lm_f, "Almost one million people visited the city", method, density=0.5, max_new_tokens=12)
        # the same tokens; the density to a few threshold decisions (an |x| within fp32 rounding of
        # TEAL's threshold may fall either side when the projections sum in another order)
        assert a.token_ids == b.token_ids and a.density == pytest.approx(b.density, abs=1e-3), method


def test_frontier_in_the_gguf_format_pairs_with_fp32_dense():
    from tda.evaluate import format_cost
    from tda.evaluate.frontier import run_frontier
    from tda.models.load import load_model

    lm_q = load_model("tiny-llama", dtype="gguf:Q4_0")
    texts = ["the cat sat on the mat and looked at the dog " * 3, "one two three four five six seven eight " * 3]
    res = run_frontier(lm_q, ["dense"], [0.5], rounds=1, prompt_tokens=8, new_tokens=4, heldout=texts, mc_limit=0,
                       bandwidth_mb=None, boot_iters=50)
    assert [r["method"] for r in res["rows"]] == ["dense"]
    format_cost.pair_with_reference(res, load_model("tiny-llama", dtype="fp32"), texts, boot_iters=50)
    row = res["rows"][0]
    lo, d, hi = row["ppl_vs_fp32_delta_pct_lo"], row["ppl_vs_fp32_delta_pct"], row["ppl_vs_fp32_delta_pct_hi"]
    assert lo <= d <= hi and abs(d) < 50  # Q4_0 of random weights: a cost, but the same model
    assert res["meta"]["reference"]["label"] == format_cost.REFERENCE
    assert "Δppl vs fp32 dense" in format_cost.to_markdown(res)
    with pytest.raises(ValueError, match="other texts"):
        format_cost.pair_with_reference(res, load_model("tiny-llama", dtype="fp32"), texts[:1], boot_iters=50)


def test_bench_reports_the_formats_bytes_and_flags_rounds_above_the_roofline(monkeypatch):
    from tda.evaluate.bench import format_table, run_bench
    from tda.evaluate.ceiling import weight_bytes
    from tda.models.load import load_model

    lm_q = load_model("tiny-llama", dtype="gguf:Q8_0")
    wb = sum(weight_bytes(lm_q).values())
    head = lm_q.model.get_output_embeddings()
    assert all(m.blocks_only is not None for m in quant.quant_modules(lm_q.model) if m is not head)  # as a file holds them
    from tda.engine.quant_kernels import decode_nbytes

    # what a step reads: each linear's integer tiles where it decodes on them, else its blocks
    assert wb == sum(decode_nbytes(m) for m in quant.quant_modules(lm_q.model)) + sum(
        m.weight.numel() * 4 for m in lm_q.model.modules() if type(m) is torch.nn.Linear)
    res = run_bench(lm_q, methods=("dense",), prompt_tokens=8, new_tokens=4, rounds=2, bandwidth_mb=8)
    row = res["results"]["dense"]
    assert row["roofline_rounds_above_100"] == sum(p > 100 for p in row["roofline_pct_each_round"])
    assert "gguf" in format_table(res)
    # the lm_head option runs on the blocks too (its input-major head repack): bench takes it
    from tda.common.data import load_texts

    monkeypatch.setenv("TDA_QUANT_DENSE_FROM", "2")  # never on the dense tiles: the head's kept inputs only
    res = run_bench(lm_q, methods=("dense", "tt+head0.5"), prompt_tokens=8, new_tokens=4, rounds=1,
                    bandwidth_mb=None, calibration_texts=load_texts(limit=4))
    (label,) = [k for k in res["results"] if k.startswith("tt+head0.5")]
    assert res["results"][label]["read_fraction"]["lm_head"] < 1.0


@pytest.mark.parametrize("qtype", list(quant.BLOCKS))
@pytest.mark.parametrize("rows_x", [1, 2, 5, 8, 12])
def test_sparse_kernels_equal_the_masked_dense_product(qtype, rows_x):
    """Output-sparse rows and input-sparse inputs over the quantized format: each equals its masked
    dense product on the de-quantised weights (odd sizes, empty and full sets)."""
    qw, ref = _weight(qtype, 41, 2, seed=rows_x)
    d_in = qw.shape[1]
    g = torch.Generator().manual_seed(7 + rows_x)
    x = torch.randn(rows_x, d_in, generator=g)
    bias = torch.randn(41, generator=g)
    qwt = qw.input_major()
    assert torch.equal(qwt.row_major().dequantize(), ref)
    scale = float((x.abs() @ ref.abs().T).max())
    for idx in (torch.tensor([40, 0, 17, 3]), torch.arange(41), torch.tensor([], dtype=torch.long)):
        want = F.linear(x.double(), ref[idx].double(), bias[idx].double())
        for backend in ("auto", "torch"):
            got = quant_kernels.rows(x, qw, idx, bias, backend=backend)
            assert got.shape == (rows_x, idx.numel())
            assert got.numel() == 0 or float((got.double() - want).abs().max()) <= 2e-6 * scale
    for idx in (torch.randperm(d_in, generator=g)[: d_in // 3], torch.arange(d_in), torch.tensor([], dtype=torch.long),
                torch.tensor([d_in - 1])):
        mask = torch.zeros(d_in, dtype=torch.float64)
        mask[idx] = 1
        want = F.linear(x.double() * mask, ref.double(), bias.double())
        for backend in ("auto", "torch"):
            got = quant_kernels.input_sparse(x, qwt, idx, bias, backend=backend)
            assert got.shape == (rows_x, 41)
            assert float((got.double() - want).abs().max()) <= 2e-6 * scale, (backend, idx.numel())
    with pytest.raises(ValueError, match="repeated"):
        quant_kernels.input_sparse(x, qwt, torch.tensor([1, 1]))
    with pytest.raises(ValueError, match="out of range"):
        quant_kernels.rows(x, qw, torch.tensor([41]))


@pytest.mark.parametrize("rows_x", [1, 3, 8])
def test_packed_q4k_layout_gives_the_int8_layouts_results_bit_for_bit(rows_x):
    """Q4_K input-major, packed (4-bit values two a byte, uint8 sub-scales, fp16 super-block factors):
    the same scales and values as the int8 layout, so the same products bit for bit, and each
    equal to its masked dense product on the de-quantised weights (empty, full and odd sets)."""
    qw, ref = _weight("Q4_K", 192, 2, seed=11 + rows_x)
    packed, plain = qw.input_major(), qw.input_major(compact=False)
    assert packed.packed and not plain.packed
    assert packed.nbytes < 0.5 * plain.nbytes
    assert torch.equal(packed.row_major().dequantize(), ref)
    g = torch.Generator().manual_seed(rows_x)
    x = torch.randn(rows_x, qw.shape[1], generator=g)
    bias = torch.randn(192, generator=g)
    scale = float((x.abs() @ ref.abs().T).max())
    d_in = qw.shape[1]
    for idx in (torch.randperm(d_in, generator=g)[: d_in // 3], torch.arange(d_in), torch.tensor([], dtype=torch.long),
                torch.tensor([d_in - 1])):
        got = quant_kernels.input_sparse(x, packed, idx, bias)
        assert torch.equal(got, quant_kernels.input_sparse(x, plain, idx, bias))
        mask = torch.zeros(d_in, dtype=torch.float64)
        mask[idx] = 1
        want = F.linear(x.double() * mask, ref.double(), bias.double())
        assert float((got.double() - want).abs().max()) <= 2e-6 * scale
        assert torch.equal(quant_kernels.input_sparse(x, packed, idx, bias, backend="torch"),
                           quant_kernels.input_sparse(x, plain, idx, bias, backend="torch"))
    ops = quant_kernels.quant_ops()
    if ops is not None:
        for t in (0.0, 0.6, 1e9):
            args = (None, t, None, None)
            assert torch.equal(ops.quant_input_sparse_threshold(x, packed.qt, packed.st, packed.mt, *args, packed.sd, packed.md),
                               ops.quant_input_sparse_threshold(x, plain.qt, plain.st, plain.mt, *args))
        with pytest.raises(ValueError, match="md needs sd"):
            ops.quant_input_sparse(x, plain.qt, plain.st, plain.mt, torch.arange(3), None, False, None, packed.md)
        with pytest.raises(ValueError, match="packed"):
            ops.quant_input_sparse(x, packed.qt, packed.st, None, torch.arange(3), None, False, packed.sd, packed.md)


@pytest.mark.parametrize("qtype", list(quant.QUANTIZABLE))
def test_quantized_weights_become_gguf_blocks_that_gguf_reads_back(qtype):
    """``to_blocks``: the file blocks of a quantized fp32 weight, read back by gguf's own
    de-quantiser to exactly the repack's values (random:* models then hold blocks, as a file does)."""
    qw = quant.quantize(torch.randn(80, 512, generator=torch.Generator().manual_seed(5)) * 0.03, qtype)
    bw = quant.to_blocks(qw)
    assert bw is not None and bw.qtype == qtype and bw.nbytes == quant.file_bytes(qtype, qw.q.numel())
    ref = gguf.dequantize(bw.blocks.numpy(), gguf.GGMLQuantizationType[qtype]).reshape(80, 512)
    assert np.array_equal(ref, qw.dequantize().numpy())
    back = bw.unpack()
    assert torch.equal(back.q, qw.q) and torch.equal(back.scale, qw.scale)
    bad = quant.QuantWeight(qw.q, qw.scale * (1 + 2 ** -20), qw.min, qtype)  # scales no block can hold
    assert quant.to_blocks(bad) is None


@pytest.mark.parametrize("qtype", ["Q8_0", "Q5_0", "Q4_0", "Q6_K"])
def test_compact_scales_give_the_same_products(qtype):
    """The input-major layout keeps Q8_0/Q5_0/Q4_0 scales (the blocks' fp16 d) as fp16 and Q6_K's as
    its blocks do (int8 factors times an fp16 d): fewer scale bytes, the same products bit for bit."""
    qw, ref = _weight(qtype, 48, 2, seed=2)
    compact, plain = qw.input_major(), qw.input_major(compact=False)
    want = {"Q6_K": torch.int8}.get(qtype, torch.float16)
    assert compact.st.dtype == want and plain.st.dtype == torch.float32
    assert compact.nbytes < plain.nbytes
    assert torch.equal(compact.row_major().dequantize(), ref)
    x = torch.randn(3, qw.shape[1], generator=torch.Generator().manual_seed(4))
    for idx in (torch.arange(0, qw.shape[1], 3), torch.arange(qw.shape[1])):
        assert torch.equal(quant_kernels.input_sparse(x, compact, idx), quant_kernels.input_sparse(x, plain, idx))
    ops = quant_kernels.quant_ops()
    if ops is not None:
        assert torch.equal(ops.quant_input_sparse_threshold(x, compact.qt, compact.st, compact.mt, None, 0.5, None, None,
                                                            compact.sd, compact.md),
                           ops.quant_input_sparse_threshold(x, plain.qt, plain.st, plain.mt, None, 0.5, None, None))


def test_packing_applies_only_where_it_is_exact():
    """Another block type, outputs not whole 64s, or Q4_K scales that no fp16 d times 6-bit factors
    make: the int8 layout (the packed one must hold the same values)."""
    assert quant.pack_q4k(_weight("Q8_0", 64, 2)[0]) is None
    assert quant.pack_q4k(_weight("Q4_K", 40, 1)[0]) is None
    qw = _weight("Q4_K", 64, 1)[0]
    assert quant.pack_q4k(qw) is not None
    odd = quant.QuantWeight(qw.q, qw.scale.clone(), qw.min, "Q4_K")
    odd.scale[3, 2] = odd.scale[3, 2] * (1 + 2 ** -20)  # no longer fp16 d times an integer
    assert quant.pack_q4k(odd) is None
    assert not odd.input_major().packed
    neg = quant.QuantWeight(qw.q, -qw.scale.abs(), qw.min, "Q4_K")  # a negative d: factors keep d's sign
    p = quant.pack_q4k(neg)
    assert p is not None and torch.equal(p.row_major().scale, neg.scale)


@pytest.mark.skipif(quant_kernels.quant_ops() is None, reason="C++ kernels unavailable")
@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_K", "Q6_K"])
@pytest.mark.parametrize("rows_x", [1, 3, 8])
def test_fused_threshold_kernel_equals_each_rows_masked_product(qtype, rows_x):
    """TEAL's fused call: |x| >= t per row (exact zeros never), every row its own masked product,
    the union's size counted; per-input cut-offs too."""
    ops = quant_kernels.quant_ops()
    qw, ref = _weight(qtype, 33, 2, seed=3)
    qwt = qw.input_major()
    g = torch.Generator().manual_seed(rows_x)
    x = torch.randn(rows_x, qw.shape[1], generator=g)
    x[0, :5] = 0.0
    scale = float((x.abs() @ ref.abs().T).max())
    for t, tvec in ((0.7, None), (0.0, torch.rand(qw.shape[1], generator=g) * 1.5), (0.0, None), (1e9, None)):
        count = torch.zeros(1, dtype=torch.long)
        got = ops.quant_input_sparse_threshold(x, qwt.qt, qwt.st, qwt.mt, None, t, tvec, count, qwt.sd, qwt.md)
        cut = tvec if tvec is not None else torch.full((qw.shape[1],), t)
        keep = (x.abs() >= cut) & (x != 0)
        want = F.linear((x * keep).double(), ref.double())
        assert float((got.double() - want).abs().max()) <= 2e-6 * scale
        assert int(count) == int(keep.any(0).sum())


@pytest.mark.parametrize("method", ["teal", "griffin"])
def test_quantized_methods_on_a_batch_equal_each_prompt_alone(method):
    from tda.common.data import load_texts
    from tda.engine.generate import generate
    from tda.models.load import load_model

    lm_q = load_model("tiny-llama", dtype="gguf:Q8_0")
    cal = load_texts(limit=4)
    prompts = ["the quick brown fox jumps over", "a b c d e f g h"]
    both = generate(lm_q, prompts, method, density=0.5, max_new_tokens=6, calibration_texts=cal)
    alone = [generate(lm_q, p, method, density=0.5, max_new_tokens=6, calibration_texts=cal).token_ids[0]
             for p in prompts]
    # token-wise: each row its own selection; prompt-fixed (union mode): each row's mask inside the union's slice
    assert both.token_ids == alone


def test_app_runs_the_generate_page_in_the_gguf_format(monkeypatch):
    """The sidebar's dtype list takes the quantized format; the Generate page runs a method on it."""
    from streamlit.testing.v1 import AppTest

    from tda.common.paths import REPO_ROOT

    monkeypatch.setenv("TDA_APP_MODEL", "tiny-llama")
    at = AppTest.from_file(str(REPO_ROOT / "app" / "main.py"), default_timeout=180).run()
    assert "gguf" in at.selectbox(key="dtype").options
    at.selectbox(key="dtype").select("gguf").run()
    at.switch_page("page_generate.py").run()
    at.selectbox(key="gen_method").select("teal").run()
    at.slider(key="gen_tokens").set_value(4).run()
    at.button(key="gen_run").click().run()
    assert not at.exception and not at.error, [e.value for e in (*at.exception, *at.error)]
    table = at.dataframe[0].value
    assert list(table["method"]) == ["dense", "teal"] and at.session_state["dtype"] == "gguf"


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0"])
def test_a_llama_gguf_file_loads_like_transformers_gguf_load(tmp_path, qtype):
    """A tiny Llama GGUF laid out as llama.cpp's converter does (q/k rows permuted): ``--model
    file.gguf`` keeps its blocks and computes transformers' own de-quantised GGUF model to fp32
    rounding; ``--dtype fp32`` gives that model (the same weights; eager attention here, transformers'
    default SDPA there)."""
    from transformers import AutoModelForCausalLM

    from tda.engine.generate import generate
    from tda.models.load import load_model
    from tests.gguf_writer import write_tiny_llama_gguf

    lm = load_model("tiny-llama", dtype="fp32")
    path = write_tiny_llama_gguf(lm, tmp_path / f"tiny-{qtype}.gguf", qtype)
    ref = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=path.name, dtype=torch.float32,
                                               attn_implementation="eager")
    lq = load_model(str(path))  # auto: the file's blocks
    lf = load_model(str(path), dtype="fp32")
    assert lq.weight_format == "gguf" and lf.weight_format is None
    assert {m.qtype for m in quant.quant_modules(lq.model)} == {qtype}
    ids = torch.tensor([[1, 17, 42, 8, 99, 300, 5]])
    with torch.inference_mode():
        want = ref(input_ids=ids).logits
        assert all(torch.equal(a, b) for a, b in zip(lf.model.state_dict().values(), ref.state_dict().values()))
        assert torch.allclose(lf.model(input_ids=ids).logits, want, atol=1e-6, rtol=1e-6)
        assert torch.allclose(lq.model(input_ids=ids).logits, want, atol=1e-5, rtol=1e-5)
    assert generate(lq, "the quick brown fox", max_new_tokens=8).token_ids == \
        generate(lf, "the quick brown fox", max_new_tokens=8).token_ids
