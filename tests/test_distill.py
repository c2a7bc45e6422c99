"""Distillation: the loss equals the numpy oracle in both backends, a cache of the teacher's top-V
log-probabilities gives the live teacher's loss, and a distilled student moves towards its teacher."""

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import SAMPLE_DATA
from pnlm.backends import make_train_step
from pnlm.data import iter_documents
from pnlm.data.prepare import prepare_store
from pnlm.methods.distillation import DistillSpec, LiveTeacher, distill_loss, write_teacher_cache
from pnlm.model.spec import OptimizerSpec
from pnlm.checkpoints.weights import init_weights

SPEC = DistillSpec(alpha=0.3, temperature=2.0)


@pytest.fixture(scope="module")
def store(tmp_path_factory, tokenizer):
    docs = list(iter_documents(SAMPLE_DATA[:1]))[:12]
    return prepare_store(iter(docs), tokenizer, tmp_path_factory.mktemp("kd") / "store", context=32,
                         valid_fraction=0.2, test_fraction=0.0, workers=1)[0]


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_loss_equals_the_numpy_oracle(tiny_spec, backend):
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, tiny_spec.vocab_size, (3, 17))
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    mask = np.ones(targets.shape, dtype=np.float32)
    mask[2, 9:] = 0
    teacher = make_train_step(backend, tiny_spec, init_weights(tiny_spec, 5), OptimizerSpec()).log_probs(inputs)
    top = np.argsort(-teacher, axis=-1)[..., :7]
    # lr 0: the student's weights stay put, so its log-probabilities before the step are the ones the loss saw.
    student = make_train_step(backend, tiny_spec, init_weights(tiny_spec, 1), OptimizerSpec(lr=0.0), loss=SPEC)
    logits = student.log_probs(inputs)  # log-softmax differs from the logits by a constant per position
    for indices, logprobs in ((None, teacher), (top, np.take_along_axis(teacher, top, -1))):
        expected = distill_loss(logits, targets, mask, logprobs, indices, SPEC)
        assert student(inputs, targets, mask, soft_targets=(indices, logprobs)) == pytest.approx(expected, abs=1e-5)
    # alpha 0 is plain cross-entropy
    plain = DistillSpec(alpha=0.0, temperature=2.0)
    assert distill_loss(logits, targets, mask, teacher, None, plain) == pytest.approx(
        student.nll(inputs, targets, mask)[0] / mask.sum(), abs=1e-5)


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_top_vocabulary_cache_gives_the_live_teachers_loss(tmp_path, store, tiny_spec, backend):
    teacher = make_train_step(backend, tiny_spec, init_weights(tiny_spec, 5), OptimizerSpec())
    cache = write_teacher_cache(tmp_path / "cache", teacher, store, tiny_spec.vocab_size, "teacher", batch_size=4)
    live = LiveTeacher(teacher)
    rows = np.arange(4)
    from pnlm.training.batches import shifted

    inputs, targets, mask = shifted(*store.batch("train", rows))
    losses = []
    for source in (live, cache):
        student = make_train_step(backend, tiny_spec, init_weights(tiny_spec, 1), OptimizerSpec(lr=1e-3), loss=SPEC)
        losses.append([student(inputs, targets, mask, soft_targets=source.soft_targets("train", rows, inputs))
                       for _ in range(3)])
    assert np.abs(np.array(losses[0]) - np.array(losses[1])).max() < 1e-5


def test_distilled_student_moves_towards_its_teacher(tmp_path, store, tokenizer, tiny_spec):
    from pnlm.checkpoints.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "teacher", tiny_spec, init_weights(tiny_spec, 7), tokenizer)
    save_checkpoint(tmp_path / "student", tiny_spec, init_weights(tiny_spec, 8), tokenizer)
    command = ["distill", "--teacher", tmp_path / "teacher", "--student", tmp_path / "student", "--data", store.path,
               "--backend", "mlx", "--steps", 30, "--eval-every", 10, "--lr", 3e-3, "--alpha", 1.0,
               "--cache-top-k", 64, "--no-early-stop", "--out", tmp_path / "run", "--json"]
    result = subprocess.run([sys.executable, "-m", "pnlm.cli", *map(str, command)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    kl = [json.loads(line)["val_kl"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
          if "val_kl" in line]
    assert len(kl) == 3 and kl[-1] < kl[0]
    assert json.loads(result.stdout)["teacher_source"] == "cache top-64"
