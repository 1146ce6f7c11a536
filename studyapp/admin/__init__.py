"""Django admin for experimenters. Admin actions and forms are thin: they call services."""
from studyapp.admin import data, participation, studies  # noqa: F401  (registers the ModelAdmins)
