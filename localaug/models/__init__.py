"""Manifests of the model family (one TOML file per model), shipped inside the wheel."""
