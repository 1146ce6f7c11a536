"""Who may open what: every staff URL, generated from the URLconf, for each role.

A study belongs to its owner and collaborators (superusers see every study); each staff view also
needs a model permission or one of the study's custom ones (view results, export, run analysis,
launch). A new staff URL that is missing from ``EXPECTED`` fails
``test_every_staff_url_in_the_urlconf_has_an_expectation`` by name, so no view can be forgotten.
"""
from __future__ import annotations

import re
import uuid

import pytest
from django.contrib.auth.models import Permission
from django.core.files.base import ContentFile
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, resolve, reverse

from studyapp import models as m
from studyapp.exports.files import FILES
from tests.analysis_factories import add_participant, study_with_items
from tests.factories import StimulusFactory, with_hypothesis
from tests.test_admin_one_page import study_post

pytestmark = pytest.mark.django_db

STAFF_ROUTE = re.compile(r"^(admin/studyapp/|staff/|api/studies/)")
# The admin's index of an app is one regex for every app (auth|axes|studyapp...): named by this.
APP_INDEX = "admin/studyapp/ (the app's index)"
# A 1x1 PNG: enough for the image views to serve a real file.
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082")

# What each staff URL is, which says who gets a page (GET 200) and who is refused:
#   study:    belongs to one study: its owner, a collaborator and a superuser; not staff without
#             permissions, not a researcher with every permission whose study it is not.
#   sharing:  who has access to a study: its owner and superusers only (not collaborators).
#   lab:      not about one study (lists filtered to the user's studies, uploads, the lab's
#             datasets and models, the planner): anyone with the permission.
#   nobody:   an add page of records that only services create: refused to everyone.
#   post:     POST-only: asserted refused for those without access (a GET is 405 for everyone).
#   redirect: the admin's /<id>/ shortcut to the change page (which is checked itself).
EXPECTED = {
    APP_INDEX: "lab",
    **{f"admin/studyapp/{model}/{suffix}": kind
       for model in ("study", "participant", "response", "analysisrun")
       for suffix, kind in (("", "lab"), ("add/", "nobody" if model != "study" else "lab"),
                            ("<path:object_id>/history/", "study"), ("<path:object_id>/delete/", "study"),
                            ("<path:object_id>/change/", "study"), ("<path:object_id>/", "redirect"))},
    **{f"admin/studyapp/{model}/{suffix}": kind
       for model in ("dataset", "stimulus", "mlmodel", "datasetimport")
       for suffix, kind in (("", "lab"), ("add/", "nobody" if model in ("stimulus", "datasetimport") else "lab"),
                            ("<path:object_id>/history/", "lab"), ("<path:object_id>/delete/", "lab"),
                            ("<path:object_id>/change/", "lab"), ("<path:object_id>/", "redirect"))},
    "admin/studyapp/stimulus/<int:pk>/image/": "lab",
    "admin/studyapp/datasetimport/<int:pk>/status/": "lab",
    "admin/studyapp/study/import-external/": "lab",
    "admin/studyapp/study/<int:pk>/deviation/": "study",
    "admin/studyapp/study/<int:pk>/launch/": "study",
    "admin/studyapp/study/<int:pk>/monitor/": "study",
    "admin/studyapp/study/<int:pk>/gallery/": "study",
    "admin/studyapp/study/<int:pk>/gallery/<slug:kind>/<int:obj>/": "study",
    "admin/studyapp/study/<int:pk>/preparation/": "study",
    "admin/studyapp/study/<int:pk>/preview/": "study",
    "admin/studyapp/study/<int:pk>/sharing/": "sharing",
    **{f"staff/studies/<int:pk>/export/{suffix}": "study" for suffix in FILES.values()},
    "staff/studies/<int:pk>/report/": "study",
    "staff/studies/<int:pk>/report/analyze/": "post",
    "staff/studies/<int:pk>/report/download/": "study",
    "staff/planner/": "lab",
    "api/studies/": "lab",
    "api/studies/<int:pk>/exports/<str:kind>/": "study",
}
# Which roles get the page (GET 200), per kind of URL; the others are refused.
ALLOWED = {"study": {"collaborator", "owner", "superuser"}, "sharing": {"owner", "superuser"},
           "lab": {"stranger", "collaborator", "owner", "superuser"}, "nobody": set(),
           "post": {"collaborator", "owner", "superuser"}}
