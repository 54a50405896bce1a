"""Batched LIME with any masking strategy, and the entry points of every method.

The options of a run are an :class:`~layermask.explanation.options.ExplainOptions`, checked when
it is made; :func:`plan_explanation` checks them against the model and the image. Then the
algorithm, step by step (each step is a function below or in :mod:`~layermask.explanation.engine`):

1. :func:`~layermask.explanation.engine.segment_crop`: segment the image the model sees (the preprocessed crop);
2. :func:`sample_perturbations`: a binary keep-matrix ``Z`` (samples × segments), each segment
   kept with ``keep_probability``, the first row all ones;
3. :func:`~layermask.explanation.engine.predict_perturbations`: score the rows batch by batch through a
   :data:`~layermask.explanation.scoring.Scorer`, which turns rows into pixel masks and runs the masked model,
   keeping only the probabilities of the explained labels (memory does not grow with the number
   of samples, and for ``layer`` only masks are built per sample, never image copies);
4. :func:`sample_weights`: ``sqrt(exp(-d² / w²))`` with ``d`` the cosine distance of each row to
   the all-ones row;
5. :func:`fit_label`: a weighted ``Ridge(alpha=1)`` per label, as the ``lime`` package does.

``method="kernel_shap"`` (:mod:`~layermask.explanation.kernel_shap`) and ``method="occlusion"``
(:mod:`~layermask.explanation.occlusion`) replace steps 2, 4 and 5; ``num_samples="auto"``
(:mod:`~layermask.explanation.adaptive`) scores the rows of step 3 in batches until the fit settles.
The entry points here (:func:`plan_explanation`, :func:`finish_explanation`, :func:`explain`,
:func:`explain_many`) serve every method.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from sklearn.linear_model import Ridge
from sklearn.metrics import pairwise_distances

from layermask import allocator
from layermask.errors import InvalidOptionError
from layermask.explanation.adaptive import sample_adaptively
from layermask.explanation.engine import (
    ExplanationPlan,
    Fit,
    LabelFit,
    Progress,
    check_perturbations,
    choose_labels,
    default_batch_size,
    make_explanation,
    predict_perturbations,
    segment_crop,
)
from layermask.explanation.kernel_shap import fit_kernel_shap, paired_batch, plan_coalitions
from layermask.explanation.occlusion import fit_occlusion, occlusion_rows
from layermask.explanation.options import ExplainOptions
from layermask.explanation.result import ClassScore, Explanation
from layermask.explanation.scoring import LocalScorer, Scorer, ScoringJob, rows_to_masks, score_jobs
from layermask.models.preprocessing import ImageLike, to_rgb_image
from layermask.models.registry import LoadedModel

__all__ = ["ExplanationPlan", "default_batch_size", "explain", "explain_many", "finish_explanation",
           "plan_explanation", "rows_to_masks", "sample_perturbations", "segment_crop"]


def sample_perturbations(num_samples: int, num_segments: int, keep_probability: float, seed: int) -> np.ndarray:
    """Binary keep-matrix (``uint8``, samples × segments); row 0 keeps everything.

    The generator fills the matrix row by row, so the first ``n`` rows are the same whatever
    ``num_samples`` is (what ``num_samples="auto"`` relies on).
    """
    rng = np.random.default_rng(seed)
    rows = (rng.random((num_samples, num_segments)) < keep_probability).astype(np.uint8)
    rows[0] = 1
    return rows


def sample_weights(rows: np.ndarray, kernel_width: float) -> np.ndarray:
    """LIME's exponential kernel on the cosine distance of each row to the all-ones row."""
    distances = pairwise_distances(rows, np.ones((1, rows.shape[1])), metric="cosine").ravel()
    return np.sqrt(np.exp(-(distances**2) / kernel_width**2))


def fit_label(rows: np.ndarray, targets: np.ndarray, weights: np.ndarray) -> LabelFit:
    """Weighted ridge fit: ``(coefficients, intercept, weighted R², prediction at the all-ones row)``."""
    regression = Ridge(alpha=1.0, fit_intercept=True)
    regression.fit(rows, targets, sample_weight=weights)
    score = float(regression.score(rows, targets, sample_weight=weights))
    local = float(regression.predict(np.ones((1, rows.shape[1])))[0])
    return regression.coef_.astype(np.float64), float(regression.intercept_), score, local


def fit_lime(plan: ExplanationPlan, rows: np.ndarray, targets: np.ndarray) -> list[LabelFit]:
    """Steps 4 and 5 for each label (column of ``targets``)."""
    weights = sample_weights(rows, plan.options.kernel_width)
    return [fit_label(rows, targets[:, column], weights) for column in range(targets.shape[1])]


