"""Explanations: their options, batched LIME, KernelSHAP and occlusion over masked batches, segmentation,
scoring, the result and its rendering."""

from layermask.explanation.lime import explain, explain_many, finish_explanation, plan_explanation
from layermask.explanation.options import METHODS, AdaptiveSampling, ExplainOptions, OcclusionWindow
from layermask.explanation.result import ClassScore, Explanation, LabelExplanation
from layermask.explanation.scoring import LocalScorer, Scorer, ScoringJob, score_jobs

__all__ = [
    "METHODS",
    "AdaptiveSampling",
    "ClassScore",
    "ExplainOptions",
    "Explanation",
    "LabelExplanation",
    "LocalScorer",
    "OcclusionWindow",
    "Scorer",
    "ScoringJob",
    "explain",
    "explain_many",
    "finish_explanation",
    "plan_explanation",
    "score_jobs",
]
