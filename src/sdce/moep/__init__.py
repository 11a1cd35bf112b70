"""MoE-P (`model.family: moep`): its config and model, registered with the Auto classes.

Importing this package registers the model type `moep` in this process (AutoConfig,
AutoModel, AutoModelForCausalLM), so sdce loads a saved MoE-P without remote code; and it
marks the classes for `register_for_auto_class`, so `save_pretrained` copies
`configuration_moep.py` and `modeling_moep.py` into the folder and writes its `auto_map`:
any process loads it with `trust_remote_code=True`, as the official BabyLM pipeline and
lm-evaluation-harness do."""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .configuration_moep import MoEPConfig
from .modeling_moep import MoEPForCausalLM, MoEPModel, router_aux_loss

MoEPConfig.register_for_auto_class()
MoEPModel.register_for_auto_class("AutoModel")
MoEPForCausalLM.register_for_auto_class("AutoModelForCausalLM")
AutoConfig.register(MoEPConfig.model_type, MoEPConfig, exist_ok=True)
AutoModel.register(MoEPConfig, MoEPModel, exist_ok=True)
AutoModelForCausalLM.register(MoEPConfig, MoEPForCausalLM, exist_ok=True)

__all__ = ["MoEPConfig", "MoEPForCausalLM", "MoEPModel", "router_aux_loss"]
