"""Write-side business logic: keyword-only, typed, one transaction per service."""
