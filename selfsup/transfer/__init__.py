"""Transfer of pretrained encoders: RGB front-end folding, backbone export, detection."""
