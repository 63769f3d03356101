"""Configuration of GPT-2 written from scratch.

This file travels with the weights (``trust_remote_code``): it imports only the standard library and
transformers.
"""

from __future__ import annotations

import functools

from transformers import PreTrainedConfig

# Architecture presets: OpenAI's four released sizes, plus a tiny one for tests.
PRESETS: dict[str, dict] = {
    "gpt2": dict(n_embd=768, n_layer=12, n_head=12),
    "gpt2-medium": dict(n_embd=1024, n_layer=24, n_head=16),
    "gpt2-large": dict(n_embd=1280, n_layer=36, n_head=20),
    "gpt2-xl": dict(n_embd=1600, n_layer=48, n_head=25),
    "tiny": dict(n_embd=64, n_layer=2, n_head=4, n_positions=128),
}
# OpenAI's folder names for the same sizes.
OPENAI_SIZES = {"124M": "gpt2", "355M": "gpt2-medium", "774M": "gpt2-large", "1558M": "gpt2-xl"}


def _generic_names(init):
    """Let ``__init__`` take the generic names of ``attribute_map`` (``hidden_size=`` …) as its own fields, so
    that they are checked, and derived fields (``n_kv_head``) follow them, as GPT-2's names are."""

    @functools.wraps(init)
    def wrapped(self, *args, **kwargs):
        for alias, name in type(self).attribute_map.items():
            if alias in kwargs:
                if name in kwargs:
                    raise ValueError(f"pass {name} or {alias} (the same field), not both")
                kwargs[name] = kwargs.pop(alias)
        init(self, *args, **kwargs)

    return wrapped


