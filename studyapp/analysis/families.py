"""Correction families and verdicts: hypotheses are grouped by ``family`` and their p-values adjusted
within the family with the family's method (each kind of p-value - directional, TOST, two-sided -
separately, over the hypotheses that have one); ``decide`` turns the adjusted p-values into verdicts.
A hypothesis that could not be tested is "inconclusive", with the reason.
"""
from __future__ import annotations

import math
from collections import defaultdict

from .decisions import HypothesisSpec, decide
from .multiplicity import METHODS as CORRECTION_METHODS
from .multiplicity import adjust_pvalues


def _adjust(entries: list[dict], key: str, method: str, alpha: float):
    present = [e for e in entries if e.get(key) is not None]
    if not present:
        return None, {}
    adjusted = adjust_pvalues([e[key] if e[key] is not None else math.nan for e in present],
                                    method=method, alpha=alpha, labels=[e["label"] for e in present])
    values = {e["label"]: (None if math.isnan(v) else float(v)) for e, v in zip(present, adjusted.adjusted)}
    return adjusted.to_dict(), values


def families(entries: list[dict]) -> dict:
    """Adjust the p-values of each correction family and decide every hypothesis.

    Each entry (a hypothesis with its raw p-values, or its ``error``) gets ``p_adjusted``,
    ``p_equivalence_adjusted``, ``p_difference_adjusted`` and ``decision`` in place; an entry of a
    family with an unknown correction gets an ``error``. Returns {family: its correction, labels,
    warnings and the adjusted p-values of each kind}.
    """
    by_family: dict[str, list[dict]] = defaultdict(list)
    for entry in entries:
        by_family[entry["family"]].append(entry)
    families = {}
    for family, members in sorted(by_family.items()):
        methods = sorted({m["correction"] for m in members})
        warnings = []
        if len(methods) > 1:
            warnings.append(f"hypotheses of family '{family}' name different corrections {methods}; "
                            f"'{members[0]['correction']}' (of {members[0]['label']}) was used")
        method = members[0]["correction"]
        alpha = members[0]["alpha"]
        if method not in CORRECTION_METHODS:
            for member in members:
                member["error"] = member.get("error") or f"unknown correction {method!r} for family '{family}'"
        family_result = {"correction": method, "labels": [m["label"] for m in members], "warnings": warnings}
        adjusted = {}
        for key in ("p_value", "p_equivalence", "p_difference"):
            family_result[f"adjusted_{key}"], adjusted[key] = _adjust(members, key, method, alpha)
        for member in members:
            if member.get("error"):
                member.update(p_adjusted=None, p_equivalence_adjusted=None, p_difference_adjusted=None,
                              decision={"verdict": "inconclusive", "reason": f"not tested: {member['error']}",
                                        "alpha": member["alpha"]})
                continue
            spec = HypothesisSpec(name=member["label"], kind=member["direction"], alpha=member["alpha"],
                                        margin=member.get("equivalence_margin"))
            p = adjusted["p_value"].get(member["label"])
            decision = decide(spec, p_adjusted=math.nan if p is None else p,
                                    p_equivalence_adjusted=adjusted["p_equivalence"].get(member["label"]),
                                    p_difference_adjusted=adjusted["p_difference"].get(member["label"]))
            member["p_adjusted"] = p
            member["p_equivalence_adjusted"] = adjusted["p_equivalence"].get(member["label"])
            member["p_difference_adjusted"] = adjusted["p_difference"].get(member["label"])
            member["decision"] = {"verdict": decision.verdict, "reason": decision.reason, "alpha": decision.alpha}
        families[family] = family_result
    return families