SECRET = "Unpublished study of the owner"  # no character that HTML escapes
ROLES = ["anonymous", "non_staff", "no_permissions", "stranger", "collaborator", "owner", "superuser"]


def staff_routes() -> dict[str, URLPattern]:
    """Every staff route of the URLconf (the study app's admin, /staff/, /api/studies/), by route."""
    found = {}

    def walk(patterns, prefix: str) -> None:
        for pattern in patterns:
            route = prefix + str(pattern.pattern)
            if isinstance(pattern, URLResolver):
                walk(pattern.url_patterns, route)
            elif STAFF_ROUTE.match(route):
                found[route] = pattern
            elif "(?P<app_label>" in route and "studyapp" in route:
                found[APP_INDEX] = pattern
    walk(get_resolver().url_patterns, "")
    return found


def study_permissions() -> list[Permission]:
    """Every permission of the study app: view/add/change/delete of each model and the custom ones."""
    return list(Permission.objects.filter(content_type__app_label="studyapp"))


def staff(username: str, *, perms=(), superuser: bool = False):
    user = m.Study._meta.get_field("owner").related_model.objects.create_user(
        username=username, password="pw-123456789", is_staff=True, is_superuser=superuser)
    user.user_permissions.add(*perms)
    return user


def login(user) -> Client:
    client = Client()
    if user is not None:
        client.force_login(user)
    return client


@pytest.fixture
def world():
    """The owner's study (participant, answer, analysis run, an item with an image), shared with a
    collaborator; a stranger with every permission and a study of their own; the lab's data."""
    perms = study_permissions()
    users = {"owner": staff("owner", perms=perms), "collaborator": staff("collaborator", perms=perms),
             "stranger": staff("stranger", perms=perms), "no_permissions": staff("nobody"),
             "superuser": staff("root", superuser=True),
             "non_staff": m.Study._meta.get_field("owner").related_model.objects.create_user(
                 username="participant", password="pw-123456789"),
             "anonymous": None}
    study = with_hypothesis(study_with_items(n_items=6))
    m.Study.objects.filter(pk=study.pk).update(owner=users["owner"], title=SECRET)
    study.refresh_from_db()
    study.collaborators.add(users["collaborator"])
    participant = add_participant(study, "control", answers=[1, 0])
    run = m.AnalysisRun.objects.create(study=study, kind=m.AnalysisRun.Kind.EXPLORATORY, number=1)
    stimulus = StimulusFactory(dataset=study.dataset, index=1000, image=ContentFile(PNG, name="s.png"))
    m.StudyItem.objects.create(study=study, stimulus=stimulus, role="test", position=0, stratum="1 / right")
    theirs = study_with_items(n_items=2)
    m.Study.objects.filter(pk=theirs.pk).update(owner=users["stranger"], title="Study of the stranger")
    theirs.refresh_from_db()
    objects = {"study": study, "participant": participant, "response": m.Response.objects.filter(
        trial__participant=participant).first(), "analysisrun": run, "dataset": study.dataset,
        "stimulus": stimulus, "mlmodel": study.model,
        "datasetimport": m.DatasetImport.objects.create(
            name="Uploaded table", kind="tabular", content_sha256="0" * 64, started_by=users["owner"],
            status="failed", messages=["data.csv has no label column 'label'."], finished_at=study.created_at)}
    return {"users": users, "study": study, "objects": objects, "theirs": theirs}


