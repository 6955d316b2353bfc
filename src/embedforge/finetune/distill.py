"""Teacher distillation for the finetune stage: a stronger bi-encoder's scores guide the student.

GPL (Wang et al. 2022) scores each (query, positive, negative) with a cross-encoder and trains with
MarginMSE; here the teacher is any embedding model (``distill_teacher``, e.g. all-mpnet-base-v2). It sees
what the student sees: the same texts, cut at the student's ``max_seq_length`` (a teacher that read further
would set targets the student cannot reach, and pay for tokens nobody trains on). It scores every row once,
before training, and the scores are cached in the run folder under the teacher's name and a hash of the
rows, so a rerun or ``--resume`` does not pay for them again.

Scaling: teacher and student scores are both cosines of unit vectors (the student's last module is
``Normalize``; the teacher's vectors are normalised when encoded), so they share one scale, [-1, 1]. Both are
divided by ``distill_temperature`` (0.05, the scale MiniLM and MPNet were trained at) before the
distillation term, which puts it in logit units like the contrastive loss: its gradients are of the same
order, and ``distill_weight`` 1.0 is a fair balance. The term is sentence-transformers' own
``MarginMSELoss`` or ``DistillKLDivLoss`` (at temperature 1 on the already-scaled scores, so no T^2 factor),
evaluated on the embeddings the contrastive loss already computed: one forward pass serves both.

Teacher scores reach the loss by lookup: each training row carries ``[query key, passage keys...]`` text
hashes in the ``label`` column (``inbatch.id_rows``), and ``TeacherScores`` maps a text key to the teacher's
unit vector. ``margin_mse`` and ``kl`` compare the student with the teacher on each row's own group;
``inbatch_kl`` compares their softmax over every passage in the batch (each query against all rows'
positives and negatives, the candidates the in-batch contrastive loss scores), which gives the student the
teacher's judgement on batch x group pairs per query instead of group, at no extra teacher cost.

Optionally the teacher also screens false negatives (``distill_screen_negatives``): a mined negative it
scores above margin x the row's positive score is replaced by the row's remaining negatives. With one
negative a row (``n_passages=2``, the CPU recipes) there is nothing to replace it with: the row keeps it,
and a warning says how many rows that was.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from sentence_transformers.base.losses.merged_forward import embed_columns
from sentence_transformers.sentence_transformer.losses import DistillKLDivLoss, MarginMSELoss
from sentence_transformers.util import pairwise_cos_sim
from torch import nn

from embedforge.atomic import atomic_write
from embedforge.config import ConfigError, FinetuneConfig
from embedforge.finetune.inbatch import id_rows, text_key
from embedforge.models.bi_encoder import BiEncoder
from embedforge.models.registry import resolve_model

logger = logging.getLogger(__name__)

CACHE_FOLDER = "teacher_scores"
VECTOR_FIELDS = ("query_keys", "query_vectors", "passage_keys", "passage_vectors")


def passage_columns(columns: dict[str, list[str]]) -> list[str]:
    """The passage columns of training rows, in group order: positive, negative_1, negative_2, ..."""
    return [name for name in columns if name != "anchor"]


def _teacher_fingerprint(teacher: str) -> dict:
    """What identifies a teacher: its name, resolved folder and weight files (size, mtime)."""
    folder = Path(resolve_model(teacher))
    weights = sorted(
        (p.name, p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.glob("*")
        if p.suffix in (".safetensors", ".bin", ".pt")
    )
    return {"teacher": teacher, "folder": str(folder), "weights": weights}


def cache_path(out: Path, teacher: str, columns: dict[str, list[str]], max_seq_length: int) -> Path:
    """``out/teacher_scores/<teacher>-<hash of teacher, token limit and rows>.npz``."""
    digest = hashlib.sha256()
    digest.update(json.dumps(_teacher_fingerprint(teacher), sort_keys=True).encode())
    digest.update(json.dumps(max_seq_length).encode())
    for name in ["anchor", *passage_columns(columns)]:
        digest.update(json.dumps([name, columns[name]]).encode())
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(teacher).name or teacher).strip("_") or "teacher"
    return out / CACHE_FOLDER / f"{slug}-{digest.hexdigest()[:16]}.npz"


def encode_texts(
    teacher: BiEncoder, columns: dict[str, list[str]], batch_size: int = 32, progress: bool = True
) -> dict[str, np.ndarray]:
    """The teacher's unit vectors of every distinct query and passage, each encoded once, with their keys.

    Queries and passages are kept apart: a text used both ways gets its query and its passage vector.
    """
    queries = sorted(set(columns["anchor"]))
    passages = sorted({text for name in passage_columns(columns) for text in columns[name]})
    q_vecs = teacher.encode_queries(queries, batch_size=batch_size, progress=progress)
    p_vecs = teacher.encode_passages(passages, batch_size=batch_size, progress=progress)
    return {
        "query_keys": np.array([text_key(t) for t in queries], dtype=np.int64),
        "query_vectors": np.asarray(q_vecs, dtype=np.float32),
        "passage_keys": np.array([text_key(t) for t in passages], dtype=np.int64),
        "passage_vectors": np.asarray(p_vecs, dtype=np.float32),
    }


def score_rows(columns: dict[str, list[str]], vectors: dict[str, np.ndarray]) -> np.ndarray:
    """(rows, passages) teacher cosines of each row's query with its positive and negatives."""
    return TeacherScores(vectors).lookup(torch.tensor(id_rows(columns))).numpy()


