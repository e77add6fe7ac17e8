"""Runtime plumbing every layer may use: the config schema (``configuration``), local and
gs:// paths (``paths``), logging (``logs``) and process/host identity (``processes``).

Imports no other part of the package.
"""
