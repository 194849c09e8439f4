"""Deployment costs of a model: its size in bytes and its energy per inference.

* `size`: bytes of the deployed model, every stored tensor at its precision (int8
  weights 1 byte each plus their scales and zero points, fp16 2 bytes, ...).
* `energy`: an *estimate* per inference from a documented model (Horowitz, ISSCC 2014:
  energy per operation by precision plus memory traffic); every result says
  "estimated" and names the model. `rapl`: a *measurement* where the CPU's RAPL energy
  counters are readable (/sys/class/powercap), else the reason they are not.
* `projection`: size and energy of a float model as if some layers were int8/fp16,
  without quantizing it (for a search that scores many precision maps).
These are the `size` and `energy` objectives of the joint prune+quantize search and the
numbers `graphprune quantize` reports. See docs/quantization.md.
"""
from graphprune.cost.energy import HOROWITZ_45NM, EnergyEstimate, EnergyTable, estimate_energy, layer_costs
from graphprune.cost.projection import projected_costs, projected_size
from graphprune.cost.rapl import MeasuredEnergy, measure_energy, rapl_zones
from graphprune.cost.size import ModelSize, model_size

__all__ = ["model_size", "ModelSize", "estimate_energy", "layer_costs", "EnergyEstimate", "EnergyTable",
           "HOROWITZ_45NM", "projected_costs", "projected_size", "measure_energy", "rapl_zones", "MeasuredEnergy"]
