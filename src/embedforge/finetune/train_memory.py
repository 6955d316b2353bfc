"""Will a training step fit in this machine's memory? Checked before a CPU fine-tune starts.

Why: on a CPU the operating system's OOM killer ends a run that outgrows RAM with no message (signal 9),
minutes into training. all-mpnet-base-v2 with the CPU recipe (64 queries a step, 1 positive + 1 negative
each, 256 tokens) needs about 28 GB; MiniLM needs about 8. The estimate is the activations autograd keeps
for the backward pass, 80 bytes per token per hidden unit per layer (Korthikanti et al. 2022,
arXiv:2205.05198, count 34·s·b·h at 2-byte precision, 68 bytes at fp32, leaving out the attention-score
matrices fused attention does not keep), for the step's queries, passages and anchor texts, plus 16 bytes
per parameter (weights, gradients, two AdamW moments) and 1 GiB for the rest. 80 is the smallest round
value at or above every measured MiniLM peak: 7.2 GB at 64 queries x 2 passages x 256 tokens (estimate
7.9), 10.1 GB with 3 passages (10.9), and 21.4 GB at 128 queries x 2 passages of dense 384-token HTML plus
16 anchor texts (estimate 21.4; 72 bytes, without the anchor texts, said 18.4 and let the run be killed).
MPNet was killed by the OOM killer at 24.4 GB (estimate 28.5). An estimate errs high, never low: the check
stops only what will not fit in the memory available now: the trainer then runs the same step as GradCache
mini-batches (``largest_batch``), or, when the batch settings were chosen by hand, refuses naming the fix.
"""

from __future__ import annotations

import psutil

from embedforge.config import ConfigError

ACTIVATION_BYTES = 80  # per token x hidden unit x layer, fp32 (see above)
PARAM_BYTES = 16  # fp32 weights + gradients + AdamW's two moments
RUNTIME_BYTES = 1 << 30  # interpreter, libraries, tokenizers, data
HEADROOM = 0.9  # a step may take 90% of what is available: other processes grow while it runs
QUERY_TOKENS = 32  # queries pad to the longest in the batch: short questions


def available_bytes() -> int:
    """Memory the system can give a new allocation now without swapping (psutil's ``available``)."""
    return psutil.virtual_memory().available


def step_bytes(
    *,
    hidden: int,
    layers: int,
    parameters: int,
    forward_batch: int,
    n_passages: int,
    max_seq_length: int,
    extra_texts: int = 0,
) -> int:
    """Peak bytes of one training forward + backward over ``forward_batch`` queries and their passages, plus
    ``extra_texts`` more texts of up to ``max_seq_length`` tokens that also keep activations (the anchor
    batch: its loss goes through the model being trained)."""
    tokens = forward_batch * (QUERY_TOKENS + n_passages * max_seq_length) + extra_texts * max_seq_length
    return ACTIVATION_BYTES * tokens * hidden * layers + PARAM_BYTES * parameters + RUNTIME_BYTES


class StepTooLarge(ConfigError):
    """A step that does not fit in the memory available; ``fits`` is the largest forward batch that does."""

    def __init__(self, shortfall: str, fix: str, fits: int):
        super().__init__(f"{shortfall}. {fix}")
        self.shortfall, self.fits = shortfall, fits


def largest_batch(available: int, **step: int) -> int:
    """The forward batch, halved from ``step``'s, whose step takes at most 80% of ``available`` (0: none)."""
    fits = step["forward_batch"]
    while fits >= 1 and step_bytes(**{**step, "forward_batch": fits}) > 0.8 * available:
        fits //= 2
    return fits


def check_fits(*, model_name: str, available: int | None, **step: int) -> int:
    """The estimate in bytes of a step (``step``: ``step_bytes``'s arguments); StepTooLarge naming the
    settings to change when it exceeds ``available``."""
    need = step_bytes(**step)
    if available is None or need <= HEADROOM * available:
        return need
    fits = largest_batch(available, **step)
    raise StepTooLarge(
        f"finetune: {model_name} at {step['forward_batch']} queries per forward pass ({step['n_passages']} "
        f"passages each, up to {step['max_seq_length']} tokens) needs about {need / 2**30:.1f} GiB; "
        f"{available / 2**30:.1f} GiB is available",
        f"Set finetune.cached_loss=true micro_batch_size={max(fits, 1)} (GradCache: the same in-batch negatives "
        f"in less memory), or micro_batch_size={max(fits, 1)} (gradient accumulation), or a lower max_seq_length",
        fits,
    )
