"""Staff report pages: the study report (with its self-contained download) and the study planner."""
