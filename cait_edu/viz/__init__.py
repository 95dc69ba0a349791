"""Looking inside the models and their results: attention maps, diagrams, result plots.

* :func:`record_attention` -- a context manager that makes every attention layer of a model keep
  its attention weights during a forward pass and hands them back by layer name. The later
  chapters use it to look at self-attention (``(B, h, N, N)``) and class-attention
  (``(B, h, 1, 1 + N)``) maps of every layer.
* :func:`draw_cait` -- a matplotlib diagram of CaiT (Touvron et al., "Going deeper with Image
  Transformers", ICCV 2021, Fig. 2), optionally with the ViT/DeiT layout beside it for contrast;
  :func:`draw_residual_schemes` -- one residual branch under each scheme of the paper's Fig. 3.
* :func:`plot_depth_sweep` and :func:`plot_gamma_evolution` -- the results of the
  ``layerscale_depth`` experiment (:mod:`cait_edu.experiments`): accuracy against depth for every
  residual scheme, and how the learned residual scales of each layer moved during training.
  :func:`summarize_depth_sweep` gives the numbers behind the first plot.
"""
from .attention import AttentionRecord, attention_modules, record_attention
from .diagrams import draw_cait, draw_residual_schemes
from .sweeps import plot_depth_sweep, plot_gamma_evolution, summarize_depth_sweep

__all__ = ["AttentionRecord", "attention_modules", "record_attention", "draw_cait", "draw_residual_schemes",
           "summarize_depth_sweep", "plot_depth_sweep", "plot_gamma_evolution"]
