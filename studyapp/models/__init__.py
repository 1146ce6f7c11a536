"""Domain model, named after DESIGN.md's glossary.

Invariants live in the database (unique and check constraints), not only in Python: the services
rely on them for idempotency (a retried task or a resent answer hits a unique constraint instead
of writing twice).
"""
from studyapp.models.append_only import append_only_refusal  # also installs the triggers after migrate
from studyapp.models.data import Dataset, Edit, MLModel, ModelOutput, Stimulus
from studyapp.models.imports import DatasetImport
from studyapp.models.preparation import PreparationUnit
from studyapp.models.participation import Participant, QuestionnaireAnswer, Response, Trial
from studyapp.models.study import (AnalysisJob, AnalysisRun, Arm, Explanation, ExternalStudyImport, Hypothesis,
                                   PreregistrationDeviation, Study, StudyItem)

__all__ = [
    "AnalysisJob", "AnalysisRun", "Arm", "Dataset", "Edit", "Explanation", "ExternalStudyImport", "Hypothesis", "MLModel", "ModelOutput",
    "Participant", "PreparationUnit", "PreregistrationDeviation", "QuestionnaireAnswer", "Response", "Stimulus", "Study", "StudyItem", "Trial",
    "DatasetImport",
    "append_only_refusal",
]