FITS: dict[str, Fit] = {"lime": fit_lime, "kernel_shap": fit_kernel_shap, "occlusion": fit_occlusion}
"""Each method's last step."""


def plan_explanation(model: LoadedModel, image: ImageLike, options: ExplainOptions | None = None, *,
                     perturbations: np.ndarray | None = None, **overrides: Any) -> ExplanationPlan:
    """Check ``options`` against ``model`` and ``image``, crop and segment the image and choose the keep-matrix.

    ``overrides`` replace fields of ``options`` (or of the defaults). Bad options, a segmentation
    unfit for the image and bad ``perturbations`` raise :class:`~layermask.errors.InvalidOptionError`
    naming the option; this is the last step that checks anything.
    """
    options = (options or ExplainOptions()).replace(**overrides)
    options.check_model(model)
    started = time.perf_counter()
    rgb = to_rgb_image(image)
    crop = model.preprocessing.crop(rgb)
    pixels = np.asarray(crop)
    row_weights, exact = None, False
    if options.method == "occlusion":
        if perturbations is not None:
            raise InvalidOptionError("perturbations", "occlusion slides its window and takes no perturbations")
        segments, rows = occlusion_rows(pixels.shape[:2], options.occlusion)
    else:
        segments = segment_crop(pixels, (rgb.height, rgb.width), model.preprocessing, options)
        num_segments = int(segments.max()) + 1
        if perturbations is not None:
            rows = check_perturbations(perturbations, num_segments)
            if options.method == "kernel_shap" and not (rows.all(axis=1).any() and (~rows.any(axis=1)).any()):
                raise InvalidOptionError("perturbations", "KernelSHAP needs the all-visible and the all-hidden row")
        elif options.method == "kernel_shap":
            rows, row_weights = plan_coalitions(num_segments, options.sample_budget, options.seed)
            exact = row_weights is not None
        else:
            rows = sample_perturbations(options.sample_budget, num_segments, options.keep_probability, options.seed)
    timings = {"segmentation": time.perf_counter() - started}
    tensor = model.preprocessing.normalise(crop).unsqueeze(0)
    adaptive = options.adaptive_sampling and perturbations is None and not exact
    return ExplanationPlan(model, options, pixels, tensor, segments, rows, timings, original=np.asarray(rgb),
                           row_weights=row_weights, exact=exact, adaptive=adaptive)


def fit_explanation(plan: ExplanationPlan, top_predictions: list[ClassScore], labels: Sequence[int],
                    targets: np.ndarray, converged: bool | None = None) -> Explanation:
    """Fit the plan's method per label to ``targets`` (samples × labels) of the first ``len(targets)`` rows."""
    started = time.perf_counter()
    rows = plan.rows[: len(targets)]
    fits = FITS[plan.options.method](plan, rows, targets)
    plan.timings["fit"] = time.perf_counter() - started
    if converged is None and plan.exact and plan.options.adaptive_sampling:
        converged = True  # "auto" with every coalition enumerated: nothing left to sample
    return make_explanation(plan, top_predictions, labels, fits, len(rows), converged)


def _score_plan(plan: ExplanationPlan, scorer: Scorer, labels: Sequence[int], batch_size: int,
                progress: Progress | None) -> tuple[np.ndarray, bool | None]:
    """The targets of the rows used, and whether an adaptive run converged (``None`` if not adaptive)."""
    if not plan.adaptive:
        return predict_perturbations(scorer, plan, labels, batch_size, progress), None
    step = plan.options.adaptive.batch
    if plan.options.method == "kernel_shap":
        step = paired_batch(step)
    return sample_adaptively(plan, scorer, labels, batch_size, FITS[plan.options.method], step, progress)


def finish_explanation(plan: ExplanationPlan, scorer: Scorer | None = None,
                       progress: Progress | None = None, *, keep_freed_memory: bool | None = None) -> Explanation:
    """Score the rows of ``plan`` with ``scorer`` (by default in this process) and fit the explanation.

    The allocator is switched as by :func:`explain` (``keep_freed_memory`` likewise). Nothing here
    checks input: an exception raised here is a failure of the computation.
    """
    allocator.keep_freed_memory_by_default(keep_freed_memory)
    batch_size = plan.options.batch_size or default_batch_size()
    scorer = scorer or LocalScorer(plan.model, batch_size)
    started = time.perf_counter()
    top_predictions, chosen = choose_labels(plan, scorer(plan.unmasked_job())[0])
    targets, converged = _score_plan(plan, scorer, chosen, batch_size, progress)
    plan.timings["inference"] = time.perf_counter() - started
    return fit_explanation(plan, top_predictions, chosen, targets, converged)


