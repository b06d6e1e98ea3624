"""ONNX Runtime GenAI running an `llm-genai` directory: og.Model, og.Generator's own greedy search, og.Tokenizer.

The outputs are those of every text-generation check (generate.py): the logits after each prompt
(`generator.get_output("logits")` after `append_tokens`), `new_tokens` ids chosen by GenAI's search
(`generate_next_token`, greedy as genai_config.json says), and the mean NLL of each held-text window
(its logits after one `append_tokens`). GenAI stops at the model's EOS ids (genai_config.json), which no
overlay removes (GenAI's parser appends a list's ids to those it holds: an overlay of [] leaves them, measured
with 0.18): where its search reaches one before `new_tokens`, the check says so instead of guessing the rest.
Its tokenizer (onnxruntime-extensions, not Hugging Face tokenizers) is checked too: it must encode the
prompts and the held text to the ids the reference used, or an application that feeds it text gets
other ids than the ones measured (a finding that fails the check).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from buildsys.errors import StepError
from buildsys.formats import register_runtime
from buildsys.formats.llm.generate import GenerationSession, mean_nll
from buildsys.formats.llm.prompts import PAD
from buildsys.formats.llm.runtime import message_start
from buildsys.formats.runtime import Runtime, Session, loading

if TYPE_CHECKING:
    import numpy as np

    from buildsys.config.schema import Model


class GenaiSession(GenerationSession):
    """Generation through og.Generator (no Decoder under it: GenAI owns the cache and the search)."""

    def __init__(self, og_model: Any, new_tokens: int, texts: list[tuple[str, list[int]]], tokenizer: Any,
                 unreproduced: list[str]):
        super().__init__(decoder=None, new_tokens=new_tokens)  # type: ignore[arg-type]
        self.og_model = og_model
        self.texts = texts
        self.tokenizer = tokenizer
        self.unreproduced = unreproduced  # the parts of tokenizer.json GenAI's tokenizer is known not to reproduce

    def _generator(self, ids: "np.ndarray", room: int) -> Any:
        """A fresh generator (an empty cache) that has been fed `ids`."""
        import numpy as np
        import onnxruntime_genai as og

        params = og.GeneratorParams(self.og_model)
        params.set_search_options(max_length=len(ids) + room, do_sample=False, num_beams=1)
        generator = og.Generator(self.og_model, params)
        generator.append_tokens(np.asarray(ids, dtype=np.int32)[None])
        return generator

    def run(self, feeds: dict[str, "np.ndarray"]) -> list["np.ndarray"]:
        import numpy as np

        last, tokens, nll = [], [], []
        for prompt, text in zip(feeds["prompt_ids"], feeds["text_ids"]):
            prompt, text = prompt[prompt != PAD], text[text != PAD]
            started = time.perf_counter()
            generator = self._generator(prompt, self.new_tokens)
            logits = np.asarray(generator.get_output("logits"))[0, -1]
            ids: list[int] = []
            while len(ids) < self.new_tokens and not generator.is_done():
                generator.generate_next_token()  # the first picks from the prompt's logits, the rest run a step first
                ids.append(int(generator.get_next_tokens()[0]))
                if len(ids) == 1:
                    self.timings["ttft_s"].append(time.perf_counter() - started)
                    started = time.perf_counter()
            if self.new_tokens > 1:
                self.timings["decode_tokens_per_s"].append((len(ids) - 1) / (time.perf_counter() - started))
            if len(ids) < self.new_tokens:  # GenAI stopped early: say so instead of padding with guesses
                raise StepError(f"GenAI stopped after {len(ids)} of {self.new_tokens} tokens, at id {ids[-1] if ids else '?'} "
                                "(an EOS id of genai_config.json, or search.max_length): the check compares a fixed "
                                "count of greedy tokens; give prompts whose continuation does not end so soon")
            last.append(logits.astype(np.float32))
            tokens.append(ids)
            rows = np.asarray(self._generator(text, 1).get_output("logits"))[0]
            nll.append(mean_nll(rows, text))
        return [np.stack(last), np.array(tokens, dtype=np.int64), np.array(nll, dtype=np.float32)]

    def findings(self) -> list[dict[str, object]]:
        """The timing of the run, and whether GenAI's tokenizer gives the ids the reference used."""
        wrong = []
        for text, expected in self.texts:
            got = [int(i) for i in self.tokenizer.encode(text)]
            if got != expected:
                wrong.append((text, got, expected))
        if wrong:
            from buildsys.formats.llm.genai_tokenizer import mismatch

            text, got, expected = wrong[0]
            tok = {"text": mismatch(text, got, expected, self.unreproduced, len(wrong), len(self.texts)), "fails": True}
        else:
            tok = {"text": f"GenAI's tokenizer encodes all {len(self.texts)} prompts and held texts as tokenizer.json does"}
        return [*super().findings(), tok]


@register_runtime
class GenaiRuntime(Runtime):
    """ONNX Runtime GenAI (CPU) loading the artifact's directory by its genai_config.json."""

    name = "onnxruntime-genai"
    requires, extra = ("onnxruntime_genai",), "llm"

    def load(self, path: Path, model: "Model", root: Path) -> Session:
        import onnxruntime_genai as og

        from buildsys.formats.llm.prompts import _encoder

        gen = model.generation
        assert gen is not None  # this runtime runs text-generation models only
        folder = Path(path).parent
        with loading(f"onnxruntime-genai could not load the GenAI directory of '{Path(path).name}'", message_start):
            og_model = og.Model(og.Config(str(folder)))
            tokenizer = og.Tokenizer(og_model)
        from buildsys.formats.llm.genai_tokenizer import unreproduced
        from buildsys.formats.llm.prompts import tokenizer_file

        encode = _encoder(root, gen.tokenizer)
        lines = [line.strip() for line in (root / gen.prompts).read_text(encoding="utf-8").splitlines()]
        held = (root / (gen.held_text or gen.prompts)).read_text(encoding="utf-8")
        texts = [(t, encode(t)) for t in [*(line for line in lines if line), held]]
        parts = unreproduced(json.loads(tokenizer_file(root, gen.tokenizer).read_text(encoding="utf-8")))
        return GenaiSession(og_model, gen.new_tokens, texts, tokenizer, parts)
