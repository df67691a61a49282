"""The `adapt` kind: k-shot fine-tuning of a trained run on its held-out domain (docs/dg.md)."""