def url_of(route: str, objects: dict) -> str:
    """The route with its parameters filled with real objects of the world."""
    if route == APP_INDEX:
        return reverse("admin:app_list", kwargs={"app_label": "studyapp"})
    model = route.split("/")[2] if route.startswith("admin/studyapp/") else "study"
    values = {"object_id": objects[model].pk, "pk": objects[model].pk, "obj": objects["stimulus"].pk,
              "kind": "stimulus" if "gallery" in route else "manifest"}
    url = "/" + re.sub(r"<(?:\w+:)?(\w+)>", lambda match: str(values[match.group(1)]), route)
    resolve(url)  # the filled URL is one the URLconf answers
    return url


def refused(response) -> bool:
    """Refused without doing anything: 403, 404, 405, or a redirect to the login page or (the
    admin's answer for an object the user may not see) to the admin's home page."""
    if response.status_code in (403, 404, 405):
        return True
    location = response.get("Location", "")
    return response.status_code == 302 and (location.startswith("/admin/login/") or location == "/admin/")


def test_every_staff_url_in_the_urlconf_has_an_expectation():
    routes = staff_routes()
    missing = sorted(set(routes) - set(EXPECTED))
    assert not missing, ("Staff URLs without an expectation in tests/test_permissions.py EXPECTED (say who may "
                         f"open them, and make the view check it): {missing}")
    assert not set(EXPECTED) - set(routes), f"Expectations for URLs that no longer exist: {set(EXPECTED) - set(routes)}"


@pytest.mark.parametrize("role", ROLES)
def test_each_role_gets_exactly_the_staff_pages_it_may_see(world, role):
    client = login(world["users"][role])
    wrong = []
    for route, kind in sorted(EXPECTED.items()):
        url = url_of(route, world["objects"])
        if kind == "redirect":
            response = client.get(url)
            ok = response.status_code == 302 and (refused(response) or response["Location"].endswith("/change/"))
        elif kind == "post":
            if role in ALLOWED[kind]:
                continue  # what the POST does is tested with its view
            response = client.post(url, {"seed": 0})
            ok = refused(response)
        else:
            response = client.get(url)
            ok = response.status_code == 200 if role in ALLOWED[kind] else refused(response)
            if role in ("no_permissions", "stranger") and kind != "lab":
                # A POST (the forms and switches on these pages) is refused too.
                post = client.post(url, {"paused": "1", "do": "cancel", "arm": 0, "collaborators": []})
                ok = ok and refused(post)
        if role == "stranger" and response.status_code == 200 and not response.streaming:
            # The lab's pages a stranger may open never name the study or its participants.
            body = response.content.decode()
            ok = ok and SECRET not in body and str(world["objects"]["participant"].public_id) not in body
        if response.streaming:
            b"".join(response.streaming_content)  # finish the download (its server-side cursor) in the test
        if not ok:
            wrong.append(f"{url} ({kind}): {response.status_code} {response.get('Location', '')}")
    assert not wrong, f"{role}: " + "; ".join(wrong)
    assert m.Participant.objects.filter(preview=True).count() == 0


def test_anonymous_users_go_to_the_login_page_and_the_api_says_403(world):
    client = Client()
    for route in EXPECTED:
        url = url_of(route, world["objects"])
        response = client.get(url)
        if route.startswith("api/"):
            assert response.status_code == 403, url
        elif EXPECTED[route] != "post":
            assert response.status_code == 302 and response["Location"].startswith("/admin/login/"), url


