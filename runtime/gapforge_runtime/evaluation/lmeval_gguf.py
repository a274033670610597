"""A GGUF file as an lm-eval model, run by llama-cpp-python in this process (`gapforge-gguf`).

lm-eval's own `gguf` model talks to a llama.cpp HTTP server; a sealed run has none and needs none.
This one scores with the logits llama.cpp keeps for every position (`logits_all=True`):
`loglikelihood` sums log p(continuation token) with a float64 log-softmax, `loglikelihood_rolling`
scores a whole text in disjoint windows (lm-eval's own windowing), `generate_until` decodes greedily
until a stop string. With `tokenizer` (the transformers folder the GGUF was converted from) the
token ids are exactly those lm-eval's `hf` model sees, so the two agree up to the weights' format.
Importing this module imports lm_eval: only `lmeval_run.run_lm_eval` does, when a recipe asks for it.
"""

from __future__ import annotations

import os
from typing import Any

from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

DEFAULT_MAX_LENGTH = 2048
DEFAULT_MAX_GEN_TOKS = 256


def _log_softmax_rows(rows: Any) -> Any:
    import numpy as np

    rows = np.asarray(rows, dtype=np.float64)
    top = rows.max(axis=1, keepdims=True)
    return rows - (top + np.log(np.exp(rows - top).sum(axis=1, keepdims=True)))


@register_model("gapforge-gguf")
class GapforgeGGUFLM(TemplateLM):  # type: ignore[misc]
    """A GGUF file through llama-cpp-python, in process, greedy; one request at a time."""

    def __init__(
        self,
        model_path: str,
        tokenizer: str | None = None,
        max_length: int | None = None,
        n_threads: int | None = None,
        **_ignored: Any,
    ) -> None:
        super().__init__()
        from llama_cpp import Llama

        probe = Llama(model_path=model_path, vocab_only=True, verbose=False)
        trained = (
            int(next((v for k, v in probe.metadata.items() if k.endswith(".context_length")), 0))
            or DEFAULT_MAX_LENGTH
        )
        self._gguf_add_bos = str(probe.metadata.get("tokenizer.ggml.add_bos_token", "")) == "true"
        probe.close()
        self._max_length = int(max_length or min(trained, DEFAULT_MAX_LENGTH))
        self.llm = Llama(
            model_path=model_path,
            n_ctx=self._max_length,
            n_batch=min(self._max_length, 512),
            logits_all=True,
            n_threads=n_threads or os.cpu_count() or 1,
            verbose=False,
            seed=0,
        )
        self.model_path = model_path
        self.hf_tokenizer: Any = None
        if tokenizer is not None:
            from transformers import AutoTokenizer

            self.hf_tokenizer = AutoTokenizer.from_pretrained(tokenizer, trust_remote_code=False)

    # --- tokens -----------------------------------------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        if self.hf_tokenizer is not None:
            return int(self.hf_tokenizer.eos_token_id)
        return int(self.llm.token_eos())

    @property
    def prefix_token_id(self) -> int:
        # as lm-eval's hf model: BOS where the model has one, else the end-of-text token
        if self.hf_tokenizer is not None:
            bos = self.hf_tokenizer.bos_token_id
            return int(bos) if bos is not None else self.eot_token_id
        bos = int(self.llm.token_bos())
        return bos if bos >= 0 else self.eot_token_id

    @property
    def max_length(self) -> int:
        return self._max_length

    def tok_encode(
        self, string: str, add_special_tokens: bool | None = None, **kwargs: Any
    ) -> list[int]:
        if self.hf_tokenizer is not None:  # exactly as lm-eval's hf model encodes
            special = (
                {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
            )
            bos = self.hf_tokenizer.decode(self.prefix_token_id)
            if add_special_tokens is None and bos and string.startswith(bos):
                special = {"add_special_tokens": False}
            return list(self.hf_tokenizer.encode(string, **special))
        add_bos = self._gguf_add_bos if add_special_tokens is None else add_special_tokens
        return list(self.llm.tokenize(string.encode("utf-8"), add_bos=add_bos, special=False))

    def tok_decode(self, tokens: list[int]) -> str:
        if self.hf_tokenizer is not None:
            return str(self.hf_tokenizer.decode(tokens, skip_special_tokens=True))
        return bytes(self.llm.detokenize(tokens)).decode("utf-8", errors="ignore")

    # --- scoring ----------------------------------------------------------------------------------

    def _score(self, context: list[int], continuation: list[int]) -> tuple[float, bool]:
        """log p(continuation | context) and whether greedy decoding would give exactly it."""
        import numpy as np

        continuation = continuation[-self._max_length :]  # as lm-eval's hf model: the end is scored
        ids = (context + continuation)[-(self._max_length + 1) :]
        inputs = ids[:-1]  # the last token is only predicted, never fed
        self.llm.reset()
        self.llm.eval(inputs)
        rows = np.asarray(self.llm.scores[len(inputs) - len(continuation) : len(inputs)])
        logp = _log_softmax_rows(rows)
        picked = logp[np.arange(len(continuation)), np.asarray(continuation)]
        greedy = bool((rows.argmax(axis=1) == np.asarray(continuation)).all())
        return float(picked.sum()), greedy

    def _loglikelihood_tokens(
        self,
        requests: list[tuple[tuple[str, str], list[int], list[int]]],
        disable_tqdm: bool = False,
        **kwargs: Any,
    ) -> list[tuple[float, bool]]:
        results = []
        for pair, context, continuation in tqdm(
            requests, desc="gguf loglikelihood", disable=disable_tqdm
        ):
            result = self._score(context, continuation)
            results.append(result)
            self.cache_hook.add_partial("loglikelihood", pair, result)
        return results

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        results = []
        for request in tqdm(requests, desc="gguf loglikelihood_rolling", disable=disable_tqdm):
            (text,) = request.args
            windows = map(
                make_disjoint_window,
                get_rolling_token_windows(
                    token_list=self.tok_encode(text, add_special_tokens=False),
                    prefix_token=self.prefix_token_id,
                    max_seq_len=self._max_length,
                    context_len=1,
                ),
            )
            total = sum(self._score(list(ctx), list(cont))[0] for ctx, cont in windows)
            results.append(total)
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
        return results

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        import numpy as np

        outputs = []
        for request in tqdm(requests, desc="gguf generate_until", disable=disable_tqdm):
            context, gen_kwargs = request.args
            kwargs = dict(gen_kwargs or {})
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            eos_text = self.tok_decode([self.eot_token_id]) if self.hf_tokenizer is None else None
            stops = [s for s in until if s] + ([eos_text] if eos_text else [])
            max_new = int(kwargs.get("max_gen_toks", DEFAULT_MAX_GEN_TOKS))
            prompt = self.tok_encode(context)[-max(1, self._max_length - max_new) :]
            self.llm.reset()
            self.llm.eval(prompt)
            new: list[int] = []
            text = ""
            for _ in range(max_new):  # greedy: sampling settings are not honoured, as said above
                if self.llm.n_tokens >= self._max_length:
                    break
                token = int(np.argmax(self.llm.scores[self.llm.n_tokens - 1]))
                if token == self.eot_token_id:
                    break
                new.append(token)
                text = self.tok_decode(new)
                if any(s in text for s in stops):
                    break
                self.llm.eval([token])
            for stop in stops:
                text = text.split(stop)[0]
            outputs.append(text)
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
        return outputs

    def close(self) -> None:
        """Free llama.cpp's model and context now, not at garbage collection."""
        self.llm.close()
