"""Preparation as stored units of work: claims, leases, failures, retries, cancel and resume.

In-process here (the embedded mode runs the same units); tests/test_preparation_workers.py runs
them on real worker processes through Redis, with workers killed and the broker stopped.
"""
from __future__ import annotations

import datetime as dt

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.utils import timezone

from studyapp.models import Explanation, PreparationUnit, Study
from studyapp.selectors.preparation import preparation_progress
from studyapp.services import preparation, work_units
from studyapp.services.preparation import preparation_retry_failed, study_run_preparation
from studyapp.services.studies import study_cancel_preparation, study_prepare
from tests.factories import ArmFactory, study_with_arms

pytestmark = pytest.mark.django_db
Status = PreparationUnit.Status


def test_preparation_is_stored_as_units_that_all_finish_and_make_the_study_ready(prepare):
    study = study_with_arms(methods=("integrated_gradients", "saliency"))
    ArmFactory(study=study, name="ig_random", kind="explanation", method="integrated_gradients",
               manipulation="random_matched", position=3)
    study = prepare(study)
    assert study.state == Study.State.READY
    units = {u.key: u for u in PreparationUnit.objects.filter(study=study)}
    assert all(u.status == Status.DONE and u.attempts == 1 and u.seconds is not None for u in units.values())
    kinds = {u.kind for u in units.values()}
    assert {"outputs", "sample", "maps", "render", "arm"} <= kinds  # (5 items: too few for sanity checks)
    real = study.arms.get(name="integrated_gradients")
    # The placebo waits for the real arm's maps (it derives from them); each arm has one scale.
    assert set(units[f"arm/{study.arms.get(name='ig_random').pk}"].depends_on) >= {f"maps/{real.pk}/0"}
    for arm in study.arms.exclude(kind="control"):
        assert len({e.config["rendering"]["scale"] for e in Explanation.objects.filter(arm=arm)}) == 1
    assert all(e.image for e in Explanation.objects.filter(arm__study=study))
    progress = preparation_progress(study=study)
    assert progress.totals == {"done": len(units), "running": 0, "failed": 0, "pending": 0}
    assert progress.remaining_seconds == 0.0 and not progress.busy


def test_a_unit_is_claimed_by_exactly_one_worker_and_an_expired_lease_passes_it_on():
    study = study_with_arms()
    Study.objects.filter(pk=study.pk).update(state="preparing")
    first = preparation.preparation_plan(study=study)[0]
    assert work_units.unit_claim(unit_id=first.pk, worker="a") is not None
    assert work_units.unit_claim(unit_id=first.pk, worker="b") is None  # a's lease holds
    # Worker a vanished: its lease runs out, and the dispatcher hands the unit on.
    PreparationUnit.objects.filter(pk=first.pk).update(lease_expires_at=timezone.now() - dt.timedelta(seconds=1))
    assert work_units.expired_units_release() == 1
    unit = work_units.unit_claim(unit_id=first.pk, worker="b")
    assert unit.worker == "b" and unit.attempts == 2
    # a's late completion is refused: the unit is b's now.
    assert not work_units.unit_complete(unit=unit, worker="a", seconds=1.0, write=lambda: pytest.fail("wrote"))


def test_a_unit_that_kills_its_worker_every_time_is_failed_after_the_last_attempt_with_the_reason():
    study = study_with_arms()
    Study.objects.filter(pk=study.pk).update(state="preparing")
    unit = preparation.preparation_plan(study=study)[0]
    for attempt in range(1, unit.max_attempts + 1):
        assert work_units.unit_claim(unit_id=unit.pk, worker=f"w{attempt}") is not None
        PreparationUnit.objects.filter(pk=unit.pk).update(lease_expires_at=timezone.now() - dt.timedelta(seconds=1))
        work_units.expired_units_release()
    unit.refresh_from_db()
    assert unit.status == Status.FAILED and "stopped without finishing it 3 times" in unit.error
    assert work_units.unit_claim(unit_id=unit.pk, worker="again") is None


def test_a_unit_that_raises_is_retried_then_failed_in_words_while_the_rest_goes_on_and_retry_completes_it(
        prepare, monkeypatch):
    study = study_with_arms(methods=("integrated_gradients", "saliency"))
    saliency = study.arms.get(name="saliency")
    real_maps = preparation.WORK["maps"]
    calls = []

    def flaky(unit):
        if unit.arm_id == saliency.pk:
            calls.append(unit.attempts)
            raise RuntimeError("the GPU driver went away")
        return real_maps(unit)
    monkeypatch.setitem(preparation.WORK, "maps", flaky)
    monkeypatch.setattr(work_units, "backoff", lambda attempts: dt.timedelta(seconds=0.01))
    study = prepare(study)
    assert study.state == Study.State.PREPARING and calls == [1, 2, 3]
    failed = PreparationUnit.objects.get(study=study, status=Status.FAILED)
    assert failed.arm_id == saliency.pk and "the GPU driver went away" in failed.error
    assert study.preparation["status"] == "failed" and "Arm 'saliency'" in study.preparation["error"]
    # The rest went on: the other arm's maps and pictures are done.
    assert Explanation.objects.filter(arm__name="integrated_gradients").exclude(image="").count() == 5
    progress = preparation_progress(study=study)
    assert progress.failed and progress.totals["failed"] == 1
    # The cause is fixed; "Retry failed units" finishes the study from where it stopped.
    monkeypatch.setitem(preparation.WORK, "maps", real_maps)
    assert preparation_retry_failed(study=study) == 1
    study_run_preparation(study_id=study.pk)
    study.refresh_from_db()
    assert study.state == Study.State.READY and study.preparation["status"] == "done"
    assert Explanation.objects.filter(arm=saliency).exclude(image="").count() == 5


