"""Django-free statistics for controlled studies of ML explanations.

Data frames in, small result objects out; nothing here imports Django. The participant is the
unit of analysis: trials are aggregated per participant (``aggregate``) before the
confirmatory tests (``comparisons``, ``primary``; ``paired`` when every participant sees both
conditions); trial-level models with crossed random effects (``mixed``) and the two-stage
bootstrap (``bootstrap``) are secondary. Every resampling method takes a seed and stores it
in its result.

An analysis run: ``hypotheses`` (one pre-registered hypothesis -> its tests), ``families``
(corrections and verdicts), ``outcomes``, ``flow``, ``secondary`` and ``observers``; its results
are the typed ``run_results.RunResults`` that the report and the exports read.
"""

from .aggregate import (
    outcome_by_arm,
    participant_accuracy,
    participant_outcomes,
    select_trials,
)
from .bootstrap import BootstrapResult, two_stage_bootstrap
from .comparisons import (
    chance_level_test,
    likert_mann_whitney,
    permutation_test,
    pooled_binomial_descriptive,
    tost_equivalence,
    welch_t_test,
)
from .contingency import (
    attrition_test,
    chi_square_test,
    completion_table,
    fisher_exact_test,
)
from .decisions import Decision, HypothesisSpec, decide
from .effect_sizes import cohens_d, cohens_h, difference_in_proportions, odds_ratio
from .mixed import NotRun, crossed_mixed_design_problems, crossed_mixed_logistic, gee_design_problems, gee_logistic
from .multiplicity import METHODS as CORRECTION_METHODS
from .multiplicity import AdjustedPValues, adjust_pvalues
from .paired import (
    LongColumns,
    PairedSample,
    one_sample_tost,
    paired_sample,
    paired_t_test,
    paired_tost,
    sign_flip_permutation_test,
    wilcoxon_signed_rank,
)
from .planning import (
    OneGroupSampleSize,
    Power,
    SampleSize,
    participant_accuracy_spread,
    power_one_group,
    power_participant_accuracy,
    power_two_means,
    power_two_proportions,
    sample_size_one_group,
    sample_size_participant_accuracy,
    sample_size_two_means,
    sample_size_two_proportions,
)
from .primary import CHANCE, Comparison, ComparisonSpec, PrimaryAnalysis, primary_analysis
from .results import EffectSize, StatResult
from .run_results import HypothesisResult, RunResults
from .simulation import CalibrationResult, calibrate, simulate_study

__all__ = [
    "AdjustedPValues",
    "CHANCE",
    "BootstrapResult",
    "CORRECTION_METHODS",
    "CalibrationResult",
    "Comparison",
    "ComparisonSpec",
    "Decision",
    "EffectSize",
    "HypothesisResult",
    "HypothesisSpec",
    "LongColumns",
    "NotRun",
    "OneGroupSampleSize",
    "PairedSample",
    "Power",
    "PrimaryAnalysis",
    "RunResults",
    "SampleSize",
    "StatResult",
    "adjust_pvalues",
    "attrition_test",
    "calibrate",
    "chance_level_test",
    "chi_square_test",
    "cohens_d",
    "cohens_h",
    "completion_table",
    "crossed_mixed_design_problems",
    "crossed_mixed_logistic",
    "decide",
    "difference_in_proportions",
    "fisher_exact_test",
    "gee_design_problems",
    "gee_logistic",
    "likert_mann_whitney",
    "odds_ratio",
    "one_sample_tost",
    "outcome_by_arm",
    "paired_sample",
    "paired_t_test",
    "paired_tost",
    "participant_accuracy",
    "participant_accuracy_spread",
    "participant_outcomes",
    "permutation_test",
    "pooled_binomial_descriptive",
    "power_one_group",
    "power_participant_accuracy",
    "power_two_means",
    "power_two_proportions",
    "primary_analysis",
    "sample_size_one_group",
    "sample_size_participant_accuracy",
    "sample_size_two_means",
    "sample_size_two_proportions",
    "select_trials",
    "sign_flip_permutation_test",
    "simulate_study",
    "tost_equivalence",
    "two_stage_bootstrap",
    "welch_t_test",
    "wilcoxon_signed_rank",
]
