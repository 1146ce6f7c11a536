"""Who was analysed: participants per arm from enrollment to analysis, whether attrition and
exclusions differ between arms, and participants found in more than one arm (a data error)."""
from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from .contingency import attrition_test, completion_table
from .run_results import FLOW_COUNTS, OK, not_computed

N_ATTRITION_RESAMPLES = 100_000
COMPLETED = "completed"  # Participant.Status.COMPLETED
FLOW_NOTE = ("Exclusions are counted among completers; a participant may break several rules. "
             "Not completing is attrition, not an exclusion.")


def several_arms(*frames: pd.DataFrame) -> dict[str, list[str]]:
    """participant_id -> the arms they appear in, for every participant found in more than one."""
    pairs = [f[["participant_id", "arm"]].drop_duplicates() for f in frames if len(f)]
    if not pairs:
        return {}
    pairs = pd.concat(pairs, ignore_index=True).drop_duplicates()
    several = pairs.loc[pairs["participant_id"].duplicated(keep=False)]
    return {str(p): sorted(str(a) for a in arms) for p, arms in several.groupby("participant_id")["arm"]}


def several_arms_reason(found: Mapping[str, list[str]]) -> str:
    shown = "; ".join(f"{p} in {' and '.join(arms)}" for p, arms in list(found.items())[:5])
    more = f" and {len(found) - 5} more" if len(found) > 5 else ""
    return (f"{len(found)} analysed participant{'s appear' if len(found) != 1 else ' appears'} in more than one "
            f"arm ({shown}{more}). Arms are assigned between participants (each person is in one arm), so these "
            "data contradict the study's design; this was not computed rather than guess which arm they belong to "
            "or leave their answers out. Find out how they came to be in two arms (a repeated enrollment, a "
            "mislabelled import) and correct the data.")


def _attrition(table: pd.DataFrame, seed: int, what: str) -> dict:
    table = table.loc[table.sum(axis=1) > 0]
    if len(table) < 2:
        return not_computed(f"{what} needs at least two arms with participants")
    return {"status": OK, **attrition_test(table, seed=seed, n_resamples=N_ATTRITION_RESAMPLES).to_dict()}


def participant_flow(people: pd.DataFrame, exclusions: Mapping[str, list[str]], rules: Mapping, arm_names: list[str],
                     seed: int, *, rule_descriptions: Mapping[str, str]) -> dict:
    """Counts per arm (enrolled, consented, completed, excluded by which rule, analysed) and the tests
    of attrition and of exclusions between arms. ``people``: participant_id, arm, status, consented."""
    people = people.assign(
        completed=people["status"] == COMPLETED,
        reasons=people["participant_id"].map(lambda p: exclusions.get(p, [])))
    people["excluded"] = people["completed"] & people["reasons"].map(bool)
    arms = {}
    for arm in arm_names:
        group = people.loc[people["arm"] == arm]
        completers = group.loc[group["completed"]]
        arms[arm] = {
            "enrolled": int(len(group)), "consented": int(group["consented"].sum()),
            "completed": int(len(completers)), "not_completed": int(len(group) - len(completers)),
            "by_status": {str(k): int(v) for k, v in group["status"].value_counts().sort_index().items()},
            "excluded": int(completers["excluded"].sum()),
            "excluded_by_rule": {rule: int(completers["reasons"].map(lambda r, rule=rule: rule in r).sum())
                                 for rule in rules},
            "analysed": int(len(completers) - completers["excluded"].sum()),
        }
    totals = {key: sum(a[key] for a in arms.values()) for key in FLOW_COUNTS}
    completers = people.loc[people["completed"]]
    return {
        "arms": arms, "totals": totals, "rules": rules,
        "rule_descriptions": {rule: rule_descriptions[rule] for rule in rules},
        "note": FLOW_NOTE,
        "attrition_test": _attrition(completion_table(people, arms=arm_names), seed, "the attrition test"),
        "exclusion_test": _attrition(
            completion_table(completers.assign(kept=~completers["excluded"]), completed_column="kept",
                             arms=arm_names).rename(columns={"completed": "analysed",
                                                             "not_completed": "excluded"}),
            seed, "the exclusion test"),
    }
