"""gpt2scratch: GPT-2 written from scratch as Hugging Face ``PreTrainedModel`` classes."""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

from .configuration_gpt2scratch import OPENAI_SIZES, PRESETS, GPT2ScratchConfig
from .modeling_gpt2scratch import (
    GPT2ScratchForCausalLM,
    GPT2ScratchForSequenceClassification,
    GPT2ScratchModel,
    GPT2ScratchPreTrainedModel,
)

__version__ = "0.1.0"

AutoConfig.register("gpt2scratch", GPT2ScratchConfig, exist_ok=True)
AutoModel.register(GPT2ScratchConfig, GPT2ScratchModel, exist_ok=True)
AutoModelForCausalLM.register(GPT2ScratchConfig, GPT2ScratchForCausalLM, exist_ok=True)
AutoModelForSequenceClassification.register(
    GPT2ScratchConfig, GPT2ScratchForSequenceClassification, exist_ok=True
)

__all__ = [
    "GPT2ScratchConfig",
    "PRESETS",
    "OPENAI_SIZES",
    "GPT2ScratchPreTrainedModel",
    "GPT2ScratchModel",
    "GPT2ScratchForCausalLM",
    "GPT2ScratchForSequenceClassification",
]
