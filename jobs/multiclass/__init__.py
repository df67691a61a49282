"""The multiclass segmentation job: UPerNet over a timm encoder on one fold of a protocol."""