def test_cancelling_keeps_finished_work_and_the_next_prepare_resumes_from_it(prepare, monkeypatch):
    study = study_with_arms()
    calls = []
    real_render = preparation.WORK["render"]

    def stop_at_render(unit):
        calls.append(unit.key)
        raise preparation.ServiceError(["stopped here for the test"])
    monkeypatch.setitem(preparation.WORK, "render", stop_at_render)
    study = prepare(study)
    assert study.state == Study.State.PREPARING and calls
    maps_before = {e.pk: bytes(e.attributions) for e in Explanation.objects.filter(arm__study=study)}
    assert len(maps_before) == 5
    study = study_cancel_preparation(study=study)
    assert study.state == Study.State.DRAFT
    assert not PreparationUnit.objects.filter(study=study).exclude(status=Status.DONE).exists()
    monkeypatch.setitem(preparation.WORK, "render", real_render)
    study = prepare(study)
    assert study.state == Study.State.READY
    # Nothing was computed twice: the maps are the same rows, and no unit created an output again.
    assert {e.pk: bytes(e.attributions) for e in Explanation.objects.filter(arm__study=study)} == maps_before
    assert study.preparation["model_outputs_created"] == 0 and study.preparation["explanations_created"] == {
        "integrated_gradients": 0}


def test_an_interrupted_attempt_leaves_no_orphan_picture():
    study = study_with_arms()
    Study.objects.filter(pk=study.pk).update(state="preparing")
    unit = preparation.preparation_plan(study=study)[0]
    claimed = work_units.unit_claim(unit_id=unit.pk, worker="doomed")
    names = preparation.files_write(claimed, [b"\x89PNG fake"], folder="explanations")
    assert default_storage.exists(names[0])
    # The worker is killed before its rows commit; the unit runs again elsewhere.
    PreparationUnit.objects.filter(pk=unit.pk).update(lease_expires_at=timezone.now() - dt.timedelta(seconds=1))
    work_units.expired_units_release()
    assert preparation.preparation_unit_run(unit_id=unit.pk, worker="next") == "done"
    assert not default_storage.exists(names[0])


def test_a_referenced_picture_is_kept_by_the_orphan_cleanup():
    import numpy as np

    from studyapp.models import Stimulus
    from tests.factories import npy_bytes

    kept = default_storage.save("explanations/kept.png", ContentFile(b"x"))
    study = study_with_arms()
    Explanation.objects.create(arm=study.arms.get(name="integrated_gradients"),
                               stimulus=Stimulus.objects.filter(dataset=study.dataset).first(),
                               attributions=npy_bytes(np.zeros(3, np.float32)), image=kept, config={},
                               config_sha256="", seed=0, target=0)
    assert preparation.files_unreferenced_delete([kept]) == 0 and default_storage.exists(kept)


def test_a_send_that_fails_never_raises_and_leaves_the_units_to_the_dispatcher(monkeypatch):
    from kombu.exceptions import OperationalError

    from worker import app, tasks

    def broker_down(*args, **kwargs):
        raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
    monkeypatch.setattr(tasks.run_preparation_unit, "apply_async", broker_down)
    study = study_with_arms()
    app.conf.task_always_eager = False
    try:
        study_prepare(study=study)
        assert work_units.study_units_send(study_id=study.pk) == 0  # what the on-commit hook does
    finally:
        app.conf.task_always_eager = True
    study.refresh_from_db()
    assert study.state == Study.State.PREPARING
    units = PreparationUnit.objects.filter(study=study)
    assert units.exists() and not units.filter(enqueued_at__isnull=False).exists()


def test_an_out_of_memory_error_halves_the_chunk_and_goes_on():
    sizes = []

    def compute(items):
        sizes.append(len(items))
        if len(items) > 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return [i * 10 for i in items]
    assert preparation.halving_on_out_of_memory(compute, list(range(7))) == [i * 10 for i in range(7)]
    assert sizes[0] == 7 and max(sizes[1:]) <= 4
    with pytest.raises(RuntimeError, match="not memory"):
        preparation.halving_on_out_of_memory(lambda items: (_ for _ in ()).throw(RuntimeError("not memory")), [1, 2])


def test_an_attempt_records_every_picture_it_writes_and_deletes_those_no_row_took():
    study = study_with_arms()
    Study.objects.filter(pk=study.pk).update(state="preparing")
    unit = work_units.unit_claim(unit_id=preparation.preparation_plan(study=study)[0].pk, worker="w")
    first = preparation.files_write(unit, [b"a"], folder="edits")
    second = preparation.files_write(unit, [b"b", b"c"], folder="explanations")
    unit.refresh_from_db()
    assert unit.files_pending == first + second  # the journal keeps every batch, not the last
    assert preparation.files_unreferenced_delete(unit.files_pending) == 3
    assert not any(default_storage.exists(name) for name in unit.files_pending)


def test_a_prepared_counterfactual_study_leaves_no_unreferenced_edit_picture(prepare, settings):
    from studyapp.models import Edit
    from tests.participation_helpers import WITHIN_DESIGN, image_study

    study = image_study(arms=[{"name": "edges", "kind": "baseline", "method": "sobel_edges"}])
    Study.objects.filter(pk=study.pk).update(config=WITHIN_DESIGN)
    study = prepare(study)
    assert study.state == Study.State.READY
    folder = settings.MEDIA_ROOT / "edits"
    on_disk = {f"edits/{p.name}" for p in folder.iterdir()}
    assert on_disk and on_disk == set(Edit.objects.exclude(image="").values_list("image", flat=True))