def test_lists_show_only_the_studies_a_user_owns_or_collaborates_on(world):
    study, theirs, users = world["study"], world["theirs"], world["users"]
    ownerless = study_with_items(n_items=2)
    m.Study.objects.filter(pk=ownerless.pk).update(title="Made before owners existed")
    ownerless.refresh_from_db()
    lists = [reverse("admin:studyapp_study_changelist"), reverse("admin:studyapp_participant_changelist"),
             reverse("admin:studyapp_response_changelist"), reverse("admin:studyapp_analysisrun_changelist")]
    for role, sees in (("stranger", {theirs}), ("collaborator", {study}), ("owner", {study}),
                       ("superuser", {study, theirs, ownerless})):
        client = login(users[role])
        listed = {row["id"] for row in client.get(reverse("export-api-studies")).json()}
        assert listed == {s.pk for s in sees}, role
        studies_page = client.get(lists[0]).content.decode()
        for other in (study, theirs, ownerless):
            assert (other.title in studies_page) == (other in sees), (role, other.title)
        for url in lists[1:]:
            page = client.get(url).content.decode()
            # The "By study" filter too names only the user's studies.
            assert (study.title in page) == (study in sees), (role, url)
            assert theirs.title not in page or theirs in sees, (role, url)
    participant = world["objects"]["participant"]
    page = login(users["stranger"]).get(reverse("admin:studyapp_participant_changelist")).content.decode()
    assert str(participant.public_id) not in page
    # Deleting a stimulus of the lab's data would take rows of the owner's study: the stranger is
    # told how many studies, not which.
    stimulus = world["objects"]["stimulus"]
    page = login(users["stranger"]).get(reverse("admin:studyapp_stimulus_delete", args=[stimulus.pk])).content.decode()
    assert "records of 1 study not shared with you" in page and SECRET not in page
    page = login(users["owner"]).get(reverse("admin:studyapp_stimulus_delete", args=[stimulus.pk])).content.decode()
    assert "not shared with you" not in page


def test_each_custom_permission_guards_its_own_pages_and_actions(world):
    """An owner who may only view and change the study: no report, monitor, export, analysis or launch."""
    study = world["study"]
    owner = world["users"]["owner"]
    owner.user_permissions.set(Permission.objects.filter(codename__in=["view_study", "change_study"]))
    client = login(owner)
    assert client.get(reverse("admin:studyapp_study_change", args=[study.pk])).status_code == 200
    for url in (reverse("report-study", args=[study.pk]), reverse("report-study-download", args=[study.pk]),
                reverse("admin:studyapp_study_monitor", args=[study.pk]),
                reverse("export-responses", args=[study.pk]), reverse("export-api-studies")):
        assert client.get(url).status_code == 403, url
    assert client.post(reverse("report-study-analyze", args=[study.pk]), {"seed": 0}).status_code == 403
    assert not m.AnalysisJob.objects.exists()
    changelist = client.get(reverse("admin:studyapp_study_changelist")).content.decode()
    for action in ("launch", "close", "export_responses_csv"):
        assert f'value="{action}"' not in changelist, action
    assert 'value="prepare"' in changelist
    client.post(reverse("admin:studyapp_study_changelist"), {"action": "close", "_selected_action": [study.pk]})
    study.refresh_from_db()
    assert study.state == m.Study.State.DRAFT

    owner.user_permissions.add(Permission.objects.get(codename="view_results"))
    report = client.get(reverse("report-study", args=[study.pk])).content.decode()
    # Readable, without the buttons and links its reader may not use.
    assert "Run analysis" not in report and "running analyses needs" in report and "responses.csv" not in report
    monitor = client.get(reverse("admin:studyapp_study_monitor", args=[study.pk])).content.decode()
    assert "Recent activity" in monitor and "Pause new participants" not in monitor
    owner.user_permissions.add(Permission.objects.get(codename="export_data"))
    assert client.get(reverse("export-manifest", args=[study.pk])).status_code == 200


