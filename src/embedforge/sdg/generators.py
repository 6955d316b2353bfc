"""Question generators: any OpenAI-compatible chat endpoint, or a GGUF model run locally through transformers.

Both take a list of :class:`GenRequest` and return one :class:`GenResult` per request, in order:

* :class:`OpenAIGenerator` posts to ``{base_url}/chat/completions`` (NIM, vLLM, Ollama, llama.cpp server,
  OpenAI) through the ``openai`` SDK from a thread pool with ``concurrency`` workers. The SDK retries
  timeouts, connection errors, 408/409/429 and 5xx with exponential backoff and jitter (``Retry-After`` is
  honoured); after ``max_retries`` the request is reported failed (``text=None``), never raised. A rejected
  API key (401/403) or an unknown route or model (404) stop the run with :class:`GeneratorError`, because
  every later request would fail the same way.
* :class:`LocalGenerator` loads a GGUF file with ``AutoModelForCausalLM.from_pretrained(folder,
  gguf_file=name)`` (transformers de-quantizes it to float32; nothing is compiled) and generates in
  batches: prompts are sorted by length, left-padded and run ``batch_size`` at a time. A request may give
  the first words of the reply (``prefix``), which small models follow far better than instructions, and
  may ask to stop at the first question mark or line break, which ends each row as soon as its question is
  complete.

Known local generators (``smollm2-135m``, the default, and ``qwen2.5-coder-0.5b``) are entries of
``embedforge.models.registry``: they ship inside PyPI packages and are located there without importing them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from embedforge.errors import EmbedforgeError
from embedforge.models.registry import DEFAULT_GENERATOR, GENERATOR, ModelNotFoundError, known, known_names

logger = logging.getLogger(__name__)


class GeneratorError(EmbedforgeError, RuntimeError):
    """A generator that cannot work at all (bad credentials, wrong URL or model): the run stops."""


@dataclass
class GenRequest:
    """One chat completion to make.

    Attributes:
        messages: chat messages (``role``/``content``).
        prefix: local backend only: the reply is forced to start with this text (it is part of the reply).
        max_new_tokens: cap on generated tokens (local backend with ``stop_at_question``: per question).
        stop_at_question: local backend only: a question ends at the first ``?`` or line break.
        follow_ups: local backend only, with ``stop_at_question``: after each question ends, the next of
            these texts is forced into the reply (e.g. ``"\n2. Which option"``) and generation goes on, so
            one prompt (one prefill of the passage) yields ``1 + len(follow_ups)`` questions.
        temperature: overrides the generator's temperature (the judge uses 0).
    """

    messages: list[dict[str, str]]
    prefix: str = ""
    max_new_tokens: int = 48
    stop_at_question: bool = False
    follow_ups: tuple[str, ...] = ()
    temperature: float | None = None


@dataclass
class GenResult:
    """The reply to one request: ``text`` is None when the request failed (``error`` says why).

    ``parts`` (local backend with follow-ups) holds one reply per question: the prefix or follow-up text
    followed by what the model wrote; ``parts_truncated`` says which hit the token cap.
    """

    text: str | None
    error: str | None = None
    truncated: bool = False  # the reply hit max_new_tokens
    attempts: int = 1
    parts: list[str] | None = None
    parts_truncated: list[bool] | None = None


# ------------------------------------------------------------------------------------------ OpenAI-compatible


class OpenAIGenerator:
    """Chat completions from an OpenAI-compatible endpoint, ``concurrency`` requests at a time.

    Requests go through the ``openai`` SDK, whose client does the timeouts and the retries (exponential
    backoff with jitter, ``Retry-After`` honoured, on timeouts, connection errors, 408/409/429 and 5xx).

    Args:
        base_url: e.g. ``http://127.0.0.1:8000/v1`` (vLLM, NIM), ``http://localhost:11434/v1`` (Ollama),
            ``https://api.openai.com/v1``.
        model: the served model name.
        api_key: sent as ``Authorization: Bearer``; None sends a placeholder (local servers ignore it).
        concurrency: parallel requests.
        timeout: seconds per attempt.
        max_retries: extra attempts after a timeout, connection error, 408/409/429 or 5xx.
        temperature: default sampling temperature.
        seed: sent as ``seed`` (servers that support it make sampling reproducible).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        concurrency: int = 8,
        timeout: float = 120.0,
        max_retries: int = 4,
        temperature: float = 0.7,
        seed: int | None = None,
    ):
        import openai

        if not model:
            raise GeneratorError("the openai backend needs the served model name: set model=<name>")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.concurrency = max(1, int(concurrency))
        self.max_retries = max(0, int(max_retries))
        self.temperature = temperature
        self.seed = seed
        self._openai = openai
        self._client = openai.OpenAI(
            base_url=self.base_url, api_key=api_key or "none", timeout=timeout, max_retries=self.max_retries
        )
        self._lock = threading.Lock()
        self.retries = 0  # attempts beyond the first, over the generator's life

    @property
    def name(self) -> str:
        return f"openai:{self.model}"

    def generate(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        if not requests:
            return []
        if self.concurrency == 1 or len(requests) == 1:
            return [self._complete(r) for r in requests]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(requests))) as pool:
            return list(pool.map(self._complete, requests))

    def _complete(self, request: GenRequest) -> GenResult:
        """One request; a failure after the SDK's retries is a failed result, a dead endpoint raises."""
        openai = self._openai
        options = {"seed": self.seed} if self.seed is not None else {}
        try:
            raw = self._client.chat.completions.with_raw_response.create(
                model=self.model,
                messages=request.messages,
                max_tokens=request.max_new_tokens,
                temperature=self.temperature if request.temperature is None else request.temperature,
                **options,
            )
        except openai.APIStatusError as err:
            status = err.status_code
            if status in (401, 403):
                raise GeneratorError(
                    f"{self.base_url} rejected the request (HTTP {status}): check the API key "
                    f"(the api_key_env setting names the environment variable that holds it)"
                ) from None
            if status == 404:
                raise GeneratorError(
                    f"{self.base_url}/chat/completions or model '{self.model}' not found (HTTP 404): "
                    f"base_url should end in /v1 and model must be a served model name; "
                    f"{err.response.text[:200]}"
                ) from None
            retried = status in (408, 409, 429) or status >= 500
            return self._failed(f"HTTP {status}: {err.response.text[:200]}", retried)
        except openai.APITimeoutError:
            return self._failed("timeout", True)
        except openai.APIConnectionError as err:
            return self._failed(f"connection error: {type(err.__cause__ or err).__name__}: {err}", True)
        self._count(raw.retries_taken)
        try:
            choice = raw.parse().choices[0]
            content = choice.message.content or ""
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            return GenResult(None, error="response is not a chat completion", attempts=raw.retries_taken + 1)
        truncated = choice.finish_reason == "length"
        return GenResult(content, truncated=truncated, attempts=raw.retries_taken + 1)

    def _count(self, retries: int) -> None:
        with self._lock:
            self.retries += retries

    def _failed(self, error: str, retried: bool) -> GenResult:
        retries = self.max_retries if retried else 0
        self._count(retries)
        logger.debug("request failed after %d attempts: %s", retries + 1, error)
        return GenResult(None, error=error, attempts=retries + 1)

    def close(self) -> None:
        self._client.close()


