"""Active learning: scores, selection strategies, cold start, CEAL pseudo-labels, the scoring pass.

Convention: a higher score means a more informative sample.
"""

from atl_desktop.active.coldstart import fit_prototypes, kmeans, kmeans_select, prototype_probs
from atl_desktop.active.pseudo import (
    PseudoLabel,
    PseudoLabelConfig,
    entropy_threshold,
    pseudo_labels_for_round,
    select_pseudo_labels,
)
from atl_desktop.active.scores import PROB_SCORES, bald, entropy, least_confidence, margin
from atl_desktop.active.strategies import (
    STRATEGIES,
    SelectionInput,
    Strategy,
    aift_scores,
    k_center_greedy,
    mmd_reduction_greedy,
    select,
)

# The scoring pass imports torch: its names load on first use, so the strategies (numpy only)
# serve `atl query --strategy ...` argument checks and `atl strategies` without it.
_SCORING = ("MissingScores", "ScoreTable", "ScoringConfig", "load_scores", "model_fingerprint",
            "remove_stale_scores", "score_pool", "scores_dir")


def __getattr__(name: str):
    if name in _SCORING:
        from atl_desktop.active import scoring

        return getattr(scoring, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "PROB_SCORES", "STRATEGIES", "MissingScores", "PseudoLabel", "PseudoLabelConfig", "ScoreTable",
    "ScoringConfig", "SelectionInput", "Strategy", "aift_scores", "bald", "entropy", "entropy_threshold",
    "fit_prototypes", "k_center_greedy", "kmeans", "kmeans_select", "least_confidence", "load_scores",
    "margin", "mmd_reduction_greedy", "model_fingerprint", "prototype_probs", "pseudo_labels_for_round",
    "remove_stale_scores", "score_pool", "scores_dir", "select", "select_pseudo_labels",
]
