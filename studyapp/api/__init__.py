"""DRF views, one per operation, with input and output serializers."""