# ------------------------------------------------------------------------------------------------ local GGUF


def locate_local_model(name_or_path: str) -> tuple[str, str | None]:
    """``(folder, gguf_file or None)`` for a known name, a ``.gguf`` file, or a model folder.

    A folder holding exactly one ``.gguf`` file loads that file; any other folder is loaded as a regular
    Hugging Face model. Never downloads anything.
    """
    model = known(name_or_path or DEFAULT_GENERATOR, GENERATOR)
    if model is not None:
        path = model.path()
        return str(path.parent), path.name
    path = Path(name_or_path).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return str(path.parent), path.name
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return str(path), ggufs[0].name
        return str(path), None
    raise ModelNotFoundError(
        f"local generator '{name_or_path}' is neither a known name ({', '.join(known_names(GENERATOR))}), a .gguf file "
        "nor a model folder; embedforge never downloads models at run time"
    )


class _Row:
    """Decoding state of one request: tokens per question, forced tokens to feed, when it is done."""

    def __init__(self, request: GenRequest, follow_ups: list[list[int]]):
        self.request = request
        self.follow_ups = follow_ups
        self.forced: list[int] = []
        self.segments: list[list[int]] = [[]]  # generated tokens of each question
        self.truncated: list[bool] = [False]
        self.total = 0
        limit = request.max_new_tokens
        self.limit = limit * (1 + len(follow_ups)) + sum(len(f) for f in follow_ups)
        self.done = False

    def step(self, token: int, forced: bool, eos: set[int], stops: set[int]) -> None:
        """Account for the token just fed: a generated one may end the question (or the reply)."""
        self.total += 1
        if not forced:  # forced tokens belong to the follow-up text, not to a question
            segment = self.segments[-1]
            if token not in eos:
                segment.append(token)
            ended = token in eos or (self.request.stop_at_question and token in stops)
            if not ended and len(segment) >= self.request.max_new_tokens:
                self.truncated[-1] = ended = True
            if ended:
                following = len(self.segments) - 1
                if token not in eos and following < len(self.follow_ups):
                    self.forced = list(self.follow_ups[following])
                    self.segments.append([])
                    self.truncated.append(False)
                else:
                    self.done = True
        if self.total >= self.limit and not self.done:
            self.truncated[-1] = self.done = True


