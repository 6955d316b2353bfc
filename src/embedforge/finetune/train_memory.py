"""Will a training step fit in this machine's memory? Checked before a CPU fine-tune starts.

Why: on a CPU the operating system's OOM killer ends a run that outgrows RAM with no message (signal 9),
minutes into training. all-mpnet-base-v2 with the CPU recipe (64 queries a step, 1 positive + 1 negative
each, 256 tokens) needs about 26 GB; MiniLM needs about 7. The estimate is the activations autograd keeps
for the backward pass, 72 bytes per token per hidden unit per layer (Korthikanti et al. 2022,
arXiv:2205.05198, count 34·s·b·h at 2-byte precision, 68 bytes at fp32, leaving out the attention-score
matrices fused attention does not keep; 72 fits MiniLM's measured peak), plus 16 bytes per parameter
(weights, gradients, two AdamW moments) and 1 GiB for the rest. Measured: MiniLM peaked at 7.2 GB at the
recipe's batch (estimate 7.2 GB); MPNet was killed by the OOM killer at 24.4 GB (estimate 25.9 GB). The
check refuses only what will not fit in the memory available now, and says which setting to change.
"""

from __future__ import annotations

from functools import partial

import psutil

from embedforge.config import ConfigError

ACTIVATION_BYTES = 72  # per token x hidden unit x layer, fp32
PARAM_BYTES = 16  # fp32 weights + gradients + AdamW's two moments
RUNTIME_BYTES = 1 << 30  # interpreter, libraries, tokenizers, data
QUERY_TOKENS = 32  # queries pad to the longest in the batch: short questions


def available_bytes() -> int:
    """Memory the system can give a new allocation now without swapping (psutil's ``available``)."""
    return psutil.virtual_memory().available


def step_bytes(
    *, hidden: int, layers: int, parameters: int, forward_batch: int, n_passages: int, max_seq_length: int
) -> int:
    """Peak bytes of one training forward + backward over ``forward_batch`` queries and their passages."""
    tokens = forward_batch * (QUERY_TOKENS + n_passages * max_seq_length)
    return ACTIVATION_BYTES * tokens * hidden * layers + PARAM_BYTES * parameters + RUNTIME_BYTES


def check_fits(
    *,
    model_name: str,
    hidden: int,
    layers: int,
    parameters: int,
    forward_batch: int,
    n_passages: int,
    max_seq_length: int,
    available: int | None,
) -> int:
    """The estimate in bytes; ConfigError naming the settings to change when it exceeds ``available``."""
    estimate = partial(
        step_bytes, hidden=hidden, layers=layers, parameters=parameters, n_passages=n_passages,
        max_seq_length=max_seq_length,
    )  # fmt: skip
    need = estimate(forward_batch=forward_batch)
    if available is None or need <= available:
        return need
    fits = forward_batch
    while fits > 1 and estimate(forward_batch=fits) > 0.8 * available:
        fits //= 2
    raise ConfigError(
        f"finetune: {model_name} at {forward_batch} queries per forward pass ({n_passages} passages each, up "
        f"to {max_seq_length} tokens) needs about {need / 2**30:.1f} GiB; {available / 2**30:.1f} GiB is "
        f"available. Set finetune.cached_loss=true micro_batch_size={fits} (GradCache: the same in-batch "
        f"negatives in less memory), or micro_batch_size={fits} (gradient accumulation), or a lower "
        "max_seq_length"
    )
