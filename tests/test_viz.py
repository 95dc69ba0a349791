"""Tests of cait_edu.viz: attention recording, the architecture diagram, and the plots of the
layerscale_depth sweep (on a result dict built here, and on a real seconds-long run)."""
from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

import cait_edu  # noqa: E402
from cait_edu.viz import attention_modules, draw_cait, record_attention  # noqa: E402


def _model(name, **kw):
    torch.manual_seed(0)
    return cait_edu.create_model(name, **kw).eval()


def _images(b=2):
    return torch.randn(b, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _ones(shape):
    return torch.ones(shape, dtype=torch.float32)


def test_cait_one_map_per_attention_layer_with_the_right_shapes():
    m = _model("cait_cifar_nano")  # 4 SA + 2 CA layers, 4 heads, 64 patches
    x = _images(2)
    with record_attention(m) as maps:
        m(x)
    expected = [f"blocks.{i}.attn" for i in range(4)] + [f"blocks_token_only.{j}.attn" for j in range(2)]
    assert list(maps) == expected
    assert len(maps) == 6
    for i in range(4):
        assert maps[f"blocks.{i}.attn"].shape == (2, 4, 64, 64)
    for j in range(2):
        ca = maps[f"blocks_token_only.{j}.attn"]
        assert ca.shape == (2, 4, 1, 1 + 64)
        # class attention is a plain softmax over [CLS, patches]
        torch.testing.assert_close(ca.sum(-1), _ones((2, 4, 1)))
        assert (ca >= 0).all()


def test_talking_heads_maps_need_not_sum_to_one():
    m = _model("cait_cifar_nano")
    with record_attention(m) as maps:
        m(_images(2))
    sums = torch.stack([maps[f"blocks.{i}.attn"].sum(-1) for i in range(4)])
    # weights are mixed across heads after the softmax, so rows generally do not sum to one
    assert not torch.allclose(sums, torch.ones_like(sums), atol=1e-3)


def test_plain_attention_rows_sum_to_one():
    m = _model("cait_cifar_nano", talking_heads=False)
    with record_attention(m) as maps:
        m(_images(2))
    for i in range(4):
        a = maps[f"blocks.{i}.attn"]
        torch.testing.assert_close(a.sum(-1), _ones((2, 4, 64)))


def test_vit_maps_include_the_class_token():
    m = _model("deit_cifar_tiny")  # 6 layers, 4 heads, 1 + 64 tokens
    with record_attention(m) as maps:
        m(_images(3))
    assert list(maps) == [f"blocks.{i}.attn" for i in range(6)]
    for a in maps.values():
        assert a.shape == (3, 4, 65, 65)
        torch.testing.assert_close(a.sum(-1), _ones((3, 4, 65)))


@pytest.mark.parametrize("name", ["cait_cifar_nano", "deit_cifar_tiny"])
def test_recording_does_not_change_outputs(name):
    m = _model(name)
    x = _images(2)
    with torch.no_grad():
        plain = m(x)
        with record_attention(m):
            recorded = m(x)
    torch.testing.assert_close(recorded, plain)


def test_flags_restored_maps_cleared_and_snapshot_kept():
    m = _model("cait_cifar_nano")
    mods = attention_modules(m)
    assert len(mods) == 6
    with record_attention(m) as maps:
        assert all(mod.keep_attn for mod in mods.values())
        assert len(maps) == 0  # nothing has run yet
        with pytest.raises(KeyError, match="forward pass"):
            maps["blocks.0.attn"]
        m(_images(1))
        assert len(maps) == 6
    assert all(mod.keep_attn is False and mod.attn_map is None for mod in mods.values())
    # the record keeps its snapshot after the block
    assert maps["blocks.0.attn"].shape == (1, 4, 64, 64)
    with pytest.raises(KeyError, match="not an attention layer"):
        maps["head"]


def test_flags_restored_after_an_error():
    m = _model("cait_cifar_nano")
    with pytest.raises(ValueError, match="32x32"):
        with record_attention(m):
            m(torch.zeros(1, 3, 64, 64))
    assert all(mod.keep_attn is False and mod.attn_map is None for mod in attention_modules(m).values())


def test_model_without_attention_is_rejected():
    with pytest.raises(ValueError, match="no attention layers"):
        with record_attention(torch.nn.Linear(2, 2)):
            pass


@pytest.mark.parametrize("with_vit", [False, True])
def test_draw_cait_returns_a_figure(with_vit):
    fig = draw_cait(depth=24, dim=384, num_heads=8, with_vit=with_vit)
    try:
        assert isinstance(fig, Figure)
        ax = fig.axes[0]
        assert len(ax.patches) > 0 and len(ax.texts) > 0
        texts = " ".join(t.get_text() for t in ax.texts)
        assert "self-attention stage × 24" in texts and "class-attention stage × 2" in texts
        assert ("ViT blocks × 12" in texts) == with_vit
        fig.canvas.draw()  # renders without error
    finally:
        plt.close(fig)


def test_draw_residual_schemes_names_every_library_option():
    from cait_edu.blocks import RESIDUAL_SCALES
    from cait_edu.viz import draw_residual_schemes

    fig = draw_residual_schemes()
    try:
        texts = [t.get_text() for t in fig.axes[0].texts]
        assert [t.strip('"') for t in texts if t.startswith('"')] == list(RESIDUAL_SCALES)
        assert texts.count("LayerNorm") == 3  # none, scalar, layerscale; the norm-free forms have none
        fig.canvas.draw()
    finally:
        plt.close(fig)


# --- the layerscale_depth sweep ---------------------------------------------------------------------
from cait_edu.viz import plot_depth_sweep, plot_gamma_evolution, summarize_depth_sweep  # noqa: E402

LRS, DEPTHS, SEEDS = (1e-3, 4e-3), (6, 12), (0, 1)


def _run(scheme, depth, lr, seed, top1, status="ok", gammas=None):
    """One run record as cait_edu.experiments writes it (only the fields the plots read)."""
    extra = []
    if gammas is not None:  # per epoch: (attn value, mlp value) for every layer
        for epoch, (ga, gm) in enumerate(gammas, start=1):
            extra.append({"epoch": epoch, "gamma_attn": [ga * (i + 1) for i in range(depth)],
                          "gamma_mlp": [gm * (i + 1) for i in range(depth)]})
    elif scheme == "none":
        extra = [{"epoch": 1, "gamma_attn": [None] * depth, "gamma_mlp": [None] * depth}]
    return {"id": f"{scheme}-d{depth}-lr{lr:g}-s{seed}", "labels": {"scheme": scheme, "depth": depth, "lr": lr, "seed": seed},
            "status": status, "final_top1": top1, "best_top1": top1, "extra": extra,
            "config": {"model_kwargs": {"depth": depth, "residual_scale": scheme}}}


def _accuracy(scheme, depth, lr, seed):
    return 40.0 + depth + (5.0 if scheme == "layerscale" else 0.0) + 1000 * lr + 2 * seed


def fake_sweep(planned_extra: int = 0) -> dict:
    """Two schemes x two depths x two lrs x two seeds. At lr 4e-3 the plain ViT at depth 12 diverges
    with both seeds and at depth 6 with seed 1; one LayerScale run stalls."""
    runs = []
    for seed in SEEDS:
        for lr in LRS:
            for depth in DEPTHS:
                for scheme in ("none", "layerscale"):
                    top1, status = _accuracy(scheme, depth, lr, seed), "ok"
                    if scheme == "none" and lr == 4e-3 and (depth == 12 or seed == 1):
                        top1, status = None, "diverged"
                    if scheme == "layerscale" and lr == 1e-3 and depth == 6 and seed == 1:
                        top1, status = 12.0, "stalled"
                    gammas = [(1e-5 * 10**e, 2e-5 * 10**e) for e in range(3)] if scheme == "layerscale" else None
                    runs.append(_run(scheme, depth, lr, seed, top1, status, gammas))
    return {"experiment": "layerscale_depth", "planned_runs": [r["id"] for r in runs] + ["x"] * planned_extra,
            "runs": {r["id"]: r for r in runs}}


def _lines(ax, gid):
    return [ln for ln in ax.lines if ln.get_gid() == gid]


def test_summarize_depth_sweep_counts_and_averages_by_hand():
    table = summarize_depth_sweep(fake_sweep())
    assert len(table) == 2 * 2 * 2
    ls = table[("layerscale", 1e-3, 6)]  # seed 0 ok, seed 1 stalled at 12%
    assert ls["values"] == [_accuracy("layerscale", 6, 1e-3, 0), 12.0] and ls["seeds"] == [0, 1]
    assert ls["mean"] == pytest.approx((_accuracy("layerscale", 6, 1e-3, 0) + 12.0) / 2)
    assert (ls["min"], ls["max"]) == (12.0, _accuracy("layerscale", 6, 1e-3, 0))
    assert ls["stalled_values"] == [12.0] and ls["diverged"] == 0
    half = table[("none", 4e-3, 6)]  # seed 1 diverged: left out of the statistics, counted
    assert half["values"] == [_accuracy("none", 6, 4e-3, 0)] and half["diverged"] == 1
    gone = table[("none", 4e-3, 12)]
    assert gone["values"] == [] and gone["diverged"] == 2 and math.isnan(gone["mean"])


def test_plot_depth_sweep_draws_means_ranges_and_failures():
    res = fake_sweep(planned_extra=3)
    fig = plot_depth_sweep(res)
    try:
        axes = fig.axes
        assert [ax.get_title() for ax in axes] == ["lr = 0.001", "lr = 0.004"]
        table = summarize_depth_sweep(res)
        for ax, lr in zip(axes, LRS):
            for scheme in ("none", "layerscale"):
                (line,) = _lines(ax, f"mean:{scheme}")
                expected = [table[(scheme, lr, d)]["mean"] for d in DEPTHS]
                got = list(line.get_ydata())
                assert len(got) == 2
                for g, e in zip(got, expected):
                    assert (math.isnan(g) and math.isnan(e)) or g == pytest.approx(e)
                xs = line.get_xdata()  # at the depths, shifted a little sideways per scheme
                assert all(0.9 * d < x < 1.1 * d for x, d in zip(xs, DEPTHS))
        first, second = axes
        # lr 1e-3: no divergence; one stalled LayerScale run, circled at 12%; its range bar reaches it
        assert not _lines(first, "diverged:none") and not _lines(first, "diverged:layerscale")
        (stalled,) = _lines(first, "stalled:layerscale")
        assert list(stalled.get_ydata()) == [12.0]
        assert any(min(b.get_ydata()) == 12.0 for b in _lines(first, "range:layerscale"))
        # lr 4e-3: the plain ViT diverged once at depth 6 and twice at depth 12, drawn at chance
        crosses = _lines(second, "diverged:none")
        assert len(crosses) == 2 and all(list(c.get_ydata()) == [10.0] for c in crosses)
        assert [t.get_text() for t in second.texts] == ["2"]
        assert math.isnan(_lines(second, "mean:none")[0].get_ydata()[1])  # a gap where all diverged
        assert "16 of 19 planned runs" in fig._suptitle.get_text()
        fig.canvas.draw()
    finally:
        plt.close(fig)


def test_plot_depth_sweep_scheme_selection():
    fig = plot_depth_sweep(fake_sweep(), schemes=["layerscale"], metric="best_top1")
    try:
        for ax in fig.axes:
            assert _lines(ax, "mean:layerscale") and not _lines(ax, "mean:none")
    finally:
        plt.close(fig)
    with pytest.raises(ValueError, match="fixup"):
        plot_depth_sweep(fake_sweep(), schemes=["fixup"])
    with pytest.raises(ValueError, match="no finished runs"):
        plot_depth_sweep({"runs": {}})


def test_plot_gamma_evolution_draws_every_layer_at_every_evaluation():
    fig = plot_gamma_evolution(fake_sweep(), scheme="layerscale", lr=4e-3, seed=0)
    try:
        panels = [ax for ax in fig.axes if ax.get_title()]  # (the colour bar has no title)
        assert [ax.get_title() for ax in panels] == ["depth 6", "depth 12"]
        for ax, depth in zip(panels, DEPTHS):
            assert ax.get_yscale() == "log"
            for epoch, e in zip((1, 2, 3), range(3)):
                (attn,) = _lines(ax, f"gamma_attn:epoch{epoch}")
                (mlp,) = _lines(ax, f"gamma_mlp:epoch{epoch}")
                assert list(attn.get_xdata()) == list(range(1, depth + 1))
                assert list(attn.get_ydata()) == pytest.approx([1e-5 * 10**e * (i + 1) for i in range(depth)])
                assert list(mlp.get_ydata()) == pytest.approx([2e-5 * 10**e * (i + 1) for i in range(depth)])
                assert attn.get_linestyle() == "-" and mlp.get_linestyle() == "--"
            # the initial value: the paper's rule for depths up to 18 is 0.1
            (init,) = _lines(ax, "init")
            assert list(init.get_ydata()) == [0.1, 0.1]
        fig.canvas.draw()
    finally:
        plt.close(fig)


def test_plot_gamma_evolution_refuses_what_it_cannot_draw():
    res = fake_sweep()
    with pytest.raises(ValueError, match="several learning rates"):
        plot_gamma_evolution(res, scheme="layerscale")
    with pytest.raises(ValueError, match="no learned scales"):
        plot_gamma_evolution(res, scheme="none", lr=1e-3)
    with pytest.raises(ValueError, match="no runs of scheme 'rezero'"):
        plot_gamma_evolution(res, scheme="rezero")
    with pytest.raises(ValueError, match="seed=5"):
        plot_gamma_evolution(res, scheme="layerscale", lr=1e-3, seed=5)


def test_plots_read_a_real_quick_experiment(tmp_path):
    """The plots accept what the experiment runner writes (its seconds-long version, on fake images)."""
    import sys
    from pathlib import Path

    from cait_edu.experiments import EXPERIMENTS, run_experiment

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _train_helpers import write_fake_cifar

    data = write_fake_cifar(tmp_path / "data", n_train=256, n_test=64)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = run_experiment(EXPERIMENTS["layerscale_depth"], quick=True, seeds=1, results_dir=tmp_path / "results",
                             runs_dir=tmp_path / "runs", data_dir=str(data), say=lambda m: None)
    finally:
        torch.set_num_threads(n)
    table = summarize_depth_sweep(res)
    assert {k[0] for k in table} == {"none", "layerscale"} and {k[2] for k in table} == {2, 4}
    fig1 = plot_depth_sweep(res)
    fig2 = plot_gamma_evolution(res, scheme="layerscale")
    try:
        assert len(fig1.axes) == 1 and _lines(fig1.axes[0], "mean:layerscale")
        panels = [ax for ax in fig2.axes if ax.get_title()]
        assert [ax.get_title().split(" (")[0] for ax in panels] == ["depth 2", "depth 4"]
        for ax, depth in zip(panels, (2, 4)):
            (attn,) = _lines(ax, "gamma_attn:epoch1")
            assert len(attn.get_xdata()) == depth and all(v > 0 for v in attn.get_ydata())
        fig1.canvas.draw()
        fig2.canvas.draw()
    finally:
        plt.close(fig1)
        plt.close(fig2)