def test_a_study_added_in_the_admin_belongs_to_its_creator_and_its_copy_to_whoever_copies_it(world):
    users = world["users"]
    owner_client = login(users["owner"])
    response = owner_client.post(reverse("admin:studyapp_study_add"),
                                 study_post(arms=[{"name": "control"}], hypotheses=[], slug="mine"))
    assert response.status_code == 302
    mine = m.Study.objects.get(slug="mine")
    assert mine.owner == users["owner"]
    login(users["collaborator"]).post(reverse("admin:studyapp_study_changelist"),
                                      {"action": "duplicate", "_selected_action": [world["study"].pk]})
    copy = m.Study.objects.get(title=f"{world['study'].title} (copy)")
    assert copy.owner == users["collaborator"] and not copy.collaborators.exists()
    # A stranger's bulk action on a study that is not theirs selects nothing.
    login(users["stranger"]).post(reverse("admin:studyapp_study_changelist"),
                                  {"action": "duplicate", "_selected_action": [mine.pk]})
    assert not m.Study.objects.filter(title="Maps or not (copy)").exists()


def test_the_owner_names_collaborators_and_only_a_superuser_hands_a_study_over(world):
    study, users = world["study"], world["users"]
    url = reverse("admin:studyapp_study_sharing", args=[study.pk])
    stranger = users["stranger"]
    assert login(users["collaborator"]).post(url, {"collaborators": [stranger.pk]}).status_code == 403
    response = login(users["owner"]).post(url, {"collaborators": [stranger.pk, users["owner"].pk]})
    assert response.status_code == 302
    assert set(study.collaborators.all()) == {stranger}
    assert login(stranger).get(reverse("report-study", args=[study.pk])).status_code == 200
    assert login(users["collaborator"]).get(reverse("report-study", args=[study.pk])).status_code == 404
    # The owner's form has no owner field: a posted owner is ignored.
    login(users["owner"]).post(url, {"owner": stranger.pk, "collaborators": [stranger.pk]})
    study.refresh_from_db()
    assert study.owner == users["owner"]
    login(users["superuser"]).post(url, {"owner": stranger.pk, "collaborators": []})
    study.refresh_from_db()
    assert study.owner == stranger and not study.collaborators.exists()
    assert login(users["owner"]).get(reverse("report-study", args=[study.pk])).status_code == 404


def test_the_planner_starts_from_a_study_only_for_those_who_may_see_it(world):
    url = reverse("report-planner") + f"?study={world['study'].pk}"
    assert login(world["users"]["owner"]).get(url).status_code == 200
    assert login(world["users"]["stranger"]).get(url).status_code == 404
    assert login(world["users"]["no_permissions"]).get(reverse("report-planner")).status_code == 403


def test_a_stranger_cannot_preview_or_pause_a_study_that_is_not_theirs(world):
    study = world["study"]
    arm = study.arms.first()
    stranger = login(world["users"]["stranger"])
    assert stranger.post(reverse("admin:studyapp_study_preview", args=[study.pk]), {"arm": arm.pk}).status_code == 404
    assert not m.Participant.objects.filter(preview=True).exists()
    assert stranger.post(reverse("admin:studyapp_study_monitor", args=[study.pk]), {"paused": "1"}).status_code == 404
    assert stranger.get(reverse("export-api-file", kwargs={"pk": study.pk, "kind": "responses"})).status_code == 404
    assert stranger.get(reverse("export-api-file", kwargs={"pk": uuid.uuid4().int % 10**6 + 10**6,
                                                           "kind": "responses"})).status_code == 404


def test_a_demo_study_made_before_owners_existed_is_given_to_the_demo_admin(world):
    from studyapp.services.demo import DEMOS, DemoResult, demo_study
    from studyapp.services.studies import study_close
    from tests.analysis_factories import launch

    spec = DEMOS[0]
    study = study_with_items(n_items=2)
    m.Study.objects.filter(pk=study.pk).update(slug=spec.slug)
    study.refresh_from_db()
    study_close(study=launch(study))  # closed: the demo leaves it as it is, but for its owner
    admin = world["users"]["superuser"]
    demo_study(spec=spec, model=study.model, dataset=study.dataset, result=DemoResult(), owner=admin)
    study.refresh_from_db()
    assert study.owner == admin and study.state == m.Study.State.CLOSED