def generation_threads(default: int) -> int:
    """Torch threads for one generation call: all of them on an idle machine, one on a busy one.

    Token-by-token decoding of a small model is a long chain of small parallel regions; when other work
    holds the cores, every region waits for a descheduled thread. On 2 cores at load 8 (2026-11-27), one
    thread generated 4.0 s per passage and two threads 37.7 s; on the idle machine two are 1.8x faster.
    """
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # no load average on this platform
        return default
    return 1 if load > (os.cpu_count() or 1) else default


def prompt_seed(seed: int, prompt: str) -> int:
    """The sampling seed of one prompt: the run's seed and the prompt's text, not its place in a batch."""
    return int.from_bytes(hashlib.sha256(f"{seed}|{prompt}".encode()).digest()[:8], "big")


class LocalGenerator:
    """A chat model on this CPU through transformers, generating ``batch_size`` prompts per call.

    Args:
        model: a generator name in ``registry.KNOWN_MODELS``, a ``.gguf`` file or a model folder.
        threads: torch CPU threads; 0 = auto (:func:`generation_threads`, checked before every call).
        batch_size: prompts per ``generate`` call.
        temperature: 0 = greedy (the default for small models); above 0 samples with top-p 0.95.
        seed: with the prompt, seeds each row's sampling (``prompt_seed``): a reply does not depend on which
            other prompts share its batch, so a run spread over workers samples what one process does.
        dtype: weights dtype, ``float32`` or ``bfloat16``; ``auto`` = bfloat16 where it is native (AMX).
    """

    def __init__(
        self,
        model: str = DEFAULT_GENERATOR,
        *,
        threads: int = 0,
        batch_size: int = 16,
        temperature: float = 0.0,
        seed: int = 42,
        dtype: str = "auto",
    ):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        if dtype not in ("auto", "float32", "bfloat16"):
            raise ValueError(f"dtype must be auto, float32 or bfloat16, got {dtype!r}")
        if dtype == "auto":
            from embedforge.models.precision import bf16_is_native

            dtype = "bfloat16" if bf16_is_native() else "float32"
        self.threads = threads
        folder, gguf_file = locate_local_model(model)
        kwargs = {"gguf_file": gguf_file} if gguf_file else {}
        start = time.perf_counter()
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # GGUF conversion prints progress bars and notices per tensor
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, **kwargs)
            self.model = AutoModelForCausalLM.from_pretrained(
                folder, dtype=getattr(torch, dtype), local_files_only=True, **kwargs
            ).eval()
        finally:
            hf_logging.set_verbosity(verbosity)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.load_seconds = time.perf_counter() - start
        entry = known(model or DEFAULT_GENERATOR, GENERATOR)
        self.model_name = entry.name if entry else model
        self.batch_size = max(1, int(batch_size))
        self.temperature = temperature
        self.seed = seed
        self._torch = torch
        self._eos = self._eos_ids()
        self._question_stops: list[int] | None = None
        logger.info("loaded local generator %s in %.1f s", self.model_name, self.load_seconds)

    @property
    def name(self) -> str:
        return f"local:{Path(self.model_name).name}"

    def _eos_ids(self) -> list[int]:
        ids = self.model.generation_config.eos_token_id
        ids = [ids] if isinstance(ids, int) else list(ids or [])
        if self.tokenizer.eos_token_id is not None:
            ids.append(self.tokenizer.eos_token_id)
        for token in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>"):
            token_id = self.tokenizer.convert_tokens_to_ids(token)
            if isinstance(token_id, int) and token_id != self.tokenizer.unk_token_id and token_id >= 0:
                ids.append(token_id)
        return sorted(set(ids))

    def question_stop_ids(self) -> list[int]:
        """Every token whose text contains ``?`` or a line break (computed once per tokenizer)."""
        if self._question_stops is None:
            vocab = len(self.tokenizer)
            texts = self.tokenizer.batch_decode([[i] for i in range(vocab)])
            self._question_stops = [i for i, t in enumerate(texts) if "?" in t or "\n" in t]
        return self._question_stops

    def prompt(self, request: GenRequest) -> str:
        """The exact text the model continues: chat template + generation header + the forced prefix."""
        text = self.tokenizer.apply_chat_template(
            request.messages, tokenize=False, add_generation_prompt=True
        )
        return text + request.prefix

    def generate(self, requests: Sequence[GenRequest], batch_size: int | None = None) -> list[GenResult]:
        """Replies in request order; prompts of similar length are batched together."""
        size = max(1, batch_size or self.batch_size)
        prompts = [self.prompt(r) for r in requests]
        lengths = [len(self.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
        order = sorted(range(len(requests)), key=lambda i: lengths[i])  # little padding in each batch
        results: list[GenResult | None] = [None] * len(requests)
        # The thread count applies to generation only: later stages in the same process (round-trip
        # embedding, mining, training) must get torch's full default back.
        default_threads = self._torch.get_num_threads()
        threads = self.threads or generation_threads(default_threads)
        if threads != default_threads:
            self._torch.set_num_threads(threads)
        try:
            for start in range(0, len(order), size):
                batch = order[start : start + size]
                replies = self._generate_batch([requests[i] for i in batch], [prompts[i] for i in batch])
                for index, result in zip(batch, replies, strict=True):
                    results[index] = result
        finally:
            self._torch.set_num_threads(default_threads)
        return [r for r in results if r is not None]

    def _generate_batch(self, requests: list[GenRequest], prompts: list[str]) -> list[GenResult]:
        """Decode a batch token by token with a KV cache, dropping rows from the batch as they finish.

        ``model.generate`` keeps every row until the longest is done, so one rambling reply makes the whole
        batch pay for its tokens; here a finished row leaves the cache at once (``batch_select_indices``),
        and each step costs only the rows still writing. Forced text (follow-up openings) is fed one token
        per step, like generated tokens.
        """
        torch = self._torch
        encoded = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        mask = encoded["attention_mask"]
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
        rows = [_Row(r, [self._encode(t) for t in r.follow_ups]) for r in requests]
        eos = set(self._eos)
        stops = set(self.question_stop_ids()) if any(r.stop_at_question for r in requests) else set()
        generators = [torch.Generator().manual_seed(prompt_seed(self.seed, p)) for p in prompts]
        active = list(range(len(rows)))  # row index of each line of the current batch
        from transformers import DynamicCache

        cache = DynamicCache()
        with torch.inference_mode():
            out = self.model(
                input_ids=encoded["input_ids"],
                attention_mask=mask,
                position_ids=positions,
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,  # the vocabulary projection only for the last position
            )
            next_position = positions[:, -1] + 1
            while True:
                logits = out.logits[:, -1, :]
                tokens = []
                for line, index in enumerate(active):
                    row = rows[index]
                    forced = bool(row.forced)
                    token = row.forced.pop(0) if forced else self._pick(logits[line], row, generators[index])
                    tokens.append(token)
                    row.step(token, forced, eos, stops)
                keep = [line for line, index in enumerate(active) if not rows[index].done]
                if not keep:
                    break
                if len(keep) < len(active):
                    selected = torch.tensor(keep)
                    cache.batch_select_indices(selected)
                    mask = mask[selected]
                    next_position = next_position[selected]
                    active = [active[line] for line in keep]
                    tokens = [tokens[line] for line in keep]
                mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=1)
                out = self.model(
                    input_ids=torch.tensor(tokens).unsqueeze(1),
                    attention_mask=mask,
                    position_ids=next_position.unsqueeze(1),
                    past_key_values=cache,
                    use_cache=True,
                )
                next_position = next_position + 1
        return [self._result(row) for row in rows]

    def _result(self, row: _Row) -> GenResult:
        """A finished row's text: each opening it was given followed by what the model wrote after it."""
        heads = [row.request.prefix, *row.request.follow_ups]
        parts = [
            head + self.tokenizer.decode(ids, skip_special_tokens=True)
            for head, ids in zip(heads, row.segments, strict=False)
        ]
        parts += [""] * (len(heads) - len(parts))  # questions never reached (the model ended its turn)
        return GenResult(
            "".join(parts),
            truncated=any(row.truncated),
            parts=parts,
            parts_truncated=row.truncated + [False] * (len(heads) - len(row.truncated)),
        )

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _pick(self, logits, row: _Row, generator) -> int:
        torch = self._torch
        temperature = self.temperature if row.request.temperature is None else row.request.temperature
        if not temperature or temperature <= 0:
            return int(torch.argmax(logits))
        probs = torch.softmax(logits.float() / temperature, dim=-1)
        sorted_probs, order = torch.sort(probs, descending=True)
        cut = torch.cumsum(sorted_probs, dim=-1) - sorted_probs > 0.95  # top-p 0.95
        sorted_probs[cut] = 0.0
        choice = torch.multinomial(sorted_probs / sorted_probs.sum(), 1, generator=generator)
        return int(order[choice])

    def close(self) -> None:
        pass
