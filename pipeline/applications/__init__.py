"""The API application's own records: its registered redirect URIs and the single-use
authorization codes of hosted auth (:mod:`pipeline.applications.tables`)."""
