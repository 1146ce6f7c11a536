from django.urls import path

from studyapp.api import participation as p

prefix = "api/participate/<uuid:study>/"
urlpatterns = [
    path(prefix + "consent", p.ConsentView.as_view(), name="participation-consent"),
    path(prefix + "state", p.StateView.as_view(), name="participation-state"),
    path(prefix + "instructions", p.InstructionsView.as_view(), name="participation-instructions"),
    path(prefix + "comprehension", p.ComprehensionView.as_view(), name="participation-comprehension"),
    path(prefix + "trial", p.CurrentTrialView.as_view(), name="participation-trial"),
    path(prefix + "trials/<uuid:trial>/answer", p.AnswerView.as_view(), name="participation-answer"),
    path(prefix + "questionnaire", p.QuestionnaireView.as_view(), name="participation-questionnaire"),
    path(prefix + "demographics", p.DemographicsView.as_view(), name="participation-demographics"),
    path(prefix + "debrief", p.DebriefView.as_view(), name="participation-debrief"),
    path(prefix + "withdraw", p.WithdrawView.as_view(), name="participation-withdraw"),
    path(prefix + "completion", p.CompletionView.as_view(), name="participation-completion"),
    path(prefix + "media/<uuid:trial>/<slug:slot>", p.MediaView.as_view(), name="participation-media"),
]
