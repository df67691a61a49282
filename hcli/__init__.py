"""hcli: the control plane of a damage-segmentation study (specs, runs, data, launching, reports).

Nothing here imports torch at module level: `hcli --help` and `hcli status` must stay fast.
"""

__version__ = "0.1.0"
