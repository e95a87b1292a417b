"""What differs between the objectives a run can optimise: TRL's trainer and config class for each, what each
fixes in that config, whether it has a reference model, which data it reads and the beta its rewards are scaled by.

    dpo    TRL DPOTrainer: pairs, against the frozen base model (the adapter switched off)
    kto    TRL KTOTrainer: single answers with a thumbs up or down; a pair counts as one of each
    orpo   TRL ORPOTrainer (trl.experimental): pairs, NLL on the chosen answer + an odds-ratio term, no reference
    simpo  TRL CPOTrainer (trl.experimental) with loss_type simpo and cpo_alpha 0: pairs, a length-normalised
           reward with a target margin, no reference

Everything else (the settings each one takes) is RunConfig metadata (`objectives=` on a setting).
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass

from .config import OBJECTIVES


@dataclass(frozen=True)
class Objective:
    name: str
    title: str  # in words, for chart titles and the CLI's progress bar
    module: str  # where TRL keeps its trainer and config
    trainer: str
    config: str
    fixed: tuple = ()  # (TRL field, value) the studio always sets for it
    reference: bool = True  # a step runs the frozen base too (DPO, KTO); ORPO and SimPO need none
    unpaired: bool = False  # trains on single answers (KTO); the others on pairs

    def classes(self):
        """(trainer class, config class) from TRL, imported when first asked for (trl.experimental is slow)."""
        module = importlib.import_module(self.module)
        return getattr(module, self.trainer), getattr(module, self.config)

    def config_fields(self) -> set[str]:
        return {f.name for f in dataclasses.fields(self.classes()[1])}


_ALL = {
    "dpo": Objective("dpo", "DPO", "trl", "DPOTrainer", "DPOConfig"),
    "kto": Objective("kto", "KTO", "trl", "KTOTrainer", "KTOConfig", unpaired=True),
    "orpo": Objective("orpo", "ORPO", "trl.experimental.orpo", "ORPOTrainer", "ORPOConfig", reference=False),
    "simpo": Objective("simpo", "SimPO", "trl.experimental.cpo", "CPOTrainer", "CPOConfig",
                       fixed=(("loss_type", "simpo"), ("cpo_alpha", 0.0)), reference=False),
}
assert tuple(_ALL) == OBJECTIVES


def objective(name: str) -> Objective:
    return _ALL[name]


def reward_beta(cfg) -> float:
    """The beta a run's implicit rewards (beta x log-ratio against the base) are scaled by in its evaluation.

    DPO and KTO optimise exactly that reward with their beta. ORPO and SimPO have no reference model, so the
    base-relative reward is not what they optimise; it is reported on the plain log-ratio (beta 1), which puts
    runs of any objective on one scale in Compare.
    """
    return cfg.beta if objective(cfg.objective).reference else 1.0