class GPT2ScratchConfig(PreTrainedConfig):
    """GPT-2's hyper-parameters, under GPT-2's own field names and defaults (124M)."""

    model_type = "gpt2scratch"
    keys_to_ignore_at_inference = ["cache"]
    attribute_map = {
        "hidden_size": "n_embd",
        "max_position_embeddings": "n_positions",
        "num_attention_heads": "n_head",
        "num_hidden_layers": "n_layer",
        "num_key_value_heads": "n_kv_head",
    }

    @_generic_names
    def __init__(
        self,
        vocab_size: int = 50257,
        n_positions: int = 1024,
        n_embd: int = 768,
        n_layer: int = 12,
        n_head: int = 12,
        n_inner: int | None = None,
        activation_function: str = "gelu_new",
        resid_pdrop: float = 0.1,
        embd_pdrop: float = 0.1,
        attn_pdrop: float = 0.1,
        layer_norm_epsilon: float = 1e-5,
        initializer_range: float = 0.02,
        qkv_bias: bool = True,
        bias: bool = True,
        pad_vocab_size_multiple: int = 1,
        position_embedding_type: str = "learned",
        rope_theta: float = 10000.0,
        rotary_pct: float = 1.0,
        n_kv_head: int | None = None,
        sliding_window: int | None = None,
        summary_first_dropout: float = 0.1,
        use_cache: bool = True,
        tie_word_embeddings: bool = True,
        bos_token_id: int = 50256,
        eos_token_id: int = 50256,
        pad_token_id: int | None = None,
        **kwargs,
    ):
        _check_sizes(
            vocab_size=vocab_size, n_positions=n_positions, n_embd=n_embd, n_layer=n_layer, n_head=n_head
        )
        _check_rates(resid_pdrop=resid_pdrop, embd_pdrop=embd_pdrop, attn_pdrop=attn_pdrop)
        if n_embd % n_head != 0:
            raise ValueError(f"n_embd ({n_embd}) must be divisible by n_head ({n_head}).")
        if pad_vocab_size_multiple < 1:
            raise ValueError(f"pad_vocab_size_multiple must be >= 1, got {pad_vocab_size_multiple}.")
        n_kv_head = n_head if n_kv_head is None else n_kv_head
        _check_variant(
            n_embd // n_head, n_head, position_embedding_type, rotary_pct, n_kv_head, sliding_window
        )
        self.vocab_size = vocab_size
        self.n_positions = n_positions
        self.n_embd = n_embd
        self.n_layer = n_layer
        self.n_head = n_head
        self.n_inner = n_inner
        self.activation_function = activation_function
        self.resid_pdrop = resid_pdrop
        self.embd_pdrop = embd_pdrop
        self.attn_pdrop = attn_pdrop
        self.layer_norm_epsilon = layer_norm_epsilon
        self.initializer_range = initializer_range
        self.qkv_bias = qkv_bias
        self.bias = bias
        self.pad_vocab_size_multiple = pad_vocab_size_multiple
        self.position_embedding_type = position_embedding_type
        self.rope_theta = rope_theta
        self.rotary_pct = rotary_pct
        self.n_kv_head = n_kv_head
        self.sliding_window = sliding_window
        self.summary_first_dropout = summary_first_dropout
        self.use_cache = use_cache
        self.tie_word_embeddings = tie_word_embeddings
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.pad_token_id = pad_token_id
        super().__init__(**kwargs)

    @property
    def rotary_dim(self) -> int:
        """Leading dimensions of each head that rotary embeddings rotate (0 for learned positions)."""
        if self.position_embedding_type != "rotary":
            return 0
        return _rotary_dim(self.n_embd // self.n_head, self.rotary_pct)

    @property
    def kv_cache_bytes_per_token(self) -> int:
        """Bytes of key/value cache one token costs across all layers, at fp32 (halve for bf16/fp16)."""
        return 2 * self.n_layer * self.n_kv_head * (self.n_embd // self.n_head) * 4

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the embedding matrix: vocab_size rounded up to ``pad_vocab_size_multiple``."""
        m = self.pad_vocab_size_multiple
        return (self.vocab_size + m - 1) // m * m

    @classmethod
    def from_preset(cls, name: str, **overrides) -> GPT2ScratchConfig:
        """A config for a named size (``gpt2``, ``gpt2-medium``, ``gpt2-large``, ``gpt2-xl``, ``tiny``;
        OpenAI's folder names ``124M`` … ``1558M`` too), with any field overridden."""
        key = OPENAI_SIZES.get(name, name)
        if key not in PRESETS:
            choices = ", ".join([*PRESETS, *OPENAI_SIZES])
            raise ValueError(f"Unknown preset {name!r}; choose one of: {choices}.")
        return cls(**{**PRESETS[key], **overrides})


def _check_sizes(**sizes) -> None:
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive whole number, got {value!r}.")


def _check_rates(**rates) -> None:
    for name, value in rates.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ValueError(f"{name} must be a dropout probability between 0 and 1, got {value!r}.")


def _rotary_dim(head_dim: int, rotary_pct: float) -> int:
    return int(head_dim * rotary_pct)


def _check_variant(head_dim, n_head, position_embedding_type, rotary_pct, n_kv_head, sliding_window) -> None:
    """Refuse architecture-variant settings the model cannot build, saying which value to change."""
    if position_embedding_type not in ("learned", "rotary"):
        raise ValueError(
            f"position_embedding_type must be 'learned' or 'rotary', got {position_embedding_type!r}."
        )
    if position_embedding_type == "rotary":
        dim = _rotary_dim(head_dim, rotary_pct)
        if not 0 < rotary_pct <= 1 or dim < 2 or dim % 2:
            raise ValueError(
                f"rotary_pct={rotary_pct} rotates {dim} of the {head_dim} dimensions of each head; it must be in "
                "(0, 1] and rotate an even number (>= 2) of them."
            )
    if not isinstance(n_kv_head, int) or n_kv_head < 1 or n_head % n_kv_head:
        raise ValueError(
            f"n_kv_head ({n_kv_head}) must be a positive divisor of n_head ({n_head}): n_head for multi-head, "
            "1 for multi-query, anything between for grouped-query attention."
        )
    if sliding_window is not None and (not isinstance(sliding_window, int) or sliding_window < 1):
        raise ValueError(
            f"sliding_window must be a positive number of tokens or None, got {sliding_window!r}."
        )


__all__ = ["GPT2ScratchConfig", "PRESETS", "OPENAI_SIZES"]
