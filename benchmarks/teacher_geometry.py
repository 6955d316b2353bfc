"""Distil a teacher's whole embedding geometry over a run's domain texts into the student, before finetune.

The distillation terms of ``embedforge finetune`` (MarginMSE, KL, in-batch KL) give the student the
teacher's scores on the training groups only. This measurement asks whether more of the teacher helps:
its similarities among every text of the run (the corpus passages and the training queries and passages),
learned before the usual finetune. A measurement, not a pipeline stage: on the Perl FAQ it did not move
the tuned model (docs/benchmarks.md).

Texts: ``RUN/sdg/passages.jsonl`` + the queries and passages of ``RUN/prep/train.jsonl``. The teacher's unit
vectors (at 384 tokens) are cached in ``--cache``. A batch is 8 texts in a seeded order, each with its 7
nearest neighbours under the teacher (up to 64 texts), so it holds fine structure, not only unrelated
pairs. Loss: KL(teacher || student) of each text's softmax over the batch's cosines / 0.05, itself masked.
AdamW, 10% linear warmup then linear decay, gradient norm clipped at 1.

    .venv/bin/python benchmarks/teacher_geometry.py RUN OUT [--epochs 1] [--lr 3e-5]
    embedforge eval --beir .cache/perlfaq/beir --model OUT/model --out OUT/eval max_seq_length=384
    embedforge finetune --config minilm_cpu --train RUN/prep/train.json --out OUT/ft seed=0 base_model=OUT/model
"""

from __future__ import annotations

import argparse
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from embedforge.atomic import write_json_atomic
from embedforge.data.records import iter_jsonl

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TEMPERATURE, SEEDS_PER_BATCH, GROUP = 0.05, 8, 8
MAX_SEQ_LENGTH = 384


def domain_texts(run: Path) -> list[str]:
    """The run's corpus passages, then its training passages not among them, then its training queries."""
    passages = [p["text"] for _, p in iter_jsonl(run / "sdg" / "passages.jsonl")]
    rows = [row for _, row in iter_jsonl(run / "prep" / "train.jsonl")]
    queries = sorted({r["query"] for r in rows})
    training = sorted({d for r in rows for d in [r["pos_doc"], *r["neg_doc"]]} - set(passages))
    return passages + training + queries


def teacher_vectors(texts: list[str], teacher: str, cache: Path) -> np.ndarray:
    if cache.is_file():
        return np.load(cache)
    from embedforge.models.bi_encoder import BiEncoder

    started = time.time()
    model = BiEncoder.load(teacher).model
    model.max_seq_length = MAX_SEQ_LENGTH
    vectors = model.encode(texts, batch_size=32, normalize_embeddings=True, show_progress_bar=True)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, vectors)
    print(f"teacher: {len(texts)} texts in {time.time() - started:.0f} s", flush=True)
    return vectors


def batch_of(step: int, order: list[int], neighbours: torch.Tensor) -> list[int]:
    """The step's seed texts, each followed by its teacher neighbours, without repeats."""
    picked: list[int] = []
    for i in range(SEEDS_PER_BATCH):
        seed = order[(step * SEEDS_PER_BATCH + i) % len(order)]
        for j in [seed, *neighbours[seed].tolist()]:
            if j not in picked:
                picked.append(j)
    return picked


def geometry_kl(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) of each text's softmax over the other texts of the batch."""
    mask = torch.eye(len(student), dtype=torch.bool, device=student.device)
    s = (student @ student.T / TEMPERATURE).masked_fill(mask, -1e4)
    t = (teacher @ teacher.T / TEMPERATURE).masked_fill(mask, -1e4)
    return F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), reduction="batchmean", log_target=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path, help="an embedforge run folder (sdg/ and prep/ done)")
    parser.add_argument("out", type=Path, help="folder for the distilled model (OUT/model)")
    parser.add_argument("--teacher", default="mpnet")
    parser.add_argument("--student", default="minilm")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=3e-5)
    parser.add_argument("--cache", type=Path, help="teacher vectors (.npy); default OUT/teacher_vectors.npy")
    args = parser.parse_args()
    from embedforge.models.bi_encoder import BiEncoder

    torch.manual_seed(0)
    random.seed(0)
    args.out.mkdir(parents=True, exist_ok=True)
    texts = domain_texts(args.run)
    print(f"{len(texts)} texts", flush=True)
    teacher = torch.from_numpy(
        teacher_vectors(texts, args.teacher, args.cache or args.out / "teacher_vectors.npy")
    )
    similarity = teacher @ teacher.T
    similarity.fill_diagonal_(-2)
    neighbours = similarity.topk(GROUP - 1, dim=1).indices
    student = BiEncoder.load(args.student).model
    student.max_seq_length = MAX_SEQ_LENGTH
    student.train()
    steps = int(args.epochs * len(texts) / (SEEDS_PER_BATCH * GROUP))
    warmup = max(1, steps // 10)
    optimizer = torch.optim.AdamW(student.parameters(), lr=args.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * max(0.0, (steps - s) / steps)
    )
    order = list(range(len(texts)))
    random.shuffle(order)
    started = time.time()
    for step in range(steps):
        picked = batch_of(step, order, neighbours)
        features = student.preprocess([texts[i] for i in picked])
        vectors = F.normalize(student(features)["sentence_embedding"], dim=-1)
        loss = geometry_kl(vectors, teacher[picked])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        if step % 5 == 0 or step == steps - 1:
            print(f"step {step + 1}/{steps} loss {loss.item():.4f} {time.time() - started:.0f} s", flush=True)
    student.eval()
    student.save(str(args.out / "model"))
    write_json_atomic(args.out / "model" / "teacher_geometry.json", {**vars(args), "steps": steps})
    print(f"saved {args.out / 'model'}", flush=True)


if __name__ == "__main__":
    main()
