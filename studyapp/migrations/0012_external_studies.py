import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    """Studies whose data was collected elsewhere (long-format CSV import).

    Study.source (platform/external) and a model only for platform studies (constraint); the
    import's provenance (ExternalStudyImport); "external" choices for arms, datasets, edits and
    participants; a stimulus' ground truth may be unknown (items of data collected elsewhere).
    """

    dependencies = [("studyapp", "0011_study_owner_and_permissions")]

    operations = [
        migrations.CreateModel(
            name='ExternalStudyImport',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('file_name', models.CharField(max_length=255)),
                ('file_sha256', models.CharField(help_text="SHA-256 of the uploaded file's bytes.", max_length=64)),
                ('n_rows', models.PositiveIntegerField(help_text='Data rows read (the header not counted).')),
                ('n_participants', models.PositiveIntegerField()),
                ('n_items', models.PositiveIntegerField()),
                ('columns', models.JSONField(default=list, help_text="The file's columns that were read, in file order.")),
                ('ignored_columns', models.JSONField(blank=True, default=list, help_text="The file's other columns (not stored).")),
                ('settings', models.JSONField(blank=True, default=dict)),
                ('imported_by', models.CharField(blank=True, max_length=150)),
                ('imported_at', models.DateTimeField()),
            ],
        ),
        migrations.RemoveConstraint(
            model_name='arm',
            name='arm_kind_valid',
        ),
        migrations.RemoveConstraint(
            model_name='dataset',
            name='dataset_modality_valid',
        ),
        migrations.RemoveConstraint(
            model_name='dataset',
            name='dataset_source_valid',
        ),
        migrations.RemoveConstraint(
            model_name='edit',
            name='edit_kind_valid',
        ),
        migrations.RemoveConstraint(
            model_name='participant',
            name='participant_source_valid',
        ),
        migrations.AddField(
            model_name='study',
            name='source',
            field=models.CharField(choices=[('platform', 'Run on this platform'), ('external', 'Data collected elsewhere (imported from a file)')], default='platform', editable=False, max_length=16),
        ),
        migrations.AlterField(
            model_name='arm',
            name='kind',
            field=models.CharField(choices=[('control', 'Control (no explanation)'), ('explanation', 'Explanation'), ('baseline', 'Baseline aid (edges, exemplars, random map)'), ('ood_warning', 'Out-of-distribution warning'), ('external', 'Condition of data collected elsewhere')], default='control', max_length=16),
        ),
        migrations.AlterField(
            model_name='dataset',
            name='modality',
            field=models.CharField(choices=[('image', 'Image'), ('tabular', 'Tabular'), ('external', 'Collected elsewhere (items named only)')], max_length=16),
        ),
        migrations.AlterField(
            model_name='dataset',
            name='source',
            field=models.CharField(choices=[('upload', 'Uploaded'), ('builtin', 'Built-in demo data'), ('external', 'Items of a study whose data were collected elsewhere')], default='upload', max_length=16),
        ),
        migrations.AlterField(
            model_name='edit',
            name='kind',
            field=models.CharField(choices=[('occlude_cell', 'Occlude one grid cell'), ('feature_quantile', 'Move one feature to another quantile'), ('external', 'Edited elsewhere (imported; no input stored)')], max_length=24),
        ),
        migrations.AlterField(
            model_name='participant',
            name='source',
            field=models.CharField(choices=[('direct', 'Direct link'), ('prolific', 'Prolific'), ('sona', 'SONA'), ('generic', 'Other (id in a URL parameter)'), ('external', 'Data collected elsewhere (imported from a file)')], default='direct', max_length=16),
        ),
        migrations.AlterField(
            model_name='stimulus',
            name='label',
            field=models.PositiveIntegerField(blank=True, help_text='Ground-truth class index; empty when unknown (data collected elsewhere).', null=True),
        ),
        migrations.AlterField(
            model_name='study',
            name='model',
            field=models.ForeignKey(null=True, on_delete=django.db.models.deletion.PROTECT, related_name='studies', to='studyapp.mlmodel'),
        ),
        migrations.AddConstraint(
            model_name='arm',
            constraint=models.CheckConstraint(condition=models.Q(('kind__in', ['control', 'explanation', 'baseline', 'ood_warning', 'external'])), name='arm_kind_valid'),
        ),
        migrations.AddConstraint(
            model_name='dataset',
            constraint=models.CheckConstraint(condition=models.Q(('modality__in', ['image', 'tabular', 'external'])), name='dataset_modality_valid'),
        ),
        migrations.AddConstraint(
            model_name='dataset',
            constraint=models.CheckConstraint(condition=models.Q(('source__in', ['upload', 'builtin', 'external'])), name='dataset_source_valid'),
        ),
        migrations.AddConstraint(
            model_name='edit',
            constraint=models.CheckConstraint(condition=models.Q(('kind__in', ['occlude_cell', 'feature_quantile', 'external'])), name='edit_kind_valid'),
        ),
        migrations.AddConstraint(
            model_name='participant',
            constraint=models.CheckConstraint(condition=models.Q(('source__in', ['direct', 'prolific', 'sona', 'generic', 'external'])), name='participant_source_valid'),
        ),
        migrations.AddConstraint(
            model_name='study',
            constraint=models.CheckConstraint(condition=models.Q(('source__in', ['platform', 'external'])), name='study_source_valid'),
        ),
        migrations.AddConstraint(
            model_name='study',
            constraint=models.CheckConstraint(condition=models.Q(models.Q(('model__isnull', False), ('source', 'platform')), models.Q(('model__isnull', True), ('source', 'external')), _connector='OR'), name='study_model_matches_source', violation_error_message='A study run on this platform needs a model; a study whose data were collected elsewhere has none.'),
        ),
        migrations.AddField(
            model_name='externalstudyimport',
            name='study',
            field=models.OneToOneField(on_delete=django.db.models.deletion.CASCADE, related_name='external_import', to='studyapp.study'),
        ),
        migrations.AddConstraint(
            model_name='externalstudyimport',
            constraint=models.CheckConstraint(condition=models.Q(('file_sha256__regex', '^[0-9a-f]{64}$')), name='externalimport_sha256_hex'),
        ),
        migrations.AddConstraint(
            model_name='externalstudyimport',
            constraint=models.CheckConstraint(condition=models.Q(('n_rows__gte', 1)), name='externalimport_has_rows'),
        ),
    ]
