"""Workloads that run on a node: models, losses, loops, evaluation. torch lives here.

Never imports `hcli.cli`; may import hcli's light modules (classes, spec, runs, data.manifest).
"""
