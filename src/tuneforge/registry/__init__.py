"""Model versions, lineage and aliases (production, staging); retraining from production."""