def teacher_scores(
    config: FinetuneConfig, columns: dict[str, list[str]], out: Path
) -> tuple[np.ndarray, dict[str, np.ndarray], dict]:
    """The teacher's row scores and text vectors, from the run folder's cache or computed and cached."""
    path = cache_path(out, config.distill_teacher, columns, config.max_seq_length)
    n_rows = len(columns["anchor"])
    info = {"teacher": config.distill_teacher, "cache": str(path), "rows": n_rows}
    if path.is_file():
        with np.load(path) as data:
            vectors = {name: data[name] for name in data.files}
        if set(VECTOR_FIELDS) <= set(vectors):
            logger.info("teacher vectors for %d rows reused from %s", n_rows, path)
            return score_rows(columns, vectors), vectors, {**info, "reused": True, "seconds": 0.0}
    started = time.time()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    teacher = BiEncoder.load(config.distill_teacher, device=device)
    if teacher.max_seq_length and config.max_seq_length < teacher.max_seq_length:
        teacher.model.max_seq_length = config.max_seq_length  # judge only the text the student sees
    logger.info(
        "teacher %s encodes the queries and passages of %d training rows once (cached in %s)",
        config.distill_teacher,
        n_rows,
        path,
    )
    vectors = encode_texts(teacher, columns, config.distill_batch_size)
    del teacher
    with atomic_write(path) as tmp, tmp.open("wb") as fh:
        np.savez(fh, **vectors)
    seconds = round(time.time() - started, 1)
    logger.info("teacher vectors done in %.0f s", seconds)
    return score_rows(columns, vectors), vectors, {**info, "reused": False, "seconds": seconds}


def screen_negatives(
    columns: dict[str, list[str]], scores: np.ndarray, margin: float
) -> tuple[dict[str, list[str]], np.ndarray, dict[str, int]]:
    """Replace negatives the teacher scores above ``margin`` x the row's positive score (likely positives).

    The kept negatives of a row are repeated cyclically to fill the group; a row whose negatives are all
    screened keeps its lowest-scored one (so a row with one negative never changes). Scores are permuted
    along, so they stay aligned with the rows. The counts are of negatives actually dropped.
    """
    names = passage_columns(columns)
    out = {name: list(values) for name, values in columns.items()}
    new_scores = scores.copy()
    stats = {"negatives_screened": 0, "rows_screened": 0, "rows_all_screened": 0}
    for r in range(scores.shape[0]):
        negatives = scores[r, 1:]
        keep = [j for j, s in enumerate(negatives) if s <= margin * scores[r, 0]]
        if not keep:
            stats["rows_all_screened"] += 1
            keep = [int(np.argmin(negatives))]
        if len(keep) == len(negatives):
            continue
        stats["negatives_screened"] += len(negatives) - len(keep)
        stats["rows_screened"] += 1
        for i, name in enumerate(names[1:]):
            source = keep[i % len(keep)]
            out[name][r] = columns[names[1 + source]][r]
            new_scores[r, 1 + i] = scores[r, 1 + source]
    return out, new_scores, stats


class TeacherScores:
    """Text key -> the teacher's unit vector, for turning a batch's id labels into score targets."""

    def __init__(self, vectors: dict[str, np.ndarray]):
        self.queries = torch.from_numpy(vectors["query_vectors"])
        self.passages = torch.from_numpy(vectors["passage_vectors"])
        self.query_row = {int(k): i for i, k in enumerate(vectors["query_keys"])}
        self.passage_row = {int(k): i for i, k in enumerate(vectors["passage_keys"])}

    def _vectors(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch, dim) query vectors and (batch, group, dim) passage vectors of id labels."""
        rows = ids.tolist()
        q = self.queries[torch.tensor([self.query_row[row[0]] for row in rows])]
        p = self.passages[torch.tensor([[self.passage_row[key] for key in row[1:]] for row in rows])]
        return q.to(ids.device), p.to(ids.device)

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """(batch, 1 + group) id labels -> (batch, group) teacher cosines of each row's own group."""
        q, p = self._vectors(ids)
        return torch.einsum("bd,bgd->bg", q, p)

    def matrix(self, ids: torch.Tensor) -> torch.Tensor:
        """(batch, batch x group) teacher cosines of each query with every passage of the batch.

        Columns are ordered as the in-batch loss orders them: every row's positive, then every row's
        first negative, and so on.
        """
        q, p = self._vectors(ids)
        return q @ p.transpose(0, 1).reshape(-1, p.size(-1)).T


