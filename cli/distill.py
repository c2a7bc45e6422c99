"""`pnlm distill`: fine-tune a student on a domain with a teacher's next-token distributions (SLM-d)."""

from __future__ import annotations

from pathlib import Path

import typer

from pnlm.backends import make_train_step
from pnlm.checkpoint import load_checkpoint, weights_sha256
from pnlm.cli.train import BACKEND_HELP, PRECISION_HELP, _precision, _run, check_run_output
from pnlm.data.store import TokenStore
from pnlm.distill import CACHE_META, DistillSpec, LiveTeacher, TeacherCache, write_teacher_cache
from pnlm.errors import PnlmError
from pnlm.inference import refuse_projected
from pnlm.loop import TrainConfig
from pnlm.memory import check_fits, training_estimate
from pnlm.spec import OptimizerSpec


def distill(
    teacher: Path = typer.Option(..., "--teacher", help="The teacher checkpoint (a fine-tuned large model)."),
    student: Path = typer.Option(..., "--student", help="The student checkpoint to start from (a small model)."),
    data: Path = typer.Option(..., "--data", help="The domain's token store (train and valid splits)."),
    backend: str = typer.Option("torch", "--backend", help=BACKEND_HELP + " The teacher runs on it too."),
    out: Path = typer.Option(..., "--out", help="RUN folder; the distilled student is RUN/best (RUN/latest without evaluation)."),
    alpha: float = typer.Option(0.5, "--alpha", help="Weight of the teacher's term: (1-α)·CE + α·T²·KL."),
    temperature: float = typer.Option(2.0, "--temperature", help="T: both distributions are softened by it."),
    cache_top_k: int = typer.Option(0, "--cache-top-k", help="Run the teacher once and keep its top-k log-probabilities "
                                    "on disk (RUN/teacher-cache) instead of running it beside the student (0)."),
    steps: int = typer.Option(1000, "--steps", help="At most this many steps."),
    batch_size: int = typer.Option(8, "--batch-size", help="Windows per step."),
    lr: float = typer.Option(1e-4 / 3, "--lr", help="Constant learning rate (the paper's fine-tuning rate)."),
    eval_every: int = typer.Option(50, "--eval-every", help="Evaluate (loss and KL to the teacher) every N steps."),
    eval_batches: int = typer.Option(0, "--eval-batches", help="Evaluate on the first N batches of the valid split "
                                     "(0: all of it)."),
    patience: int = typer.Option(3, "--patience", help="Stop after this many evaluations without improvement."),
    early_stop: bool = typer.Option(True, "--early-stop/--no-early-stop", help="Stop when validation stops improving."),
    precision: str | None = typer.Option(None, "--precision", help=PRECISION_HELP),
    checkpoint_every: int = typer.Option(0, "--checkpoint-every", help="Save a resumable checkpoint every N steps."),
    seed: int = typer.Option(0, "--seed", help="Seed of the data order."),
    resume: bool = typer.Option(False, "--resume", help="Continue RUN from its latest checkpoint, exactly; start it when it has none yet."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON summary instead of text."),
) -> None:
    """Distill: the student learns the domain's tokens and the teacher's distributions at once."""
    check_run_output(out, resume, [teacher, student, data])
    spec = DistillSpec(alpha=alpha, temperature=temperature).validate()
    teacher_ckpt, student_ckpt = load_checkpoint(teacher), load_checkpoint(student)
    refuse_projected(teacher_ckpt.spec, teacher)
    refuse_projected(student_ckpt.spec, student)
    store = TokenStore(data)
    for path, ckpt in ((teacher, teacher_ckpt), (student, student_ckpt)):
        if ckpt.tokenizer.sha256 != store.tokenizer_sha256:
            raise PnlmError(f"{data}: prepared with another tokenizer than {path}'s")
    config = TrainConfig(steps=steps, batch_size=batch_size, optimizer=OptimizerSpec(lr=lr), cosine=False,
                         eval_every=eval_every, eval_batches=eval_batches, patience=patience if early_stop else 0,
                         checkpoint_every=checkpoint_every, seed=seed).validate()
    precision = _precision(precision, backend)
    check_fits(training_estimate(student_ckpt.spec, batch_size, store.context, loaded=True)
               + training_estimate(teacher_ckpt.spec, batch_size, store.context, trainable=0, loaded=True),
               f"distilling {teacher} into {student}", backend, "use a smaller --batch-size")
    teacher_step = make_train_step(backend, teacher_ckpt.spec, teacher_ckpt.weights, OptimizerSpec(), precision=precision)
    source = LiveTeacher(teacher_step)
    if cache_top_k:
        cache = out / "teacher-cache"
        if (cache / CACHE_META).is_file():
            source = TeacherCache(cache, store)
        else:
            splits = tuple(s for s in ("train", "valid") if store.num_windows(s))
            source = write_teacher_cache(cache, teacher_step, store, cache_top_k, str(teacher), batch_size, splits)
        if source.meta["k"] != cache_top_k:
            raise PnlmError(f"{cache}: holds the top {source.meta['k']}, not {cache_top_k}; remove it or match it")
        del teacher_step  # the cache replaces the teacher
    step_fn = make_train_step(backend, student_ckpt.spec, student_ckpt.weights, config.optimizer, precision=precision,
                              distill=spec)
    summary = {"alpha": alpha, "temperature": temperature, "teacher": str(teacher),
               "teacher_source": f"cache top-{cache_top_k}" if cache_top_k else "live"}
    _run(step_fn, student_ckpt.spec, student_ckpt.tokenizer, store, config, out, resume, "slm-d", json_out,
         summary=summary, teacher=source, started_from={"teacher_sha256": weights_sha256(teacher)})
