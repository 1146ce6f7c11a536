"""Key counterfactual edits by the settings that made them.

Edits made before this migration get an empty key: their settings were not recorded with them,
so preparation never reuses them for a study (it makes edits under the study's own key); trials
that already point at them keep them.
"""
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("studyapp", "0001_initial"),
    ]

    operations = [
        migrations.AddField(
            model_name="edit",
            name="settings_sha256",
            field=models.CharField(
                default="", help_text="SHA-256 of the canonical edit settings that made this edit.",
                max_length=64),
            preserve_default=False,
        ),
        migrations.RemoveConstraint(
            model_name="edit",
            name="edit_unique_position",
        ),
        migrations.AddConstraint(
            model_name="edit",
            constraint=models.UniqueConstraint(
                fields=("stimulus", "settings_sha256", "position"), name="edit_unique_position"),
        ),
    ]
