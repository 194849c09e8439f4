"""Recovering a pruned model's quality, with or without labels.

Pruning removes channels; what follows repairs what it broke, cheapest first:

* `bn_recalibrate`: the running mean/variance of every BatchNormalization recomputed on
  the data (population statistics, exact, no labels, no gradients). Pruning upstream
  channels shifts the statistics a BN sees, so a raw pruned model is judged with stale
  statistics; recalibrated, candidates rank far closer to their fine-tuned quality.
* `reconstruct`: the convolutions that read pruned channels refitted by least squares to
  the original's outputs on a few samples (no labels, no gradients), level by level; what
  a network without BN that pruning breaks (u2netp) needs.
* `probe`: running a model up to some of its tensors, level by level (shared by the two above).
* `teacher`: the original model's outputs on the training data, computed once in
  onnxruntime and cached by (model, data) hash.
* `distill`: the losses of knowledge distillation (KL on temperature-softened logits
  for classifier outputs, a scale-normalised regression loss on any other output), and
  the task loss mixed in when labels exist.
* `batching`: models that bake batch 1 into literal Reshape targets merge the samples
  of a batch; detected by running batch 2 against two batch-1 runs, and then trained
  one sample at a time inside each batch (gradients accumulated, same result).
* `train`: the SGD loop over the ONNX<->PyTorch bridge (graphprune.bridge) that fine-tunes
  with labels, distils without them, or both.

graphprune.search.finetune orchestrates these (prune in steps, train between) for
`graphprune optimize`, and graphprune.search.candidates applies the recalibration to every
search candidate (--bn-recalibrate) and the reconstruction (--reconstruct). This package depends on onnx, onnxruntime, torch,
numpy and graphprune.bridge only, never on graphprune.search.
"""
from graphprune.recovery.bn_recalibrate import BNReport, recalibrate_bn
from graphprune.recovery.reconstruct import ReconstructReport, reconstruct

__all__ = ["BNReport", "ReconstructReport", "reconstruct", "recalibrate_bn"]
