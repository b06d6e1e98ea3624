"""deploy.yaml: schema (pydantic) and loading (YAML with file:line errors, recipes, includes)."""
