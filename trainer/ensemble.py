"""Average several XGBoost boosters into one: same predictions, one ``inplace_predict`` call.

A booster's margin is its base margin plus the sum of its trees' leaf values. The mean of K
margins is therefore one booster holding every member's trees with each leaf value divided by
K, and the mean of the members' base margins as its own. For ``binary:logistic`` the stored
``base_score`` is a probability (the base margin is its logit), and XGBoost estimates it from
the weighted labels, so members with different class weights have different ones. Serving keeps
loading and calling a single booster, so the worker, the pyfunc model and the bundle format do
not know an ensemble exists.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import xgboost as xgb

from trainer.exceptions import TrainerError


def _model(booster: xgb.Booster) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(booster.save_raw(raw_format="json"))
    return doc


def _scaled_tree(tree: dict[str, Any], factor: float) -> dict[str, Any]:
    """A copy of ``tree`` with leaf values times ``factor`` (a leaf has no left child)."""
    leaves = [left == -1 for left in tree["left_children"]]
    out = dict(tree)
    out["base_weights"] = [
        w * factor if leaf else w for w, leaf in zip(tree["base_weights"], leaves, strict=True)
    ]
    # For a leaf, XGBoost stores its value in split_conditions too; that is what predict reads.
    out["split_conditions"] = [
        c * factor if leaf else c for c, leaf in zip(tree["split_conditions"], leaves, strict=True)
    ]
    return out


def average(boosters: Sequence[xgb.Booster]) -> xgb.Booster:
    """One booster whose margin is the mean of the members' margins."""
    if not boosters:
        raise TrainerError("cannot average an empty list of boosters")
    if len(boosters) == 1:
        return boosters[0]
    docs = [_model(b) for b in boosters]
    objectives = {d["learner"]["objective"]["name"] for d in docs}
    if objectives != {"binary:logistic"}:
        raise TrainerError(f"only binary:logistic boosters can be averaged, not {objectives}")
    learner_params = [d["learner"]["learner_model_param"] for d in docs]
    for key in ("num_feature", "num_class", "num_target"):
        values = {p.get(key) for p in learner_params}
        if len(values) != 1:
            raise TrainerError(f"cannot average boosters with different {key}: {sorted(values)}")
    if len({json.dumps(d["learner"].get("feature_names")) for d in docs}) != 1:
        raise TrainerError("cannot average boosters trained on different feature names")
    for doc in docs:
        gbm = doc["learner"]["gradient_booster"]
        if gbm.get("name") != "gbtree" or gbm["model"]["gbtree_model_param"].get(
            "num_parallel_tree", "1"
        ) not in ("1", 1):
            raise TrainerError("only plain gbtree boosters (one tree per round) can be averaged")

    factor = 1.0 / len(boosters)
    trees = [
        _scaled_tree(tree, factor)
        for doc in docs
        for tree in doc["learner"]["gradient_booster"]["model"]["trees"]
    ]
    for i, tree in enumerate(trees):
        tree["id"] = i  # ids run 0..n-1 across the merged model
    base_margin = sum(_logit(_base_score(p["base_score"])) for p in learner_params) * factor
    merged = docs[0]
    merged["learner"]["learner_model_param"]["base_score"] = f"[{_sigmoid(base_margin)!r}]"
    model = merged["learner"]["gradient_booster"]["model"]
    model["trees"] = trees
    model["tree_info"] = [0] * len(trees)
    model["iteration_indptr"] = list(range(len(trees) + 1))
    model["gbtree_model_param"]["num_trees"] = str(len(trees))
    merged["learner"]["attributes"] = {}  # best_iteration etc. belonged to one member
    out = xgb.Booster()
    out.load_model(bytearray(json.dumps(merged).encode()))
    return out


def _base_score(text: str) -> float:
    """``base_score`` is saved as ``"[4.4252488E-1]"`` (a one-element vector) or a bare number."""
    values = text.strip().strip("[]").split(",")
    if len(values) != 1:
        raise TrainerError(f"cannot average boosters with a vector base_score {text!r}")
    return float(values[0])


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))
