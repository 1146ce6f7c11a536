from django.apps import AppConfig


class StudyAppConfig(AppConfig):
    name = "studyapp"
    verbose_name = "Explanation studies"
    default_auto_field = "django.db.models.BigAutoField"
