"""Django admin for experimenters. Admin actions and forms are thin: they call services."""
from django.contrib import admin

from studyapp.admin import data, participation, studies  # noqa: F401  (registers the ModelAdmins)

# Say what the product is, on every admin page and in the browser tab.
admin.site.site_header = "Explanation studies"
admin.site.site_title = "Explanation studies"
admin.site.index_title = "Design, run and analyse pre-registered studies of ML explanations"