def explain(model: LoadedModel, image: ImageLike, options: ExplainOptions | None = None, *,
            progress: Progress | None = None, scorer: Scorer | None = None,
            perturbations: np.ndarray | None = None, keep_freed_memory: bool | None = None,
            **overrides: Any) -> Explanation:
    """Explain ``model``'s prediction on ``image`` with LIME, KernelSHAP or occlusion (``method``).

    ``options`` (an :class:`~layermask.explanation.options.ExplainOptions`) says how; keyword
    ``overrides`` replace its fields, so ``explain(model, image, masking="grey", num_samples=500)``
    works without one. ``perturbations`` replaces the sampled keep-matrix of LIME or KernelSHAP (so
    that two strategies can be compared on identical rows; ``num_samples``, ``keep_probability``
    and ``seed`` are then unused; KernelSHAP needs the all-ones and the all-zeros row among them,
    and weighs all rows alike). ``progress(done, total)`` is called after each batch (with
    ``num_samples="auto"``, ``total`` is ``adaptive.max_samples`` and a converged run stops short of
    it); an exception it raises stops the run. ``scorer`` computes the probabilities of each batch
    (by default :class:`~layermask.explanation.scoring.LocalScorer` on ``model``; only ``model``'s
    preprocessing and class names are used otherwise).

    Process-wide effect: the first explanation in a process switches glibc's allocator to keep
    freed memory for reuse (:func:`layermask.allocator.keep_freed_memory`: one malloc arena, no
    ``mmap``, no trimming), which spares every forward pass the page faults of its activation
    buffers; the process's resident size then stays at its peak. ``keep_freed_memory=False`` on
    the first call, or ``LAYERMASK_KEEP_FREED_MEMORY=0`` in the environment, leaves the allocator
    alone for the rest of the process; ``True`` switches it on whatever the environment says.

    Raises:
        InvalidOptionError: (a ``ValueError``) an option is invalid for ``model`` or ``image``;
            ``field`` names it. Raised before the model runs.
        TypeError: an override that is not a field of ``ExplainOptions``.
    """
    plan = plan_explanation(model, image, options, perturbations=perturbations, **overrides)
    return finish_explanation(plan, scorer, progress, keep_freed_memory=keep_freed_memory)


def explain_many(model: LoadedModel, plans: Sequence[ExplanationPlan], max_rows: int,
                 on_forward: Callable[[int], None] | None = None, *,
                 keep_freed_memory: bool | None = None) -> list[Explanation]:
    """Finish several planned explanations of ``model`` at once, their rows sharing forward passes.

    Each plan keeps its own image, method, strategy, rows and labels; the result for a plan is the
    one :func:`explain` gives for it, up to the rounding of different pass sizes. Plans whose rows
    are all known in advance share passes; adaptive ones (``num_samples="auto"``) are then finished
    one after another, in passes of at most ``max_rows``. The allocator is switched as by
    :func:`explain` (``keep_freed_memory`` likewise).
    """
    allocator.keep_freed_memory_by_default(keep_freed_memory)
    started = time.perf_counter()
    unmasked = score_jobs(model, [plan.unmasked_job() for plan in plans], max_rows, on_forward)
    choices = [choose_labels(plan, probabilities[0]) for plan, probabilities in zip(plans, unmasked)]
    fixed = [i for i, plan in enumerate(plans) if not plan.adaptive]
    jobs = [plans[i].job(plans[i].rows, tuple(choices[i][1])) for i in fixed]
    targets: dict[int, tuple[np.ndarray, bool | None]] = {
        i: (scored, None) for i, scored in zip(fixed, score_jobs(model, jobs, max_rows, on_forward))}
    elapsed = time.perf_counter() - started

    def scorer(job: ScoringJob) -> np.ndarray:
        return score_jobs(model, [job], max_rows, on_forward)[0]

    explanations = []
    for i, (plan, (top, chosen)) in enumerate(zip(plans, choices)):
        if i in targets:
            plan.timings["inference"] = elapsed
        else:
            alone = time.perf_counter()
            targets[i] = _score_plan(plan, scorer, chosen, max_rows, None)
            plan.timings["inference"] = time.perf_counter() - alone
        explanations.append(fit_explanation(plan, top, chosen, *targets[i]))
    return explanations
