"""Generation as a Session: prefill, greedy decoding and teacher-forced NLL over any decoder.

A runtime of this family wraps its artifact as a `Decoder` (reset the cache; run ids at positions,
get their logits); `GenerationSession.run` turns the signature's inputs (padded prompt and text ids)
into its outputs: the logits after each prompt, `new_tokens` greedy ids, and the mean NLL of each
text window. The reference (PyTorch eager, no cache) and every artifact run this same loop, so what
differs between them is only the decoder. Timing (time to first token, decode tokens/s) is kept.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Protocol

from buildsys.formats.llm.prompts import PAD
from buildsys.formats.runtime import Session

if TYPE_CHECKING:
    import numpy as np


class Decoder(Protocol):
    """One loaded decoder with its own cache."""

    max_chunk: int  # most tokens per `forward` call

    def reset(self) -> None: ...

    def forward(self, ids: "np.ndarray", start: int) -> "np.ndarray":
        """Logits [len(ids), vocab] for `ids` at positions start, start+1, …, appended to the cache."""
        ...


def prefill(decoder: Decoder, ids: "np.ndarray", start: int = 0) -> "np.ndarray":
    """Every row of logits for `ids`, fed in chunks of at most `max_chunk`."""
    import numpy as np

    rows = []
    for s in range(0, len(ids), decoder.max_chunk):
        rows.append(decoder.forward(ids[s:s + decoder.max_chunk], start + s))
    return np.concatenate(rows, axis=0)


def mean_nll(logits: "np.ndarray", ids: "np.ndarray") -> float:
    """Teacher-forced mean negative log-likelihood of ids[1:] under the logits rows of ids[:-1]."""
    import numpy as np

    rows = np.asarray(logits, dtype=np.float64)[:len(ids) - 1]
    shifted = rows - rows.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(rows)), ids[1:]].mean())


class GenerationSession(Session):
    """A Session whose `run` generates; subclasses give the decoder."""

    max_batch = 64

    def __init__(self, decoder: Decoder, new_tokens: int):
        self.decoder = decoder
        self.new_tokens = new_tokens
        self.timings: dict[str, list[float]] = {"ttft_s": [], "decode_tokens_per_s": []}

    def run(self, feeds: dict[str, "np.ndarray"]) -> list["np.ndarray"]:
        import numpy as np

        last, tokens, nll = [], [], []
        for prompt, text in zip(feeds["prompt_ids"], feeds["text_ids"]):
            prompt, text = prompt[prompt != PAD], text[text != PAD]
            self.decoder.reset()
            started = time.perf_counter()
            logits = prefill(self.decoder, prompt)[-1]
            ids = [int(np.argmax(logits))]
            self.timings["ttft_s"].append(time.perf_counter() - started)
            started = time.perf_counter()
            for j in range(self.new_tokens - 1):
                row = self.decoder.forward(np.array(ids[-1:], dtype=np.int64), len(prompt) + j)[-1]
                ids.append(int(np.argmax(row)))
            if self.new_tokens > 1:
                self.timings["decode_tokens_per_s"].append((self.new_tokens - 1) / (time.perf_counter() - started))
            last.append(logits.astype(np.float32))
            tokens.append(ids)
            self.decoder.reset()
            nll.append(mean_nll(prefill(self.decoder, text), text))
        return [np.stack(last), np.array(tokens, dtype=np.int64), np.array(nll, dtype=np.float32)]

    def findings(self) -> list[dict[str, object]]:
        """Time to first token and decode speed on this host (informative: a check never fails on them)."""
        import numpy as np

        if not self.timings["ttft_s"]:
            return []
        ttft = float(np.median(self.timings["ttft_s"])) * 1e3
        rate = self.timings["decode_tokens_per_s"]
        text = f"median time to first token {ttft:.2f} ms" + (f", decode {np.median(rate):.0f} tokens/s" if rate else "")
        return [{"text": text, "ttft_ms": round(ttft, 3),
                 "decode_tokens_per_s": round(float(np.median(rate)), 1) if rate else None}]