def _scaled_cos(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    return pairwise_cos_sim(a, b) / temperature


class DistilledLoss(nn.Module):
    """Contrastive loss + ``weight`` x a distillation term, both from one forward pass.

    ``contrastive`` is any loss with ``compute_loss_from_embeddings`` (the group or in-batch loss of
    ``trainer.make_loss``); it gets the id labels as before. Returns the two terms as a dict, which
    sentence-transformers' trainer sums and logs separately, or their sum when ``components`` is false
    (``MatryoshkaLoss`` adds up plain tensors).
    """

    def __init__(
        self,
        model,
        contrastive: nn.Module,
        scores: TeacherScores,
        loss: str = "margin_mse",
        weight: float = 1.0,
        temperature: float = 0.05,
        components: bool = True,
    ):
        super().__init__()
        if temperature <= 0:
            raise ConfigError(f"distill_temperature must be > 0, got {temperature}")
        self.model = model
        self.contrastive = contrastive
        self.scores = scores
        self.weight = weight
        self.temperature = temperature
        self.components = components
        similarity = partial(_scaled_cos, temperature=temperature)
        if loss == "margin_mse":
            self.distill = MarginMSELoss(model, similarity_fct=similarity)
        elif loss == "kl":
            self.distill = DistillKLDivLoss(model, similarity_fct=similarity, temperature=1.0)
        elif loss == "inbatch_kl":
            self.distill = None
        else:
            raise ConfigError(f"distill_loss must be margin_mse, kl or inbatch_kl, got {loss!r}")

    def forward(self, sentence_features, labels: torch.Tensor):
        embeddings = embed_columns(self.model, sentence_features)
        return self.compute_loss_from_embeddings(embeddings, labels)

    def compute_loss_from_embeddings(self, embeddings: list[torch.Tensor], labels: torch.Tensor):
        contrastive = self.contrastive.compute_loss_from_embeddings(embeddings, labels)
        if self.distill is None:
            distill = self.weight * self._inbatch_kl(embeddings, labels)
        else:
            target = self.scores.lookup(labels) / self.temperature
            distill = self.weight * self.distill.compute_loss_from_embeddings(embeddings, target)
        if self.components:
            return {"contrastive": contrastive, "distill": distill}
        return contrastive + distill

    def _inbatch_kl(self, embeddings: list[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        """KL(teacher || student) of each query's softmax over all passages of the batch, mean over queries."""
        queries = nn.functional.normalize(embeddings[0], dim=-1)
        passages = nn.functional.normalize(torch.cat(embeddings[1:]), dim=-1)
        student = (queries @ passages.T) / self.temperature
        teacher = self.scores.matrix(labels) / self.temperature
        return nn.functional.kl_div(
            nn.functional.log_softmax(student, dim=-1),
            nn.functional.log_softmax(teacher, dim=-1),
            reduction="batchmean",
            log_target=True,
        )


def prepare(config: FinetuneConfig, columns: dict[str, list[str]], out: Path):
    """Score (and optionally screen) the training rows; returns (columns, TeacherScores, summary dict)."""
    if config.cached_loss:
        raise ConfigError(
            "distill_teacher does not combine with cached_loss (GradCache): use in_batch_negatives instead"
        )
    if len(passage_columns(columns)) < 2:
        raise ConfigError(
            "distill_teacher needs n_passages >= 2: the teacher compares a positive with negatives"
        )
    scores, vectors, info = teacher_scores(config, columns, out)
    if config.distill_screen_negatives is not None:
        columns, scores, screened = screen_negatives(columns, scores, config.distill_screen_negatives)
        info.update(screened)
        logger.info(
            "teacher screened %d negatives in %d rows",
            screened["negatives_screened"],
            screened["rows_screened"],
        )
        if screened["rows_all_screened"]:
            one = len(passage_columns(columns)) == 2
            logger.warning(
                "%d rows have no negative the teacher scores under %s x their positive; each keeps its "
                "lowest-scored one%s",
                screened["rows_all_screened"],
                config.distill_screen_negatives,
                " (one negative a row, n_passages=2: nothing to choose from; raise n_passages)"
                if one
                else "",
            )
    margins = scores[:, :1] - scores[:, 1:]
    info["mean_teacher_margin"] = round(float(margins.mean()), 4)
    return columns, TeacherScores(vectors), info
